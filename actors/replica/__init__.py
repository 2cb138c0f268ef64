"""One synthesis replica: a loaded model + tokenizer on one device, turning requests into audio.

This is the object a Ray actor (offline) or a Serve replica (online) holds exactly one of, and what `raytts synth`
drives in-process. It owns request validation (every problem becomes that row's `error`, never an exception that
takes the batch down), segmenting long text, submitting segments to the continuous batcher, decoding finished ones
to audio, and joining segment audio back per row: the `actors.driver.Engine` protocol, which the one driver
(`actors.driver.EngineDriver`) runs for `synthesize` and for `AsyncSynthesizer`. Generation itself is
`actors.engine`; device, dtype and budget choice `actors.placement`; its settings `actors.settings.EngineSettings`.

Rooms: `build` (load per backend, plan memory, compile warm-up), `inputs` (a request into segments), `refine` (the
refine-text stage's two-stage rows), `outputs` (decode, streams, join), `synthesizer` (the `Synthesizer` that wires
them).
"""

from ..settings import EngineSettings, RefineSettings, reserved_with_refine
from .build import CPU_MAX_SLOTS
from .outputs import ReplicaStats
from .synthesizer import Synthesizer

__all__ = ["CPU_MAX_SLOTS", "ReplicaStats", "Synthesizer", "build_synthesizer"]


def build_synthesizer(
    model: str,
    engine: EngineSettings,
    *,
    max_new_tokens: int,
    max_chars: int = 10_000,
    device_share: float = 1.0,
    fsq: str | None = None,
    verify: str | None = None,
    refine: RefineSettings | None = None,
) -> Synthesizer:
    """The one way a front end builds its engine replica from settings. `max_new_tokens`: the front end's default
    reservation when `engine.max_new_tokens` is unset, raised to what the refine-text stage may generate (upstream's
    384, or `refine.max_new_tokens`) when `refine` is on, so that a short code-stage limit never cuts a refinement;
    `device_share`: the part of the device this replica owns (fractional Ray GPUs, several Serve models);
    `fsq`/`verify`: a model's own values over the engine's."""
    overrides = {key: value for key, value in (("fsq", fsq), ("verify", verify)) if value is not None}
    return Synthesizer(
        model,
        engine.model_copy(update=overrides),
        max_new_tokens=reserved_with_refine(max_new_tokens, refine),
        max_chars=max_chars,
        device_share=device_share,
    )
