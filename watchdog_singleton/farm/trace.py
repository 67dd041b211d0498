"""The timeline: one JSON line per task attempt, appended as each attempt ends (never rewritten),
and its conversion to Chrome trace-event JSON for Perfetto or chrome://tracing.

In the trace, each node is a process track and each worker slot a thread track; an attempt is
one complete ("X") event, coloured by outcome; a retried attempt carries args.retry = true.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, Iterator, Optional

from ..errors import UserError

FILE_NAME = "timeline.jsonl"
COLOURS = {"finished": "good", "failed": "terrible", "timeout": "terrible", "requeued": "bad", "lost": "bad"}


class Timeline:
    """Appends attempts to `path`, one line each, flushed at once (a SIGKILL loses nothing written)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file: Optional[IO[str]] = None

    def attempt(self, **fields: Any) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")
        self.file.write(json.dumps(fields, separators=(",", ":")) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


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
    tmp = f"{output}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(trace, f)
        os.replace(tmp, output)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    return sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
