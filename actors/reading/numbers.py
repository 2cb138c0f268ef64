"""Reading rules for numbers whose meaning depends on their context: signs against ranges against hyphenated names
(`-5`, `10-20%`, `歼-20`), thousands separators by script, decades, four-digit counts against years, section and
version numbers, English decimals. Each rule writes its reading in words, or rewrites the number into a form the
grammar then reads right."""

from __future__ import annotations

import re

from .words import Speaker, pattern

_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_TIME = r"\d{1,2}:\d{2}"
# A range: two numbers (or times) joined by a hyphen, en or em dash, or tilde, with a unit or % on either end.
RANGE = pattern(
    rf"(?<![\w.,:/-])(?P<a>{_TIME}|{_NUM})(?P<ua>%|[A-Za-z°℃]{{1,4}}|年|月|日|点|元|万|亿)?"
    rf"(?: ?[–—~～] ?|-| - )"
    rf"(?P<b>{_TIME}|{_NUM})(?P<ub>%|[A-Za-z°℃]{{1,4}}|[\u4e00-\u9fff])?(?![\d-])"
)
# A sign: a minus (hyphen-minus after a space, bracket or start; the Unicode minus anywhere), a plus, before a number.
MINUS = pattern(r"(?:(?<![\w)\]])-|−|－)(?=[$€£¥￥]?\d)")
PLUS = pattern(r"(?<![\w)\]+])\+(?=\d)")
# In Chinese, a hyphen after a word: a sign after these (温度-5℃, 亏损-250万), else part of a name (歼-20).
_ZH_SIGN_BEFORE = pattern(
    r"(?:温度|气温|低温|高温|零下|为|是|至|到|达|低|降|亏损|亏|跌|减|下降|变化|约|于|在|：|:|（|\()$"
)
_ZH_UNIT_AFTER = pattern(r"(?:\.\d+)?(?:%|℃|°|度|元|万|亿|千|百|米|公里|克|斤|分|秒|小时|天|个|块|层|楼|级)")
_ZH_NAME_HYPHEN = pattern(r"(?<=[\u4e00-\u9fff])-(?=\d)")


def read_signs_and_ranges(text: str, say: Speaker) -> str:
    zh = say.lang == "zh"
    if zh:
        text = chinese_hyphens(text)
    text = RANGE.sub(lambda m: _range(m, say), text)
    text = MINUS.sub("负" if zh else "minus ", text)
    return PLUS.sub("正" if zh else "plus ", text)


def chinese_hyphens(text: str) -> str:
    return _ZH_NAME_HYPHEN.sub(lambda m: _zh_hyphen(text, m), text)


def _zh_hyphen(text: str, match: re.Match[str]) -> str:
    before, after = text[: match.start()], text[match.end() :]
    number_end = re.match(r"\d+", after, flags=re.A)
    following = after[number_end.end() :] if number_end else ""
    if re.search(r"\d[\u4e00-\u9fff]?$", before):
        return "-"  # after a number (3月1日-3月15日): a range, the range rule's
    if _ZH_SIGN_BEFORE.search(before) or _ZH_UNIT_AFTER.match(following):
        return "−"  # a sign: the minus rule reads it
    return ""  # a name: 歼-20 -> 歼20


def _range(match: re.Match[str], say: Speaker) -> str:
    a, ua, b, ub = match.group("a"), match.group("ua") or "", match.group("b"), match.group("ub") or ""
    if say.lang == "zh":
        if not ua and ub in ("%", "年"):
            ua = ub  # 10-20% -> 10%到20%: both ends are percentages
        if ":" in a and ":" in b:
            return f"{a}到{b}{ub}"
        return f"{a}{ua}到{b}{ub}"
    joiner = " to "
    if re.fullmatch(r"(?:19|20)\d{2}", a) and re.fullmatch(r"\d{2}", b):
        b = a[:2] + b  # 2019-21 -> 2019 to 2021
    return f"{a}{ua}{joiner}{b}{ub}"


# Thousands separators: commas (1,250,000) and, outside phone numbers, single spaces between groups of three.
COMMA_GROUPS = pattern(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)")
SPACE_GROUPS = pattern(r"(?<![\w.,+\-])[1-9]\d{0,2}(?:[ \u00a0\u202f]\d{3})+(?![\d]| \d)")
# A full-width comma between numbers separates them (3，5和7): a space keeps the grammar from joining them.
FULL_WIDTH_COMMA = pattern(r"(?<=\d)，(?=\d)")


def read_separators(text: str, say: Speaker) -> str:
    text = FULL_WIDTH_COMMA.sub("， ", text)
    text = COMMA_GROUPS.sub(lambda m: say.number(m.group()), text)
    return SPACE_GROUPS.sub(lambda m: say.number(re.sub(r"\s", "", m.group())), text)


DECADE = pattern(r"(?<![\w'’])(?P<apostrophe>['’])?(?P<n>(?:1\d|20)?\d0)s\b")
_YEAR_BEFORE = pattern(
    r"(?:\b(?:in|since|by|from|until|till|of|year|circa|around|early|late|mid|during|before|after|through|"
    r"between|spring|summer|autumn|fall|winter|January|February|March|April|May|June|July|August|September|"
    r"October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|FY|Q[1-4])\.?,?|[-–])\s*$",
    re.IGNORECASE,
)
FOUR_DIGITS = pattern(r"(?<![\w.,$€£¥:/-])(?P<n>[1-9]\d{3})(?![\w.,:/]\d|\d|%|\w)")
_COUNT_AFTER = pattern(
    r"^\s+(?:[a-z]+\s+)?(?:[a-z]+s\b|people|men|women|children|staff|feet|sheep|fish|deer)(?<!\bwas)(?<!\bis)"
)


def read_years_and_counts(text: str, say: Speaker) -> str:
    """English: `1984 people` -> "one thousand nine hundred eighty four people"; a year keeps the grammar's
    reading (`in 1984`); decades: `1990s` -> "nineteen nineties", `'90s` -> "nineties"."""
    if say.lang == "zh":
        return text
    text = DECADE.sub(lambda m: _decade(m, say), text)

    def four(match: re.Match[str]) -> str:
        before, after = text[: match.start()], text[match.end() :]
        if _YEAR_BEFORE.search(before[-20:]) or not _COUNT_AFTER.match(after):
            return match.group()
        return say.number(match.group("n"))

    return FOUR_DIGITS.sub(four, text)


def _decade(match: re.Match[str], say: Speaker) -> str:
    n = match.group("n")
    if len(n) == 2 or match.group("apostrophe"):
        words = say.number(n[-2:])
    else:
        words = say.year(n)
    last = words.split()[-1]
    plural = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return " ".join([*words.split()[:-1], plural])


# Section and version numbers: three or more dotted groups (4.2.1, 3.10.2); a two-group version after a name
# (Python 3.11, v2.0) reads its groups as numbers ("three point eleven"), not as a decimal ("three point one one").
SECTION = pattern(r"(?<![\w.])[vV]?(\d+(?:\.\d+){2,})(?![\w.]*\d)")
VERSION = pattern(
    r"(?P<name>\b(?:version|Version|Python|Java|Node(?:\.js)?|iOS|Android|macOS|Linux|kernel|release|Release) |\bv|版本 ?)"
    r"(?P<n>\d+\.\d+)(?![\w.]*\d)"
)


DECIMAL = pattern(r"(?<![\w.,])\d+\.\d+(?![\w.]*\d)")


def read_decimals(text: str, say: Speaker) -> str:
    """English decimals with "zero" after the point, as narrators say them (the grammar says "oh")."""
    return text if say.lang == "zh" else DECIMAL.sub(lambda m: say.number(m.group()), text)


# Sub-clauses in brackets after a number: `6(1)(f)` -> "6 1 f", `12(b)` -> "12 b".
_SUBCLAUSE = pattern(r"(?<=\d)((?:\([0-9a-z]{1,4}\))+)")
# A four-digit year before 年 after a space (`2015 年`): the grammar reads it a year only when they touch.
_ZH_YEAR_SPACE = pattern(r"(?<!\d)(\d{4})\s+(?=年)")


def read_sections(text: str, say: Speaker) -> str:
    text = _SUBCLAUSE.sub(lambda m: " " + " ".join(re.findall(r"\(([0-9a-z]+)\)", m.group(1))), text)
    if say.lang == "zh":
        text = _ZH_YEAR_SPACE.sub(r"\1", text)
    point = "点" if say.lang == "zh" else "point"

    def dotted(match: re.Match[str]) -> str:
        prefix = "v " if match.group().lower().startswith("v") else ""
        return prefix + _dotted(match.group(1), say, point)

    text = SECTION.sub(dotted, text)
    return VERSION.sub(lambda m: say.join(m.group("name").strip(), _dotted(m.group("n"), say, point)), text)


def _dotted(number: str, say: Speaker, point: str) -> str:
    words = [say.digits(g) if g.startswith("0") and len(g) > 1 else say.number(g) for g in number.split(".")]
    return say.join(words[0], *(say.join(point, w) for w in words[1:]))
