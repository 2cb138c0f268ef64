"""Building a replica: loading the checkpoint for its backend (torch modules, or the ONNX export run by
onnxruntime), planning its memory, and compiling (and recording CUDA graphs for) the decode step before the first
request."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import ResolvedCheckpoint, load_model, read_model_config, resolve
from ..engine.batcher import BatcherStats, ContinuousBatcher
from ..engine.memory import SlotPlan, plan_slots
from ..engine.params import SamplingParams
from ..engine.prompt import CodePrompt
from ..model.config import ModelConfig
from ..placement import pick_device, pick_dtype, replica_budget_bytes
from ..settings import EngineSettings
from ..tokenizer import TextTokenizer

log = logging.getLogger(__name__)

CPU_MAX_SLOTS = 64  # rows at once on CPU unless engine.max_slots says otherwise
CPU_COMPILE_REFUSED = (
    "engine.compile={mode!r} is refused on the CPU: torch.compile of the decode step was measured slower than eager "
    "end to end there (330 s to compile, then 0.10x eager's speed on a 128-text job; benchmarks/RESULTS.md). Use "
    "compile: off on the CPU; inductor and cudagraphs are for CUDA devices"
)


@dataclass
class Loaded:
    """A checkpoint loaded for one backend on one device."""

    checkpoint: ResolvedCheckpoint
    config: ModelConfig
    tokenizer: TextTokenizer
    model: Any  # ChatTTSModel, or OnnxChatTTS (an `actors.engine.backend.ModelBackend`)
    device: torch.device
    dtype: torch.dtype
    weights_bytes: int  # what the weights took on the device (CUDA; 0 on CPU and for onnxruntime)


def onnx_device(device: str) -> torch.device:
    """The onnx backend's device: "auto" is CUDA only where torch sees a GPU and onnxruntime has its CUDA provider
    (onnxruntime-gpu), else the CPU; "cuda" without that provider fails when the sessions load, naming it."""
    if device != "auto":
        return pick_device(device)
    import onnxruntime

    if torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return torch.device("cuda")
    return torch.device("cpu")


def load(model: str | Path | None, engine: EngineSettings, cache_dir: Path | None) -> Loaded:
    """Resolve (download if needed) and load the checkpoint and its tokenizer for `engine.backend`."""
    checkpoint = resolve(model, cache_dir=cache_dir, verify=engine.verify)
    config = read_model_config(checkpoint.asset)
    tokenizer = TextTokenizer(checkpoint.asset / "tokenizer", config.gpt.num_text_tokens)
    if engine.backend == "onnx":
        return _load_onnx(checkpoint, config, tokenizer, engine, cache_dir)
    device = pick_device(engine.device)
    if engine.compile != "off" and device.type != "cuda":
        raise ValueError(CPU_COMPILE_REFUSED.format(mode=engine.compile))
    dtype = pick_dtype(engine.dtype, device)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    loaded = load_model(checkpoint.asset, config, device, dtype, engine.fsq)
    weights = torch.cuda.memory_allocated(device) - before if cuda else 0
    return Loaded(checkpoint, config, tokenizer, loaded, device, dtype, weights)


def _load_onnx(
    checkpoint: ResolvedCheckpoint,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    engine: EngineSettings,
    cache_dir: Path | None,
) -> Loaded:
    """The checkpoint's ONNX export run by onnxruntime (`actors.onnx`): the folder given, else the cached export of
    this checkpoint (made on first use)."""
    from ..onnx import require_onnx

    require_onnx("engine.backend: onnx")
    from ..onnx.export import cached_export
    from ..onnx.manifest import check_source
    from ..onnx.runtime import OnnxChatTTS

    device = onnx_device(engine.device)
    if engine.onnx.path is None:
        dtype = engine.dtype or ("float16" if device.type == "cuda" else "float32")
        folder = cached_export(checkpoint.source, dtype=dtype, quantize=engine.onnx.quantize, fsq=engine.fsq,
                               verify=engine.verify, cache_dir=cache_dir)  # fmt: skip
    else:
        folder = Path(engine.onnx.path)
    check_source(folder, checkpoint.sha256, checkpoint.model_id)
    model = OnnxChatTTS(folder, config, device)
    if engine.dtype is not None and str(model.dtype).removeprefix("torch.") != engine.dtype:
        raise ValueError(f"dtype {engine.dtype!r} asked, but the ONNX export {folder} is {model.manifest['dtype']}")
    return Loaded(checkpoint, config, tokenizer, model, device, model.dtype, 0)


@dataclass
class Budget:
    bytes: int
    source: str  # where it came from, for the start-up line
    capped: str  # what capped the slots below the budget's count ("" when the budget did)


def plan_memory(
    loaded: Loaded, engine: EngineSettings, max_new_tokens: int, device_share: float
) -> tuple[SlotPlan, Budget]:
    """The replica's budget (given, or the device's default with where it came from) and its slot plan."""
    if engine.budget_mib:
        budget, source = engine.budget_mib << 20, "given (engine.budget_mib)"
    else:
        budget, source = replica_budget_bytes(loaded.device, device_share, engine.budget_fraction, loaded.weights_bytes)
    max_slots, cap = engine.max_slots, "engine.max_slots"
    if max_slots is None and loaded.device.type == "cpu":
        max_slots = CPU_MAX_SLOTS  # CPU throughput stops growing well before the budget's slot count
        cap = "the CPU default; engine.max_slots / --max-slots changes it"
    plan = plan_slots(
        loaded.config,
        loaded.dtype,
        budget,
        engine.max_prompt_tokens,
        max_new_tokens,
        max_slots=max_slots,
        persistent_step=engine.compile == "cudagraphs",  # the graphs' pool keeps the step's memory
    )
    capped = f"; slots capped at {max_slots} ({cap})" if max_slots == plan.slots else ""
    return plan, Budget(budget, source, capped)


def warm_up(batcher: ContinuousBatcher) -> None:
    """Compile the decode step before the first request: throwaway rows run through the batcher alone and then
    two at a time (a size-1 pool is its own graph: torch specialises sizes 0 and 1), with growing prefixes.
    With CUDA graphs every shape bucket is a graph of its own: all of them are recorded here, not while serving."""
    started = time.perf_counter()
    params = SamplingParams(max_new_tokens=min(4, batcher.plan.max_new_tokens), min_new_tokens=1)
    for rows in (1, min(batcher.plan.slots, 2)):
        for row in range(rows):
            prompt = CodePrompt(token_ids=list(range(1, 3 + row)))  # lengths differ: so do the cache prefixes
            batcher.submit(("warm-up", row), prompt, params)
        for _ in batcher.run():
            pass
    # and a step with a refine-text row in it: the compiled step's text path (another graph)
    batcher.submit(("warm-up", "code"), CodePrompt(token_ids=[1, 2]), params)
    batcher.submit(("warm-up", "text"), CodePrompt(token_ids=[1, 2, 3]), params, text=True)
    for _ in batcher.run():
        pass
    graphs = len(batcher.record_cuda_graphs()) if batcher.compile == "cudagraphs" else 0
    batcher.stats = BatcherStats(blocks_total=batcher.plan.pool_blocks, blocks_free=batcher.kv.free)
    log.info(
        "decode step compiled (%s%s) in %.1f s",
        batcher.compile,
        f", {graphs} CUDA graphs" if graphs else "",
        time.perf_counter() - started,
    )
