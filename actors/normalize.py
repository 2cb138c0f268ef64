"""Spoken-form normalisation: numbers, dates, times, money, percentages, phone numbers, units and symbols written out
as words, in English and Chinese, by the WeTextProcessing grammars (`wetext`: compiled FSTs run by kaldifst, no
network, Apache-2.0). Owns the choice of grammar per sentence and the fallback when a grammar finds no path; the
rest of the front end (upstream's punctuation mapping and invalid-character deletion, splitting, tokenising) is
`actors.text`'s.

What it does to a text:
- control tags (`[uv_break]`, `[speed_5]`, ...) are never touched: only the text between them is normalised (a
  grammar would read `[speed_5]` as "speed five");
- the text is cut into sentences (the grammars are superlinear in the input's length) and each sentence goes to
  the Chinese grammar when it has a CJK character, else to the English one; in a Chinese sentence an English
  stretch with numbers (two or more English words and a digit) is read by the English grammar first
  (`他说 I have 3 cats 然后走了` -> `... I have three cats ...`, not `三 cats`);
- where the English grammar finds no path through a sentence (it has none for `#1` or `+5`), the sentence is
  normalised token by token and a failing token is retried with its symbols and digits apart (`#1` -> `# 1` ->
  "number one"); a token that still fails is kept as written, and the cleaning after it deletes and records what
  the model cannot say.

The grammar files load once per process (`import wetext`, ~0.3 s, ~45 MiB), on first use; kaldifst holds the GIL,
so scale the offline job's prepare stage with processes, not threads.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

from .reading import DATE_ORDERS, DEFAULT_DATE_ORDER, chinese_hyphens, read
from .reading.tokens import ADDRESS

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_DIGIT = re.compile(r"[0-9０-９]")
# Sentence ends: CJK and ASCII terminators, newlines, and `.` followed by white space (an abbreviation such as `Dr.`
# ending a piece is read alone, and the English grammar reads it as the word: "doctor").
_ABBREVIATIONS = ("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec", "No", "no",
                  "ext", "Ext", "Mr", "Mrs", "Ms", "Dr", "St", "vs", "approx", "Vol", "Fig", "p", "pp", "a.m", "p.m", "Art",
                  "Ave", "Sec", "Ch", "Inc", "Ltd", "Co", "Jr", "Sr", "Prof", "Gen", "Rd", "Mt", "Nos")  # fmt: skip
_SENTENCE = re.compile(
    r"(?<=[。！？；!?;…\n])|(?<=\.)" + "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVIATIONS) + r"(?=\s)"
)
# A stretch of a Chinese sentence without CJK characters or full-width punctuation.
_NON_CJK_RUN = re.compile(r"[^\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]+")
_SURROGATE = re.compile(r"([\ud800-\udfff]+)")
_ENGLISH_WORD = re.compile(r"(?<![\w.@_/-])[A-Za-z]{2,}(?![\w@_/-]|\.\w)", re.ASCII)  # a word, not part of an address
# Characters that read as their plain forms: no-break and thin spaces, non-breaking and other hyphens, full-width
# symbols (the Chinese cleaning maps them back to full width where upstream does).
_CANONICAL = str.maketrans({
    "\u00a0": " ", "\u202f": " ", "\u2009": " ", "\u2007": " ", "\u2002": " ", "\u2003": " ",
    "\u2010": "-", "\u2011": "-", "％": "%", "＋": "+", "／": "/", "＃": "#", "＠": "@", "＆": "&", "＄": "$",
    "～": "~", "＝": "=", "＊": "*", "＜": "<", "＞": ">",
})  # fmt: skip
_LEADING_NUMBER = re.compile(r"\s*\d+(?:[.,]\d+)*(?:\s?[-–~]\s?\d+(?:[.,]\d+)*)?\s*")
_ACCENTED = re.compile(r"[À-ÖØ-öø-ÿĀ-ž]")
_CLOCK_O = re.compile(r"\bo (?=(?:one|two|three|four|five|six|seven|eight|nine)\b)")
_ESCAPED = re.compile(r'\\(["\\])')
# What the reading rules act on: a digit, a symbol they read, a Roman numeral, a Latin letter with a dot (addresses).
_RULE_TRIGGER = re.compile(
    r"[0-9０-９@#%&×‰±≈~～$€£¥￥=π*]|\b[IVXL]{2,}\b|[A-Za-z]\.[A-Za-z]|(?<=[^\x00-\x7f])[IVXL]{2,}"
)
_MONTH = re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d", re.ASCII)
_SYMBOL_DIGIT_EDGE = re.compile(r"(?<=[^\w\s])(?=\d)|(?<=\d)(?=[^\w\s.,:/])")


@functools.cache
def _normalizers() -> dict[str, Any]:
    """The English and Chinese text-normalisation grammars, loaded once per process."""
    try:
        from wetext import Normalizer
    except ImportError as err:  # a dependency of raytts: only a broken install gets here
        raise RuntimeError(
            f"text normalisation needs the `wetext` package ({err}); reinstall raytts (`pip install raytts`) or set "
            f"normalize to 'upstream' (digits are then deleted, as upstream ChatTTS does without a normaliser)"
        ) from err
    return {"en": Normalizer(lang="en", operator="tn"), "zh": Normalizer(lang="zh", operator="tn")}


def grammar_version() -> str:
    """The installed grammars' version (the `wetext` package's): part of what a job's books call the front end."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wetext")
    except PackageNotFoundError:
        return "missing"


def load() -> None:
    """Load the grammars now (a worker's start-up), not on its first row."""
    _normalizers()


def spoken_form(text: str, date_order: str = DEFAULT_DATE_ORDER) -> str:
    """`text` with numbers, dates, money, units and symbols written as words; control tags untouched."""
    return spoken_form_noted(text, date_order)[0]


def spoken_form_noted(text: str, date_order: str = DEFAULT_DATE_ORDER) -> tuple[str, list[str]]:
    """(`spoken_form`, what the reading had to guess: "ambiguous date '12/06/2026' read mdy ...", in order)."""
    if date_order not in DATE_ORDERS:
        raise ValueError(f"date_order must be one of {', '.join(DATE_ORDERS)}, got {date_order!r:.40}")
    notes: list[str] = []
    if not text:
        return text, notes
    out: list[str] = []
    for piece, is_tag in _tags_and_text(text):
        out.append(piece if is_tag else _normalize_piece(piece, notes, date_order))
    return "".join(out), notes


def _tags_and_text(text: str) -> list[tuple[str, bool]]:
    """(piece, untouched) in order, as upstream's bracket scanner (`actors.text`) sees the text: from a `[` up to the
    next `]` is a tag; an unfinished one (another `[` first, or the text ends) is swallowed by the cleaning after
    this, so it is left as written too (its characters are then recorded as dropped as the input had them)."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in re.finditer(r"\[[^\[\]]*(?:\]|(?=\[)|$)", text):
        if match.start() > position:
            pieces.append((text[position : match.start()], False))
        pieces.append((match.group(), True))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def _normalize_piece(piece: str, notes: list[str], date_order: str) -> str:
    out = []
    for sentence in _SENTENCE.split(piece):
        # An unpaired surrogate (`"\ud800"` in JSON) is no text a grammar can take: it stays, and the cleaning after
        # this deletes and records it.
        for part in _SURROGATE.split(sentence):
            if part and not _SURROGATE.fullmatch(part):
                part = _keep_edges(part, lambda s: _normalize_sentence(s, notes, date_order))
            out.append(part)
    return "".join(out)


def _keep_edges(text: str, fn: Any) -> str:
    """fn(text) with text's leading and trailing white space kept (the grammars strip both)."""
    stripped = text.strip()
    if not stripped:
        return text
    start = text.index(stripped[0])
    return text[:start] + fn(stripped) + text[start + len(stripped) :]


def _normalize_sentence(sentence: str, notes: list[str], date_order: str) -> str:
    sentence = sentence.translate(_CANONICAL)
    if _CJK.search(sentence):
        if not _RULE_TRIGGER.search(sentence):
            return sentence  # Chinese words and punctuation only: nothing to read
        sentence = chinese_hyphens(sentence)
        sentence = _NON_CJK_RUN.sub(lambda m: _english_run(m, notes, date_order), sentence)
        sentence = read(sentence, "zh", _chinese_grammar, notes, date_order)
        return _grammar_output(sentence, _chinese_grammar(sentence) if _DIGIT.search(sentence) else sentence)
    return _english(read(_plain_latin(sentence), "en", _english_grammar, notes, date_order), sentence)


def _plain_latin(text: str) -> str:
    """Latin letters with accents as the model's tokenizer has them (`café` -> `cafe`): said alike, not deleted."""
    if text.isascii():
        return text
    return _ACCENTED.sub(lambda m: unicodedata.normalize("NFKD", m.group())[0], text)


def _english_run(match: re.Match[str], notes: list[str], date_order: str) -> str:
    return _english_stretch(match.group(), match.start() > 0, notes, date_order)


def _english_stretch(run: str, after_chinese: bool, notes: list[str], date_order: str) -> str:
    """An English stretch of a Chinese sentence is read in English when it has two or more English words and
    something to read (`I have 3 cats`, `Email me at a@b.com`, `World War II`), or a date (`Dec 7, 2026`). A number
    that follows a Chinese word and is not followed by an English one stays Chinese (`满 300 减 50 & free shipping`)."""
    lead = _LEADING_NUMBER.match(run)
    if lead and after_chinese and not _ENGLISH_WORD.match(run, lead.end()):
        return run[: lead.end()] + _english_stretch(run[lead.end() :], False, notes, date_order)
    words = len(_ENGLISH_WORD.findall(ADDRESS.sub(" ", run)))
    if (words >= 2 and _RULE_TRIGGER.search(run)) or _MONTH.search(run) or (words and ADDRESS.search(run)):
        return _keep_edges(run, lambda s: _english(read(s, "en", _english_grammar, notes, date_order), s))
    return run


def _chinese_grammar(text: str) -> str:
    return _normalizers()["zh"].normalize(text)


def _english_grammar(text: str) -> str:
    """The English grammar on a short piece; where it finds no path, the piece token by token (see `_english`)."""
    return _english(text, text)


def _grammar_output(written: str, output: str) -> str:
    """The grammars serialise their output with `"` and `\\` escaped, and the English one writes `GPUs` as
    `GPU's`: undo what the input did not have, so that nothing reaches the cleaning (and `dropped_chars`) that was
    never in the text."""
    output = _ESCAPED.sub(r"\1", output)
    output = _CLOCK_O.sub("oh ", output)  # 8:05 -> "eight o five": the grammar's "o" is the letter, said "oh"
    return output if "'" in written or "’" in written else output.replace("'", "")


def _english(text: str, written: str) -> str:
    grammar = _normalizers()["en"]
    try:
        return _grammar_output(written, grammar.normalize(text))
    except AssertionError:  # wetext's tagger found no path through the text (its only failure mode)
        pass
    out = []
    for token in re.split(r"(\s+)", text):
        if not token or token.isspace():
            out.append(token)
            continue
        out.append(_grammar_output(written, _english_token(grammar, token)))
    return "".join(out)


def _english_token(grammar: Any, token: str) -> str:
    for candidate in (token, _SYMBOL_DIGIT_EDGE.sub(" ", token)):
        try:
            return grammar.normalize(candidate)
        except AssertionError:
            continue
    return token
