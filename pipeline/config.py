"""The offline job's configuration: validated at the edge (pydantic), loaded from YAML and overridden by flags.

Engine and sampling settings are the shared `actors.settings` classes (the same keys as a Serve config's `engine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from actors.settings import (
    ActorFields,
    AsrSettings,
    EngineSettings,
    RefineSettings,
    RowTextFields,
    SamplingSettings,
    Strict,
    engine_paths,
    load_mapping,
    resolve_path,
)


class InputsConfig(Strict):
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

    @field_validator("text", "speakers", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `text: texts/` means `text: [texts/]`

    @field_validator("text")
    @classmethod
    def _some_text(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("inputs.text needs at least one file, folder or glob")
        return value


class ActorsConfig(Strict, ActorFields):
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

    @model_validator(mode="after")
    def _pool(self) -> ActorsConfig:
        if self.size is not None and (self.min_size is not None or self.max_size is not None):
            raise ValueError("give either actors.size or actors.min_size/max_size, not both")
        if (self.min_size is None) != (self.max_size is None):
            raise ValueError("actors.min_size and actors.max_size go together")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError(f"actors.min_size {self.min_size} > max_size {self.max_size}")
        return self


class OutputConfig(Strict):
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


class JobConfig(Strict, RowTextFields):
    model: str = Field("tiny", description="Checkpoint folder, URI, hf://2Noise/ChatTTS[@rev], or 'tiny'.")
    inputs: InputsConfig
    output: OutputConfig
    refine: RefineSettings = Field(
        default_factory=RefineSettings,
        description="The refine-text stage (rows may override it with a `refine` field: true/false or an object).",
    )
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    asr: AsrSettings = Field(
        default_factory=AsrSettings, description="The optional ASR round trip: transcripts and their error rates."
    )
    retry_failed: bool = Field(False, description="On a re-run, redo rows whose earlier outcome was an error.")

    @field_validator("refine")
    @classmethod
    def _refine_writes_audio(cls, refine: RefineSettings) -> RefineSettings:
        if refine.only:
            raise ValueError(
                "refine.only (the refined text without audio) is not available in raytts run, which writes audio; use "
                "raytts synth --refine-only or Serve's /v1/tts with refine: {only: true}"
            )
        return refine

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
        config = cls.model_validate(load_mapping(path, overrides))
        return config.resolved_against(Path(path).resolve().parent if path is not None else Path("."))

    def resolved_against(self, base: Path) -> JobConfig:
        """Relative local paths in a config file are relative to that file."""

        def fix(p: str) -> str:
            return resolve_path(p, base)

        inputs = self.inputs.model_copy(
            update={
                "text": [fix(p) for p in self.inputs.text],
                "speakers": [fix(p) for p in self.inputs.speakers],
                "base": fix(self.inputs.base) if self.inputs.base else str(base.resolve()),
            }
        )
        output = self.output.model_copy(update={"path": fix(self.output.path)})
        model = fix(self.model)
        engine = engine_paths(self.engine, base)
        return self.model_copy(update={"inputs": inputs, "output": output, "model": model, "engine": engine})
