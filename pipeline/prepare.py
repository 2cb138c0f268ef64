"""CPU stage before the GPU stage: normalise, split and tokenise each row's text, so the engine actors spend their
CPU time on the model only. Torch-free: it runs in plain Ray Data tasks.

Each row gets `segment_ids` (token ids of every segment's decorated prompt, exactly what the engine would compute
from the text: `actors.text.text_front_end`), `segment_texts` (each segment's text: the refine-text stage's input,
refined and tokenised in the engine actor), `spoken_text`, `dropped_chars` and `reading_notes` (what the model is
asked to say, the characters deleted because it cannot say them, what the reading replaced or guessed), or, for text that cannot be synthesised, an `error`. Rows whose
other fields are malformed keep null ids and reach the TTS stage, which reports the field's problem.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from actors.text import DEFAULT_PROMPT, Reading, text_front_end
from actors.tokenizer import TextTokenizer
from actors.validation import RequestError
from actors.voices import row_voice

SEGMENT_IDS = pa.list_(pa.list_(pa.int32()))

_TOKENIZERS: dict[str, TextTokenizer] = {}  # per worker process, by the tokenizer file's digest (or its object)


def _tokenizer(spec: Any) -> TextTokenizer:
    """The tokenizer of `spec`: {"json", "num_text_tokens"}, or a Ray object reference to it (what the job passes:
    the 0.5 MB file travels once through the object store, not inside every operator's constructor arguments)."""
    import ray

    key = spec.hex() if isinstance(spec, ray.ObjectRef) else hashlib.sha256(spec["json"].encode()).hexdigest()
    if key not in _TOKENIZERS:
        found = ray.get(spec) if isinstance(spec, ray.ObjectRef) else spec
        _TOKENIZERS[key] = TextTokenizer(None, found["num_text_tokens"], json_text=found["json"])
    return _TOKENIZERS[key]


def prepare_rows(block: pa.Table, tokenizer: Any, settings: dict[str, Any]) -> pa.Table:
    """`block` with `segment_ids`, `segment_texts`, `spoken_text` and `dropped_chars` columns added and text errors filled in.

    tokenizer: {"json": tokenizer.json text, "num_text_tokens": int} or a Ray object reference to it; settings: {"speaker", "normalize", "strict_text",
    "max_segment_tokens", "max_chars", "references": {reference speaker name: {"text": transcript}}}.
    """
    tok = _tokenizer(tokenizer)
    texts = block.column("text").to_pylist()
    fields_json = block.column("fields").to_pylist()
    sources = block.column("source").to_pylist()
    errors = block.column("error").to_pylist()
    ids: list[list[list[int]] | None] = [None] * block.num_rows
    spoken: list[str | None] = [None] * block.num_rows
    dropped: list[str | None] = [None] * block.num_rows
    notes: list[str | None] = [None] * block.num_rows
    segments: list[list[str] | None] = [None] * block.num_rows
    for i, (text, raw, source) in enumerate(zip(texts, fields_json, sources, strict=True)):
        if errors[i] is not None:
            continue
        fields = json.loads(raw) if raw else {}
        speaker, transcript = row_voice(fields, settings["speaker"], settings["references"])
        prompt = fields.get("prompt", DEFAULT_PROMPT)
        if not isinstance(prompt, str) or not isinstance(transcript, str) or not isinstance(speaker, str | None):
            continue  # a malformed field: the TTS stage's validation names it
        try:
            front_end = text_front_end(
                text,
                tok,
                prompt=prompt,
                has_speaker=speaker is not None and bool(speaker.strip()),
                reference_text=transcript,
                normalize=settings["normalize"],
                max_segment_tokens=settings["max_segment_tokens"],
                max_chars=settings["max_chars"],
                strict=settings.get("strict_text", False),
                reading=settings.get("reading") or Reading(),
            )
        except RequestError as err:
            errors[i] = f"{source}: {err}"
            continue
        ids[i], spoken[i], dropped[i] = front_end.segment_ids, front_end.spoken_text, front_end.dropped
        notes[i] = front_end.notes
        segments[i] = front_end.segments
    block = block.set_column(block.schema.get_field_index("error"), "error", pa.array(errors, type=pa.string()))
    block = block.append_column("segment_ids", pa.array(ids, type=SEGMENT_IDS))
    block = block.append_column("segment_texts", pa.array(segments, type=pa.list_(pa.string())))
    block = block.append_column("spoken_text", pa.array(spoken, type=pa.string()))
    block = block.append_column("dropped_chars", pa.array(dropped, type=pa.string()))
    return block.append_column("reading_notes", pa.array(notes, type=pa.string()))
