"""The synthesis half of the job's Ray Data graph: rows still to do -> prepare (CPU tasks: normalise, split,
tokenise) -> TTS actors (one engine replica each, several batches in flight) -> store actors (CPU, autoscaled:
encode audio, write objects and the block's Parquet part). The driver only sees one small summary row per block."""

from __future__ import annotations

from typing import Any

from actors.tts_stage import StageSettings

from .config import JobConfig
from .lease import LeaseToken
from .prepare import prepare_rows
from .resources import STORE_ACTOR_CPUS
from .store import StoreAudio


def stage_settings(config: JobConfig) -> StageSettings:
    """What each engine actor needs from the job config (and nothing else of it)."""
    actors = config.actors
    return StageSettings(
        model=config.model,
        engine=config.engine,
        sampling=config.sampling,
        speaker=config.speaker,
        normalize=config.normalize,
        strict_text=config.strict_text,
        refine=config.refine,
        max_chars=config.max_chars,
        save_codes=config.output.save_codes,
        num_cpus=actors.num_cpus,
        batch_size=actors.batch_size,
        max_concurrent_batches=actors.max_concurrent_batches,
    )


def synthesis_stages(
    pending: Any,
    config: JobConfig,
    tokenizer: dict[str, Any],
    speakers: dict[str, dict[str, Any]],
    job_digest: str,
    lease: LeaseToken,
) -> Any:
    """The dataset of per-block summaries ({part, rows, failed, seconds}) that synthesising `pending` yields; every
    part records `job_digest` and is written only while the driver holds the output's `lease`."""
    import ray
    from ray.data import ActorPoolStrategy

    from actors.tts_stage import TTSStage

    actors = config.actors
    # max_concurrent_batches calls run at once on each actor (Ray Data's default is one at a time, however many
    # tasks are queued), all awaiting its one engine: a call's last rows finish while the next call's rows take the
    # freed slots. No block waits queued on a busy actor: it would go to an idle one instead (at the start, the
    # first actor up would take an extra block before the others are up, and at the end an actor could hold one
    # while the others idle); a block's input is a few KB of text, fetched in milliseconds.
    overlap = {
        "max_concurrent_calls_per_actor": actors.max_concurrent_batches,
        "max_tasks_in_flight_per_actor": actors.max_concurrent_batches,
    }
    if actors.size is not None:
        pool = ActorPoolStrategy(size=actors.size, **overlap)
    else:
        pool = ActorPoolStrategy(min_size=actors.min_size or 1, max_size=actors.max_size or 1, **overlap)
    references = {name: {"text": entry.get("text")} for name, entry in speakers.items()}
    prepare_settings = {
        "speaker": config.speaker,
        "normalize": config.normalize,
        "strict_text": config.strict_text,
        "reading": config.reading(),
        "max_segment_tokens": config.engine.max_segment_tokens,
        "max_chars": config.max_chars,
        "references": references,
    }
    output = config.output
    synthesised = (
        pending.repartition(target_num_rows_per_block=actors.batch_size)
        .map_batches(
            prepare_rows,
            # the tokenizer (~0.5 MB) is shipped once with the operator, not per task
            fn_kwargs={
                "tokenizer": {k: tokenizer[k] for k in ("json", "num_text_tokens")},
                "settings": prepare_settings,
            },
            batch_size=None,
            batch_format="pyarrow",
        )
        .map_batches(
            TTSStage,
            fn_constructor_kwargs={
                "settings": stage_settings(config).model_dump(),
                "speakers": speakers,
            },
            compute=pool,
            batch_size=actors.batch_size,
            num_gpus=actors.num_gpus,
            num_cpus=actors.num_cpus,
            batch_format="pyarrow",
        )
    )
    synthesised = _asr_stage(synthesised, config) if config.asr.enabled else synthesised
    return synthesised.map_batches(
        StoreAudio,
        fn_constructor_kwargs={
            "output": output.path.rstrip("/"),
            "audio_format": output.audio_format,
            "audio_files": output.audio_files,
            "job_digest": job_digest,
            "lease": lease,
        },
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=output.writers),
        batch_size=actors.batch_size,
        num_cpus=STORE_ACTOR_CPUS,
        batch_format="pyarrow",
    )


def _asr_stage(synthesised: Any, config: JobConfig) -> Any:
    """The ASR round trip's actors (`actors.asr.AsrStage`) between the engine and the store."""
    from ray.data import ActorPoolStrategy

    from actors.asr import AsrStage

    asr = config.asr
    return synthesised.map_batches(
        AsrStage,
        fn_constructor_kwargs={"settings": asr.model_dump()},
        compute=ActorPoolStrategy(size=asr.actors),
        batch_size=asr.batch_size,
        num_gpus=asr.num_gpus,
        num_cpus=asr.num_cpus,
        batch_format="pyarrow",
    )
