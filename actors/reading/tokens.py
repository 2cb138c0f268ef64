"""Reading rules for tokens the grammars mangle: addresses (emails, URLs, file names, handles), codes and
identifiers (`H100`, `K8s`, `SF1234567890`, `X-7`), units after numbers (`100m` is metres, `5000mAh`), symbols
(`×`, `&`, `#1`, `‰`, `±`) and Roman numerals after titles and names. Each rule writes its reading in words of the
sentence's language, or in a form the grammar then reads right."""

from __future__ import annotations

import re

from .words import Speaker, pattern, roman_value, spell_letters

_SEPARATORS = {
    "en": {".": "dot", "@": "at", "_": "underscore", "-": "dash", "/": "slash", ":": "colon", "+": "plus"},
    "zh": {".": "点", "@": "艾特", "_": "下划线", "-": "杠", "/": "斜杠", ":": "冒号", "+": "加"},
}
_TLD = (
    r"(?:com|org|net|edu|gov|io|ai|cn|uk|de|fr|jp|co|info|dev|app|me|tv|us|ca|au|eu|in|ru|br|nl|hk|tw|sg|ly|gl|to|so|"
    r"fm|gg|xyz|site|online|shop|store|tech|news|blog)"
)
_FILE_EXT = r"(?:pdf|docx?|xlsx?|pptx?|txt|csv|json|xml|zip|rar|png|jpe?g|gif|svg|mp3|mp4|wav|flac|mov|py|exe|html?|ya?ml|md|log|ini|toml|sh|js|ts|css|apk|dmg|iso|tar|gz)"
ADDRESS = pattern(
    rf"(?<![\w.@])(?:"
    rf"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # email
    rf"|(?:https?://)?(?:[A-Za-z0-9-]+\.)+{_TLD}(?:\.[a-z]{{2}})?\b(?:/[A-Za-z0-9._~%/?=&#-]*[A-Za-z0-9/])?"  # URL
    rf"|(?![A-Z][a-z]+\.js\b)[A-Za-z0-9][\w-]*\.{_FILE_EXT}\b"  # file name (not `Node.js`)
    rf"|@[A-Za-z_][A-Za-z0-9_]*"  # handle
    rf")"
)
SCHEME = pattern(r"\bhttps?://")
_ADDRESS_PART = pattern(r"[A-Za-z]+(?![A-Za-z0-9])|\d+(?![A-Za-z0-9])|[A-Za-z0-9]+|[^A-Za-z0-9]")
_LABEL_RUN = pattern(r"[A-Za-z]+|\d+")


def read_address(match: re.Match[str], say: Speaker) -> str:
    """`john.doe@example.com` -> "john dot doe at example dot com"; `www` and vowel-less labels (`jpg`) spelled, a
    label mixing letters and digits spelled one by one (`3xYz9Q`), a year kept a year (`photo_2024`)."""
    text = SCHEME.sub("", match.group())  # narrators skip the scheme; `read` notes it
    words = []
    for part in _ADDRESS_PART.findall(text):
        if part in _SEPARATORS[say.lang]:
            words.append(_SEPARATORS[say.lang][part])
        elif part.isdigit():
            words.append(_digits_in_code(part, say))
        elif part.isalpha():
            words.append(spell_letters(part.upper()) if _spelled_label(part) else part)
        else:
            words.extend(_mixed_label(part, say))
    return say.join(*words) if say.lang == "zh" else " ".join(words)


def _mixed_label(label: str, say: Speaker) -> list[str]:
    """`support24` -> "support twenty four"; `3xYz9Q` -> "three X Y Z nine Q" (a word where it is one)."""
    words = []
    for run in _LABEL_RUN.findall(label):
        if run.isdigit():
            words.append(_digits_in_code(run, say))
        elif len(run) >= 3 and (run.islower() or run.istitle()) and not _spelled_label(run):
            words.append(run)
        else:
            words.append(" ".join(run.upper()))
    return words


def _spelled_label(label: str) -> bool:
    return label.lower() == "www" or (len(label) >= 3 and not re.search(r"[aeiouyAEIOUY]", label))


def _digits_in_code(digits: str, say: Speaker) -> str:
    if say.lang == "en" and re.fullmatch(r"(?:19|20)\d{2}", digits):
        return say.year(digits)
    return say.digits(digits) if len(digits) > 2 else say.number(digits)


# A code: letters and digits in one token, with at least one of each (`H100`, `BA117`, `1Z999AA10123456784`).
CODE = pattern(r"(?<![\w.-])(?=[A-Za-z-]*\d)(?=[\d-]*[A-Za-z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?![\w]|-\w)")
# A name with a hyphen and a number (`X-7`, `F-35`, `COVID-19`, `ABC-19`); a number or letter before the name is
# part of it (`Boeing 737-800` is a range rule's business, not this one's).
HYPHEN_NAME = pattern(r"(?<![\w-])([A-Za-z]{1,10})-(\d{1,6})(?![\d.]*\d)(?![\w-])")
_CODE_PART = pattern(r"[A-Za-z]+|\d+|-")
# A number and lower-case letters that are no unit raytts knows (`5qz`): read as a code, and noted.
_UNKNOWN_UNIT = pattern(r"\d+[a-z]{1,4}")
_NOT_CODES = pattern(r"\d+(?:st|nd|rd|th|s|am|pm|AM|PM|k|K|m|M|bn|x|D)", re.IGNORECASE)


def read_code(match: re.Match[str], say: Speaker) -> str:
    code = match.group()
    if re.fullmatch(r"\d+(?:st|nd|rd|th)-[A-Za-z]+", code):
        return code.replace("-", " ")  # 3rd-year: an ordinal before a word, the grammar's
    if _UNKNOWN_UNIT.fullmatch(code) and not _NOT_CODES.fullmatch(code):
        say.notes.append(f"unknown unit {code!r}: read letter by letter")
    if _NOT_CODES.fullmatch(code):
        return code  # an ordinal, a decade, a time, an amount (`5k`), a dimension: the grammar's or another rule's
    if re.fullmatch(r"[A-Za-z]+\d+s", code) and len(code) <= 5:  # `K8s`: the plural of `K8` -> "K eights"
        return say.join(read_code_parts(code[:-1], say), "s") if say.lang == "zh" else read_code_parts(code, say)
    return read_code_parts(code, say)


def read_code_parts(code: str, say: Speaker) -> str:
    parts = _CODE_PART.findall(code)
    digit_count = sum(len(p) for p in parts if p.isdigit())
    longest = max((len(p) for p in parts if p.isdigit()), default=0)
    runs = len([p for p in parts if p != "-"])
    one_by_one = digit_count >= 5 or longest >= (3 if say.lang == "zh" else 4) or len(code) > 6 or runs >= 4
    words = []
    for index, part in enumerate(parts):
        if part == "-":
            following = parts[index + 1 : index + 3]
            if say.lang == "en" and sum(len(p) for p in following if p != "-") >= 3:
                words.append("dash")  # A12-7788, HF-220B; not H-1B, R2-D2
            continue
        if part.isdigit() and say.lang == "en" and re.fullmatch(r"(?:19|20)\d{2}", part) and digit_count == 4:
            words.append(say.year(part))  # FY2024, SummerSale2025
        elif part.isdigit():
            words.append(say.digits(part) if one_by_one or part.startswith("0") else say.number(part))
        elif part == "s" and index == len(parts) - 1 and say.lang == "en" and words:
            words[-1] = _plural(words[-1])
        else:
            words.append(spell_letters(part))
    return say.join(*words)


def _plural(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("x", "s")) else "s")


def read_hyphen_name(match: re.Match[str], say: Speaker) -> str:
    name, number = match.groups()
    spoken_name = name if len(name) > 3 and not name.isupper() or len(name) >= 4 else spell_letters(name)
    spoken_number = say.digits(number) if len(number) >= 4 or number.startswith("0") else say.number(number)
    return say.join(spoken_name, spoken_number)


# Units after a number: (English singular, English plural, Chinese). Single letters only right after the digits.
UNITS: dict[str, tuple[str, str, str]] = {
    "mm": ("millimeter", "millimeters", "毫米"), "cm": ("centimeter", "centimeters", "厘米"),
    "km": ("kilometer", "kilometers", "公里"), "m": ("meter", "meters", "米"), "nm": ("nanometer", "nanometers", "纳米"),
    "kg": ("kilogram", "kilograms", "公斤"), "mg": ("milligram", "milligrams", "毫克"), "g": ("gram", "grams", "克"),
    "lb": ("pound", "pounds", "磅"), "lbs": ("pound", "pounds", "磅"), "oz": ("ounce", "ounces", "盎司"),
    "ml": ("milliliter", "milliliters", "毫升"), "mL": ("milliliter", "milliliters", "毫升"),
    "L": ("liter", "liters", "升"), "mph": ("mile per hour", "miles per hour", "英里每小时"),
    "km/h": ("kilometer per hour", "kilometers per hour", "公里每小时"),
    "kph": ("kilometer per hour", "kilometers per hour", "公里每小时"),
    "m/s": ("meter per second", "meters per second", "米每秒"),
    "°C": ("degree Celsius", "degrees Celsius", "摄氏度"), "℃": ("degree Celsius", "degrees Celsius", "摄氏度"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit", "华氏度"), "℉": ("degree Fahrenheit", "degrees Fahrenheit", "华氏度"),
    "°": ("degree", "degrees", "度"),
    "W": ("watt", "watts", "瓦"), "kW": ("kilowatt", "kilowatts", "千瓦"),
    "kWh": ("kilowatt hour", "kilowatt hours", "千瓦时"), "mAh": ("milliamp hour", "milliamp hours", "毫安时"),
    "Hz": ("hertz", "hertz", "赫兹"), "kHz": ("kilohertz", "kilohertz", "千赫兹"), "MHz": ("megahertz", "megahertz", "兆赫兹"),
    "GHz": ("gigahertz", "gigahertz", "吉赫兹"), "KB": ("kilobyte", "kilobytes", "KB"), "MB": ("megabyte", "megabytes", "MB"),
    "GB": ("gigabyte", "gigabytes", "GB"), "TB": ("terabyte", "terabytes", "TB"),
    "Mbps": ("megabit per second", "megabits per second", "兆比特每秒"),
    "Gbps": ("gigabit per second", "gigabits per second", "吉比特每秒"),
    "ft": ("foot", "feet", "英尺"), "hp": ("horsepower", "horsepower", "马力"), "psi": ("P S I", "P S I", "磅每平方英寸"),
    "dB": ("decibel", "decibels", "分贝"), "V": ("volt", "volts", "伏"), "mA": ("milliamp", "milliamps", "毫安"),
    "A": ("amp", "amps", "安"), "min": ("minute", "minutes", "分钟"), "ms": ("millisecond", "milliseconds", "毫秒"),
    "h": ("hour", "hours", "小时"), "hrs": ("hour", "hours", "小时"), "sec": ("second", "seconds", "秒"),
    "m²": ("square meter", "square meters", "平方米"), "m2": ("square meter", "square meters", "平方米"),
    "m³": ("cubic meter", "cubic meters", "立方米"), "sq ft": ("square foot", "square feet", "平方英尺"),
    "kcal": ("kilocalorie", "kilocalories", "千卡"), "tbsp": ("tablespoon", "tablespoons", "汤匙"),
    "tsp": ("teaspoon", "teaspoons", "茶匙"), "MP": ("megapixel", "megapixels", "百万像素"),
    "fps": ("F P S", "F P S", "帧每秒"), "rpm": ("R P M", "R P M", "转每分钟"), "mi": ("mile", "miles", "英里"), "cc": ("C C", "C C", "毫升"),
}  # fmt: skip
# Units that may follow the number after a space: all but single letters that are also words or initials.
_SPACED = sorted((u for u in UNITS if len(u) > 1 or u in ("m", "g", "W", "V", "L")), key=len, reverse=True)
_ATTACHED = sorted(UNITS, key=len, reverse=True)
_UNIT_ALT = "|".join(re.escape(u) for u in _ATTACHED)
_SPACED_ALT = "|".join(re.escape(u) for u in _SPACED)
NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"
UNIT = pattern(
    rf"(?<![\w.])(?P<n>{NUMBER})(?:(?P<a>{_UNIT_ALT})|[ \u00a0](?P<s>{_SPACED_ALT}))(?![A-Za-z0-9²³])(?!\.\w)"
)


def read_unit(match: re.Match[str], say: Speaker) -> str:
    number, unit = match.group("n"), match.group("a") or match.group("s")
    singular, plural, chinese = UNITS[unit]
    if say.lang == "zh":  # digits and the unit's word: the grammar reads them together (两公斤, not 二公斤)
        return f"{say.number(number)}{chinese}" if chinese.isascii() else f"{number.replace(',', '')}{chinese}"
    before, after = match.string[max(0, match.start() - 6) : match.start()], match.string[match.end() :]
    # A measure between a determiner and a noun is singular: a 2 TB drive, each 5 ml spoonful, the 16 GB model
    # (not: 250 mg of paracetamol, 30 mph near the school)
    attributive = re.search(r"\b(?:a|an|each|every|the|this|that|one)\s$", before, flags=re.I) and (
        _NOUN_AFTER.match(after) or re.match(r" [A-Z]{2,}\b", after)
    )
    return f"{say.number(number)} {singular if number == '1' or attributive else plural}"


_NOUN_AFTER = pattern(
    r" (?!(?:of|per|in|and|or|to|a|an|the|for|at|on|each|every|from|with|by|than|is|are|was|were|into|over|under|"
    r"away|long|wide|high|tall|deep|thick|ago|later|more|less|left|behind|before|after|apart|total|daily|a day|max|"
    r"min|or so|plus|off|up|down|out|per|s|it|this|that|which|you|we|they|he|she|i)\b)[a-z]{3,}\b"
)


# Inches only where `in` cannot be the word: 5 ft 6 in, a 27 in monitor, 12" (the ASCII double quote after a number
# is inches when a noun or `tall`/`wide` follows).
INCHES = pattern(
    r"(?<![\w.])(?P<n>\d+(?:\.\d+)?)(?: ?in\b|\")(?= (?:tall|wide|long|deep|high|thick|monitor|screen|display|"
    r"TV|laptop|tablet|phone|pan|wheels?|rims?|pizza)\b|\.?$|[,.;])"
)


def read_inches(text: str, say: Speaker) -> str:
    if say.lang == "zh":
        return INCHES.sub(lambda m: f"{say.number(m.group('n'))}英寸", text)

    def inches(match: re.Match[str]) -> str:
        number = match.group("n")
        tall = re.match(r" (?:tall|wide|long|deep|high|thick)\b", match.string[match.end() :])
        single = number == "1" or not (tall or match.string[match.end() :].strip(" .,;") == "")
        return f"{say.number(number)} {'inch' if single else 'inches'}"

    return INCHES.sub(inches, text)


def read_times_signs(text: str, say: Speaker) -> str:
    """Before the code rule takes `1920x1080` or `A12-7788` for a code: `×` and `x` between numbers, a `#` before a
    number or code (`#1`, `#A12-7788`: "number"), a hashtag (`#SummerSale`: "hashtag")."""
    zh = say.lang == "zh"
    per_mille = (lambda m: f"千分之{m[1]}") if zh else (lambda m: f"{m[1]} per mille")
    text = re.sub(r"(\d+(?:\.\d+)?)\s*‰", per_mille, text, flags=re.A)
    text = DIMENSION_CHAIN.sub(lambda m: m.group().replace("×", "乘" if zh else " by "), text)
    text = DIMENSION.sub(lambda m: m.group(1) + ("乘" if zh else " by "), text)
    text = re.sub(r"\s*×\s*(?=[\d(])", "乘" if zh else " times ", text, flags=re.A)
    text = re.sub(
        r"(?<![A-Za-z\d])(\d+)\s*[xX]\s*(?=\d+(?![A-Za-z\d]))", r"\1乘" if zh else r"\1 by ", text, flags=re.A
    )
    if zh:
        return text
    text = re.sub(r"(?:#|№|\bNo\.\s?)(?=\d)|#(?=[A-Z]{1,3}\d)", "number ", text, flags=re.A)
    return re.sub(r"(?<![\w&])#(?=[A-Za-z])", "hashtag ", text, flags=re.A)


# `×` between measures, or between whole numbers before a noun, is "by" (2 m × 3 m, a 2×4 stud).
DIMENSION = pattern(r"(\d\s?(?:[a-zA-Z]{1,2}|cm|mm|ft)?\s?)×(?=\s?\d+(?:\s?(?:[a-zA-Z]{1,2}\b)|\s[a-z]{3,}))")
# A chain of measures ending in a unit (40 × 30 × 15 cm): every `×` in it is "by".
DIMENSION_CHAIN = pattern(r"\d+(?:\.\d+)?(?:\s?×\s?\d+(?:\.\d+)?)+\s?(?:cm|mm|m|in|ft|km|inches|feet)\b")


def read_symbols(text: str, say: Speaker) -> str:
    zh = say.lang == "zh"
    text = _zh_symbols(text) if zh else _english_symbols(text)
    text = re.sub(r"±\s*", "正负" if zh else "plus or minus ", text, flags=re.A)
    text = re.sub(r"≈\s*", "约等于" if zh else "approximately ", text, flags=re.A)
    text = re.sub(r"(?<![\w~～])[~～](?=\d)", "约" if zh else "about ", text, flags=re.A)
    text = re.sub(r"(?<=[A-Za-z])\s*&\s*(?=[A-Za-z])", " and ", text, flags=re.A)
    text = re.sub(r"\s+&\s+", "和" if zh else " and ", text, flags=re.A)
    text = re.sub(r"(?<=[A-Za-z])\+\+", " plus plus" if not zh else "加加", text, flags=re.A)
    return re.sub(r"(?<=[A-Za-z])\s*\+\s*(?=[A-Za-z])", "加" if zh else " plus ", text, flags=re.A)


_ABBREVIATED = {"Art": "Article", "Sec": "Section", "Ch": "Chapter", "Vol": "Volume", "Fig": "Figure", "p": "page",
                "pp": "pages", "Ave": "Avenue", "approx": "approximately"}  # fmt: skip
_ABBREVIATION = pattern(r"\b(Art|Sec|Ch|Vol|Fig|pp|p)\.\s?(?=\d)|\b(approx)\.")


def _english_symbols(text: str) -> str:
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATED[m[1] or m[2]] + (" " if m[1] else ""), text)
    text = re.sub(r"\b24/7\b", "twenty four seven", text)
    text = re.sub(r"§§\s*", "sections ", text)
    text = re.sub(r"§\s*", "section ", text)
    text = re.sub(r"(?<=[A-Za-z])\s?[–—]\s?(?=[A-Za-z])", " to " if _DAYS.search(text) else ", ", text)
    text = re.sub(r"(?:#|№|\b[Nn]o\.\s?)(?=\d)|#(?=[A-Z]\w*\d)|\b[Nn]o\.\s?(?=[A-Z]{1,3}-?\d)", "number ", text)
    text = re.sub(r"\s*=\s*", " equals ", text).replace("π", "pi")
    text = re.sub(r"(?<=\w)/(?=(?:month|year|hour|day|week|night|person|mo|yr|hr|kg|lb|unit)\b)", " a ", text)
    text = re.sub(r"(?<![/\w])([A-Za-z]+)/([A-Za-z]+)(?![/\w])", r"\1 \2", text, flags=re.A)  # and/or, not paths
    return re.sub(r"(?<![\w@])@(?=\s)", "at", text, flags=re.A)


_DAYS = pattern(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\s?[–—]\s?(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)")


def _zh_symbols(text: str) -> str:
    """`#3` / `№3` in Chinese -> "3号"; a `#` or `*` key -> 井号 / 星号; `=` -> 等于; `π` -> 派; `/月` -> 每月;
    `&` between Chinese words -> 和; a handle's `@` -> 艾特."""
    text = re.sub(r"(?:#|№)(\d+)", r"\1号", text, flags=re.A)
    text = re.sub(r"/(?=[月年天日人次晚周克斤件个瓶盒位间]|公斤|千克|平米|平方米|小时|分钟|公里)", "每", text)
    text = re.sub(r"§\s*", "第", text)
    text = re.sub(r"(?<=[^\d\s])\s*\+\s*(?=[^\d\s])", "加", text)
    text = text.replace("#", "井号").replace("*", "星号").replace("=", "等于").replace("π", "派")
    return re.sub(r"(?<=[\u4e00-\u9fff])\s*&\s*(?=[\u4e00-\u9fff])", "和", text).replace("@", "艾特")


_TITLES = (
    "Chapter|Part|Volume|Vol\\.|Book|Act|Scene|Phase|Section|Article|Title|Appendix|Episode|Season|Round|Level|Stage|"
    "Grade|Class|Type|Category|War|Bowl|Rocky|Saturn|Apollo|Gemini|Mark|Mk|Saw|Toy Story|Fantasy|Fighter|Wars|Edition|Series"
)
ROMAN_AFTER_TITLE = pattern(rf"\b(?P<t>{_TITLES}) (?P<r>[IVXLCDM]+)\b")
ROMAN_AFTER_NAME = pattern(r"\b(?P<t>[A-Z][a-z]+) (?P<r>[IVX]{2,5}|V)\b(?!-|['’](?!s\b))")
ROMAN_AFTER_DI = pattern(r"第(?P<r>[IVXLC]+)(?=[\u4e00-\u9fff])")
# A numeral between Chinese characters (路易XIV被, 超级碗LVIII在); `XL` is a size, not forty.
ROMAN_IN_CHINESE = pattern(
    r"(?<=[\u4e00-\u9fff])(?P<r>(?!XL\b)[IVXL]{2,8})(?=[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]|$)"
)


def read_roman(text: str, say: Speaker) -> str:
    """`Chapter IV` -> "Chapter four", `World War II` -> "World War two", `Henry VIII` -> "Henry the eighth",
    `第IV章` -> "第四章". Letters that are not a well-formed numeral stay letters (`Windows XP`)."""
    if say.lang == "zh":
        text = ROMAN_AFTER_DI.sub(lambda m: _roman_or(m, lambda v: "第" + say.number(str(v))), text)
        return ROMAN_IN_CHINESE.sub(lambda m: _roman_or(m, lambda v: say.number(str(v))), text)
    text = ROMAN_AFTER_TITLE.sub(lambda m: _roman_or(m, lambda v: f"{m.group('t')} {say.number(str(v))}"), text)
    return ROMAN_AFTER_NAME.sub(lambda m: _roman_or(m, lambda v: f"{m.group('t')} the {say.ordinal(v)}"), text)


def _roman_or(match: re.Match[str], reading) -> str:
    value = roman_value(match.group("r"))
    return match.group() if value is None else reading(value)


# Aircraft models: a Boeing 737-800 is "seven thirty seven eight hundred", an A380 "A three eighty".
AIRCRAFT = pattern(r"(?P<maker>Boeing |波音|Airbus |空客|(?<![\w-])A(?=3\d\d\b))(?P<m>[37]\d\d)(?:-(?P<v>\d{3}))?\b")


def read_aircraft(text: str, say: Speaker) -> str:
    def aircraft(match: re.Match[str]) -> str:
        maker = match.group("maker")
        words = [say.model(match.group("m"))] + ([say.model(match.group("v"))] if match.group("v") else [])
        return say.join(maker.strip(), *words) if say.lang == "en" else maker + "".join(words)

    return AIRCRAFT.sub(aircraft, text)
