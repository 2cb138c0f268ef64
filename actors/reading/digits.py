"""Reading rules for numbers that are strings of digits or amounts: phone numbers (group by group), short numbers
after dial / call / text, extensions, codes, PINs, card, order and room numbers (digit by digit), and money (a
currency sign or code before an amount, cents, `k`/`m`/`bn`, ranges of amounts)."""

from __future__ import annotations

import re

from .words import Speaker, pattern

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
_SHORT_NUMBER = pattern(r"\b(?P<ctx>(?:dial|call|text)\b(?: [A-Z]+ to)?|\bto) (?P<n>\d{3}|\d{5,6})\b(?! ?%)", re.I)
_EXTENSION = pattern(r"\bext\.?\s*(\d{1,5})\b", re.IGNORECASE)


# Numbers that are strings of digits by what names them: codes, PINs, card, order and room numbers.
_DIGITS_AFTER_EN = pattern(
    r"(?P<ctx>\b(?:code|PIN|passcode|password|account|card|order|reference|confirmation|tracking|serial|room|suite|"
    r"extension|flight|gate|zip|postcode|ID|ref|ticket|invoice|policy|customer|member)\b(?: (?:is|was|number|no\.?|"
    r"code|#))*[:\s#]*)(?P<letters>[A-Z]{2,3} ?)?(?P<n>\d{3,})(?![\d.,:]\d|\d)"
)
_DIGITS_AFTER_ZH = pattern(
    r"(?P<ctx>(?:验证码|密码|卡号|单号|编号|号码|账号|分机号?|工号|学号|邮编|尾号|后四位|房间号?|取件码|会员号|订单号)"
    r"[是为:：\s]*)(?P<n>\d{3,}(?: \d{3,})*)(?![\d.]\d|\d)"
)
_ROOM_ZH = pattern(r"(?<![\d.])(?P<n>\d{3,4})(?=房间|室|号房)")
_CARD_GROUPS = pattern(r"(?<![\d\w+-])\d{4}(?: \d{4}){2,4}(?![\d\w])")


def read_digit_strings(text: str, say: Speaker) -> str:
    def spell(match: re.Match[str]) -> str:
        context, letters = match.groupdict().get("ctx") or "", match.groupdict().get("letters") or ""
        spelled = " ".join(letters.strip()) + " " if letters else ""
        return context + spelled + say.digits(match.group("n"))

    text = _CARD_GROUPS.sub(lambda m: say.digits(m.group()), text)
    if say.lang == "zh":
        text = _DIGITS_AFTER_ZH.sub(spell, text)
        return _ROOM_ZH.sub(spell, text)
    return _DIGITS_AFTER_EN.sub(spell, text)


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
        lambda m: f"{m['ctx']} {say.digits(m['n'])}" if m["ctx"].lower() != "to" or _texting(text) else m.group(),
        text,
    )
    extension = "分机" if say.lang == "zh" else "extension"
    return _EXTENSION.sub(lambda m: say.join(extension, say.digits(m.group(1))), text)


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
CENTS = pattern(r"(?<![\w.])(\d+)\s?¢|(?<![\w.£$])(\d{1,2})p\b")


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
    text = CENTS.sub(lambda m: _cents(m, say), text)
    return MONEY.sub(lambda m: _money(m, say), text)


def _cents(match: re.Match[str], say: Speaker) -> str:
    if match.group(1):
        return say.join(say.number(match.group(1)), "美分" if say.lang == "zh" else "cents")
    return say.join(say.number(match.group(2)), "便士" if say.lang == "zh" else "pence")  # 50p


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
