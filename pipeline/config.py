"""The offline job's configuration: validated at the edge (pydantic), loaded from YAML and overridden by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputsConfig(_Strict):
    text: list[str] = Field(
        description="Text shards: files, folders or globs, local or URIs (s3://, gs://, ...). Formats by extension: "
        ".jsonl/.json (one object per line), .parquet, .csv (header row), .txt (one utterance per line; ids are "
        "derived from the file name and line number)."
    )
    speakers: list[str] = Field(
        default_factory=list,
        description="Reference-speaker shards: .jsonl/.csv manifests with columns speaker, audio (file path or URI, "
        "relative to the manifest), text (transcript); or .parquet with speaker, audio (bytes or {bytes, path}), text. "
        "Text rows name a speaker in their `speaker` field.",
    )
    base: str | None = Field(
        None,
        description="Folder that local shards are named relative to (in `source`, so in the keys of rows without "
        "ids and in .txt ids): `raytts run` sets it to the job YAML's folder (the current folder without a YAML), "
        "so a job folder that moves, as `ray job submit --working-dir` unpacks it anew each cluster session, "
        "resumes instead of redoing rows. Unset: absolute paths.",
    )

    @field_validator("text")
    @classmethod
    def _some_text(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("inputs.text needs at least one file, folder or glob")
        return value


class SamplingConfig(_Strict):
    temperature: float = Field(0.3, gt=0, description="Sampling temperature (all 4 codebooks).")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling mass (>= 3 codes are always kept).")
    top_k: int = Field(20, ge=0, description="Keep the k most likely codes (0 disables; >= 3 kept).")
    repetition_penalty: float = Field(1.05, gt=0, description="Penalty over each row's last 16 codes.")
    max_new_tokens: int = Field(2048, ge=1, description="GPT steps per segment (46.875 per audio second).")
    min_new_tokens: int = Field(0, ge=0, description="EOS is masked before this many steps.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for rows that do not carry their own.")


class EngineConfig(_Strict):
    device: str = Field("auto", description="cuda, cpu or auto (CUDA when torch sees a GPU).")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Default float16 on CUDA, float32 on CPU."
    )
    budget_mib: int | None = Field(
        None, ge=16, description="Per-replica memory budget; default 85% of free GPU memory, 1 GiB on CPU."
    )
    max_slots: int | None = Field(None, ge=1, description="Cap on rows generating at once per replica.")
    max_prompt_tokens: int = Field(640, ge=16, description="Prompt tokens reserved per slot (text + reference codes).")
    max_segment_tokens: int = Field(120, ge=8, description="Longer text is split at sentence ends into segments.")
    decoder: Literal["hidden", "dvae"] = Field("hidden", description="Decode from GPT hidden states or from codes.")
    fsq: Literal["classic", "symmetric"] = Field("classic", description="DVAE quantiser numerics.")
    verify: Literal["auto", "always", "never"] = Field("auto", description="sha256 check of official files.")
    threads: int | None = Field(None, ge=1, description="torch threads per actor (default: its CPU share).")
    compile: Literal["off", "inductor", "cudagraphs"] = Field(
        "off",
        description="torch.compile the decode step (dynamic shapes, compiled once at start-up); 'cudagraphs' also "
        "replays it as CUDA graphs over bucketed shapes (CUDA only).",
    )


class ActorsConfig(_Strict):
    size: int | None = Field(None, ge=1, description="Fixed actor pool size (one engine replica each).")
    min_size: int | None = Field(None, ge=1, description="Autoscaling pool minimum (with max_size).")
    max_size: int | None = Field(None, ge=1, description="Autoscaling pool maximum (with min_size).")
    num_gpus: float | Literal["auto"] = Field(
        "auto",
        description="GPUs per actor. auto: 1 when the cluster's nodes have GPUs when the job starts, else 0 (CPU engines, "
        "with a warning), and 0 with engine.device cpu; set it on an autoscaling cluster whose GPU nodes start from zero. Fractional shares a device "
        "(each replica's default memory budget is then 85% of its share, less its weights); 0 runs on CPU.",
    )

    @field_validator("num_gpus")
    @classmethod
    def _non_negative(cls, value: float | str) -> float | str:
        if value != "auto" and value < 0:  # type: ignore[operator]
            raise ValueError(f"num_gpus must be >= 0 or auto, got {value}")
        return value

    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor.")
    batch_size: int = Field(
        64,
        ge=1,
        description="Rows per block and per call into an actor. Keep batch_size x max_concurrent_batches >= 1.5x the "
        "engine's slots (an actor warns when it is below them). Input is repartitioned to about this many rows "
        "per block, so work spreads over the actors and a retried task (actor or node lost) redoes little; a "
        "retried block rewrites its own output part, so its rows are never written twice.",
    )
    max_concurrent_batches: int = Field(
        2,
        ge=1,
        description="Calls running at once on each actor, all feeding its one engine: while one call's last rows "
        "finish, the next call's rows fill the freed slots (1 = a call's tail leaves slots idle).",
    )

    @model_validator(mode="after")
    def _pool(self) -> ActorsConfig:
        if self.size is not None and (self.min_size is not None or self.max_size is not None):
            raise ValueError("give either actors.size or actors.min_size/max_size, not both")
        if (self.min_size is None) != (self.max_size is None):
            raise ValueError("actors.min_size and actors.max_size go together")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError(f"actors.min_size {self.min_size} > max_size {self.max_size}")
        return self


class OutputConfig(_Strict):
    path: str = Field(
        description="Output folder or URI: Parquet under parts/, audio under audio/, manifest and report."
    )
    audio_format: Literal["flac", "wav", "ogg", "opus"] = Field(
        "flac", description="Encoding of audio bytes and files: flac/wav lossless 16-bit, ogg (Vorbis)/opus lossy."
    )
    audio_files: bool = Field(True, description="Also write {path}/audio/{id}.{format} objects.")
    save_codes: bool = Field(False, description="Keep the [T, 4] codes column.")
    writers: int = Field(
        4, ge=1, description="Most store actors (encode audio, write objects and Parquet parts); autoscaled from 1."
    )

    @field_validator("path")
    @classmethod
    def _local_path(cls, value: str) -> str:
        return value.removeprefix("file://")  # one spelling of a local folder, for parts, audio files and keys


class JobConfig(_Strict):
    model: str = Field("tiny", description="Checkpoint folder, URI, hf://2Noise/ChatTTS[@rev], or 'tiny'.")
    inputs: InputsConfig
    output: OutputConfig
    speaker: str | None = Field(
        None, description="Default speaker: 'seed:N', an upstream speaker string or a reference name."
    )
    normalize: bool = Field(True, description="Language-aware punctuation mapping (upstream's default).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    retry_failed: bool = Field(False, description="On a re-run, redo rows whose earlier outcome was an error.")
    max_chars: int = Field(10_000, ge=1, description="Rows with longer text fail with an error.")

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
        config = cls.model_validate(load_mapping(path, overrides))
        return config.resolved_against(Path(path).resolve().parent if path is not None else Path("."))

    def resolved_against(self, base: Path) -> JobConfig:
        """Relative local paths in a config file are relative to that file."""

        def fix(p: str) -> str:
            if "://" in p or Path(p).is_absolute() or p == "tiny":
                return p
            return str((base / p).resolve())

        inputs = self.inputs.model_copy(
            update={
                "text": [fix(p) for p in self.inputs.text],
                "speakers": [fix(p) for p in self.inputs.speakers],
                "base": fix(self.inputs.base) if self.inputs.base else str(base.resolve()),
            }
        )
        output = self.output.model_copy(update={"path": fix(self.output.path)})
        model = self.model if self.model == "tiny" or self.model.startswith("hf://") else fix(self.model)
        return self.model_copy(update={"inputs": inputs, "output": output, "model": model})


def load_mapping(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty without a file) with dotted-key overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping at the top level")
        data = loaded
    for dotted, value in (overrides or {}).items():
        _set(data, dotted.split("."), value)
    return data


def _set(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value
