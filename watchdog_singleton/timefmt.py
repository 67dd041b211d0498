"""The one way we write a time: local ISO 8601 with the UTC offset, in every file, table and log.

Standard library only: the tick and the resident supervisor import it.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def iso(t: float) -> str:
    """Unix time `t` as local ISO 8601, the way every file and table of ours shows a time."""
    return time.strftime(FORMAT, time.localtime(t))


def unix_time(text: str) -> Optional[float]:
    """The Unix time of a time `iso` wrote; None if it is not one. By hand: time.strptime would
    load _strptime (datetime, calendar, locale, re) into the resident supervisor."""
    try:
        year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
        hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
        sign, off_hours, off_minutes = text[19], int(text[20:22]), int(text[22:24])
    except (ValueError, IndexError):
        return None
    if text[4::3][:3] != "--T" or sign not in "+-" or len(text) != 24:
        return None
    offset = (off_hours * 3600 + off_minutes * 60) * (1 if sign == "+" else -1)
    return days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset


def days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's days_from_civil)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def now_iso() -> str:
    return iso(time.time())


def clock_time(t: float) -> str:
    """Unix time `t` as the local time of day (HH:MM:SS), for a line about the next minutes."""
    return time.strftime("%H:%M:%S", time.localtime(t))
