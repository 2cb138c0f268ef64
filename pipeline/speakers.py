"""Reference speakers of a job (`inputs.speakers`): manifests parsed by tasks, each speaker's audio encoded once
(DVAE encoder, in one CPU task) into an upstream prompt string that every engine actor receives. The rules a
reference clip must meet are `actors.voices`'."""

from __future__ import annotations

import logging
from typing import Any

from .config import JobConfig
from .report import JobReport
from .sources import AUDIO_EXTENSIONS, SPEAKER_EXTENSIONS, expand_paths, shard_paths
from .speaker_shards import read_speaker_shard

log = logging.getLogger(__name__)


def job_speakers(config: JobConfig, report: JobReport) -> dict[str, dict[str, Any]]:
    """name -> {"prompt", "text", "frames"} or {"error"} for every speaker the job's manifests define; manifest
    lines that name no speaker, and unusable speakers, are added to the report's problems."""
    import ray

    if not config.inputs.speakers:
        return {}
    files, problems, _ = expand_paths(
        config.inputs.speakers, SPEAKER_EXTENSIONS, AUDIO_EXTENSIONS, exclude=config.output.path.rstrip("/")
    )
    report.problems.extend(problems)
    if not files:
        return {}
    rows = shard_paths(files).flat_map(_parse_speakers).take_all()
    for row in rows:  # a manifest line without a usable name belongs to no speaker: report it here
        if row["error"] and not row["speaker"]:
            log.error("speaker manifest problem: %s", row["error"])
            report.problems.append(row["error"])
    speakers = ray.get(
        ray.remote(num_cpus=1)(encode_speakers).remote(config.model, config.engine.fsq, config.engine.verify, rows)
    )
    for name, entry in speakers.items():
        if "error" in entry:  # rows naming it fail; the report names the cause even if none does
            log.error("speaker %s unusable: %s", name, entry["error"])
            report.problems.append(f"speaker {name!r} unusable: {entry['error']}")
    return speakers


def _parse_speakers(row: dict[str, Any]) -> list[dict[str, Any]]:
    return read_speaker_shard(row["path"])


def encode_speakers(model: str, fsq: str, verify: str, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each reference speaker encoded once into an upstream prompt string (runs as a task: it loads the model)."""
    from actors.speaker import encode_prompt
    from actors.validation import RequestError
    from actors.voices import ReferenceEncoder, read_reference_audio

    encoder = ReferenceEncoder(model, fsq=fsq, verify=verify)
    speakers: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["speaker"]
        if row["error"]:
            if name:
                speakers[name] = {"error": row["error"]}
            continue
        if name in speakers:
            speakers[name] = {"error": f"{row['source']}: speaker {name!r} is defined twice"}
            continue
        where = row["audio_path"] or row["source"]
        try:
            audio, rate = read_reference_audio(where, row["audio_bytes"])
            codes = encoder.encode(audio, rate)
            speakers[name] = {"prompt": encode_prompt(codes), "text": row["text"], "frames": int(codes.shape[1])}
        except (RequestError, RuntimeError, ValueError) as err:
            speakers[name] = {"error": f"{row['source']}: reference audio {where} unusable ({err})"}
    return speakers
