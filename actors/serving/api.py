"""HTTP bodies and audio encodings of the online API (no Ray, no model: pure request/response handling).

`SpeechRequest` is OpenAI's `POST /v1/audio/speech` body; `NativeRequest` is raytts' own `POST /v1/tts` with
ChatTTS' controls. `ApiError` carries an HTTP status and an OpenAI-shaped error body. `AudioEncoder` turns float
audio pieces into bytes of a response format, incrementally where the container allows it.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Annotated, Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from actors.audio import encode_audio, to_pcm16
from actors.model.config import SAMPLE_RATE
from actors.reading import DEFAULT_DATE_ORDER
from actors.settings import (
    DATE_ORDER_HELP,
    NORMALIZE_HELP,
    REPLACEMENTS_HELP,
    STRICT_TEXT_HELP,
    DateOrder,
    NormalizeMode,
    QualitySettings,
    RefineSettings,
    SamplingFields,
)
from actors.text import CONTROL_TAGS, DEFAULT_PROMPT

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# Containers whose bytes can be sent as audio is generated. libsndfile rewrites the MP3 (Xing) and FLAC
# (STREAMINFO) headers when it closes the file, so those two are sent once the last sample is known.
STREAMABLE = ("pcm", "wav", "opus")


class ApiError(Exception):
    """An answer other than audio: HTTP status plus an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class VoiceRef(_Body):
    id: str = Field(min_length=1, max_length=200, description="A configured voice name.")


class SpeechRequest(_Body):
    """OpenAI `POST /v1/audio/speech`."""

    model: str = Field(
        min_length=1, max_length=200, description="A configured model name or alias (tts-1 -> the default)."
    )
    input: str = Field(description="Text to speak.")
    voice: Annotated[str, Field(min_length=1, max_length=200)] | VoiceRef = Field(
        description="A voice name: OpenAI's (alloy, ...) or a configured one; or {'id': name}."
    )
    instructions: str | None = Field(
        None, max_length=400, description="ChatTTS control tags, e.g. '[oral_2][laugh_0][break_4]'."
    )
    response_format: ResponseFormat = Field("mp3", description="Audio container.")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Mapped to ChatTTS' [speed_N], N = round(5 * speed).")
    stream_format: Literal["audio", "sse"] = Field("audio", description="Raw audio bytes or server-sent events.")

    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


ReplacementKey = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
ReplacementValue = Annotated[str, StringConstraints(max_length=400)]


class NativeRequest(_Body, SamplingFields):
    """raytts `POST /v1/tts`: ChatTTS' controls."""

    text: str = Field(description="Text to speak.")
    model: str | None = Field(None, max_length=200, description="A configured model (default: the default model).")
    voice: str | None = Field(None, max_length=200, description="A configured voice (seed, speaker or reference).")
    speaker: str | None = Field(
        None, max_length=20_000, description="'seed:N' or an upstream speaker string, instead of a voice."
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="Sampling seed (same seed, same audio).")
    max_new_tokens: int | None = Field(None, ge=1, description="GPT steps per segment (default: the server's).")
    prompt: str = Field(DEFAULT_PROMPT, max_length=400, description="Control tags placed before the text.")
    normalize: NormalizeMode = Field("full", description=NORMALIZE_HELP)
    strict_text: bool = Field(False, description=STRICT_TEXT_HELP)
    date_order: DateOrder = Field(DEFAULT_DATE_ORDER, description=DATE_ORDER_HELP)
    replacements: dict[ReplacementKey, ReplacementValue] = Field(
        default_factory=dict, max_length=500, description=REPLACEMENTS_HELP
    )
    refine: bool | RefineSettings | None = Field(
        None,
        description="The refine-text stage: true/false, or its settings (prompt, sampling, seed, only: the refined "
        "text as JSON without audio); default: the server's (`refine` in the serve config).",
    )
    qc: QualitySettings | None = Field(
        None,
        description="This request's quality checks: the fields given replace the server's (`engine.quality` in the "
        'serve config), e.g. {"on_fail": "retake", "max_attempts": 2} or {"max_pause_s": 1.0}; on_fail error '
        "answers 422 naming the flags. Needs stream=false (a streamed answer is sent before it can be measured).",
    )
    response_format: ResponseFormat = Field("wav")
    stream: bool = Field(False, description="Send audio while it is generated (pcm, wav, opus).")
    return_codes: bool = Field(False, description="Answer JSON with base64 audio and the [T, 4] codes.")


def request_body_spec(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that parses its own body with `parse_body` (so FastAPI does not see it):
    the model's JSON schema with its definitions inlined, so the spec stands alone."""
    spec = schema.model_json_schema()
    definitions = spec.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(spec)}}}}


_ERROR_BODY = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "integer"},
                    },
                }
            },
        }
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON, breaks the schema, or names an unknown voice", "content": _ERROR_BODY},
    401: {"description": "No or a wrong API key (or, without keys, a non-loopback client)", "content": _ERROR_BODY},
    404: {"description": "The model is not served here", "content": _ERROR_BODY},
    413: {"description": "The body exceeds limits.max_body_bytes", "content": _ERROR_BODY},
    503: {"description": "Queues full or the request's deadline passed; see Retry-After", "content": _ERROR_BODY},
}
AUDIO_RESPONSE = {
    200: {
        "description": "Audio in the requested format (streamed for pcm, wav and opus), or server-sent events",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}
        | {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def parse_body(raw: bytes, schema: type[BaseModel]) -> Any:
    """JSON bytes -> a validated body, or ApiError 400 naming the first problem and the field."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}; send a JSON object") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to read; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        # A field that takes several types (refine: true/false or an object) gets one error per type: name the one
        # about the value's own kind, not "should be a valid boolean" for an object.
        errors = err.errors()
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        union_members = {"bool", "int", "float", "str", "list", "dict"}
        loc = [str(p) for p in first["loc"] if str(p) not in union_members and not str(p)[:1].isupper()]
        where = ".".join(loc) or None
        problem = first["msg"].removeprefix("Value error, ")
        count = err.error_count()
        more = f" (and {count - 1} more problems)" if count > 1 else ""
        raise ApiError(400, f"{where}: {problem}{more}", param=where) from None


def check_tags(tags: str, param: str) -> str:
    if not CONTROL_TAGS.fullmatch(tags):
        raise ApiError(400, f"{param} must be ChatTTS control tags like '[oral_2][laugh_0][break_4]'", param=param)
    return tags


def speed_tag(speed: float) -> str:
    return f"[speed_{min(9, max(1, round(5 * speed)))}]"


def pcm16(audio: np.ndarray) -> bytes:
    """float [-1, 1] -> 16-bit little-endian PCM, quantised like the 16-bit file writers (`to_pcm16`)."""
    return to_pcm16(audio).astype("<i2", copy=False).tobytes()


def wav_stream_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as OpenAI streams WAV)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", unknown))
    )


class _Sink(io.RawIOBase):
    """A seekable in-memory file that also hands out the bytes appended since the last `take`."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0
        self.sent = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:
        b = bytes(b)
        self.data[self.pos : self.pos + len(b)] = b
        self.pos += len(b)
        return len(b)

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = bytes(self.data[self.pos : end])
        self.pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.data)}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = bytes(self.data[self.sent :])
        self.sent = len(self.data)
        return out


_CONTAINERS = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}


class AudioEncoder:
    """Feed float32 pieces, get response bytes. pcm/wav/opus bytes flow out as pieces arrive; mp3 and flac
    arrive whole from `finish` (their headers are only final once the audio is)."""

    def __init__(self, response_format: str, sample_rate: int = SAMPLE_RATE) -> None:
        if response_format not in MEDIA_TYPES:
            raise ApiError(
                400,
                f"response_format {response_format!r} is not supported: use one of {sorted(MEDIA_TYPES)}",
                param="response_format",
            )
        self.format = response_format
        self.sample_rate = sample_rate
        self._header_sent = False
        self._pieces: list[np.ndarray] = []
        self._file: sf.SoundFile | None = None
        if response_format == "opus":
            self._sink = _Sink()
            container, subtype = _CONTAINERS["opus"]
            self._file = sf.SoundFile(
                self._sink, mode="w", samplerate=sample_rate, channels=1, format=container, subtype=subtype
            )

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def push(self, audio: np.ndarray) -> bytes:
        if self.format == "pcm":
            return pcm16(audio)
        if self.format == "wav":
            head = b"" if self._header_sent else wav_stream_header(self.sample_rate)
            self._header_sent = True
            return head + pcm16(audio)
        if self._file is not None:
            self._file.write(np.asarray(audio, dtype=np.float32))
            return self._sink.take()
        self._pieces.append(np.asarray(audio, dtype=np.float32))
        return b""

    def finish(self) -> bytes:
        if self.format == "pcm":
            return b""
        if self.format == "wav":
            return b"" if self._header_sent else wav_stream_header(self.sample_rate)
        if self._file is not None:
            self._file.close()
            return self._sink.take()
        audio = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        return encode_whole(audio, self.format, self.sample_rate)


def encode_whole(audio: np.ndarray, response_format: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """One finished waveform -> a complete file of `response_format` (sizes filled in)."""
    if response_format == "pcm":
        return pcm16(audio)
    if response_format in ("wav", "flac"):
        return encode_audio(audio, sample_rate, response_format)  # the job's writer
    container, subtype = _CONTAINERS[response_format]
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
