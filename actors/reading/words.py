"""Numbers as words, in English and Chinese, for the reading rules: the grammars (`wetext`) say whole numbers and
decimals; this module adds only what they have no entry point for: a number read as a count where the English
grammar would read a year (`1984 people`), digits read one by one (codes, phone numbers), ordinals from integers
and Roman numerals."""

from __future__ import annotations

import re
from collections.abc import Callable

EN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ZH_DIGITS = "零一二三四五六七八九"
ROMAN = re.compile(r"(?=[MDCLXVI])M{0,3}(C[MD]|D?C{0,3})(X[CL]|L?X{0,3})(I[XV]|V?I{0,3})")
_ROMAN_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}


class Speaker:
    """Says numbers in one language: `grammar(text)` is the language's wetext normaliser on a short piece; `notes`
    collects what a rule had to guess (the row's `reading_notes`)."""

    def __init__(self, lang: str, grammar: Callable[[str], str], notes: list[str] | None = None) -> None:
        self.lang = lang
        self._grammar = grammar
        self.notes = notes if notes is not None else []

    def number(self, digits: str) -> str:
        """A whole number or decimal (`"250"`, `"3.2"`, `"1984"`) read as a quantity, never as a year."""
        digits = digits.replace(",", "").replace(" ", "")
        if self.lang == "en" and re.fullmatch(r"[1-9]\d{3}", digits):
            # The English grammar reads every four-digit number as a year; a count is "one thousand ..."
            thousands, rest = divmod(int(digits), 1000)
            head = f"{EN_DIGITS[thousands]} thousand"
            return head if rest == 0 else f"{head} {self._grammar(str(rest))}"
        if self.lang == "en" and re.fullmatch(r"\d+\.\d+", digits):
            whole, fraction = digits.split(".")  # the grammar says "oh" for zeros after the point
            return f"{self.number(whole)} point {self.digits(fraction)}"
        if self.lang == "zh":  # a bare `120` is read as the emergency number, digit by digit: a counter word keeps
            return self._grammar(f"{digits}号")[:-1]  # it a quantity, and `号` keeps 二 (not 两) for 2
        return self._grammar(digits)

    def year(self, digits: str) -> str:
        return self._grammar(f"{digits}年")[:-1] if self.lang == "zh" else self._grammar(digits)

    def model(self, digits: str) -> str:
        """An aircraft's or product's three-digit model: "seven thirty seven", "three eighty", "eight hundred"."""
        if self.lang == "zh":
            return self.digits(digits) if digits[1:] != "00" else self.number(digits)
        if digits[1:] == "00" or digits[1] == "0":
            return self.number(digits)
        return f"{EN_DIGITS[int(digits[0])]} {self.number(digits[1:])}"

    def ordinal(self, value: int) -> str:
        """English "fourteenth"; Chinese "第十四"."""
        if self.lang == "zh":
            return "第" + self._grammar(str(value))
        suffix = "th" if 10 <= value % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")
        return self._grammar(f"{value}{suffix}")

    def digits(self, digits: str) -> str:
        """Digits one by one: `"0199"` -> "zero one nine nine" / "零一九九"."""
        if self.lang == "zh":
            return "".join(ZH_DIGITS[int(d)] for d in digits if d.isdigit())
        return " ".join(EN_DIGITS[int(d)] for d in digits if d.isdigit())

    def join(self, *words: str) -> str:
        """Words of one reading: spaced in English, run together in Chinese (between CJK characters)."""
        if self.lang == "en":
            return " ".join(w for w in words if w)
        out = ""
        for word in words:
            if out and word and (_latin_end(out) and _latin_start(word)):
                out += " "
            out += word
        return out


def _latin_end(text: str) -> bool:
    return text[-1].isascii() and text[-1].isalnum()


def _latin_start(text: str) -> bool:
    return text[0].isascii() and text[0].isalnum()


def roman_value(numeral: str) -> int | None:
    """The value of a well-formed Roman numeral (`XIV` -> 14), else None. Hand-written: the canonical pattern and a
    seven-entry table; a dependency would add nothing."""
    if not numeral or not ROMAN.fullmatch(numeral):
        return None
    total = 0
    for i, ch in enumerate(numeral):
        value = _ROMAN_VALUES[ch]
        following = _ROMAN_VALUES[numeral[i + 1]] if i + 1 < len(numeral) else 0
        total += -value if value < following else value
    return total


def spell_letters(run: str) -> str:
    """Letters of a code, said one by one (`BA` -> "B A"); a lower-case word of three or more letters is kept."""
    if len(run) >= 3 and not run.isupper():
        return run
    return " ".join(run.upper() if run.isupper() else run)


def pattern(regex: str, flags: int = 0) -> re.Pattern[str]:
    """A rule's pattern: `\\w`, `\\d` and `\\b` ASCII-only, so that a code or number right after a Chinese character
    still starts a token (`用H100`: Python counts CJK characters as word characters)."""
    return re.compile(regex, flags | re.ASCII)
