"""Settings every front end shares, in one place: the engine settings (`EngineSettings`), the sampling defaults
(`SamplingSettings`), config-file loading and the one rule
for relative paths in a config file.

The offline job (`pipeline.config.JobConfig.engine` / `.sampling`), the Serve app (`ServeConfig.engine`) and
`raytts synth`'s flags all use these classes, so a setting means the same everywhere. Pydantic at the edge, one
description per field; torch-free at import (the job's driver and CPU stages validate configs without torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .engine.params import REFINE_PARAMS, SamplingParams
from .quality import QualityPolicy
from .reading import DEFAULT_DATE_ORDER
from .text import Reading, normalize_mode

if TYPE_CHECKING:
    from .requests import RefineOptions


# The front ends' own defaults where they differ (documented with EngineSettings.max_new_tokens / max_slots).
# `raytts synth` reads every row first, so each slot reserves what the rows may ask for: --max-new-tokens, or a row's
# own max_new_tokens when larger, up to SYNTH_ROW_RESERVE (the fixed reservation synth always had, so one row can
# never make the plan larger than before; beyond it only --max-new-tokens raises the reservation), and never more
# than the public model's 4096 positions leave after 640 prompt tokens.
SYNTH_ROW_RESERVE = 2048
SYNTH_MAX_RESERVE = 4096 - 640
SERVE_MAX_NEW_TOKENS = 2048  # Serve: new tokens reserved per slot and the most a request may ask for (~43 s)


# The text front end's normalisation mode (actors/text.py): full, upstream or off; true/false (the older boolean
# setting) mean full/off.
NormalizeMode = Annotated[Literal["full", "upstream", "off"] | bool, AfterValidator(normalize_mode)]
NORMALIZE_HELP = (
    "full: numbers, dates, money, units and symbols spoken (WeTextProcessing grammars, English or Chinese per "
    "sentence), then upstream's cleaning; upstream: upstream ChatTTS without a normaliser (digits deleted); off: no "
    "number reading or punctuation mapping. true/false mean full/off."
)
DateOrder = Literal["mdy", "dmy"]
DATE_ORDER_HELP = (
    "How an ambiguous numeric date is read (12/06/2026): mdy = December 6 (US), dmy = 12 June. Dates whose order is "
    "plain (25/11/2026) are read as written; a row that had to choose records it in reading_notes."
)
REPLACEMENTS_HELP = (
    "Your own readings, applied before anything else, longest first, whole words where a key starts or ends with a "
    'letter or digit: {"K8s": "Kubernetes", "Dr.": "Doctor"}. Each replacement is recorded in reading_notes.'
)
STRICT_TEXT_HELP = "A row whose text has characters the model cannot say (which would be deleted) fails instead."


class Strict(BaseModel):
    """A config section that refuses unknown keys (a typo is an error that names the key, not a silent default)."""

    model_config = ConfigDict(extra="forbid")


class RowTextFields(BaseModel):
    """How a row's text is read, defined once for the job config (top level) and its engine actors."""

    speaker: str | None = Field(
        None, description="Default speaker: 'seed:N', an upstream speaker string or a reference name."
    )
    normalize: NormalizeMode = Field("full", description=NORMALIZE_HELP)
    strict_text: bool = Field(False, description=STRICT_TEXT_HELP)
    date_order: DateOrder = Field(DEFAULT_DATE_ORDER, description=DATE_ORDER_HELP)
    replacements: dict[str, str] = Field(default_factory=dict, description=REPLACEMENTS_HELP)
    max_chars: int = Field(10_000, ge=1, description="Rows with longer text fail with an error.")

    def reading(self) -> Reading:
        """The date order and replacements as the text front end takes them."""
        return Reading.of(self.date_order, self.replacements)


class ActorFields(BaseModel):
    """What one engine actor of the offline job is given, defined once for the job config's `actors` and the
    actor's own settings."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor (its default torch threads).")
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


class SamplingFields(BaseModel):
    """The code stage's sampling controls, defined once for every door that takes them (job and Serve configs,
    `raytts synth` flags, the native HTTP API)."""

    temperature: float = Field(SamplingParams.temperature, gt=0, description="Sampling temperature (all 4 codebooks).")
    top_p: float = Field(SamplingParams.top_p, gt=0, le=1, description="Nucleus sampling mass (>= 3 codes kept).")
    top_k: int = Field(SamplingParams.top_k, ge=0, description="Keep the k most likely codes (0 disables; >= 3 kept).")
    repetition_penalty: float = Field(
        SamplingParams.repetition_penalty, gt=0, description="Penalty over each row's last 16 codes."
    )
    min_new_tokens: int = Field(
        SamplingParams.min_new_tokens, ge=0, description="EOS is masked before this many steps."
    )


class SamplingSettings(Strict, SamplingFields):
    max_new_tokens: int = Field(
        SamplingParams.max_new_tokens, ge=1, description="GPT steps per segment (46.875 per audio second)."
    )
    seed: int = Field(SamplingParams.seed, ge=0, lt=2**63, description="Seed for rows that do not carry their own.")

    @model_validator(mode="after")
    def _min_below_max(self) -> SamplingSettings:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        return self

    def params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump())


class RefineSettings(Strict):
    """Upstream's refine-text stage: before speaking each segment, the GPT rewrites it with prosody tags
    ([uv_break], [laugh], ...) from its text head, in the same engine steps as the code rows."""

    enabled: bool = Field(True, description="Run the refine-text stage (upstream's default: on).")
    prompt: str = Field(
        "", max_length=400, description="Control tags for the refine stage, e.g. '[oral_2][laugh_0][break_6]'."
    )
    temperature: float = Field(REFINE_PARAMS.temperature, gt=0, description="Refine sampling temperature.")
    top_p: float = Field(REFINE_PARAMS.top_p, gt=0, le=1, description="Refine nucleus mass (>= 3 tokens kept).")
    top_k: int = Field(REFINE_PARAMS.top_k, ge=0, description="Refine top-k (0 disables; >= 3 kept).")
    repetition_penalty: float = Field(
        REFINE_PARAMS.repetition_penalty, gt=0, description="Penalty over the last 16 refined tokens (1.0: none)."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description=f"Refined tokens per segment at most (default: upstream's {REFINE_PARAMS.max_new_tokens}, or what "
        "the replica's rows hold when fewer).",
    )
    min_new_tokens: int = Field(REFINE_PARAMS.min_new_tokens, ge=0, description="[Ebreak] masked before this.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Refine seed (default: derived from the row's seed).")
    only: bool = Field(False, description="Return the refined text without audio (upstream's refine_text_only).")

    @model_validator(mode="after")
    def _only_refines(self) -> RefineSettings:
        if self.only and not self.enabled:
            raise ValueError("refine.only needs the refine stage on (enabled: true)")
        most = self.max_new_tokens if self.max_new_tokens is not None else REFINE_PARAMS.max_new_tokens
        if self.min_new_tokens > most:
            raise ValueError(f"refine min_new_tokens {self.min_new_tokens} > max_new_tokens {most}")
        return self

    def options(self) -> RefineOptions:
        from .requests import RefineOptions

        return RefineOptions(**self.model_dump())


class OnnxSettings(Strict):
    """The onnx backend's model: an exported folder, or this checkpoint exported once into the cache."""

    path: str | None = Field(
        None,
        description="Folder written by `raytts export-onnx` (its manifest must name this checkpoint). Default: the "
        "checkpoint is exported once per machine into the cache (RAYTTS_CACHE/onnx), under a file lock.",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="For the default export: int8 (dynamic, per-channel int8 weights of the GPT layers and heads: "
        "faster on CPU, codes no longer equal the float model's; benchmarks/RESULTS.md) or none (float, same codes).",
    )


class QualitySettings(Strict):
    """Per-row quality checks (`actors.quality`): the thresholds that raise each flag, and what a flagged row
    becomes. Measures and flags are written on every row (`qc`, `qc_flags`) whatever `on_fail` says."""

    on_fail: Literal["keep", "retake", "error"] = Field(
        "keep",
        description="keep: write a flagged row with its flags; retake: synthesise it again with the next seed (up to "
        "max_attempts takes, the best kept, flagged if none was clean); error: make it an error row of kind quality.",
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Takes of a flagged row in all under on_fail: retake.")
    min_seconds_per_unit: float = Field(0.12, ge=0, description="Faster (s per Chinese char / English word): too_fast.")
    max_seconds_per_unit: float = Field(1.0, gt=0, description="Slower than this: too_slow (babble, long pauses).")
    max_lead_silence_s: float = Field(1.0, ge=0, description="More silence before the first sound: lead_silence.")
    max_trail_silence_s: float = Field(1.5, ge=0, description="More silence after the last sound: trail_silence.")
    max_pause_s: float = Field(2.0, ge=0, description="A longer silence inside the row: long_pause.")
    min_rms_dbfs: float = Field(-45.0, description="Quieter speech (RMS of its non-silent frames): too_quiet.")
    max_clipped_share: float = Field(0.001, ge=0, le=1, description="More samples at full scale: clipped.")
    max_loop_s: float = Field(2.0, gt=0, description="A repeating code pattern this long or longer: loop.")
    allow_truncated: bool = Field(False, description="true: a segment that hit max_new_tokens raises no flag.")

    def policy(self) -> QualityPolicy:
        return QualityPolicy(**self.model_dump())


class AsrSettings(Strict):
    """The optional ASR round trip (`actors.asr`): a speech recogniser transcribes each row's audio, and the row
    records the transcript (`asr_text`) and its error rate against `spoken_text` (`asr_error_rate`: characters for
    Chinese, words otherwise); a rate over `max_error_rate` raises the `asr_mismatch` flag. Off by default: it runs
    a second model over every row."""

    enabled: bool = Field(False, description="Transcribe every row with audio and score it against spoken_text.")
    model: str = Field(
        "openai/whisper-large-v3-turbo",
        description="A transformers speech-recognition model (safetensors weights only): a Hugging Face hub id, "
        "fetched into the hub cache once, or a local folder. Whisper models are told each row's language.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when the ASR actor has a GPU.")
    batch_size: int = Field(8, ge=1, le=256, description="Rows per ASR call.")
    actors: int = Field(1, ge=1, description="ASR actors (each holds one recogniser).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per ASR actor (0: CPU; fractional shares a GPU).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per ASR actor.")
    max_error_rate: float = Field(
        0.35, ge=0, description="A higher word / character error rate raises asr_mismatch (skipped or wrong words)."
    )


class EngineSettings(Strict):
    """One engine replica: where it runs, how it spends its memory, how it decodes."""

    device: str = Field("auto", description="cuda, cpu or auto (CUDA when torch sees a GPU).")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Default float16 on CUDA, float32 on CPU."
    )
    budget_fraction: float = Field(
        0.85,
        gt=0,
        le=0.95,
        description="Share of the replica's GPU memory (its part of the GPU when num_gpus is fractional; a Serve "
        "replica's divided among max_models_per_replica) that the engine may use, never more than this share of "
        "free memory. On CPU the default budget is half of what the replica may still use (available RAM, the "
        "cgroup limit, the Ray actor's memory resource; a Ray actor without one takes its CPU share of the node).",
    )
    budget_mib: int | None = Field(
        None, ge=16, description="Memory budget per replica in MiB (overrides the default from the free memory)."
    )
    max_slots: int | None = Field(None, ge=1, description="Cap on rows generating at once per replica.")
    max_prompt_tokens: int = Field(640, ge=16, description="Prompt tokens reserved per slot (text + reference codes).")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="GPT steps reserved per slot, the most a row may ask for. Default: the job's "
        "sampling.max_new_tokens (raytts run), the most any row asks for (raytts synth: --max-new-tokens or a row's "
        "own), 2048 (Serve).",
    )
    max_segment_tokens: int = Field(120, ge=8, description="Longer text is split at sentence ends into segments.")
    decoder: Literal["hidden", "dvae"] = Field("hidden", description="Decode from GPT hidden states or from codes.")
    fsq: Literal["classic", "symmetric"] = Field("classic", description="DVAE quantiser numerics.")
    verify: Literal["auto", "always", "never"] = Field("auto", description="sha256 check of official files.")
    stream_chunk_steps: int = Field(
        12, ge=1, description="Streamed audio is decoded every this many GPT steps (12 steps = 0.256 s of audio)."
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per replica (default: a job actor's CPU share; torch's choice)."
    )
    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="torch: the model's torch modules. onnx: its blockwise ONNX export run by onnxruntime (CPU, or "
        "CUDA with onnxruntime-gpu), the same engine around it (engine.onnx says which export).",
    )
    onnx: OnnxSettings = Field(default_factory=OnnxSettings, description="The onnx backend's export.")
    quality: QualitySettings = Field(
        default_factory=QualitySettings,
        description="Per-row quality checks: thresholds and what a flagged row becomes.",
    )
    compile: Literal["off", "inductor", "cudagraphs"] = Field(
        "off",
        description="torch.compile the decode step (dynamic shapes, compiled once at start-up); 'cudagraphs' also "
        "replays it as CUDA graphs over bucketed shapes (CUDA only).",
    )

    @model_validator(mode="after")
    def _backend_settings_agree(self) -> EngineSettings:
        if self.backend != "onnx" and self.onnx != OnnxSettings():
            raise ValueError(
                f"engine.onnx ({self.onnx.model_dump(exclude_defaults=True)}) configures the onnx backend, but "
                f"engine.backend is {self.backend!r}: set engine.backend: onnx, or remove engine.onnx"
            )
        if self.device == "cpu" and self.compile != "off":
            raise ValueError(
                f"engine.compile={self.compile!r} is refused on the CPU (measured slower than eager end to end: "
                f"benchmarks/RESULTS.md); use compile: off, or a CUDA device"
            )
        if self.backend == "onnx" and self.compile != "off":
            raise ValueError(
                f"engine.compile={self.compile!r} compiles the torch decode step; the onnx backend needs off"
            )
        return self


def engine_paths(engine: EngineSettings, base: Path) -> EngineSettings:
    """`engine.onnx.path` from a config file is relative to that file (as every local path in it)."""
    if engine.onnx.path is None:
        return engine
    onnx = engine.onnx.model_copy(update={"path": resolve_path(engine.onnx.path, base)})
    return engine.model_copy(update={"onnx": onnx})


def reserved_with_refine(max_new_tokens: int, refine: RefineSettings | None) -> int:
    """New tokens a slot reserves: the code stage's `max_new_tokens`, or, with the refine stage on, at least what it
    may generate (upstream's 384 or `refine.max_new_tokens`), so a short code-stage limit never cuts a refinement."""
    if refine is not None and refine.enabled:
        return max(max_new_tokens, refine.max_new_tokens or REFINE_PARAMS.max_new_tokens)
    return max_new_tokens


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


def resolve_path(path: str, base: Path) -> str:
    """A path from a config file: URIs (`s3://`, `hf://`), absolute paths and the built-in `tiny` stay as they are;
    a relative local path is relative to `base`, the config file's folder."""
    if "://" in path or Path(path).is_absolute() or path == "tiny":
        return path
    return str((base / path).resolve())
