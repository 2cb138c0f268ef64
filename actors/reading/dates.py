"""Reading rules for dates and times: numeric dates by locale (`12/06/2026` by the `date_order` setting, recorded
when ambiguous; `25/11/2026` and `7.12.2026` day first; `2026-12-07`), dates with no year in date context
(`on 11/25`), English dates with a month's name, day ranges (`14–16 August`), scores (`4.5/5`: "out of"), clock
times the grammars misread (`10:00:15`, `0:40`, a race's `2:58:30`, `until 11.30`)."""

from __future__ import annotations

import re
from collections.abc import Callable

from .words import Speaker, pattern

EN_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip
DATE_ORDERS = ("mdy", "dmy")
DEFAULT_DATE_ORDER = "mdy"

Note = Callable[[str], None]

# 12/06/2026, 25-11-2026, 7.12.2026 (day first in dotted form, as in Europe).
SLASH_DATE = pattern(r"(?<![\d/.-])(\d{1,2})([/.-])(\d{1,2})\2((?:19|20)\d{2})(?![\d/-]|\.\d)")
ISO_DATE = pattern(r"(?<![\d/.-])((?:19|20)\d{2})([/.-])(\d{1,2})\2(\d{1,2})(?![\d/-]|\.\d)")
# 11/25 with no year: a date in date context, else a fraction (the grammar's reading).
SHORT_DATE = pattern(r"(?<![\d/.])(?P<a>\d{1,2})/(?P<b>\d{1,2})(?![\d/])")
_DATE_CONTEXT_EN = pattern(r"\b(?:on|by|until|till|from|through|due|dated|before|after|since|starting|ending)\s+$")
_DATE_CONTEXT_ZH = pattern(r"(?:于|在|截至|截止|到|从|自|至)\s*$")


# A score or rating: `4.5/5`, `score was 11/25` -> "4.5 out of 5"; a fraction before a hyphen (`1/4-inch`).
_OUT_OF = pattern(r"(?<![\d/.])(?P<a>\d+\.\d+|\d+)/(?P<b>\d+)(?![\d/])")
_SCORE_BEFORE = pattern(r"\b(?:rated|rating|score|scored|scores|marks|grade|got|scoring)\b[^.]{0,12}$", re.I)


_ZH_FRACTION = pattern(r"(?<![\d/.])(?P<a>\d+)/(?P<b>\d+)(?![\d/])(?![月日号])(?<![年月]\d/\d)")


def read_scores(text: str, say: Speaker) -> str:
    def score(match: re.Match[str]) -> str:
        if say.lang == "zh" or not ("." in match.group("a") or _SCORE_BEFORE.search(text[: match.start()])):
            return match.group()  # a fraction (or a date): the grammar's or the date rule's
        return f"{match.group('a')} out of {match.group('b')}"

    text = re.sub(r"(\d+/\d+)-(?=[A-Za-z])", r"\1 ", text, flags=re.A)
    text = _OUT_OF.sub(score, text)
    if say.lang == "zh":  # 约3/4: the grammar moves 约 inside the fraction; a plain fraction is read here
        text = _ZH_FRACTION.sub(lambda m: f"{say.number(m['b'])}分之{say.number(m['a'])}", text)
    return text


def read_dates(text: str, say: Speaker, note: Note, order: str) -> str:
    def numeric(match: re.Match[str]) -> str:
        a, sep, b, year = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
        month, day = _month_day(a, b, "dmy" if sep == "." else order, match.group(), note)
        day_first = month == b and day == a and a != b  # read day first: said the British way
        return match.group() if month is None else _date(say, int(year), month, day, british=day_first)

    def iso(match: re.Match[str]) -> str:
        year, month, day = int(match.group(1)), int(match.group(3)), int(match.group(4))
        return _date(say, year, month, day) if 1 <= month <= 12 and 1 <= day <= 31 else match.group()

    seen: list[str] = []  # the order a date in this sentence showed (24/12: day first), for the next ones

    def short(match: re.Match[str]) -> str:
        context = _DATE_CONTEXT_ZH if say.lang == "zh" else _DATE_CONTEXT_EN
        before = text[max(0, match.start() - 12) : match.start()]
        if not (context.search(before) or (seen and re.search(r"(?:to|and|until|-|–)\s*$", before))):
            return match.group()  # a fraction: the grammar reads it
        a, b = int(match.group("a")), int(match.group("b"))
        shown = "dmy" if a > 12 else "mdy" if b > 12 else ""
        month, day = _month_day(
            a, b, shown or (seen[0] if seen else order), match.group(), note if not seen else _quiet
        )
        if month is None:
            return match.group()
        seen.append(shown or (seen[0] if seen else order))
        return _date(say, None, month, day, british=seen[-1] == "dmy")

    text = SLASH_DATE.sub(numeric, text)
    text = ISO_DATE.sub(iso, text)
    return SHORT_DATE.sub(short, text)


def _month_day(a: int, b: int, order: str, written: str, note: Note) -> tuple[int | None, int]:
    if not (1 <= a <= 31 and 1 <= b <= 31) or (a > 12 and b > 12):
        return None, 0
    if a > 12:
        return b, a
    if b > 12:
        return a, b
    if a != b:
        note(f"ambiguous date {written!r} read {order} (set date_order to change)")
    return (a, b) if order == "mdy" else (b, a)


def _quiet(_: str) -> None:
    """A note not taken: the sentence's first date already showed its order."""


def _date(say: Speaker, year: int | None, month: int, day: int, british: bool = False) -> str:
    if say.lang == "zh":
        head = f"{say.year(str(year))}年" if year is not None else ""
        return f"{head}{say.number(str(month))}月{say.number(str(day))}日"
    words = (
        f"the {say.ordinal(day)} of {EN_MONTHS[month - 1]}" if british else f"{EN_MONTHS[month - 1]} {say.ordinal(day)}"
    )
    return f"{words}, {say.year(str(year))}" if year is not None else words


# Chinese clock times the grammar misreads: with seconds (10:00:15), past midnight (0:40), durations (2:58:30).
_ZH_CLOCK = pattern(r"(?<![\d:])(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?(?![\d:])")
_ZH_DURATION_BEFORE = pattern(r"(?:成绩|用时|耗时|时长|历时|时间为|跑了|用了)[是为:：\s]*$")


_DOTTED_TIME = pattern(
    r"\b(at|until|till|by|from|before|after|around) ([1-9]|1\d|2[0-4])\.([0-5]\d)"
    r"(?=\s?(?:am|pm|a\.m\.|p\.m\.|tonight|today|tomorrow|sharp|on|and|or|to|until)\b|[,;]|\.?$)"
)


def read_chinese_times(text: str, say: Speaker) -> str:
    if say.lang != "zh":
        return _DOTTED_TIME.sub(lambda m: f"{m[1]} {m[2]}:{m[3]}", text)

    def clock(match: re.Match[str]) -> str:
        hours, minutes, seconds = match.group("h"), match.group("m"), match.group("s")
        if seconds is None and int(hours) != 0:
            return match.group()  # the grammar reads 14:45 and 9:00 right
        duration = _ZH_DURATION_BEFORE.search(text[: match.start()])
        out = say.number(str(int(hours))) + ("小时" if duration else "点")
        out += "零分" if int(minutes) == 0 and seconds else say.number(str(int(minutes))) + "分"
        return out + (say.number(str(int(seconds))) + "秒" if seconds else "")

    return _ZH_CLOCK.sub(clock, text)


# English dates with a month's name: `March 15, 2026`, `Dec 7, 2026`, `June 21st` -> "March fifteenth, ...".
_MONTH_DATE = pattern(
    r"\b(?P<m>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)(?P<rest>[a-z]*)\.? (?P<d>\d{1,2})"
    r"(?:st|nd|rd|th)?\b(?:,? (?P<y>(?:1[5-9]|20)\d{2})\b)?(?![,.]?\d)"
)


_DAY_RANGE = pattern(
    r"(?<![\d.])(?P<a>\d{1,2})(?:st|nd|rd|th)?\s?[-–]\s?(?P<b>\d{1,2})(?:st|nd|rd|th)? (?P<m>"
    + "|".join(EN_MONTHS)
    + r")\b"
)


def read_month_dates(text: str, say: Speaker) -> str:
    if say.lang == "en":
        text = _DAY_RANGE.sub(
            lambda m: f"the {say.ordinal(int(m['a']))} to the {say.ordinal(int(m['b']))} of {m['m']}", text
        )

    def month_date(match: re.Match[str]) -> str:
        index = next(i for i, name in enumerate(EN_MONTHS) if name.startswith(match.group("m")))
        if match.group("rest") and not EN_MONTHS[index].lower().startswith(
            (match.group("m") + match.group("rest")).lower()
        ):
            return match.group()  # `Marathon 5`: not a month
        day = int(match.group("d"))
        if not 1 <= day <= 31:
            return match.group()
        year = match.group("y")
        return _date(say, int(year) if year else None, index + 1, day)

    return text if say.lang == "zh" else _MONTH_DATE.sub(month_date, text)
