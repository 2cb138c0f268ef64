"""Reading rules for numbers whose meaning depends on their context: numeric dates (by locale, with a setting for
the ambiguous ones), phone numbers, signs against ranges against hyphenated names, thousands separators by script,
decades, four-digit counts against years, and section / version numbers. Each rule writes its reading in words, or
rewrites the number into a form the grammar then reads right; what it had to guess it records as a note."""

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


def read_scores(text: str, say: Speaker) -> str:
    def score(match: re.Match[str]) -> str:
        if say.lang == "zh" or not ("." in match.group("a") or _SCORE_BEFORE.search(text[: match.start()])):
            return match.group()  # a fraction (or a date): the grammar's or the date rule's
        return f"{match.group('a')} out of {match.group('b')}"

    text = re.sub(r"(\d+/\d+)-(?=[A-Za-z])", r"\1 ", text, flags=re.A)
    return _OUT_OF.sub(score, text)


def read_dates(text: str, say: Speaker, note: Note, order: str) -> str:
    def numeric(match: re.Match[str]) -> str:
        a, sep, b, year = int(match.group(1)), match.group(2), int(match.group(3)), match.group(4)
        month, day = _month_day(a, b, "dmy" if sep == "." else order, match.group(), note)
        return match.group() if month is None else _date(say, int(year), month, day)

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


# Phone numbers: `+1 800 555 0199`, `(555) 123-4567`, `555-123-4567`, `400-800-1234`, `010-12345678`,
# `138 0013 8000`, `0800 123 456`; read digit by digit, group by group.
PHONE = pattern(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ -]?\(?\d{1,4}\)?){2,5}"
    r"|\(\d{2,4}\)\s?\d{3,4}[ -]?\d{3,4}"
    r"|\d{3}-\d{3,4}-\d{4}"
    r"|0\d{2,3}-\d{7,8}"
    r"|1\d{2} \d{4} \d{4}"
    r"|0\d{3} \d{3} \d{3,4}"
    r"|0\d{2,4} \d{3,4} \d{3,4}"
    r"|[2-9]\d{2}-\d{4}(?! ?%|[A-Za-z]| (?:km|m|kg|mi|miles|feet|ft|people|units|rows)\b)"  # 555-1234, not a range
    r")(?![\w-])"
)
# A short number after dial / call / text ... to: 911, 999, an SMS short code.
_SHORT_NUMBER = pattern(
    r"\b(?P<ctx>(?:dial|call|text)\b(?: [A-Z]+ to)?|\bto) (?P<n>911|999|112|000|\d{5,6})\b(?! ?%)", re.I
)
_EXTENSION = pattern(r"\bext\.?\s*(\d{1,5})\b", re.IGNORECASE)


# Numbers that are strings of digits by what names them: codes, PINs, card, order and room numbers.
_DIGITS_AFTER_EN = pattern(
    r"(?P<ctx>\b(?:code|PIN|passcode|password|account|card|order|reference|confirmation|tracking|serial|room|suite|"
    r"extension|flight|gate|zip|postcode|ID|ref|ticket|invoice|policy|customer|member)\b(?: (?:is|was|number|no\.?|"
    r"code|#))*[:\s#]*)(?P<n>\d{3,})(?![\d.,:]\d|\d)"
)
_DIGITS_AFTER_ZH = pattern(
    r"(?P<ctx>(?:验证码|密码|卡号|单号|编号|号码|账号|分机号?|工号|学号|邮编|尾号|后四位|房间号?|取件码|会员号|订单号)"
    r"[是为:：\s]*)(?P<n>\d{3,}(?: \d{3,})*)(?![\d.]\d|\d)"
)
_ROOM_ZH = pattern(r"(?<![\d.])(?P<n>\d{3,4})(?=房间|室|号房)")
_CARD_GROUPS = pattern(r"(?<![\d\w+-])\d{4}(?: \d{4}){2,4}(?![\d\w])")


def read_digit_strings(text: str, say: Speaker) -> str:
    def spell(match: re.Match[str]) -> str:
        context = match.groupdict().get("ctx") or ""
        return context + say.digits(match.group("n"))

    text = _CARD_GROUPS.sub(lambda m: say.digits(m.group()), text)
    if say.lang == "zh":
        text = _DIGITS_AFTER_ZH.sub(spell, text)
        return _ROOM_ZH.sub(spell, text)
    return _DIGITS_AFTER_EN.sub(spell, text)


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
    r"(?<![\d.])(?P<a>\d{1,2})(?:st|nd|rd|th)?\s?[-–]\s?(?P<b>\d{1,2})(?:st|nd|rd|th)? (?P<m>(?:January|February|March|"
    r"April|May|June|July|August|September|October|November|December))\b"
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


def _texting(text: str) -> bool:
    return bool(re.search(r"\b(?:text|sms|reply)\b", text, flags=re.I))


def read_phones(text: str, say: Speaker) -> str:
    def phone(match: re.Match[str]) -> str:
        groups = re.findall(r"\d+", match.group(), flags=re.A)
        plus = ("加" if say.lang == "zh" else "plus") if match.group().startswith("+") else ""
        separator = " " if say.lang == "zh" else ", "
        return say.join(plus, separator.join(say.digits(g) for g in groups))

    text = PHONE.sub(phone, text)
    text = _SHORT_NUMBER.sub(
        lambda m: (
            f"{m['ctx']} {say.digits(m['n'])}"
            if m["ctx"].lower() != "to" or len(m["n"]) == 3 or _texting(text)
            else m.group()
        ),
        text,
    )
    extension = "分机" if say.lang == "zh" else "extension"
    return _EXTENSION.sub(lambda m: say.join(extension, say.digits(m.group(1))), text)


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


def read_sections(text: str, say: Speaker) -> str:
    point = "点" if say.lang == "zh" else "point"

    def dotted(match: re.Match[str]) -> str:
        prefix = "v " if match.group().lower().startswith("v") else ""
        return prefix + _dotted(match.group(1), say, point)

    text = SECTION.sub(dotted, text)
    return VERSION.sub(lambda m: say.join(m.group("name").strip(), _dotted(m.group("n"), say, point)), text)


def _dotted(number: str, say: Speaker, point: str) -> str:
    words = [say.digits(g) if g.startswith("0") and len(g) > 1 else say.number(g) for g in number.split(".")]
    return say.join(words[0], *(say.join(point, w) for w in words[1:]))


# Money: a currency sign or code before an amount; cents spoken as cents; `k`/`m`/`bn` and scale words after it.
_CURRENCY = {  # sign or code -> (English singular, plural, minor unit singular, plural, Chinese)
    "$": ("dollar", "dollars", "cent", "cents", "美元"), "USD": ("US dollar", "US dollars", "cent", "cents", "美元"),
    "€": ("euro", "euros", "cent", "cents", "欧元"), "EUR": ("euro", "euros", "cent", "cents", "欧元"),
    "£": ("pound", "pounds", "penny", "pence", "英镑"), "GBP": ("pound", "pounds", "penny", "pence", "英镑"),
    "¥": ("yen", "yen", "", "", "元"), "￥": ("yuan", "yuan", "", "", "元"), "RMB": ("yuan", "yuan", "", "", "元"),
    "CNY": ("yuan", "yuan", "", "", "元"), "JPY": ("yen", "yen", "", "", "日元"),
    "CHF": ("Swiss franc", "Swiss francs", "centime", "centimes", "瑞士法郎"),
    "CAD": ("Canadian dollar", "Canadian dollars", "cent", "cents", "加元"),
    "AUD": ("Australian dollar", "Australian dollars", "cent", "cents", "澳元"),
    "HKD": ("Hong Kong dollar", "Hong Kong dollars", "cent", "cents", "港元"),
    "INR": ("rupee", "rupees", "paisa", "paise", "卢比"),
}  # fmt: skip
_SCALES = {"k": "thousand", "K": "thousand", "m": "million", "M": "million", "mn": "million", "bn": "billion",
           "thousand": "thousand", "million": "million", "billion": "billion", "trillion": "trillion"}  # fmt: skip
MONEY = pattern(
    r"(?:(?<![\w)\]])(?P<sign>[-−]))?(?P<cur>[$€£¥￥]|\b(?:USD|EUR|GBP|RMB|CNY|JPY|CHF|CAD|AUD|HKD|INR) ?)(?P<n>\d+(?:,\d{3})*(?:\.\d+)?)"
    r"(?:(?P<scale>k|K|m|M|mn|bn)\b| (?P<word>thousand|million|billion|trillion)\b|(?P<zh>[万亿千]+))?"
    r"(?P<yuan>元)?"
)
CENTS = pattern(r"(?<![\w.])(\d+)\s?¢")


# A range of amounts: `$2–3 billion` -> `2 to $3 billion`, `€5–€9` -> `€5 to €9` (then read as amounts).
MONEY_RANGE = pattern(
    r"(?P<cur>[$€£¥￥])(?P<a>\d+(?:,\d{3})*(?:\.\d+)?(?:k|K|m|M|bn)?)\s?[-–—]\s?(?P<again>[$€£¥￥])?"
    r"(?P<b>\d+(?:,\d{3})*(?:\.\d+)?)"
)


def read_money(text: str, say: Speaker) -> str:
    to = "到" if say.lang == "zh" else " to "
    text = MONEY_RANGE.sub(
        lambda m: (
            (f"{m['cur']}{m['a']}" if m["again"] or not m["a"][-1].isdigit() else m["a"]) + f"{to}{m['cur']}{m['b']}"
        ),
        text,
    )
    text = CENTS.sub(lambda m: say.join(say.number(m.group(1)), "美分" if say.lang == "zh" else "cents"), text)
    return MONEY.sub(lambda m: _money(m, say), text)


def _money(match: re.Match[str], say: Speaker) -> str:
    if match.group("sign"):
        minus = "负" if say.lang == "zh" else "minus"
        return say.join(minus, _money_amount(match, say))
    return _money_amount(match, say)


def _money_amount(match: re.Match[str], say: Speaker) -> str:
    one, many, minor_one, minor_many, chinese = _CURRENCY[match.group("cur").strip()]
    number = match.group("n").replace(",", "")
    if say.lang == "zh":  # digits, scale and currency: the grammar reads them together
        return f"{number}{match.group('zh') or ''}{chinese if not match.group('yuan') else '元'}"
    scale = _SCALES.get(match.group("scale") or match.group("word") or "", "")
    if match.group("zh"):
        return match.group()  # a Chinese scale after an English text's amount: leave it whole
    whole, _, cents = number.partition(".")
    if scale or not cents or len(cents) != 2 or not minor_one:
        amount = say.number(number)
        unit = one if number == "1" and not scale else many
        return f"{amount} {scale + ' ' if scale else ''}{unit}"
    if whole == "0" and int(cents):
        return f"{say.number(str(int(cents)))} {minor_one if cents == '01' else minor_many}"
    words = f"{say.number(whole)} {one if whole == '1' else many}"
    if int(cents):
        words += f" and {say.number(str(int(cents)))} {minor_one if cents == '01' else minor_many}"
    return words
