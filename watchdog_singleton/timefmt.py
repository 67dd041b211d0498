"""The one way we write a time: local ISO 8601 with the UTC offset, in every file, table and log.

Standard library only: the tick and the resident supervisor import it.
"""

import time

FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def iso(t: float) -> str:
    """Unix time `t` as local ISO 8601, the way every file and table of ours shows a time."""
    return time.strftime(FORMAT, time.localtime(t))


def now_iso() -> str:
    return iso(time.time())


def clock_time(t: float) -> str:
    """Unix time `t` as the local time of day (HH:MM:SS), for a line about the next minutes."""
    return time.strftime("%H:%M:%S", time.localtime(t))
