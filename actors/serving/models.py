"""The models a Serve replica holds: each checkpoint's engine and its named voices (reference audio encoded for it),
loaded from the serve config, and the leases requests take on them so an evicted model is unloaded only when its
last response is complete."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

from actors.async_engine import AsyncSynthesizer
from actors.front_end_pool import FrontEndLimits, FrontEndPool
from actors.placement import assigned_gpu_share
from actors.replica import build_synthesizer
from actors.settings import RefineSettings
from actors.voices import Voice, read_reference_audio

from .config import ServeConfig


@dataclass
class LoadedModel:
    """One checkpoint resident on this replica: its engine and its voices (reference audio encoded for it)."""

    name: str
    engine: AsyncSynthesizer | None
    voices: dict[str, Voice] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    users: int = 0  # requests holding a lease on it (an evicted model is unloaded once this reaches 0)

    def close(self) -> None:
        """Stop the engine loop and drop every reference to the model so its memory is returned."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        engine.close()
        device = engine.synthesizer.device
        engine.synthesizer = None
        self.voices.clear()
        del engine
        # Serve freezes every object alive after replica start-up (gc.freeze) so the collector skips them; a
        # model loaded then would keep any reference cycle forever. Unfreeze so this collection can free it.
        gc.unfreeze()
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


class Lease:
    """A request's hold on a loaded model, released when its response is complete (streams: when they end)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.streaming = False
        self._held = True
        loaded.users += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self.loaded.users -= 1


def load_served_model(name: str, config: ServeConfig, budget_share: int) -> LoadedModel:
    """Build a replica engine for model `name` (blocking: run it off the event loop)."""
    spec = config.models[name]
    synthesizer = build_synthesizer(
        spec.source,
        config.engine,
        max_new_tokens=config.max_new_tokens,
        max_chars=config.limits.max_input_chars,
        # this replica's part of the GPU (fractional num_gpus), split among the models it may hold; the budget is
        # planned after the model's weights are on the device, so they are not counted twice
        device_share=assigned_gpu_share() / budget_share,
        fsq=spec.fsq,
        verify=spec.verify,
        # native requests may turn the refine stage on whatever the server's default: reserve for it
        refine=config.refine if config.refine.enabled else RefineSettings(),
    )
    voices: dict[str, Voice] = {}
    for voice_name, voice in config.voice_specs().items():
        if voice.seed is not None:
            voices[voice_name] = Voice(speaker=f"seed:{voice.seed}")
        elif voice.speaker is not None:
            voices[voice_name] = Voice(speaker=voice.speaker)
        else:
            try:
                audio, rate = read_reference_audio(voice.reference_audio)
                codes = synthesizer.encode_reference(audio, rate)
            except (OSError, RuntimeError, ValueError) as err:
                raise ValueError(
                    f"voice {voice_name!r}: cannot use reference audio {voice.reference_audio}: {err}; fix the file "
                    f"or the path in the serve config"
                ) from err
            voices[voice_name] = Voice(reference_codes=codes, reference_text=voice.reference_text)
    front_ends = FrontEndPool(
        synthesizer.tokenizer,
        synthesizer.checkpoint.asset / "tokenizer" / "tokenizer.json",
        FrontEndLimits(synthesizer.max_segment_tokens, synthesizer.max_chars),
        workers=config.limits.front_end_workers,
    )
    return LoadedModel(name=name, engine=AsyncSynthesizer(synthesizer, front_ends), voices=voices)
