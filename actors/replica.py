"""One synthesis replica: a loaded model + tokenizer on one device, turning requests into audio.

This is the object a Ray actor (offline) or a Serve replica (online) holds exactly one of, and what
`raytts synth` drives in-process. It owns request validation (every problem becomes that row's `error`, never
an exception that takes the batch down), segmenting long text, submitting segments to the continuous batcher,
decoding finished ones to audio, and joining segment audio back per row: the `actors.driver.Engine` protocol, which
the one driver (`actors.driver.EngineDriver`) runs for `synthesize` and for `AsyncSynthesizer`. Generation itself is
`actors.engine`; device, dtype and budget choice `actors.placement`; the factory from settings `actors.settings`.

Upstream's refine-text stage (on by default, `SynthesisRequest.refine`): each segment first runs as a text row in
the same batcher (`[Sbreak]{text}[Pbreak]{refine prompt}`, text head, until [Ebreak]); when it finishes, its
tokens below [break_0] are decoded (and re-encoded, as upstream does) into the code stage's prompt, and the segment
goes on as a code row, in the same replica, memory budget and decode steps as every other row.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model, read_model_config, resolve
from .driver import EngineDriver, Parts, Segment, SegmentAudio
from .engine.batcher import BatcherStats, ContinuousBatcher, FinishedRow
from .engine.generate import decode_waveforms
from .engine.memory import decode_bytes_per_mel_frame, plan_slots
from .engine.params import SamplingParams
from .engine.prompt import CodePrompt
from .engine.stream import StreamDecoder
from .placement import pick_device, pick_dtype, replica_budget_bytes
from .requests import SynthesisRequest, SynthesisResult
from .speaker import SpeakerError, normalized_speaker, parse_speaker
from .text import clean_text, decorate, refine_prompt, text_front_end
from .tokenizer import TextTokenizer
from .validation import RequestError
from .voices import encode_reference

log = logging.getLogger(__name__)

_SEGMENT_SEED_STEP = 0x9E3779B97F4A7C15
CPU_MAX_SLOTS = 64  # rows at once on CPU unless engine.max_slots says otherwise
BACKENDS = ("torch", "onnx")


def _onnx_device(device: str):
    """The onnx backend's device: "auto" is CUDA only where torch sees a GPU and onnxruntime has its CUDA provider
    (onnxruntime-gpu), else the CPU; "cuda" without that provider fails when the sessions load, naming it."""
    if device != "auto":
        return pick_device(device)
    import onnxruntime

    if torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class Refine:
    """A segment's code stage, waiting for its refine-text stage to finish: what its code prompt is built from."""

    source: str  # the segment's text before refining (spoken if the refine stage returns no text)
    prompt: str  # the code stage's control tags
    transcript: str  # the reference transcript placed before them
    speaker: torch.Tensor | None
    reference: torch.Tensor | None
    params: SamplingParams  # the code stage's
    only: bool  # refine only: the refined text is the result, no audio


@dataclass(frozen=True)
class _Refining:
    """The batcher key of a segment's refine-text row."""

    key: object


@dataclass
class ReplicaStats:
    requests: int = 0
    failed: int = 0
    segments: int = 0
    frames: int = 0
    generate_s: float = 0.0
    decode_s: float = 0.0
    stream_chunks: int = 0
    refined_segments: int = 0
    refined_tokens: int = 0  # text tokens the refine stage generated (before the [break_0] filter)
    # refine stages whose text was empty, or too long for the prompt once re-encoded: the segment was spoken unrefined
    refine_fallbacks: int = 0


class Synthesizer:
    """A frozen model replica with its tokenizer. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: str | Path | None = "tiny",
        device: str = "auto",
        dtype: str | None = None,
        decoder: str = "hidden",
        max_batch_size: int | None = None,
        budget_bytes: int | None = None,
        max_prompt_tokens: int = 640,
        max_new_tokens: int = 2048,
        max_segment_tokens: int = 120,
        max_chars: int = 10_000,
        max_reference_seconds: float = 8.0,
        stream_chunk_steps: int = 24,
        fsq_variant: str = "classic",
        verify: str = "auto",
        cache_dir: Path | None = None,
        compile: str = "off",
        device_share: float = 1.0,
        budget_fraction: float = 0.85,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        onnx_quantize: str = "none",
    ) -> None:
        """`device_share` (0, 1]: the part of the device this replica may use when several share it (fractional Ray
        GPUs, or several models in one Serve replica); it scales the default budget, `budget_fraction` of the free
        device memory. `budget_bytes` given explicitly is used as is.

        `backend`: "torch" (the model's torch modules) or "onnx" (`actors.onnx`: the exported blocks run by
        onnxruntime, the same engine around them): `onnx_path` an exported folder (`raytts export-onnx`), by default
        the checkpoint exported once into the cache with `onnx_quantize` ("none" or "int8")."""
        if not 0 < device_share <= 1:
            raise ValueError(f"device_share must be in (0, 1], got {device_share}")
        if not 0 < budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction}")
        if decoder not in ("hidden", "dvae"):
            raise ValueError(f"decoder must be 'hidden' or 'dvae', got {decoder!r}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if backend == "onnx" and compile != "off":
            raise ValueError(
                f"compile={compile!r} compiles the torch decode step; the onnx backend runs with compile off"
            )
        if backend != "onnx" and onnx_path is not None:
            raise ValueError("onnx_path is the onnx backend's: set backend='onnx' (engine.backend: onnx) to use it")
        self.backend = backend
        self.device = pick_device(device) if backend == "torch" else _onnx_device(device)
        if backend == "onnx":
            weights = self._load_onnx(model, cache_dir, verify, fsq_variant, dtype, onnx_path, onnx_quantize)
        else:
            self.dtype = pick_dtype(dtype, self.device)
            weights = self._load(model, cache_dir, verify, fsq_variant)
        self.use_decoder = decoder == "hidden"
        self.max_segment_tokens = max_segment_tokens
        self.max_chars = max_chars
        self.max_reference_seconds = max_reference_seconds
        self.stream_chunk_steps = max(1, stream_chunk_steps)
        self._streams: dict[object, StreamDecoder] = {}
        self._refining: dict[object, tuple[Refine, bool]] = {}  # key -> its code stage, streamed
        self._refined: dict[object, str] = {}  # key -> refined text, for code rows that were refined
        capped = self._plan(budget_bytes, device_share, budget_fraction, weights, max_batch_size, compile,
                            max_prompt_tokens, max_new_tokens)  # fmt: skip
        self.decode_frame_bytes = decode_bytes_per_mel_frame(self.config, self.dtype)
        check_every = 1 if self.device.type == "cpu" else 8
        self.batcher = ContinuousBatcher(
            self.model, self.plan, self.tokenizer.spk_emb_id, check_every, compile, text_eos_id=self.tokenizer.eos_id
        )
        self.stats = ReplicaStats()
        if compile != "off":
            self._warm_up()
        plan = self.plan
        log.info(
            "replica ready: model %s (%s) on %s/%s (backend %s), decoder=%s, up to %d rows in flight of at most %d tokens, KV pool "
            "%d blocks x %d tokens (%d full rows; rows take blocks as they grow) (%.0f MiB of a %.0f MiB budget: %s%s)",
            self.checkpoint.source,
            self.config.name,
            self.device,
            str(self.dtype).removeprefix("torch."),
            "torch" if self.backend == "torch" else f"onnx, {self.model.quantize} quantisation",
            decoder,
            plan.slots,
            plan.slot_tokens,
            plan.pool_blocks,
            plan.block_size,
            plan.pool_blocks // plan.row_blocks,
            plan.planned_bytes / 2**20,
            self.budget_bytes / 2**20,
            self.budget_source,
            capped,
        )

    def _plan(
        self,
        budget_bytes: int | None,
        device_share: float,
        budget_fraction: float,
        weights: int,
        max_slots: int | None,
        compile: str,
        max_prompt_tokens: int,
        max_new_tokens: int,
    ) -> str:
        """Set the budget (given, or the device's default with where it came from) and the slot plan; returns what
        capped the slots below the budget's count, for the start-up line ("" when the budget did)."""
        if budget_bytes:
            self.budget_bytes, self.budget_source = budget_bytes, "given (engine.budget_mib)"
        else:
            self.budget_bytes, self.budget_source = replica_budget_bytes(
                self.device, device_share, budget_fraction, weights
            )
        cap = "engine.max_slots"
        if max_slots is None and self.device.type == "cpu":
            max_slots = CPU_MAX_SLOTS  # CPU throughput stops growing well before the budget's slot count
            cap = "the CPU default; engine.max_slots / --max-batch-size changes it"
        self.plan = plan_slots(
            self.config,
            self.dtype,
            self.budget_bytes,
            max_prompt_tokens,
            max_new_tokens,
            max_slots=max_slots,
            persistent_step=compile == "cudagraphs",  # the graphs' pool keeps the step's memory
        )
        return f"; slots capped at {max_slots} ({cap})" if max_slots == self.plan.slots else ""

    def _load(self, model: str | Path | None, cache_dir: Path | None, verify: str, fsq_variant: str) -> int:
        """Resolve (download if needed) and load the checkpoint and its tokenizer; returns the bytes its weights
        took on the device (CUDA; 0 on CPU), which other replicas sharing the device do not hold."""
        self.checkpoint = resolve(model, cache_dir=cache_dir, verify=verify)
        self.config = read_model_config(self.checkpoint.asset)
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        self.model = load_model(self.checkpoint.asset, self.config, self.device, self.dtype, fsq_variant)
        self.tokenizer = TextTokenizer(self.checkpoint.asset / "tokenizer", self.config.gpt.num_text_tokens)
        return torch.cuda.memory_allocated(self.device) - before if cuda else 0

    def _load_onnx(
        self,
        model: str | Path | None,
        cache_dir: Path | None,
        verify: str,
        fsq_variant: str,
        dtype: str | None,
        onnx_path: str | Path | None,
        quantize: str,
    ) -> int:
        """The checkpoint's config and tokenizer, and its ONNX export run by onnxruntime (`actors.onnx`): the folder
        given, else the cached export of this checkpoint (made on first use). Returns 0: onnxruntime's weights are
        outside torch's allocator."""
        from .onnx.export import cached_export
        from .onnx.manifest import check_source
        from .onnx.runtime import OnnxChatTTS

        self.checkpoint = resolve(model, cache_dir=cache_dir, verify=verify)
        self.config = read_model_config(self.checkpoint.asset)
        self.tokenizer = TextTokenizer(self.checkpoint.asset / "tokenizer", self.config.gpt.num_text_tokens)
        if onnx_path is None:
            export_dtype = dtype or ("float16" if self.device.type == "cuda" else "float32")
            folder = cached_export(self.checkpoint.source, dtype=export_dtype,
                                   quantize=quantize, fsq=fsq_variant, verify=verify, cache_dir=cache_dir)  # fmt: skip
        else:
            folder = Path(onnx_path)
        check_source(folder, self.checkpoint.sha256, self.checkpoint.model_id)
        self.model = OnnxChatTTS(folder, self.config, self.device)
        self.dtype = self.model.dtype
        if dtype is not None and str(self.dtype).removeprefix("torch.") != dtype:
            raise ValueError(f"dtype {dtype!r} asked, but the ONNX export {folder} is {self.model.manifest['dtype']}")
        return 0

    def _warm_up(self) -> None:
        """Compile the decode step before the first request: throwaway rows run through the batcher alone and then
        two at a time (a size-1 pool is its own graph: torch specialises sizes 0 and 1), with growing prefixes.
        With CUDA graphs every shape bucket is a graph of its own: all of them are recorded here, not while serving."""
        started = time.perf_counter()
        params = SamplingParams(max_new_tokens=min(4, self.plan.max_new_tokens), min_new_tokens=1)
        for rows in (1, min(self.plan.slots, 2)):
            for row in range(rows):
                prompt = CodePrompt(token_ids=list(range(1, 3 + row)))  # lengths differ: so do the cache prefixes
                self.batcher.submit(("warm-up", row), prompt, params)
            for _ in self.batcher.run():
                pass
        # and a step with a refine-text row in it: the compiled step's text path (another graph)
        self.batcher.submit(("warm-up", "code"), CodePrompt(token_ids=[1, 2]), params)
        self.batcher.submit(("warm-up", "text"), CodePrompt(token_ids=[1, 2, 3]), params, text=True)
        for _ in self.batcher.run():
            pass
        graphs = len(self.batcher.record_cuda_graphs()) if self.batcher.compile == "cudagraphs" else 0
        self.batcher.stats = BatcherStats()
        log.info(
            "decode step compiled (%s%s) in %.1f s",
            self.batcher.compile,
            f", {graphs} CUDA graphs" if graphs else "",
            time.perf_counter() - started,
        )

    # ---------------------------------------------------------------------------------------------- requests

    def encode_reference(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Reference speech (any rate, mono or [samples, channels]) -> DVAE prompt codes [num_vq, P]."""
        return encode_reference(self.model.dvae, self.device, audio, sample_rate, self.max_reference_seconds)

    def _segments(self, row: int, request: SynthesisRequest, result: SynthesisResult) -> list[Segment]:
        """The request's segments; fills the result's spoken text and dropped characters."""
        if request.front_end is None and not isinstance(request.text, str):
            raise RequestError(f"text must be a string, got {type(request.text).__name__}")
        request.params.validate(self.config.gpt.num_vq)
        if not re.fullmatch(r"(\[[\w]+\])*", request.prompt or ""):
            raise RequestError(f"prompt must be a run of control tags such as [speed_5], got {request.prompt!r:.60}")
        hidden = self.config.gpt.hidden_size
        speaker = parse_speaker(request.speaker, hidden)
        speaker = None if speaker is None else normalized_speaker(speaker)
        reference = request.reference_codes
        if reference is not None and (reference.ndim != 2 or reference.shape[0] != self.config.gpt.num_vq):
            raise RequestError(f"reference codes must be [{self.config.gpt.num_vq}, T], got {tuple(reference.shape)}")
        front_end = request.front_end
        if front_end is None:
            front_end = text_front_end(
                request.text,
                self.tokenizer,
                prompt=request.prompt,
                has_speaker=speaker is not None,
                reference_text=request.reference_text,
                normalize=request.normalize,
                max_segment_tokens=self.max_segment_tokens,
                max_chars=self.max_chars,
                strict=request.strict,
            )
        result.spoken_text, result.dropped = front_end.spoken_text, front_end.dropped
        if request.params.max_new_tokens > self.plan.max_new_tokens:
            raise RequestError(
                f"max_new_tokens {request.params.max_new_tokens} exceeds this replica's "
                f"{self.plan.max_new_tokens}; lower it or start the replica with a larger max_new_tokens"
            )
        refine = request.refine
        if refine.enabled and not re.fullmatch(r"(\[[\w]+\])*", refine.prompt or ""):
            raise RequestError(
                f"refine prompt must be a run of control tags such as [oral_2], got {refine.prompt!r:.60}"
            )
        if refine.enabled and len(front_end.segments) != len(front_end.segment_ids):
            raise RequestError(
                "the refine-text stage needs each segment's text; this is a raytts bug, please report it"
            )
        segments = []
        for index, ids in enumerate(front_end.segment_ids):
            if refine.enabled:
                segments.append(
                    self._refine_segment(row, index, request, front_end.segments[index], speaker, reference)
                )
                continue
            seed = _segment_seed(request.params.seed, index)
            prompt = CodePrompt(ids, speaker, reference)
            prompt_room = self.plan.slot_tokens - self.plan.max_new_tokens
            if prompt.length > prompt_room:
                transcript = clean_text(request.reference_text, request.normalize) if request.reference_text else ""
                overhead = self.tokenizer.count(decorate("", request.prompt, speaker is not None, transcript))
                raise RequestError(
                    f"prompt of {prompt.length} tokens ({overhead} of them decoration and transcript, plus the "
                    f"reference codes) exceeds this replica's {prompt_room} prompt tokens: use a shorter reference "
                    f"clip or transcript, or raise max_prompt_tokens"
                )
            segments.append(Segment(row, index, prompt, replace(request.params, seed=seed)))
        return segments

    def _refine_segment(
        self,
        row: int,
        index: int,
        request: SynthesisRequest,
        text: str,
        speaker: torch.Tensor | None,
        reference: torch.Tensor | None,
    ) -> Segment:
        """A segment that starts as a refine-text row: `[Sbreak]{text}[Pbreak]{refine prompt}`, the refine stage's
        own sampling and seed (per segment, like the code stage's)."""
        refine = request.refine
        prompt = CodePrompt(self.tokenizer.encode(refine_prompt(text, refine.prompt)))
        transcript = clean_text(request.reference_text, request.normalize) if request.reference_text else ""
        # The refined text becomes the code prompt: it may take what the prompt room leaves after the decoration,
        # the transcript and the reference codes (and fits the slot as a refine row too).
        decoration = self.tokenizer.count(decorate("", request.prompt, speaker is not None, transcript))
        references = 0 if reference is None else int(reference.shape[1])
        room = min(
            self.plan.max_new_tokens,
            self.plan.slot_tokens - prompt.length,
            self.plan.slot_tokens - self.plan.max_new_tokens - decoration - references,
        )
        if room < 1:
            raise RequestError(
                f"the code prompt's decoration, transcript and reference codes ({decoration + references} tokens) "
                f"leave no room for the refined text in this replica's prompt tokens: use a shorter reference, or "
                f"turn refine off"
            )
        params = refine.params(request.params.seed, room)
        params = replace(params, seed=_segment_seed(params.seed, index))
        if params.max_new_tokens > room:
            raise RequestError(
                f"refine max_new_tokens {params.max_new_tokens} exceeds the {room} this replica's rows hold for "
                f"refined text (prompt tokens left after the decoration and reference, and the slot); lower it"
            )
        code_params = replace(request.params, seed=_segment_seed(request.params.seed, index))
        plan = Refine(text, request.prompt, transcript, speaker, reference, code_params, refine.only)
        return Segment(row, index, prompt, params, plan)

    # ---------------------------------------------------------------------------------------------- synthesis

    def synthesize(self, requests: list[SynthesisRequest]) -> list[SynthesisResult]:
        """Synthesise every request; failures come back as results with `error` set, in input order.

        Drives the engine on the calling thread; for many concurrent callers use `AsyncSynthesizer`.
        """
        return EngineDriver(self).run(requests)

    def prepare(self, requests: list[SynthesisRequest]) -> tuple[list[SynthesisResult], list[Segment]]:
        """Validate and segment requests: a result per request (errors filled in) and the segments to run."""
        results = [SynthesisResult(id=r.id, text=r.text if isinstance(r.text, str) else "") for r in requests]
        segments: list[Segment] = []
        for row, request in enumerate(requests):
            try:
                segments.extend(self._segments(row, request, results[row]))
            except (RequestError, SpeakerError, ValueError) as err:
                results[row].error = str(err)
                results[row].spoken_text = results[row].dropped = None
        return results, segments

    def submit(self, segment: Segment, key: object, stream: bool = False) -> None:
        """Queue a segment. A streamed segment comes back from `pump` in pieces as its frames are generated (after
        its refine-text stage, when it has one)."""
        if segment.refine is not None:
            self._refining[key] = (segment.refine, stream)
            self.batcher.submit(_Refining(key), segment.prompt, segment.params, text=True)
            return
        if stream:
            self._streams[key] = StreamDecoder(self.model, self.use_decoder)
        self.batcher.submit(key, segment.prompt, segment.params, stream=stream)

    def cancel(self, keys: Callable[[object], bool]) -> int:
        """Forget every queued or running segment whose key matches (a caller that went away)."""
        for held in (self._streams, self._refining, self._refined):
            for key in [k for k in held if keys(k)]:
                del held[key]
        return self.batcher.cancel(lambda k: keys(k.key) if isinstance(k, _Refining) else keys(k))

    def pump(self) -> list[SegmentAudio]:
        """One engine step: every segment that finished in it, and new audio of streamed segments."""
        started = time.perf_counter()
        finished = self.batcher.step()
        self.stats.generate_s += time.perf_counter() - started
        out: list[SegmentAudio] = []
        refined = [row for row in finished if isinstance(row.key, _Refining)]
        finished = [row for row in finished if not isinstance(row.key, _Refining)]
        if refined:
            # one device-to-host copy for every refinement that ended in this step
            lengths = [int(row.codes.shape[0]) for row in refined]
            tokens = torch.cat([row.codes[:, 0] for row in refined]).tolist()
            start = 0
            for row, n in zip(refined, lengths, strict=True):
                out.extend(self._code_stage(row.key.key, tokens[start : start + n], row.finished))
                start += n
        # Finished rows and progress are views into their slots: decode them before the next step refills them.
        for partial in self.batcher.progress:
            stream = self._streams[partial.key]
            if partial.codes.shape[0] - stream.steps_seen >= self.stream_chunk_steps:
                chunk = self._stream_piece(stream, partial.hidden if self.use_decoder else partial.codes, False)
                if chunk.size:
                    out.append(SegmentAudio(partial.key, chunk, None, done=False))
        whole = [row for row in finished if row.key not in self._streams]
        for row in finished:
            if row.key in self._streams:
                stream = self._streams.pop(row.key)
                chunk = self._stream_piece(stream, row.hidden if self.use_decoder else row.codes, True)
                codes = _to_host(row.codes, np.int64)
                out.append(SegmentAudio(row.key, chunk, codes, True, row.finished, self._refined.pop(row.key, None)))
                self.stats.segments += 1
                self.stats.frames += int(row.codes.shape[0])
        for group in self._decode_groups(whole):
            for row, (audio, codes) in zip(group, self._decode(group), strict=True):
                out.append(SegmentAudio(row.key, audio, codes, True, row.finished, self._refined.pop(row.key, None)))
        return out

    def _code_stage(self, key: object, tokens: list[int], ended: bool) -> list[SegmentAudio]:
        """Segment `key`'s refine-text row finished with `tokens` (`ended`: by [Ebreak]): keep those below [break_0],
        decode them (re-encoding canonicalises the WordPiece tokens, as upstream's decode -> encode does), and queue
        the segment's code row with that text (no second normalisation, as upstream). Refine-only segments are done
        here."""
        plan, stream = self._refining.pop(key)
        self.stats.refined_segments += 1
        self.stats.refined_tokens += len(tokens)
        text = self.tokenizer.decode([t for t in tokens if t < self.tokenizer.break_0_id]).strip()
        if not re.sub(r"\[[\w]+\]", "", text).strip(" ，。、,."):
            # Upstream regenerates the whole batch when a row's first token is [Ebreak] (ensure_non_empty, unseeded
            # only); rows here have their own seeded streams, so the segment is spoken as it was before refining.
            self.stats.refine_fallbacks += 1
            text = plan.source
        if plan.only:
            return [SegmentAudio(key, np.zeros(0, np.float32), None, True, ended, text)]
        room = self.plan.slot_tokens - self.plan.max_new_tokens
        ids = self.tokenizer.encode(decorate(text, plan.prompt, plan.speaker is not None, plan.transcript))
        if len(ids) + (0 if plan.reference is None else int(plan.reference.shape[1])) > room:
            # Refinement is capped to the prompt room, but decode -> encode can grow it (an `[unused3]` token reads
            # back as four): the segment is spoken unrefined, as `spoken_text` then says.
            log.warning(
                "a refined segment re-encoded to %d prompt tokens, over the replica's %d: spoken unrefined",
                len(ids),
                room,
            )
            self.stats.refine_fallbacks += 1
            text = plan.source
            ids = self.tokenizer.encode(decorate(text, plan.prompt, plan.speaker is not None, plan.transcript))
        prompt = CodePrompt(ids, plan.speaker, plan.reference)
        self._refined[key] = text
        if stream:
            self._streams[key] = StreamDecoder(self.model, self.use_decoder)
        self.batcher.submit(key, prompt, plan.params, stream=stream)
        return []

    def _stream_piece(self, stream: StreamDecoder, rows: torch.Tensor, final: bool) -> np.ndarray:
        started = time.perf_counter()
        stream.steps_seen = int(rows.shape[0])
        chunk = _to_host(stream.push(rows, final=final).float(), np.float32)
        self.stats.stream_chunks += 1
        self.stats.decode_s += time.perf_counter() - started
        return chunk

    @property
    def busy(self) -> bool:
        return self.batcher.busy

    def join(self, results: list[SynthesisResult], parts: Parts) -> None:
        """Concatenate each request's segments in order into its result."""
        for row, row_parts in parts.items():
            result = results[row]
            ordered = [row_parts[i] for i in sorted(row_parts)]
            result.segments = len(ordered)
            failed = [part.error for part in ordered if part.error]
            if failed:
                result.error, result.spoken_text, result.dropped = failed[0], None, None
                continue
            if any(part.text is not None for part in ordered):  # refined: what was said is the refined text
                result.spoken_text = " ".join(part.text or "" for part in ordered)
            if all(part.codes is None for part in ordered):  # refine only: the text is the result
                result.refine_only = True
                continue
            result.truncated_segments = sum(1 for part in ordered if not part.eos)
            if any(part.codes.shape[0] == 0 for part in ordered):
                result.error = (
                    "the model ended a segment before producing any audio (EOS at the first step); "
                    "retry with another seed or set min_new_tokens >= 1"
                )
                continue
            result.audio = np.concatenate([part.audio for part in ordered])
            result.codes = np.concatenate([part.codes for part in ordered]).astype(np.int16)
        self.stats.requests += len(results)
        self.stats.failed += sum(1 for r in results if r.error)

    def _decode_groups(self, rows: list[FinishedRow]) -> list[list[FinishedRow]]:
        """Consecutive groups whose padded Decoder + Vocos activations fit the plan's decode reserve."""
        groups: list[list[FinishedRow]] = []
        current: list[FinishedRow] = []
        longest = 0
        for row in sorted(rows, key=lambda r: int(r.codes.shape[0])):
            frames = 2 * max(longest, int(row.codes.shape[0]))
            if current and (len(current) + 1) * frames * self.decode_frame_bytes > self.plan.decode_bytes:
                groups.append(current)
                current, longest = [], 0
            current.append(row)
            longest = max(longest, int(row.codes.shape[0]))
        if current:
            groups.append(current)
        return groups

    def _decode(self, rows: list[FinishedRow]) -> list[tuple[np.ndarray, np.ndarray]]:
        started = time.perf_counter()
        inputs = [row.hidden if self.use_decoder else row.codes for row in rows]
        waves = decode_waveforms(self.model, inputs, self.use_decoder)
        # One device-to-host copy for the group's audio and one for its codes, straight into host arrays the
        # results own (so finished audio never holds device or engine memory).
        lengths = [int(w.shape[0]) for w in waves]
        audio_host = _to_host(torch.cat(waves).float(), np.float32)
        codes_host = _to_host(torch.cat([row.codes for row in rows]), np.int64)
        self.stats.segments += len(rows)
        self.stats.frames += int(codes_host.shape[0])
        self.stats.decode_s += time.perf_counter() - started
        out = []
        audio_at = codes_at = 0
        for row, n in zip(rows, lengths, strict=True):
            t = int(row.codes.shape[0])
            out.append((audio_host[audio_at : audio_at + n], codes_host[codes_at : codes_at + t]))
            audio_at += n
            codes_at += t
        return out


def _segment_seed(seed: int, index: int) -> int:
    """Segment `index`'s seed of a row seeded `seed` (segment 0 keeps the row's seed)."""
    return seed if index == 0 else (seed ^ (index * _SEGMENT_SEED_STEP)) % 2**63


def _to_host(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    out = np.empty(tuple(tensor.shape), dtype=dtype)
    torch.from_numpy(out).copy_(tensor)
    return out
