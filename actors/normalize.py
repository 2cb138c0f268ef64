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
from typing import Any

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_DIGIT = re.compile(r"[0-9０-９]")
# Sentence ends: CJK and ASCII terminators, newlines, and `.` followed by white space (an abbreviation such as `Dr.`
# ending a piece is read alone, and the English grammar reads it as the word: "doctor").
_SENTENCE = re.compile(r"(?<=[。！？；!?;…\n])|(?<=\.)(?=\s)")
# A stretch of a Chinese sentence without CJK characters or full-width punctuation.
_NON_CJK_RUN = re.compile(r"[^\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]+")
_SURROGATE = re.compile(r"([\ud800-\udfff]+)")
_ENGLISH_WORD = re.compile(r"[A-Za-z]{2,}")
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


def spoken_form(text: str) -> str:
    """`text` with numbers, dates, money, units and symbols written as words; control tags untouched."""
    if not text:
        return text
    out: list[str] = []
    for piece, is_tag in _tags_and_text(text):
        out.append(piece if is_tag else _normalize_piece(piece))
    return "".join(out)


def _tags_and_text(text: str) -> list[tuple[str, bool]]:
    """(piece, is_tag) in order; a tag is `[` ... `]` with no `[` inside; an unclosed `[` starts ordinary text."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in re.finditer(r"\[[^\[\]]*\]", text):
        if match.start() > position:
            pieces.append((text[position : match.start()], False))
        pieces.append((match.group(), True))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def _normalize_piece(piece: str) -> str:
    out = []
    for sentence in _SENTENCE.split(piece):
        # An unpaired surrogate (`"\ud800"` in JSON) is no text a grammar can take: it stays, and the cleaning after
        # this deletes and records it.
        for part in _SURROGATE.split(sentence):
            if part and not _SURROGATE.fullmatch(part):
                part = _keep_edges(part, _normalize_sentence)
            out.append(part)
    return "".join(out)


def _keep_edges(text: str, fn: Any) -> str:
    """fn(text) with text's leading and trailing white space kept (the grammars strip both)."""
    stripped = text.strip()
    if not stripped:
        return text
    start = text.index(stripped[0])
    return text[:start] + fn(stripped) + text[start + len(stripped) :]


def _normalize_sentence(sentence: str) -> str:
    if _CJK.search(sentence):
        if _DIGIT.search(sentence):
            sentence = _NON_CJK_RUN.sub(_english_run, sentence)
        return _normalizers()["zh"].normalize(sentence) if _DIGIT.search(sentence) else sentence
    return _english(sentence)


def _english_run(match: re.Match[str]) -> str:
    run = match.group()
    if len(_ENGLISH_WORD.findall(run)) >= 2 and _DIGIT.search(run):
        return _keep_edges(run, _english)
    return run


def _english(text: str) -> str:
    grammar = _normalizers()["en"]
    try:
        return grammar.normalize(text)
    except AssertionError:  # wetext's tagger found no path through the text (its only failure mode)
        pass
    out = []
    for token in re.split(r"(\s+)", text):
        if not token or token.isspace():
            out.append(token)
            continue
        out.append(_english_token(grammar, token))
    return "".join(out)


def _english_token(grammar: Any, token: str) -> str:
    for candidate in (token, _SYMBOL_DIGIT_EDGE.sub(" ", token)):
        try:
            return grammar.normalize(candidate)
        except AssertionError:
            continue
    return token
