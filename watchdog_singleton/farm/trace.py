"""The timeline: one JSON line per task attempt, appended as each attempt ends (never rewritten),
and its conversion to Chrome trace-event JSON for Perfetto or chrome://tracing.

In the trace, each node is a process track and each worker slot a thread track; an attempt is
one complete ("X") event, coloured by outcome; a retried attempt carries args.retry = true.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Optional

from ..errors import UserError
from . import place

FILE_NAME = "timeline.jsonl"
COLOURS = {"finished": "good", "failed": "terrible", "timeout": "terrible", "requeued": "bad", "lost": "bad"}


class Timeline:
    """Appends attempts to `path` (0600), one line each, written at once (a SIGKILL loses nothing
    written). A write that fails (a full disk, a read-only folder) is handed to `on_error` once,
    as one line, and the timeline writes nothing more: the store has the results."""

    def __init__(self, path: str, on_error: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.on_error = on_error
        self.fd: Optional[int] = None
        self.broken = False

    def attempt(self, **fields: Any) -> None:
        if self.broken:
            return
        line = (json.dumps(fields, separators=(",", ":")) + "\n").encode(errors="surrogateescape")
        try:
            if self.fd is None:
                self.fd = place.open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "timeline")
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view):]
        except (OSError, UserError) as exc:
            self.broken = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if self.on_error is None:
                raise
            self.on_error(f"cannot write the timeline {self.path}: {reason}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read(path: str) -> Iterator[dict[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no timeline at {path}: has a farm run in this folder?") from None
    with f:
        for line in f:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash mid-write
            if isinstance(item, dict) and "start" in item and "end" in item:
                yield item


def chrome_trace(attempts: Iterator[dict[str, Any]]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    nodes: dict[str, int] = {}
    slots: set[tuple[int, int]] = set()
    origin: Optional[float] = None
    for item in attempts:
        node = str(item.get("node", "?"))
        pid = nodes.setdefault(node, len(nodes) + 1)
        tid = int(item.get("slot", 0))
        slots.add((pid, tid))
        start, end = float(item["start"]), float(item["end"])
        origin = start if origin is None else min(origin, start)
        outcome = str(item.get("outcome", "?"))
        attempt = int(item.get("attempt", 1))
        events.append({"name": item.get("task", "?"), "cat": outcome, "ph": "X", "pid": pid, "tid": tid,
                       "ts": start, "dur": max(0.0, end - start) * 1e6, "cname": COLOURS.get(outcome, "grey"),
                       "args": {"command": item.get("command", ""), "attempt": attempt, "outcome": outcome,
                                "code": item.get("code"), "retry": attempt > 1}})
    for event in events:  # microseconds from the first start: readable numbers in the viewers
        event["ts"] = round((event["ts"] - (origin or 0.0)) * 1e6, 1)
    meta: list[dict[str, Any]] = []
    for node, pid in nodes.items():
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": node}})
    for pid, tid in sorted(slots):
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"worker {tid}"}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}


def write_trace(workdir: str, output: str) -> int:
    """Convert the work folder's timeline to `output`; returns how many attempts it holds."""
    trace = chrome_trace(read(os.path.join(workdir, FILE_NAME)))
    tmp = f"{output}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | place.OPEN_FLAGS, place.FILE_MODE)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(trace, f)
        os.replace(tmp, output)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    return sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
