"""The online service's configuration: the Serve application's `args` (models, voices, engine, limits, auth)
plus the deployment knobs `raytts serve` applies. Validated at the edge with pydantic; every field described.

The same mapping is what a Serve config file passes as `args:` to `actors.serving.app:build_app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from actors.settings import (
    SERVE_MAX_NEW_TOKENS,
    EngineSettings,
    RefineSettings,
    Strict,
    engine_paths,
    load_mapping,
    resolve_path,
)


class ModelSpec(Strict):
    source: str = Field(description="Checkpoint folder, s3://... URI, hf://2Noise/ChatTTS[@rev], or 'tiny'.")
    fsq: Literal["classic", "symmetric"] | None = Field(
        None, description="DVAE quantiser numerics (default: engine.fsq)."
    )
    verify: Literal["auto", "always", "never"] | None = Field(
        None, description="sha256 check of official files (default: engine.verify)."
    )


class VoiceSpec(Strict):
    seed: int | None = Field(None, ge=0, lt=2**63, description="Speaker sampled from the model's statistics.")
    speaker: str | None = Field(None, description="An upstream speaker string (`spk_emb`).")
    reference_audio: str | None = Field(
        None, description="Reference speech (file path or URI, <= 8 s), encoded once per loaded model."
    )
    reference_text: str = Field("", description="Transcript of the reference audio.")

    @model_validator(mode="after")
    def _one_kind(self) -> VoiceSpec:
        given = [n for n in ("seed", "speaker", "reference_audio") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"a voice needs exactly one of seed, speaker, reference_audio; got {given or 'none'}")
        return self


class LimitsSpec(Strict):
    max_input_chars: int = Field(4096, ge=1, description="Longest `input` accepted (OpenAI's limit is 4096).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; bigger ones get 413.")
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A request not finished by then is dropped from the engine: answered 503, or, once its stream "
        "has started, ended with an error (an aborted body; an `error` event in SSE).",
    )
    front_end_workers: int = Field(
        1,
        ge=1,
        description="Processes per loaded model that normalise, split and tokenise texts longer than 256 characters, "
        "off the engine's thread (shorter ones take a few ms in the request handler).",
    )
    max_queued_rows: int = Field(
        1024, ge=1, description="Rows waiting for a slot per model before new requests get 503 + Retry-After."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 answers.")
    max_models_per_replica: int = Field(
        1, ge=1, description="Checkpoints resident per replica; the least recently used is unloaded beyond it."
    )


class AuthSpec(Strict):
    api_keys: list[str] = Field(default_factory=list, description="Accepted bearer tokens.")
    api_keys_env: str = Field(
        "RAYTTS_API_KEYS", description="Environment variable with more comma-separated tokens (read by replicas)."
    )

    def keys(self) -> list[str]:
        extra = [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return [*self.api_keys, *extra]


# OpenAI's voice names, each a fixed seeded ChatTTS speaker, so code written for OpenAI runs unchanged. The seeds are
# part of the API: a name keeps its voice across releases (a config's `voices` may redefine any name).
OPENAI_VOICES: dict[str, int] = {
    "alloy": 2, "ash": 3, "ballad": 5, "coral": 7, "echo": 11, "fable": 13, "onyx": 17, "nova": 19, "sage": 23,
    "shimmer": 29, "verse": 31, "marin": 37, "cedar": 41,
}  # fmt: skip


def model_label(source: str) -> str:
    """The name a model started from `source` alone answers to: `tiny`, `2Noise/ChatTTS` for hf://2Noise/ChatTTS@rev,
    else the folder's or URI's last part."""
    if source.startswith("hf://"):
        return source[len("hf://") :].partition("@")[0]
    return source.rstrip("/").rsplit("/", 1)[-1] or source


class ServeConfig(Strict):
    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {"tiny": ModelSpec(source="tiny")},
        description="Checkpoints by the name clients pass as `model`.",
    )
    default_model: str | None = Field(None, description="Model for requests naming none (default: the first).")
    model_aliases: dict[str, str] = Field(
        default_factory=lambda: {"tts-1": "", "tts-1-hd": "", "gpt-4o-mini-tts": ""},
        description="Extra model names (e.g. OpenAI's) mapped to a configured model; '' means the default model.",
    )
    voices: dict[str, VoiceSpec] = Field(
        default_factory=lambda: {"default": VoiceSpec(seed=2)},
        description="Named speakers clients pass as `voice`; they extend (or, for the same name, replace) OpenAI's "
        "voice names when openai_voices is on.",
    )
    openai_voices: bool = Field(
        True,
        description="Also accept OpenAI's voice names (alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, "
        "shimmer, verse, marin, cedar), each a fixed seeded speaker (actors/serving/config.py OPENAI_VOICES).",
    )
    default_voice: str | None = Field(None, description="Voice for native requests naming none (default: first).")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    refine: RefineSettings = Field(
        default_factory=RefineSettings,
        description="The refine-text stage of every request (native requests may override it with `refine`).",
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)
    sampling_seed: int = Field(0, ge=0, lt=2**63, description="Sampling seed when a request gives none.")

    @model_validator(mode="after")
    def _names(self) -> ServeConfig:
        if not self.models:
            raise ValueError("models needs at least one checkpoint")
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models {sorted(self.models)}")
        for alias, target in self.model_aliases.items():
            if target and target not in self.models:
                raise ValueError(f"model_aliases.{alias} -> {target!r} is not one of models {sorted(self.models)}")
        if not self.voices:
            raise ValueError("voices needs at least one named voice")
        if self.refine.only:
            raise ValueError(
                "refine.only cannot be the server's default (the OpenAI endpoint answers with audio); native requests "
                "ask for it themselves with refine: {only: true}"
            )
        known = self.voice_specs()
        if self.default_voice is not None and self.default_voice not in known:
            raise ValueError(f"default_voice {self.default_voice!r} is not one of voices {sorted(known)}")
        return self

    def voice_specs(self) -> dict[str, VoiceSpec]:
        """Every voice name clients may pass: the configured voices first, then OpenAI's names they leave free."""
        specs = dict(self.voices)
        if self.openai_voices:
            for name, seed in OPENAI_VOICES.items():
                specs.setdefault(name, VoiceSpec(seed=seed))
        return specs

    def model_name(self, requested: str | None) -> str | None:
        """The configured model a request's `model` means, or None when it names no known model."""
        if requested is None or requested == "":
            return self.default_model or next(iter(self.models))
        if requested in self.models:
            return requested
        if requested in self.model_aliases:
            return self.model_aliases[requested] or self.default_model or next(iter(self.models))
        for name, spec in self.models.items():  # the source it was started from: `--model tiny` answers to tiny
            if requested in (spec.source, model_label(spec.source)):
                return name
        return None

    @property
    def max_new_tokens(self) -> int:
        """GPT steps reserved per slot and the most a request may ask for: engine.max_new_tokens, else 2048."""
        return self.engine.max_new_tokens or SERVE_MAX_NEW_TOKENS

    def voice_name(self, requested: str | None) -> str:
        return requested or self.default_voice or next(iter(self.voices))


class DeploymentSpec(Strict):
    """How the Serve deployment runs: the one definition of every option (`build_app` applies them; the request
    limits left unset follow the replica's planned slots, `actors.serving.sizing`)."""

    name: str = Field("TTSServer", description="Serve deployment name.")
    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count (instead of autoscaling).")
    min_replicas: int = Field(1, ge=0, description="Autoscaling minimum.")
    max_replicas: int = Field(4, ge=1, description="Autoscaling maximum.")
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description="Autoscaling adds a replica when requests in flight per replica pass this. Default: half the "
        "replica's planned slots (rows its engine runs at once).",
    )
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="Requests one replica holds at once (its engine queues those above its slots). Default: twice "
        "the planned slots; below the slots, batches would shrink at the proxy.",
    )
    max_queued_requests: int | None = Field(
        None, ge=1, description="Requests waiting for a replica before 503. Default: max_ongoing_requests."
    )
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica (default 1 unless engine.device=cpu).")
    num_cpus: float = Field(1, ge=0, description="CPUs per replica.")
    health_check_period_s: float = Field(10, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)
    graceful_shutdown_timeout_s: float = Field(60, gt=0)
    upscale_delay_s: float = Field(30, ge=0, description="Load above the target this long adds a replica.")
    downscale_delay_s: float = Field(300, ge=0, description="Load below the target this long removes one.")


class ServerConfig(Strict):
    """`raytts serve CONFIG`: the application plus where it listens and how it is deployed."""

    host: str = Field("127.0.0.1", description="Bind address; anything but loopback requires API keys.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app: ServeConfig = Field(default_factory=ServeConfig)
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec)

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> ServerConfig:
        config = cls.model_validate(load_mapping(path, overrides))
        if path is not None:
            config = config.model_copy(update={"app": resolve_paths(config.app, Path(path).resolve().parent)})
        return config


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def resolve_paths(config: ServeConfig, base: Path) -> ServeConfig:
    """Relative local paths (checkpoints, reference audio) in a config file are relative to that file."""

    def fix(p: str) -> str:
        return resolve_path(p, base)

    models = {name: spec.model_copy(update={"source": fix(spec.source)}) for name, spec in config.models.items()}
    voices = {
        name: spec.model_copy(update={"reference_audio": fix(spec.reference_audio)}) if spec.reference_audio else spec
        for name, spec in config.voices.items()
    }
    engine = engine_paths(config.engine, base)
    return config.model_copy(update={"models": models, "voices": voices, "engine": engine})
