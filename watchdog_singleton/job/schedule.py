"""Due times: cron expressions and fixed periods, jitter, and the slots a long run skips.

Standard library only and light (the resident supervisor of a periodic job imports it):
python-crontab validates schedules at install, but is never loaded here. Times are Unix
seconds in local time, as cron reads a crontab; a due time is always on a whole minute for a
cron expression.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Optional

AT_WORDS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, _MONTHS), (0, 7, _DAYS))
SEARCH_DAYS = 5 * 366  # 29 February falls on a given weekday within 28 years; 5 covers any date


def expand(field: str, lo: int, hi: int, names: dict[str, int]) -> Optional[set[int]]:
    """The values one cron field matches; None if it is not a field we can read."""
    values: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else (0 if slash else 1)
        first, dash, last = span.partition("-")
        if span == "*":
            a, b = lo, hi
        else:
            a = names.get(first, int(first) if first.isdigit() else -1)
            b = names.get(last, int(last) if last.isdigit() else -1) if dash else (hi if slash else a)
        if step <= 0 or not lo <= a <= b <= hi:
            return None
        values.update(range(a, b + 1, step))
    return values


class CronSchedule:
    """A 5-field cron expression (or an @-word but @reboot), with cron's day rule: when both
    day-of-month and day-of-week are restricted, a day matching either one fires."""

    def __init__(self, expression: str) -> None:
        text = AT_WORDS.get(expression.strip(), expression)
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"schedule {expression!r} is not 5 fields")
        sets = [expand(f, lo, hi, names) for f, (lo, hi, names) in zip(fields, FIELDS)]
        if any(s is None for s in sets):
            raise ValueError(f"schedule {expression!r} has a field we cannot read")
        minutes, hours, days, months, weekdays = (s or set() for s in sets)
        if 7 in weekdays:
            weekdays = (weekdays - {7}) | {0}
        self.minutes, self.hours = sorted(minutes), sorted(hours)
        self.days, self.months, self.weekdays = days, months, weekdays
        self.day_restricted = fields[2] != "*"
        self.weekday_restricted = fields[4] != "*"

    def _day_fires(self, tm: time.struct_time) -> bool:
        return self.fires_on(tm.tm_mon, tm.tm_mday, (tm.tm_wday + 1) % 7)  # struct_time: Monday is 0

    def fires_on(self, month: int, day: int, weekday: int) -> bool:
        """Whether the date fires on some minute; `weekday` as cron counts: Sunday is 0."""
        if month not in self.months:
            return False
        by_day = day in self.days
        by_weekday = weekday in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return by_day or by_weekday
        return by_day and by_weekday

    def next_after(self, t: float) -> float:
        """The first due time strictly after `t`."""
        tm = time.localtime(int(t) // 60 * 60 + 60)
        day = time.mktime((tm.tm_year, tm.tm_mon, tm.tm_mday, 0, 0, 0, 0, 0, -1))
        first_minute = tm.tm_hour * 60 + tm.tm_min
        for i in range(SEARCH_DAYS):
            date = time.localtime(day + 86400 * i + 7200)  # +2 h: never the day before across a DST change
            if self._day_fires(date):
                for hour in self.hours:
                    for minute in self.minutes:
                        if i == 0 and hour * 60 + minute < first_minute:
                            continue
                        when = time.mktime((date.tm_year, date.tm_mon, date.tm_mday, hour, minute, 0, 0, 0, -1))
                        if when > t:
                            return when
        raise ValueError("the schedule never fires")

    def previous_at_or_before(self, t: float, horizon: float = 366 * 86400.0) -> Optional[float]:
        """The last due time at or before `t` (within `horizon` seconds), or None."""
        step = 3600.0
        start = t - step
        while t - start <= horizon:
            found = None
            when = self.next_after(start - 1)
            while when <= t:
                found = when
                when = self.next_after(when)
            if found is not None:
                return found
            step *= 4
            start = t - step
        return None


class EverySchedule:
    """Every `period` seconds, start to start, counted from `anchor`."""

    def __init__(self, period: float, anchor: float = 0.0) -> None:
        self.period = period
        self.anchor = anchor

    def _index(self, t: float) -> int:
        """The n of the last due time anchor + n * period at or before `t`. The division alone
        can land one off either way (anchor + n * period, taken back through //, may fall just
        short of n): corrected against the due times themselves, so that next_after(due) is
        always later than `due`."""
        n = int((t - self.anchor) // self.period)
        if self.anchor + n * self.period > t:
            n -= 1
        elif self.anchor + (n + 1) * self.period <= t:
            n += 1
        return n

    def next_after(self, t: float) -> float:
        return self.anchor + (self._index(t) + 1) * self.period

    def previous_at_or_before(self, t: float, horizon: float = 0.0) -> Optional[float]:
        return self.anchor + self._index(t) * self.period


def make(expression: str, every: float, anchor: float = 0.0) -> "CronSchedule | EverySchedule":
    return EverySchedule(every, anchor) if every > 0 else CronSchedule(expression)


def skipped_between(schedule: "CronSchedule | EverySchedule", due: float, ended: float) -> int:
    """How many due times after `due` fell while its run went on, until `ended`: those slots are
    skipped (a run is never joined by a second one, and missed slots are not made up)."""
    count, when = 0, schedule.next_after(due)
    while when < ended and count < 100000:
        count += 1
        when = schedule.next_after(when)
    return count


def shortest_gap(expression: str) -> float:
    """Seconds between the two closest due times of a cron expression over the next year's
    first days (an estimate good enough for PanDA's default timeout); 0 for @reboot."""
    if expression.strip() == "@reboot":
        return 0.0
    try:
        schedule = CronSchedule(expression)
    except ValueError:
        return 0.0
    t = schedule.next_after(time.time())
    gaps = []
    for _ in range(64):
        nxt = schedule.next_after(t)
        gaps.append(nxt - t)
        t = nxt
    return min(gaps)
