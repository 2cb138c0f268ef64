"""What makes a row's audio, as digests: the job's books compare them across runs (`pipeline.books`).

- A row's **key** is its id: the id it carries, or, for a row without one, an id derived from its content
  (`derived_id`: its text and speaking fields, never its file or line), so a renamed or moved shard, or a line
  inserted above it, does not change it. Identical rows without ids are told apart by their order (`-2`, `-3`, ...).
  A row that repeats an earlier row's id, or has no usable id at all, is keyed by its source line (`@file:line`).
- A row's **input digest** covers what the row itself says about its audio: text, speaker, seed, prompt, sampling
  and refine overrides, reference codes and the reference speaker it names (that speaker's encoded prompt).
- The **job digest** covers what the job adds: the model's content digest, the text front end's version, the default
  speaker, sampling, refine and text settings, the engine settings that change numbers (dtype, decoder, backend, ...)
  and the output's audio encoding. A row is finished when both digests match the current inputs; otherwise a re-run
  redoes it.

Torch-free: the parse tasks and the driver import this.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from actors.requests import KNOWN_FIELDS

# Bumped whenever raytts changes what a row's audio or output row is made of for the same inputs and settings
# (text front end rules, engine numerics, output columns): every row written before is then redone once.
SYNTHESIS_VERSION = "2026.12-1"

DIGEST_CHARS = 32  # 128 bits of sha256, hex
_SLUG = re.compile(r"[a-z0-9]+")


# One encoder for every row (json.dumps with options builds a new one per call: most of a row's digest time).
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def speaking_fields(text: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """The part of a row that decides its audio: text and the known fields other than id (user columns such as
    `chapter` are carried along but change nothing)."""
    spoken = {k: v for k, v in fields.items() if k in KNOWN_FIELDS and k not in ("id", "text") and v is not None}
    spoken["text"] = text
    return spoken


def derived_id(text: Any, fields: dict[str, Any]) -> str:
    """The id of a row that has none: a readable slug of its text and a digest of what it says, e.g.
    `hello-world-3fa9c2b1d7e4` (`u-...` when the text has no ASCII letters or digits)."""
    words = _SLUG.findall(str(text or "").lower())
    slug = "-".join(words)[:32].strip("-") or "u"
    return f"{slug}-{_sha(_canonical(speaking_fields(text, fields)))[:12]}"


def repeat_id(first: str, occurrence: int) -> str:
    """The id of the `occurrence`-th (2, 3, ...) row with the same derived id, in the order of their sources."""
    return f"{first}-{occurrence}"


def input_digest(
    text: Any, fields: dict[str, Any], speaker_digests: dict[str, str], default_speaker: str | None
) -> str:
    """The digest of what a row itself says about its audio (see the module docstring)."""
    spoken = speaking_fields(text, fields)
    name = fields.get("speaker") if fields.get("speaker") not in (None, "") else default_speaker
    if isinstance(name, str) and name in speaker_digests and not fields.get("reference_codes"):
        spoken["@reference"] = speaker_digests[name]
    return _sha(_canonical(spoken))[:DIGEST_CHARS]


def duplicate_id_error(source: str, row_id: str, first_id: str, first_source: str) -> str:
    """The error of a row whose id repeats an earlier row's id, or differs from it only in case (the audio files
    `A.flac` and `a.flac` are one file on case-insensitive stores: macOS and Windows file systems, SMB mounts)."""
    if first_id == row_id:
        return f"{source}: duplicate id {row_id!r} (first seen at {first_source}); ids must be unique"
    return (
        f"{source}: duplicate id {row_id!r}: it differs from id {first_id!r} (first seen at {first_source}) only in "
        f"case, and both would be one audio file on a case-insensitive store; ids must be unique ignoring case"
    )


def error_digest(error: str) -> str:
    """The digest of a row that is an error before synthesis (unreadable line, duplicate id): its message, which
    names its source, so a row whose error would read differently today is redone."""
    return _sha("error\n" + error)[:DIGEST_CHARS]


def speaker_digests(speakers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """name -> digest of the job's reference speakers as encoded (prompt codes and transcript, or the error)."""
    return {name: _sha(_canonical(entry))[:DIGEST_CHARS] for name, entry in speakers.items()}


def job_settings(config: Any, model_sha256: str, front_end_version: str) -> dict[str, Any]:
    """Everything of a job config (`pipeline.config.JobConfig`) that changes its rows' audio or columns, plus the
    model's content digest and the front end's version: the job digest's input, also written to the output so a
    re-run can say which setting changed."""
    engine = config.engine
    device = effective_device(engine.device, config.actors.num_gpus)
    return {
        "raytts": SYNTHESIS_VERSION,
        "front_end": front_end_version,
        "model_sha256": model_sha256,
        "speaker": config.speaker,
        "normalize": config.normalize,
        "strict_text": config.strict_text,
        "date_order": config.date_order,
        "replacements": dict(sorted(config.replacements.items())),
        "max_chars": config.max_chars,
        "sampling": config.sampling.model_dump(),
        "refine": config.refine.model_dump(),
        "engine": {
            "device": device,  # what the engines run on, so `dtype: float32` said or left default is one digest
            "dtype": engine.dtype or {"cuda": "float16", "cpu": "float32"}.get(device),
            "decoder": engine.decoder,
            "fsq": engine.fsq,
            "backend": engine.backend,
            "onnx_quantize": engine.onnx.quantize if engine.backend == "onnx" else None,
            "max_segment_tokens": engine.max_segment_tokens,
            "quality": engine.quality.model_dump(),  # a row's qc_flags (and, under on_fail: error, its error)
        },
        "output": {
            "audio_format": config.output.audio_format,
            "audio_files": config.output.audio_files,
            "save_codes": config.output.save_codes,
        },
        # the ASR round trip's transcripts, rates and flags; absent while it is off (every earlier digest holds)
        **({"asr": config.asr.model_dump(exclude={"actors", "num_cpus"})} if config.asr.enabled else {}),
    }


def effective_device(device: str, num_gpus: Any) -> str:
    """The device kind the job's engines run on: cpu or cuda (auto resolved by the actors' GPUs), or auto where the
    GPUs are not known yet."""
    if device != "auto":
        return "cuda" if device.startswith("cuda") else device
    if isinstance(num_gpus, int | float):
        return "cuda" if num_gpus > 0 else "cpu"
    return "auto"


def job_digest(settings: dict[str, Any], default_speaker_digest: str | None) -> str:
    return _sha(_canonical({**settings, "@default_reference": default_speaker_digest}))[:DIGEST_CHARS]


def changed_settings(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ between two `job_settings` (for the report)."""
    changed = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(changed_settings(old, new, f"{prefix}{key}."))
        elif old != new:
            changed.append(f"{prefix}{key}")
    return changed
