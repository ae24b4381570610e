"""EventBridge schedule expressions, ``rate(...)`` and six-field ``cron(...)``: parsed and evaluated.

Pure: no AWS here. ``schedules create`` uses it to refuse, with a message naming the field, an
expression EventBridge would refuse (or one that never fires); the local runtime uses it to fire
the rules that moto stores but never fires. Times are UTC, as EventBridge's are.

``cron(minutes hours day-of-month month day-of-week year)``, as EventBridge writes it: ``*`` any,
``?`` no value (exactly one of the two day fields is ``?``), ``a-b`` ranges, ``a,b`` lists,
``a/n`` and ``*/n`` steps; months ``1-12`` or ``JAN-DEC``; days of the week ``1-7`` or
``SUN-SAT`` (1 is Sunday); ``L`` (the last day of the month, or after a weekday the last such
weekday of the month), ``W`` (the weekday nearest a day of the month, ``LW`` the last weekday)
and ``#`` (``3#2``: the month's second Tuesday). ``rate(n unit)``: a whole number of minutes,
hours or days, the unit singular for 1 and plural otherwise.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from parallelrun.core.errors import ExpressionError

MIN_YEAR, MAX_YEAR = 1970, 2199
RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
MONTH_NAMES = {name: number for number, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
DAY_NAMES = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)}
EXAMPLES = "write rate(5 minutes), rate(1 hour) or cron(0 2 * * ? *) (minutes hours day-of-month month day-of-week year)"


@dataclass(frozen=True)
class Rate:
    """``rate(n unit)``: every ``seconds``, counted from when the rule was created (its anchor)."""

    expression: str
    seconds: int

    def next_after(self, after: datetime, anchor: datetime) -> datetime:
        """The first firing strictly after ``after`` of a rate counted from ``anchor``."""
        after, anchor = _utc(after), _utc(anchor)
        periods = max(1, int((after - anchor).total_seconds() // self.seconds) + 1)
        return anchor + timedelta(seconds=periods * self.seconds)


@dataclass(frozen=True)
class Cron:
    """``cron(...)``: the minutes, hours, months and years it fires in, and its day rule."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int]
    days: DayOfMonth | DayOfWeek

    def next_after(self, after: datetime, anchor: datetime | None = None) -> datetime | None:
        """The first firing strictly after ``after`` (a cron needs no anchor); None if it never
        fires again (its years are past, or its day never comes, such as February 30)."""
        t = _utc(after).replace(second=0, microsecond=0) + timedelta(minutes=1)
        while t.year <= MAX_YEAR:
            if t.year not in self.years:
                later = [year for year in self.years if year > t.year]
                if not later:
                    return None
                t = datetime(min(later), 1, 1, tzinfo=UTC)
            elif t.month not in self.months:
                later = [month for month in self.months if month > t.month]
                t = datetime(t.year, min(later), 1, tzinfo=UTC) if later else datetime(t.year + 1, 1, 1, tzinfo=UTC)
            elif not self.days.matches(t.year, t.month, t.day):
                t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
            else:
                hour = _first_from(self.hours, t.hour)
                if hour is None:
                    t = datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)
                    continue
                if hour > t.hour:
                    t = t.replace(hour=hour, minute=0)
                minute = _first_from(self.minutes, t.minute)
                if minute is None:
                    t = t.replace(minute=0) + timedelta(hours=1)
                    continue
                return t.replace(minute=minute)
        return None


@dataclass(frozen=True)
class DayOfMonth:
    """The day-of-month field: listed days, ``L`` (last day), ``LW`` (last weekday), ``nW``."""

    days: frozenset[int] = frozenset()
    last: bool = False
    last_weekday: bool = False
    nearest_weekday: frozenset[int] = frozenset()

    def matches(self, year: int, month: int, day: int) -> bool:
        length = calendar.monthrange(year, month)[1]
        return (day in self.days or (self.last and day == length)
                or (self.last_weekday and day == _weekday_before(year, month, length))
                or any(day == _nearest_weekday(year, month, n, length) for n in self.nearest_weekday))


@dataclass(frozen=True)
class DayOfWeek:
    """The day-of-week field (1 is Sunday): listed days, ``nL`` (the month's last such day), ``n#k``."""

    days: frozenset[int] = frozenset()
    last_of_month: frozenset[int] = frozenset()
    nth: frozenset[tuple[int, int]] = frozenset()

    def matches(self, year: int, month: int, day: int) -> bool:
        weekday = datetime(year, month, day).isoweekday() % 7 + 1  # Sunday 1 ... Saturday 7
        length = calendar.monthrange(year, month)[1]
        return (weekday in self.days or (weekday in self.last_of_month and day + 7 > length)
                or (weekday, (day - 1) // 7 + 1) in self.nth)


def parse(expression: str) -> Rate | Cron:
    """A ``rate(...)`` or ``cron(...)`` expression, checked as EventBridge checks it."""
    text = expression.strip()
    match = re.fullmatch(r"(rate|cron)\((.*)\)", text, re.DOTALL)
    if not match:
        raise ExpressionError(f"schedule expression {expression!r} is neither rate(...) nor cron(...): {EXAMPLES}")
    return _rate(text, match.group(2)) if match.group(1) == "rate" else _cron(text, match.group(2))


def _rate(text: str, body: str) -> Rate:
    match = re.fullmatch(r"\s*(\d+)\s+([a-z]+?)(s?)\s*", body)
    if not match or match.group(2) not in RATE_UNITS:
        raise ExpressionError(f"{text}: write rate(VALUE UNIT) with a whole number and minute(s), hour(s) or day(s)")
    value, unit, plural = int(match.group(1)), match.group(2), match.group(3)
    if value < 1:
        raise ExpressionError(f"{text}: the value must be a whole number of 1 or more")
    if (value == 1) == bool(plural):
        wanted = f"{value} {unit}" + ("s" if value != 1 else "")
        raise ExpressionError(f"{text}: EventBridge wants the unit singular for 1 and plural otherwise: rate({wanted})")
    return Rate(text, value * RATE_UNITS[unit])


def _cron(text: str, body: str) -> Cron:
    fields = body.split()
    if len(fields) != 6:
        raise ExpressionError(f"{text}: a cron expression has 6 fields (minutes hours day-of-month month "
                              f"day-of-week year), not {len(fields)}; for example cron(0 2 * * ? *)")
    minutes, hours, day_of_month, month, day_of_week, year = fields
    if (day_of_month == "?") == (day_of_week == "?"):
        raise ExpressionError(f"{text}: exactly one of day-of-month and day-of-week must be '?' (EventBridge cannot "
                              "use both): cron(0 2 * * ? *) every day, cron(0 2 ? * MON-FRI *) on weekdays")
    days = (_day_of_week(text, day_of_week) if day_of_month == "?" else _day_of_month(text, day_of_month))
    return Cron(
        expression=text,
        minutes=_numbers(text, "minutes", minutes, 0, 59),
        hours=_numbers(text, "hours", hours, 0, 23),
        months=_numbers(text, "month", month, 1, 12, MONTH_NAMES),
        years=_numbers(text, "year", year, MIN_YEAR, MAX_YEAR),
        days=days,
    )


def _numbers(text: str, field: str, value: str, low: int, high: int, names: dict[str, int] | None = None) -> frozenset[int]:
    """A field of ``*``, numbers, ranges, lists and steps, as the set of values it allows."""
    found: set[int] = set()
    for term in value.split(","):
        found |= _term(text, field, term, low, high, names)
    return frozenset(found)


def _term(text: str, field: str, term: str, low: int, high: int, names: dict[str, int] | None) -> set[int]:
    allowed = f"{low}-{high}" + (f" or {next(iter(names))}-{list(names)[-1]}" if names else "")

    def bad(why: str) -> ExpressionError:
        return ExpressionError(f"{text}: the {field} field allows {allowed} with * , - /; {why}")

    def number(part: str) -> int:
        upper = part.upper()
        if names and upper in names:
            return names[upper]
        if not part.isdigit():
            raise bad(f"{part!r} is not a value")
        if not low <= int(part) <= high:
            raise bad(f"{part} is out of range")
        return int(part)

    span, slash, step_text = term.partition("/")
    if slash and not (step_text.isdigit() and int(step_text) >= 1):
        raise bad(f"the step in {term!r} must be a whole number of 1 or more")
    step = int(step_text) if slash else 1
    if span == "*":
        start, end = low, high
    elif "-" in span:
        first, _, last = span.partition("-")
        start, end = number(first), number(last)
        if start > end:
            raise bad(f"the range {span!r} runs backwards")
    elif span:
        start = number(span)
        end = high if slash else start  # "5/15": from 5 to the end, every 15
    else:
        raise bad(f"{term!r} is empty")
    return set(range(start, end + 1, step))


def _day_of_month(text: str, value: str) -> DayOfMonth:
    days: set[int] = set()
    last = last_weekday = False
    nearest: set[int] = set()
    for term in value.split(","):
        upper = term.upper()
        if upper == "L":
            last = True
        elif upper == "LW":
            last_weekday = True
        elif upper.endswith("W"):
            nearest |= _term(text, "day-of-month", upper[:-1], 1, 31, None)
        else:
            days |= _term(text, "day-of-month", term, 1, 31, None)
    return DayOfMonth(frozenset(days), last, last_weekday, frozenset(nearest))


def _day_of_week(text: str, value: str) -> DayOfWeek:
    days: set[int] = set()
    last: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for term in value.split(","):
        upper = term.upper()
        if upper == "L":
            days.add(7)  # alone, L is the week's last day: Saturday
        elif upper.endswith("L"):
            last |= _term(text, "day-of-week", upper[:-1], 1, 7, DAY_NAMES)
        elif "#" in upper:
            day, _, which = upper.partition("#")
            if not (which.isdigit() and 1 <= int(which) <= 5):
                raise ExpressionError(f"{text}: in day-of-week, {term!r} needs DAY#N with N from 1 to 5 "
                                      "(3#2: the month's second Tuesday)")
            nth |= {(weekday, int(which)) for weekday in _term(text, "day-of-week", day, 1, 7, DAY_NAMES)}
        else:
            days |= _term(text, "day-of-week", term, 1, 7, DAY_NAMES)
    return DayOfWeek(frozenset(days), frozenset(last), frozenset(nth))


def check_fires(schedule: Rate | Cron, now: datetime) -> None:
    """Refuse an expression that never fires after ``now`` (past years, a day that never comes)."""
    if isinstance(schedule, Cron) and schedule.next_after(now) is None:
        raise ExpressionError(f"{schedule.expression} never fires after {now:%Y-%m-%d %H:%M} UTC: "
                              "check its days, months and years")


def _first_from(values: frozenset[int], start: int) -> int | None:
    later = [value for value in values if value >= start]
    return min(later) if later else None


def _weekday_before(year: int, month: int, day: int) -> int:
    """``day`` if it is Monday to Friday, else the Friday before it."""
    weekday = calendar.weekday(year, month, day)  # Monday 0 ... Sunday 6
    return day - max(0, weekday - 4)


def _nearest_weekday(year: int, month: int, day: int, length: int) -> int:
    """``nW``: the weekday nearest ``day`` without leaving the month (Quartz's rule, as EventBridge's)."""
    day = min(day, length)
    weekday = calendar.weekday(year, month, day)
    if weekday == 5:  # Saturday: the Friday before, unless that is last month
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, unless that is next month
        return day + 1 if day < length else day - 2
    return day


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
