"""The Ray Serve application: each replica holds one engine per loaded checkpoint and answers HTTP.

Requests never wait for a static batch: every request's segments go straight into the loaded model's
`AsyncSynthesizer`, whose continuous batcher runs them in shared decode steps with whatever else is in flight
(rows join free slots at the next step). Streamed responses come from the engine's incremental decoder.

Routes: OpenAI's `POST /v1/audio/speech`, raytts' `POST /v1/tts` (ChatTTS controls), `GET /v1/models`,
`GET /v1/voices`, `GET /v1/stats`, `GET /healthz`. Every refusal is a JSON error with a 4xx status, or 503 +
Retry-After when the replica is full or a request ran past its deadline.

Rooms: bodies and encoders `api`, the native route's checks and answers `native`, auth and body limits `auth`,
resident models and leases `models`, streamed bodies `streaming`, memory accounting `memory`, request limits
`sizing`, the Serve application object `deployment`; `app` is what a Serve config names.
"""

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from ray import serve

from actors.async_engine import AsyncSynthesizer, SpeechStream
from actors.engine.params import SamplingParams
from actors.model.config import NUM_VQ
from actors.requests import SynthesisRequest, SynthesisResult
from actors.text import Reading
from actors.validation import RequestError
from actors.voices import Voice

from . import native
from .api import (
    AUDIO_RESPONSE,
    ERROR_RESPONSES,
    STREAMABLE,
    ApiError,
    AudioEncoder,
    NativeRequest,
    SpeechRequest,
    check_tags,
    encode_whole,
    parse_body,
    request_body_spec,
    speed_tag,
)
from .auth import authorize, read_body
from .config import DeploymentSpec, ServeConfig
from .errors import api
from .memory import rss_bytes, tensor_bytes
from .models import Lease, LoadedModel, load_served_model
from .streaming import stream_response

__all__ = ["TTSServer"]

log = logging.getLogger(__name__)


def spoken_headers(result: SynthesisResult) -> dict[str, str]:
    """What the model was asked to say, what the front end deleted, what the reading guessed (UTF-8,
    percent-encoded: HTTP header values are Latin-1), the quality measures and flags, the takes made and the kept
    take's seed (a re-take kept), for a whole (not streamed) response."""
    return {
        "X-Raytts-Spoken-Text": quote(result.spoken_text or "", safe=" ,.[]_'"),
        "X-Raytts-Dropped-Chars": quote(result.dropped or "", safe=""),
        "X-Raytts-Reading-Notes": quote(result.notes or "", safe=" ,.'"),
        "X-Raytts-QC-Flags": ",".join(result.quality_flags or []),
        "X-Raytts-QC": ", ".join(f"{k}={v}" for k, v in (result.quality.as_dict() if result.quality else {}).items()),
        "X-Raytts-QC-Attempts": str(result.attempts),
        **({"X-Raytts-Seed": str(result.seed)} if result.seed is not None else {}),
    }


def _in_serve() -> bool:
    try:
        serve.get_replica_context()
        return True
    except RuntimeError:
        return False


@serve.deployment(name=DeploymentSpec().name)  # every option is applied by `build_app` from a DeploymentSpec
@serve.ingress(api)
class TTSServer:
    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.config = ServeConfig.model_validate(config)
        if self.config.engine.threads:
            import torch

            torch.set_num_threads(self.config.engine.threads)
        self.keys = self.config.auth.keys()
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = asyncio.Lock()
        self.loads = 0
        self.unloads = 0
        first = self.config.model_name(None)
        self._install(first, load_served_model(first, self.config, self.config.limits.max_models_per_replica))

    # ------------------------------------------------------------------------------------------ lifecycle

    async def check_health(self) -> None:
        """Serve's health probe: every engine loop alive and the device answering a kernel."""
        for loaded in self.models.values():
            if loaded.engine is not None and loaded.engine.error is not None:
                raise RuntimeError(f"model {loaded.name}: engine loop died: {loaded.engine.error!r}")
        await asyncio.to_thread(self._touch_device)

    def _touch_device(self) -> None:
        import torch

        for loaded in list(self.models.values()):
            engine = loaded.engine
            if engine is None:
                continue
            device = engine.synthesizer.device
            probe = torch.ones(8, device=device).sum()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if float(probe) != 8.0:
                raise RuntimeError(f"device {device} returned a wrong sum: {float(probe)}")

    def __del__(self) -> None:
        for loaded in self.models.values():
            loaded.close()

    def _install(self, name: str, loaded: LoadedModel) -> None:
        self.models[name] = loaded
        self.loads += 1

    async def _model(self, name: str) -> LoadedModel:
        """The loaded model `name`, loading it (and unloading the least recently used) when needed."""
        loaded = self.models.get(name)
        if loaded is not None:
            self.models.move_to_end(name)
            return loaded
        async with self._lock:
            loaded = self.models.get(name)
            if loaded is not None:
                return loaded
            limit = self.config.limits.max_models_per_replica
            while len(self.models) >= limit:
                evicted_name, evicted = self.models.popitem(last=False)
                log.info("unloading model %s to make room for %s", evicted_name, name)
                await self._drain(evicted)
                await asyncio.to_thread(evicted.close)
                self.unloads += 1
            loaded = await asyncio.to_thread(load_served_model, name, self.config, limit)
            self._install(name, loaded)
            return loaded

    async def _drain(self, loaded: LoadedModel) -> None:
        """Let requests already on an evicted model finish (bounded by the request timeout) before unloading."""
        deadline = time.monotonic() + self.config.limits.request_timeout_s
        while loaded.users > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------------------------------ helpers

    def _model_name(self, requested: str | None) -> str:
        name = self.config.model_name(requested)
        if name is None:
            known = sorted([*self.config.models, *self.config.model_aliases])
            raise ApiError(404, f"model {requested!r} does not exist here; use one of {known}", param="model")
        return name

    def _voice(self, loaded: LoadedModel, requested: str | None) -> tuple[str, Voice]:
        name = self.config.voice_name(requested)
        voice = loaded.voices.get(name)
        if voice is None:
            raise ApiError(
                400, f"voice {requested!r} is not configured; use one of {sorted(loaded.voices)}", param="voice"
            )
        return name, voice

    def _check_text(self, text: str, param: str) -> None:
        limit = self.config.limits.max_input_chars
        if len(text) > limit:
            raise ApiError(400, f"{param} has {len(text)} characters; the limit is {limit}: split it", param=param)
        if not text.strip():
            raise ApiError(400, f"{param} is empty", param=param)

    def _check_capacity(self, loaded: LoadedModel) -> None:
        queued = self._engine(loaded).stats()["queued_rows"]
        if queued >= self.config.limits.max_queued_rows:
            raise self._busy(f"{queued} rows are already waiting for a slot on this replica")

    def _busy(self, why: str) -> ApiError:
        seconds = self.config.limits.retry_after_s
        return ApiError(
            503, f"server busy: {why}; retry in {seconds} s", kind="server_busy", headers={"Retry-After": str(seconds)}
        )

    def _request(self, text: str, voice: Voice, speaker: str | None, prompt: str, **sampling: Any) -> SynthesisRequest:
        params = SamplingParams(**{"seed": self.config.sampling_seed, **sampling})
        try:
            params.validate(NUM_VQ)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        return SynthesisRequest(
            id=f"req-{uuid.uuid4().hex[:16]}",
            text=text,
            speaker=speaker if speaker is not None else voice.speaker,
            reference_codes=None if speaker is not None else voice.reference_codes,
            reference_text="" if speaker is not None else voice.reference_text,
            params=params,
            prompt=prompt,
            refine=self.config.refine.options(),
        )

    def _engine(self, loaded: LoadedModel) -> AsyncSynthesizer:
        if loaded.engine is None:
            raise self._busy(f"model {loaded.name} was just unloaded to make room for another")
        return loaded.engine

    async def _whole(self, loaded: LoadedModel, request: SynthesisRequest) -> SynthesisResult:
        timeout = self.config.limits.request_timeout_s
        try:
            (result,) = await asyncio.wait_for(self._engine(loaded).synthesize([request]), timeout)
        except asyncio.TimeoutError:
            raise self._busy(f"the request did not finish within {timeout:.0f} s") from None
        except RuntimeError as err:  # the engine was closed (model unloaded) or died (the health check restarts us)
            raise self._busy(str(err)) from None
        if result.error:
            # a problem of the request is the client's (400); audio the model could not make is not (422)
            raise ApiError(400 if result.error_kind == "input" else 422, result.error, param="input")
        return result

    async def _open(self, loaded: LoadedModel, request: SynthesisRequest) -> SpeechStream:
        timeout = self.config.limits.request_timeout_s
        try:
            return await asyncio.wait_for(self._engine(loaded).open_stream(request), timeout)
        except RequestError as err:
            raise ApiError(400, str(err), param="input") from None
        except asyncio.TimeoutError:
            raise self._busy(f"the request was not accepted within {timeout:.0f} s") from None
        except RuntimeError as err:
            raise self._busy(str(err)) from None

    # ------------------------------------------------------------------------------------------ routes

    @api.post(
        "/v1/audio/speech",
        openapi_extra=request_body_spec(SpeechRequest),
        responses={**AUDIO_RESPONSE, **ERROR_RESPONSES},
    )
    async def speech(self, request: Request) -> Response:
        """OpenAI-compatible: the `openai` SDK's `client.audio.speech.create(...)` works unchanged."""
        authorize(request, self.keys, self.config.auth)
        body: SpeechRequest = parse_body(await read_body(request, self.config.limits.max_body_bytes), SpeechRequest)
        name = self._model_name(body.model)
        self._check_text(body.input, "input")
        encoder = AudioEncoder(body.response_format)
        prompt = speed_tag(body.speed) + check_tags(body.instructions or "", "instructions")
        lease = Lease(await self._model(name))
        try:
            loaded = lease.loaded
            voice_name, voice = self._voice(loaded, body.voice_name())
            self._check_capacity(loaded)
            synth_request = self._request(body.input, voice, None, prompt, max_new_tokens=self.config.max_new_tokens)
            headers = {"X-Raytts-Model": name, "X-Raytts-Voice": voice_name}
            if body.stream_format == "sse" or encoder.format in STREAMABLE:
                stream = await self._open(loaded, synth_request)
                return stream_response(
                    stream, encoder, body.stream_format == "sse", headers, lease, self.config.limits.request_timeout_s
                )
            result = await self._whole(loaded, synth_request)
            headers |= spoken_headers(result)
            return Response(encode_whole(result.audio, encoder.format), media_type=encoder.media_type, headers=headers)
        finally:
            if not lease.streaming:
                lease.release()

    @api.post(
        "/v1/tts",
        openapi_extra=request_body_spec(NativeRequest),
        responses={
            200: {
                "description": AUDIO_RESPONSE[200]["description"] + "; JSON with base64 audio and codes (return_codes)",
                "content": {**AUDIO_RESPONSE[200]["content"], "application/json": {"schema": {"type": "object"}}},
            },
            **ERROR_RESPONSES,
        },
    )
    async def tts(self, request: Request) -> Response:
        """Native: ChatTTS' controls (seed, speaker string, sampling, control tags), codes on request."""
        authorize(request, self.keys, self.config.auth)
        body: NativeRequest = parse_body(await read_body(request, self.config.limits.max_body_bytes), NativeRequest)
        name = self._model_name(body.model)
        self._check_text(body.text, "text")
        encoder = AudioEncoder(body.response_format)
        prompt, refine, max_new = native.checked(body, self.config, encoder)
        lease = Lease(await self._model(name))
        try:
            loaded = lease.loaded
            voice_name, voice = (None, Voice()) if body.speaker is not None else self._voice(loaded, body.voice)
            self._check_capacity(loaded)
            synth_request = self._request(body.text, voice, body.speaker, prompt, **native.sampling(body, max_new))
            synth_request.normalize, synth_request.strict = body.normalize, body.strict_text
            synth_request.reading = Reading.of(body.date_order, body.replacements)
            synth_request.refine, synth_request.quality = refine, native.quality(body, self.config)
            headers = {"X-Raytts-Model": name, "X-Raytts-Voice": voice_name or "speaker"}
            if body.stream:
                stream = await self._open(loaded, synth_request)
                return stream_response(stream, encoder, False, headers, lease, self.config.limits.request_timeout_s)
            result = await self._whole(loaded, synth_request)
            headers |= spoken_headers(result)
            if result.refine_only:
                return native.refine_only_answer(synth_request.id, name, result, headers)
            audio = encode_whole(result.audio, encoder.format)
            if not body.return_codes:
                return Response(audio, media_type=encoder.media_type, headers=headers)
            return native.codes_answer(synth_request.id, name, voice_name, result, audio, encoder.format, headers)
        finally:
            if not lease.streaming:
                lease.release()

    @api.get("/v1/models", responses={401: ERROR_RESPONSES[401]})
    async def list_models(self, request: Request) -> dict[str, Any]:
        authorize(request, self.keys, self.config.auth)
        names = [*self.config.models, *(a for a in self.config.model_aliases if a not in self.config.models)]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "raytts"} for n in names],
        }

    @api.get("/v1/voices", responses={401: ERROR_RESPONSES[401]})
    async def list_voices(self, request: Request) -> dict[str, Any]:
        authorize(request, self.keys, self.config.auth)
        voices = []
        for name, spec in self.config.voice_specs().items():
            if spec.seed is not None:
                voices.append({"id": name, "kind": "seed", "seed": spec.seed})
            else:
                voices.append({"id": name, "kind": "speaker" if spec.speaker else "reference"})
        return {"object": "list", "data": voices}

    @api.get("/v1/stats", responses={401: ERROR_RESPONSES[401]})
    async def stats(self, request: Request, tensors: bool = False) -> dict[str, Any]:
        """This replica's engines (steps, concurrency, occupancy) and memory. `?tensors=true` adds the bytes of
        every live tensor (a full scan of the heap: for checks and tests, not for frequent polling)."""
        authorize(request, self.keys, self.config.auth)
        memory: dict[str, int] = {"rss_bytes": rss_bytes()}
        if tensors:
            memory["tensor_bytes"] = await asyncio.to_thread(tensor_bytes)
        import torch

        if torch.cuda.is_available():
            memory["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
            memory["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
        return {
            "replica": serve.get_replica_context().replica_tag if _in_serve() else "local",
            "pid": os.getpid(),
            "loaded": list(self.models),
            "loads": self.loads,
            "unloads": self.unloads,
            "engines": {name: m.engine.stats() for name, m in self.models.items() if m.engine is not None},
            "memory": memory,
        }

    @api.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self) -> dict[str, Any]:
        await self.check_health()
        return {"status": "ok", "loaded": list(self.models)}
