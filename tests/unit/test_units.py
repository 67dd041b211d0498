"""Fast tests of the pure pieces: crontab text surgery, backoff, the log sink, tail."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

import pytest

from watchdog_singleton.commands.logs import tail_bytes
from watchdog_singleton.cron import crontab
from watchdog_singleton.errors import UserError
from watchdog_singleton.job.model import Job, check_name, check_schedule, parse_env
from watchdog_singleton.supervisor.core import restart_delay
from watchdog_singleton.supervisor.logsink import LogSink

FOREIGN = (b"# header\nMAILTO=\"\"\nFOO = spaced\n\n0 0 * * 7\techo 'a #b' % x\n@reboot true\n"
           b"# comment above a job\n1 2 3 4 5 true\nLAST=after\n")


def job(name: str = "web", schedule: str = "* * * * *") -> Job:
    return Job(name=name, command=["/bin/true"], workdir="/", schedule=schedule,
               lock_dir="/tmp/watchdog-singleton-1000")


def line(name: str) -> bytes:
    return crontab.render(job(name), "/venv/bin/python", "/home/me/state", "/usr/bin/flock")


def test_adding_and_removing_our_lines_keeps_every_foreign_byte() -> None:
    text = crontab.with_entry(FOREIGN, "a", line("a"))
    text = crontab.with_entry(text, "b", line("b"))
    assert text == FOREIGN + line("a") + b"\n" + line("b") + b"\n"
    assert crontab.with_entry(text, "a", line("a")) == text  # same input, same crontab
    text = crontab.with_entry(text, "a", None)
    text = crontab.with_entry(text, "b", None)
    assert text == FOREIGN


def test_replacing_a_line_keeps_its_place_and_never_duplicates() -> None:
    text = crontab.with_entry(FOREIGN, "a", line("a")) + b"# after\n"
    changed = crontab.with_entry(text, "a", crontab.render(job("a", "@daily"), "/p", "/s", None))
    assert changed.count(b"#watchdog-singleton:a") == 1
    assert changed.endswith(b"#watchdog-singleton:a\n# after\n")


def test_a_foreign_line_with_a_similar_tag_is_not_ours() -> None:
    text = b"* * * * * echo #watchdog-singleton:a b\n* * * * * x #watchdog-singleton:ab\n"
    assert crontab.with_entry(text, "a", None) == text
    assert set(crontab.parse_entries(text)) == {"ab"}


def test_disable_and_enable_round_trip() -> None:
    text = crontab.with_entry(FOREIGN, "a", line("a"))
    entry = crontab.parse_entries(text)["a"]
    off = crontab.with_entry(text, "a", crontab.disabled(entry.line))
    assert crontab.parse_entries(off)["a"].enabled is False
    back = crontab.with_entry(off, "a", crontab.enabled(crontab.parse_entries(off)["a"].line))
    assert back == text


def test_rendered_line_escapes_percent_and_parses_in_sh() -> None:
    j = job("x")
    j.lock_dir = "/tmp/odd dir %with 'quotes'"
    rendered = crontab.render(j, "/opt/py 3/bin/python", "/home/me/50%/state", "/usr/bin/flock").decode()
    command = rendered.split(" ", 5)[5]
    assert "%" not in command.replace("\\%", "")
    unescaped = command.replace("\\%", "%")
    assert subprocess.run(["/bin/sh", "-n", "-c", unescaped]).returncode == 0
    assert shlex.quote("/home/me/50%/state") in unescaped


def test_render_refuses_a_newline() -> None:
    j = job("x")
    j.lock_dir = "/tmp/a\nb"
    with pytest.raises(UserError):
        crontab.render(j, "/p", "/s", "/usr/bin/flock")


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "a\nb", "-x", "x" * 65, ".hidden", "é"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(UserError):
        check_name(bad)


def test_good_names() -> None:
    for good in ("web", "a.b-c_d@host+1", "x" * 64, "9lives"):
        assert check_name(good) == good


@pytest.mark.parametrize("bad", ["61 * * * *", "* * * *", "* * * * * *", "@foo", "* * * * * ;", "", "a b c d e"])
def test_bad_schedules(bad: str) -> None:
    with pytest.raises(UserError):
        check_schedule(bad)


def test_good_schedules_are_kept_as_written() -> None:
    assert check_schedule("0 0 * * 7") == "0 0 * * 7"
    assert check_schedule("*/5  1-3 * jan mon") == "*/5 1-3 * jan mon"
    assert check_schedule("@reboot") == "@reboot"


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in (["A"], ["=x"], ["1A=x"], ["A-B=x"]):
        with pytest.raises(UserError):
            parse_env(bad)


def test_quick_exits_restart_at_once_then_back_off_doubling_up_to_the_cap() -> None:
    j = job()
    j.backoff_initial, j.backoff_max = 1.0, 10.0
    assert [restart_delay(j, n) for n in range(9)] == [0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_never_overflows_and_has_a_floor() -> None:
    j = job()
    j.backoff_initial, j.backoff_max = 0.0, float("nan")
    assert restart_delay(j, 3) == 0.1  # a floor on the restart rate whatever the options say
    assert restart_delay(j, 10**6) == 60.0  # no OverflowError after a million quick exits


def wait_written(sink: LogSink, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    sink.close()


def test_sink_rotates_only_at_line_boundaries(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, max_bytes=100, backups=500)
    lines = [f"{i} {'y' * (i % 40)}\n".encode() for i in range(300)]
    data = b"".join(lines)
    for start in range(0, len(data), 37):  # chunks that cut lines anywhere
        sink.feed(data[start:start + 37])
    wait_written(sink)
    files = sorted((f for f in os.listdir(tmp_path) if f.startswith("out.log.")), key=lambda f: -int(f.split(".")[-1]))
    joined = b""
    for f in files + ["out.log"]:
        content = open(os.path.join(tmp_path, f), "rb").read()
        assert content.endswith(b"\n")
        assert len(content) <= 100 + 45
        joined += content
    assert joined == data


def test_sink_long_line_overruns_rather_than_splits(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, max_bytes=10, backups=5)
    sink.feed(b"a" * 50 + b"\nb\n")
    wait_written(sink)
    assert open(path + ".1", "rb").read() == b"a" * 50 + b"\n"
    assert open(path, "rb").read() == b"b\n"


def test_sink_drops_past_its_buffer_and_says_so(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "out.log")
    sink = LogSink(path, buffer_limit=10)
    with sink._cond:  # hold the writer back so the buffer fills
        sink.feed(b"12345\n")
        sink.feed(b"67890\n")
        sink.feed(b"abcdef\n")  # over the limit: dropped and counted
    wait_written(sink)
    lines = open(path).read().splitlines()
    assert lines[0] == "12345"
    assert lines[1].endswith("] 13 bytes of output lost (buffer full)"), "the marker stands where the loss was"
    assert lines[2:] == []


def test_sink_notes_start_on_a_line_of_their_own(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "err.log")
    sink = LogSink(path)
    sink.feed(b"partial")
    sink.note("started pid 1")
    wait_written(sink)
    lines = open(path).read().splitlines()
    assert lines[0] == "partial" and lines[1].endswith("] started pid 1")


def test_tail_bytes(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "f")
    with open(path, "w") as f:
        f.write("".join(f"line {i}\n" for i in range(100000)))
    assert tail_bytes(path, 3) == b"line 99997\nline 99998\nline 99999\n"
    assert tail_bytes(path, 0) == b""
    with open(path, "a") as f:
        f.write("no newline")
    assert tail_bytes(path, 2) == b"line 99999\nno newline"
