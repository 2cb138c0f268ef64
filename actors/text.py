"""Text front end: normalisation, upstream-compatible cleaning, prompt decoration, and splitting long text into
segments.

Three normalisation modes (`normalize`; `NORMALIZE_MODES`):
- `full` (the default): numbers, dates, times, money, percentages, phone numbers, units and symbols are written out
  as words by the WeTextProcessing grammars (`actors.normalize`: English or Chinese per sentence, control tags
  untouched), then the `upstream` cleaning below runs on the result. This is upstream ChatTTS with its documented
  normalisers registered.
- `upstream`: exactly upstream ChatTTS 0.2.5 with no normaliser registered (`do_text_normalization=True`, homophone
  replacement off): text detected as Chinese (more CJK characters than English words) has half-width punctuation
  mapped to full width; if any character outside letters, CJK, `，。、,.` and space is present (ignoring `[tags]`),
  a fixed map simplifies punctuation (`：`->`，`, `!`->`.`, ...) and every remaining such character outside tags is
  deleted, digits included. The parity goldens run in this mode.
- `off`: upstream's `do_text_normalization=False`: no number reading, no punctuation mapping; the invalid-character
  deletion still runs (the model has no tokens for those characters).
What the front end changed is never silent: every output row records the text the model was asked to say
(`spoken_text`) and the characters deleted because they cannot be spoken (`dropped_chars`; `FrontEnd.dropped`), and
with `strict` a row that lost characters is an error row. Lower-casing happens in the tokenizer (BERT normaliser).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import normalize as spoken
from .reading import DATE_ORDERS, DEFAULT_DATE_ORDER
from .validation import RequestError

# How the front end normalises text (module docstring): the default first.
NORMALIZE_MODES = ("full", "upstream", "off")
DEFAULT_NORMALIZE = "full"

# Control tags placed before a row's text when the row gives none (upstream's default: normal speed).
DEFAULT_PROMPT = "[speed_5]"

_REJECT = re.compile(r"[^\u4e00-\u9fffA-Za-z，。、,\. ]")
# The one control-tag grammar: a tag such as [uv_break], [speed_5] or [Sbreak]; a prompt is a run of tags.
CONTROL_TAG = re.compile(r"\[\w+\]")
CONTROL_TAGS = re.compile(r"(?:\[\w+\])*")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_ENGLISH_WORD = re.compile(r"\b[A-Za-z]+\b")

_SIMPLIFY = str.maketrans(
    {
        "：": "，", "；": "，", "！": "。", "（": "，", "）": "，", "【": "，", "】": "，", "『": "，", "』": "，",
        "「": "，", "」": "，", "《": "，", "》": "，", "－": "，", ":": ",", ";": ",", "!": ".", "(": ",", ")": ",",
        ">": ",", "<": ",", "-": ",",
    }
)  # fmt: skip
_HALF_TO_FULL = str.maketrans(
    {
        "!": "！", '"': "“", "'": "‘", "#": "＃", "$": "＄", "%": "％", "&": "＆", "(": "（", ")": "）", ",": "，",
        "-": "－", "*": "＊", "+": "＋", ".": "。", "/": "／", ":": "：", ";": "；", "<": "＜", "=": "＝", ">": "＞",
        "?": "？", "@": "＠", "\\": "＼", "^": "＾", "`": "｀", "{": "｛", "|": "｜", "}": "｝", "~": "～",
    }
)  # fmt: skip


def detect_language(text: str) -> str:
    return "zh" if len(_CJK.findall(text)) > len(_ENGLISH_WORD.findall(text)) else "en"


def _split_tags(text: str) -> tuple[list[str], list[str]]:
    """Upstream's bracket scanner: text outside `[...]` and the bracketed tags, in order.

    An unclosed `[` swallows the rest of the text, as upstream does.
    """
    texts: list[str] = []
    tags: list[str] = []
    current_text, current_tag = "", ""
    for ch in text:
        if ch == "[":
            texts.append(current_text)
            current_text, current_tag = "", ch
        elif current_tag:
            current_tag += ch
        else:
            current_text += ch
        if ch == "]":
            tags.append(current_tag)
            current_tag = ""
    if current_text:
        texts.append(current_text)
    return texts, tags


def _outside_tags(text: str, fn: Callable[[str], str]) -> str:
    texts, tags = _split_tags(text)
    texts = [fn(t) for t in texts]
    if not tags:
        return texts[0] if texts else ""
    out = []
    for piece in texts:
        out.append(piece + (tags.pop(0) if tags else ""))
    return "".join(out)


def normalize_mode(value: Any) -> str:
    """A normalisation setting -> one of NORMALIZE_MODES; booleans from older configs: true = full, false = off."""
    if value is True:
        return "full"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in NORMALIZE_MODES:
        return value.strip().lower()
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)} (or true/false), got {value!r:.40}")


# Bumped whenever the front end's own rules change what a text is spoken as: the offline job's books then redo the
# rows made before (`pipeline.identity`). 2: the reading rules before the grammars (`actors.reading`).
FRONT_END_RULES = 2


@dataclass(frozen=True)
class Reading:
    """A job's or request's choices in how text is read: the order of an ambiguous numeric date (`12/06/2026`:
    `mdy` December 6, `dmy` 12 June) and the user's own replacements, applied before anything else, longest first,
    whole words where a key starts or ends with a letter or digit (`{"K8s": "Kubernetes", "Dr.": "Doctor"}`)."""

    date_order: str = DEFAULT_DATE_ORDER
    replacements: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, date_order: str = DEFAULT_DATE_ORDER, replacements: dict[str, str] | None = None) -> Reading:
        if date_order not in DATE_ORDERS:
            raise ValueError(f"date_order must be one of {', '.join(DATE_ORDERS)}, got {date_order!r:.40}")
        pairs = tuple(sorted((replacements or {}).items(), key=lambda kv: (-len(kv[0]), kv[0])))
        for key, value in pairs:
            if not isinstance(key, str) or not key.strip() or not isinstance(value, str):
                raise ValueError(f"replacements map non-empty strings to strings, got {key!r:.40}: {value!r:.40}")
        return cls(date_order, pairs)

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        """One pattern of every key, longest first (compiled once per Reading, not per row)."""
        return re.compile(
            "|".join(
                (r"(?<![A-Za-z0-9])" if k[0].isalnum() else "")
                + re.escape(k)
                + (r"(?![A-Za-z0-9])" if k[-1].isalnum() else "")
                for k, _ in self.replacements
            )
        )

    def replace(self, text: str, notes: list[str]) -> str:
        """`text` with the user's replacements (each recorded in notes), outside control tags."""
        if not self.replacements:
            return text
        table = dict(self.replacements)

        def one(match: re.Match[str]) -> str:
            notes.append(f"replaced {match.group()!r} with {table[match.group()]!r}")
            return table[match.group()]

        return _outside_tags(text, lambda piece: self._pattern.sub(one, piece))


DEFAULT_READING = Reading()


def front_end_version(normalize: Any) -> str:
    """What the front end is, for a job's books: its rules, the mode and, in full mode, the grammars' version."""
    mode = normalize_mode(normalize)
    return f"rules {FRONT_END_RULES}; {mode}; wetext {spoken.grammar_version() if mode == 'full' else '-'}"


def clean_text(text: str, normalize: str = DEFAULT_NORMALIZE) -> str:
    """The text the tokenizer is given in `normalize` mode (see module docstring)."""
    return cleaned_and_dropped(text, normalize)[0]


def cleaned_and_dropped(text: str, normalize: str = DEFAULT_NORMALIZE) -> tuple[str, str]:
    """(`clean_text`, the characters it deleted because the model cannot speak them, in order; "" when none)."""
    cleaned, dropped, _ = read_text(text, normalize)
    return cleaned, dropped


def read_text(
    text: str, normalize: str = DEFAULT_NORMALIZE, reading: Reading = DEFAULT_READING
) -> tuple[str, str, str]:
    """(the cleaned text, the characters deleted because the model cannot speak them, what the reading replaced or
    had to guess, "; "-joined: "" when nothing)."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r:.40}")
    notes: list[str] = []
    text = reading.replace(text, notes)
    if normalize == "full":
        text, guessed = spoken.spoken_form_noted(text, reading.date_order)
        notes.extend(guessed)
    before_maps = text
    if normalize != "off" and detect_language(text) == "zh":
        text = text.translate(_HALF_TO_FULL)
    if not _REJECT.search(CONTROL_TAG.sub("", text)):
        return text, "", "; ".join(notes)
    simplified = text.translate(_SIMPLIFY)
    cleaned = _outside_tags(simplified, lambda piece: _REJECT.sub("", piece))
    # Cleaning only deletes and the maps above are one character to one, so the cleaned text is a subsequence of the
    # simplified one: walking both names every deleted character, also those an unclosed `[` swallowed, and records
    # it as the text had it (`&`, not the full-width `＆` the Chinese mapping made of it).
    dropped, kept = [], 0
    for index, ch in enumerate(simplified):
        if kept < len(cleaned) and cleaned[kept] == ch:
            kept += 1
        else:
            dropped.append(before_maps[index])
    return cleaned, "".join(dropped), "; ".join(notes)


@dataclass(frozen=True)
class FrontEnd:
    """What the text front end made of a row: the segments' token ids, the text the model is asked to say, and
    what it could not say (recorded on the row: nothing is dropped silently)."""

    segment_ids: list[list[int]]  # token ids of each segment's decorated prompt
    spoken_text: str  # the row's text after normalisation and cleaning (control tags included), before splitting
    dropped: str  # characters deleted because they cannot be spoken, in order ("" when none)
    segments: list[str] = field(default_factory=list)  # each segment's text (the refine-text stage's input)
    notes: str = ""  # what the reading replaced (the user's replacements) or had to guess (an ambiguous date)


def refine_prompt(text: str, prompt: str = "") -> str:
    """The refine-text stage's prompt (upstream's `decorate_text_prompts`): `[Sbreak]{text}[Pbreak]{prompt}`."""
    return f"[Sbreak]{text}[Pbreak]{prompt}"


def decorate(text: str, prompt: str = DEFAULT_PROMPT, has_speaker: bool = False, transcript: str = "") -> str:
    """The code-stage prompt: `[Stts][spk_emb|empty_spk]{transcript}{prompt}{text}[Ptts]`."""
    for tag in ("[Stts]", "[spk_emb]", "[empty_spk]"):
        text = text.replace(tag, "")
    speaker_tag = "[spk_emb]" if has_speaker else "[empty_spk]"
    return f"[Stts]{speaker_tag}{transcript}{prompt}{text.strip()}[Ptts]"


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…\n])|(?<=\.)(?=\s)")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])")


def split_segments(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Split `text` into segments of at most `max_tokens` tokens, at sentence ends where possible.

    Sentences are packed greedily; a sentence that alone is too long is cut at clause punctuation, then at spaces,
    then every `max_tokens` characters as a last resort. Text that fits stays one segment, unchanged.
    """
    if count_tokens(text) <= max_tokens:
        return [text]
    pieces: list[str] = []
    for sentence in _split_keep(text, _SENTENCE_END):
        pieces.extend(_fit(sentence, max_tokens, count_tokens))
    segments: list[str] = []
    current = ""
    for piece in pieces:
        candidate = current + piece
        if current and count_tokens(candidate) > max_tokens:
            segments.append(current.strip())
            current = piece
        else:
            current = candidate
    if current.strip():
        segments.append(current.strip())
    return [s for s in segments if s]


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    return [p for p in pattern.split(text) if p]


def _fit(piece: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    if count_tokens(piece) <= max_tokens:
        return [piece]
    for pattern in (_CLAUSE_END, re.compile(r"(?<=\s)")):
        parts = _split_keep(piece, pattern)
        if len(parts) > 1:
            out: list[str] = []
            for part in parts:
                out.extend(_fit(part, max_tokens, count_tokens))
            return out
    return [piece[i : i + max_tokens] for i in range(0, len(piece), max_tokens)]


class _Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def count(self, text: str) -> int: ...


def text_front_end(
    text: Any,
    tokenizer: _Tokenizer,
    *,
    prompt: str,
    has_speaker: bool,
    reference_text: str,
    normalize: str,
    max_segment_tokens: int,
    max_chars: int,
    strict: bool = False,
    reading: Reading = DEFAULT_READING,
) -> FrontEnd:
    """A row's text -> the token ids of each segment's decorated prompt, the spoken text and what was dropped; raises
    RequestError for text that cannot be synthesised. Torch-free: the offline job runs it in a CPU stage, the engine
    for requests that arrive as text."""
    if not isinstance(text, str):
        raise RequestError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RequestError("text is empty")
    if len(text) > max_chars:
        raise RequestError(f"text has {len(text)} characters; the limit is {max_chars}: split it into several rows")
    transcript = clean_text(reference_text, normalize) if reference_text else ""
    cleaned, dropped, notes = read_text(text, normalize, reading)
    if strict and dropped:
        raise RequestError(
            f"text {text[:40]!r} has characters the model cannot say, which the front end would delete: {dropped!r:.60}"
            f" (strict text is on: rewrite them as words, or turn strict off to synthesise without them)"
        )
    if not CONTROL_TAG.sub("", cleaned).strip(" ，。、,."):
        hint = "spell numbers out" if normalize != "full" else "rewrite it in words"
        raise RequestError(
            f"text {text[:40]!r} has nothing speakable after {normalize!r} normalisation and cleaning (it deleted "
            f"{dropped!r:.40}): {hint}"
        )
    pieces = split_segments(cleaned, max_segment_tokens, tokenizer.count)
    ids = [tokenizer.encode(decorate(piece, prompt, has_speaker, transcript)) for piece in pieces]
    return FrontEnd(segment_ids=ids, spoken_text=cleaned.strip(), dropped=dropped, segments=pieces, notes=notes)
