"""logs: print the end of NAME's stdout or stderr log, and follow it across rotations."""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO, Callable, Optional

from ..errors import OK, UserError
from ..files import open_own_file
from ..job.model import LIMITS, check_name, check_range
from .common import Context

POLL_SECONDS = 0.2


def tail_bytes(path: str, lines: int) -> bytes:
    with open_own_file(path) as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block, data = 65536, b""
        pos = end
        while pos > 0 and data.count(b"\n") <= lines:
            pos = max(0, pos - block)
            f.seek(pos)
            data = f.read(end - pos)
        kept = data.split(b"\n")
        if kept and kept[-1] == b"":
            kept.pop()
            return b"\n".join(kept[-lines:]) + b"\n" if lines else b""
        return b"\n".join(kept[-lines:]) if lines else b""


def logs(name: str, ctx: Context, stderr: bool = False, lines: int = 10, follow: bool = False,
         out: Optional[BinaryIO] = None, keep_going: Callable[[], bool] = lambda: True) -> int:
    check_range("-n", lines, *LIMITS["--lines"])
    from ..batch import load_record

    record = load_record(ctx.root, name) if check_name(name) else None
    job, state = (ctx.jobs.load(name), ctx.states.load(name)) if record else ctx.known(name)
    path = (job.stderr_log if stderr else job.stdout_log) if job else \
        (state.stderr_log if stderr else state.stdout_log) if state else ""
    if record and not path:  # a submitted batch chain that has not run yet: its log files to be
        path = str(record.get("stderr_log" if stderr else "stdout_log") or "")
    if not path:
        raise UserError(f"{name} has no log files (an ad-hoc run that wrote to the terminal)")
    sink = out or sys.stdout.buffer
    if os.path.lexists(path):
        sink.write(tail_bytes(path, lines))
        sink.flush()
    if not follow:
        return OK
    follow_file(path, sink, keep_going)
    return OK


def follow_file(path: str, sink: BinaryIO, keep_going: Callable[[], bool]) -> None:
    """Like tail -F: print what is appended; reopen when the file is rotated or recreated."""
    f: Optional[BinaryIO] = None
    ident = (0, 0)
    first_open = True  # the tail is printed already: start at the end; after a rotation, at the start
    try:
        while keep_going():
            if f is None:
                try:
                    f = open_own_file(path)
                except FileNotFoundError:
                    time.sleep(POLL_SECONDS)
                    continue
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if first_open:
                    f.seek(0, os.SEEK_END)
                    first_open = False
            data = f.read()
            if data:
                sink.write(data)
                sink.flush()
                continue
            try:
                st = os.stat(path)
                moved = (st.st_dev, st.st_ino) != ident or st.st_size < f.tell()
            except FileNotFoundError:
                moved = True
            if moved:
                sink.write(f.read())
                sink.flush()
                f.close()
                f = None
                continue
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass
    finally:
        if f is not None:
            f.close()
