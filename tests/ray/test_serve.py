"""The online service: a real `serve.run` on 127.0.0.1 with the tiny model, driven by the official `openai` SDK
and by raw HTTP clients. Three applications share one Serve instance: `/` (the main one), `/mux` (two
checkpoints, one resident at a time), `/small` (one slot, tiny queues, API keys: overload and auth) and `/onnx` (the
main app's model on the onnx backend: its exported blocks run by onnxruntime)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from actors.serving.config import OPENAI_VOICES
from tests.support.s3 import free_port

pytestmark = pytest.mark.timeout(900)


def _load_schemathesis_before_any_thread_starts() -> None:
    """schemathesis and hypothesis are pytest plugins, so pytest rewrites (ast.parses) each of their modules when it
    is first imported, and both import most of their modules lazily, on first use. CPython 3.11 keeps the AST
    builder's recursion counter per interpreter, not per thread (python/cpython#106905, pytest-dev/pytest#10763):
    a rewrite racing an `ast.parse` on one of the Ray driver's threads fails with "AST constructor recursion depth
    mismatch". So the test's whole path (load a spec, build strategies, draw positive and negative cases, the
    requests transport) runs once here, at collection, while the process has one thread."""
    import hypothesis.internal.conjecture.optimiser  # noqa: F401  (loaded when a run passes 5 examples)
    import schemathesis
    import schemathesis.transport.requests
    from hypothesis import HealthCheck, given, settings

    spec = {
        "openapi": "3.1.0",
        "info": {"title": "warm-up", "version": "1"},
        "paths": {"/t": {"post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["text"],
                "properties": {"text": {"type": "string"}, "seed": {"type": "integer"}}}}}},
            "responses": {"200": {"description": "ok"}}}}},
    }  # fmt: skip
    for result in schemathesis.openapi.from_dict(spec).get_all_operations():

        @settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=result.ok().as_strategy())
        def draw(case) -> None:
            case.as_transport_kwargs(base_url="http://127.0.0.1:9")

        draw()


_load_schemathesis_before_any_thread_starts()

REPO = Path(__file__).resolve().parents[2]
NARRATOR = REPO / "jobs" / "examples" / "speakers" / "narrator.flac"
KEY = "test-key-123"


def _app_args(models: dict, **overrides) -> dict:
    args = {
        "models": {name: {"source": str(path)} for name, path in models.items()},
        "voices": {
            "alloy": {"seed": 2},
            "echo": {"seed": 7},
            "narrator": {"reference_audio": str(NARRATOR), "reference_text": "a calm narrator voice"},
        },
        "engine": {
            "device": "cpu",
            "budget_mib": 64,
            "max_slots": 48,
            "max_new_tokens": 160,
            "max_prompt_tokens": 128,
            "stream_chunk_steps": 6,
        },
        "limits": {"max_input_chars": 500, "max_body_bytes": 64 << 10, "request_timeout_s": 120},
    }
    for key, value in overrides.items():
        args[key] = {**args.get(key, {}), **value}
    return args


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_onnx, tmp_path_factory):
    import ray
    from ray import serve

    from actors.checkpoint.random_weights import write_checkpoint
    from actors.serving.app import build_app
    from actors.serving.config import DeploymentSpec

    second = tmp_path_factory.mktemp("tiny-ck-b")
    write_checkpoint(second, "tiny", 1)
    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # AF_UNIX socket paths must stay short
    os.environ["RAY_TMPDIR"] = tmp
    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=tmp, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    one = DeploymentSpec(num_replicas=1, max_ongoing_requests=128, max_queued_requests=256, num_cpus=1)
    serve.run(build_app(_app_args({"a": tiny_checkpoint}), one), name="main", route_prefix="/")
    mux = _app_args({"a": tiny_checkpoint, "b": second}, limits={"max_models_per_replica": 1})
    serve.run(build_app(mux, one), name="mux", route_prefix="/mux")
    small = _app_args(
        {"a": tiny_checkpoint},
        engine={"max_slots": 1},
        limits={"max_queued_rows": 1, "retry_after_s": 3},
        auth={"api_keys": [KEY]},
    )
    tight = DeploymentSpec(num_replicas=1, max_ongoing_requests=2, max_queued_requests=2, num_cpus=1)
    serve.run(build_app(small, tight), name="small", route_prefix="/small")
    onnx = _app_args({"a": tiny_checkpoint}, engine={"backend": "onnx", "onnx": {"path": str(tiny_onnx)}})
    serve.run(build_app(onnx, one), name="onnx", route_prefix="/onnx")
    long_texts = _app_args({"a": tiny_checkpoint}, limits={"max_input_chars": 4096})
    serve.run(build_app(long_texts, one), name="long", route_prefix="/long")
    endless = tmp_path_factory.mktemp("tiny-ck-endless")
    write_checkpoint(endless, "tiny", 0, eos_gain=0.0)  # the end code's logit is 0: never in the top 20, rows run on
    deadline = _app_args(
        {"a": endless},
        engine={"max_new_tokens": 600, "max_slots": 2, "budget_mib": 256},
        limits={"request_timeout_s": 1.0},
    )
    serve.run(build_app(deadline, one), name="deadline", route_prefix="/deadline")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _client(base: str, api_key: str = "unused"):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=120)


def _http(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body) of one request; never raises for an HTTP error status."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post(url: str, payload: dict, headers: dict | None = None):
    return _http(url, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _stats(base: str, headers: dict | None = None, tensors: bool = False) -> dict:
    status, _, body = _http(f"{base}/v1/stats" + ("?tensors=true" if tensors else ""), headers=headers)
    assert status == 200, body
    return json.loads(body)


def _decode(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0  # soundfile's scale
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000
    return audio


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_responses_say_what_was_spoken_and_what_was_dropped(server):
    """Nothing dropped silently over HTTP: the native endpoint's JSON (return_codes) carries the spoken text and the
    deleted characters, and whole (not streamed) responses of both endpoints carry them percent-encoded in
    X-Raytts-Spoken-Text / X-Raytts-Dropped-Chars."""
    from urllib.parse import unquote

    text = "call 555 now [uv_break] 你好?"
    plain = {"text": text, "return_codes": True, "max_new_tokens": 20, "refine": False}
    status, headers, body = _post(f"{server}/v1/tts", plain)
    assert status == 200, body
    answer = json.loads(body)
    assert (answer["spoken_text"], answer["dropped_chars"]) == (
        "call five five five now [uv_break] 你好",
        "?",
    )
    headers = {k.lower(): v for k, v in headers.items()}
    assert unquote(headers["x-raytts-spoken-text"]) == answer["spoken_text"]
    assert unquote(headers["x-raytts-dropped-chars"]) == "?"
    # The row's quality measures and flags (actors/quality.py) come with it: in the JSON and, for whole answers, the
    # X-Raytts-QC-Flags header.
    assert answer["qc"]["duration_s"] > 0 and set(answer["qc"]) >= {"seconds_per_unit", "rms_dbfs", "loop_s"}
    assert isinstance(answer["qc_flags"], list) and headers["x-raytts-qc-flags"] == ",".join(answer["qc_flags"])
    upstream = {**plain, "normalize": "upstream"}
    status, _, body = _post(f"{server}/v1/tts", upstream)
    assert status == 200, body
    assert (json.loads(body)["spoken_text"], json.loads(body)["dropped_chars"]) == ("call  now [uv_break] 你好", "555?")
    status, _, body = _post(f"{server}/v1/tts", {"text": text, "strict_text": True})
    assert status == 400 and b"strict" in body and b"'?'" in body, body
    # What the reading replaced or guessed is said too: in the JSON and, percent-encoded, X-Raytts-Reading-Notes.
    read = {**plain, "text": "Dr. Lee sees you on 12/06/2026.", "date_order": "dmy", "replacements": {"Dr.": "Doctor"}}
    status, headers, body = _post(f"{server}/v1/tts", read)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["spoken_text"].startswith("Doctor Lee sees you on the twelfth of June"), answer["spoken_text"]
    assert answer["reading_notes"].startswith("replaced 'Dr.' with 'Doctor'; ambiguous date '12/06/2026' read dmy")
    assert unquote({k.lower(): v for k, v in headers.items()}["x-raytts-reading-notes"]) == answer["reading_notes"]
    for bad in ({"date_order": "ymd"}, {"replacements": {"": "x"}}, {"replacements": ["Dr."]}):
        status, _, body = _post(f"{server}/v1/tts", {**read, **bad})
        assert status == 400 and next(iter(bad)).encode() in body, body
    # The refine-text stage (on: the server's default) rewrites the text; refine only answers with that text.
    only = {"text": "it costs $5?", "refine": {"only": True, "seed": 4}}
    status, _, body = _post(f"{server}/v1/tts", only)
    assert status == 200, body
    refined = json.loads(body)
    assert refined["spoken_text"] and refined["dropped_chars"] == "?" and "audio" not in refined
    payload = {"model": "tts-1", "voice": "alloy", "input": "it costs $5?", "response_format": "flac"}
    status, headers, body = _post(f"{server}/v1/audio/speech", payload)
    assert status == 200, body
    headers = {k.lower(): v for k, v in headers.items()}
    spoken = unquote(headers["x-raytts-spoken-text"])
    assert spoken and spoken != "it costs five dollars"  # refined (the random model's refinement)
    assert unquote(headers["x-raytts-dropped-chars"]) == "?"
    status, _, body = _post(f"{server}/v1/tts", {**only, "stream": True})
    assert status == 400 and b"refine only" in body


def test_quality_options_per_request(server):
    """`qc` in a /v1/tts body replaces the server's engine.quality for that request only: the tiny model's rows are
    flagged too_fast by the defaults; a request's own threshold clears them, on_fail error answers 422 naming the
    flag, on_fail retake takes the row again (X-Raytts-QC-Attempts), and the next request gets the defaults again."""
    base = {"text": "one two three four five six seven eight.", "return_codes": True, "max_new_tokens": 12,
            "refine": False, "seed": 11}  # fmt: skip

    def ask(**extra):
        status, headers, body = _post(f"{server}/v1/tts", {**base, **extra})
        return status, {k.lower(): v for k, v in headers.items()}, body

    status, headers, body = ask()
    assert status == 200 and "too_fast" in json.loads(body)["qc_flags"], body
    assert headers["x-raytts-qc-attempts"] == "1" and "seconds_per_unit=" in headers["x-raytts-qc"]
    status, headers, body = ask(qc={"min_seconds_per_unit": 0, "allow_truncated": True})
    assert status == 200 and json.loads(body)["qc_flags"] == [] and headers["x-raytts-qc-flags"] == "", body
    status, _, body = ask(qc={"on_fail": "error"})
    assert status == 422 and b"too_fast" in body, body
    status, headers, body = ask(qc={"on_fail": "retake", "max_attempts": 2})
    assert status == 200 and json.loads(body)["qc_attempts"] == 2 and headers["x-raytts-qc-attempts"] == "2", body
    status, _, body = ask()
    assert status == 200 and "too_fast" in json.loads(body)["qc_flags"], body
    for bad in ({"qc": {"on_fail": "shrug"}}, {"qc": {"max_attempts": 0}}, {"qc": {"nope": 1}}, {"qc": [1]},
                {"qc": {"max_pause_s": 1}, "stream": True, "return_codes": False, "response_format": "pcm"}):  # fmt: skip
        status, _, body = ask(**bad)
        assert status == 400 and b"qc" in body, (bad, body)


def test_openai_sdk_speech_create_returns_playable_audio_in_every_format(server):
    client = _client(server)
    text = "Hello from raytts, the speech server."
    decoded = {}
    for fmt in ("wav", "flac", "pcm", "mp3", "opus"):
        response = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=fmt)
        decoded[fmt] = _decode(response.content, fmt)
        assert decoded[fmt].size > 2400, f"{fmt}: {decoded[fmt].size} samples"
    # wav and pcm are produced by the streaming path, flac by the one-shot path: same samples (16-bit both).
    assert decoded["wav"].shape == decoded["flac"].shape == decoded["pcm"].shape
    assert _rel(decoded["wav"], decoded["flac"]) < 1e-3
    np.testing.assert_array_equal(decoded["wav"], decoded["pcm"])
    # Lossy codecs: same duration within codec padding.
    for fmt in ("mp3", "opus"):
        assert abs(decoded[fmt].size - decoded["flac"].size) < 0.1 * decoded["flac"].size + 2400, fmt
    models = client.models.list()
    assert {"a", "tts-1"} <= {m.id for m in models.data}


def test_streamed_speech_joins_to_the_non_streamed_audio(server):
    client = _client(server)
    text = "Streaming speech arrives in pieces. Each piece is final when it is sent. The join is the whole."
    before = _stats(server)["engines"]["a"]["stream_chunks"]
    with client.audio.speech.with_streaming_response.create(
        model="a", voice="echo", input=text, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        pieces = [piece for piece in response.iter_bytes() if piece]
    streamed = _decode(b"".join(pieces), "pcm")
    whole = _decode(
        client.audio.speech.create(model="a", voice="echo", input=text, response_format="flac").content, "flac"
    )
    assert streamed.shape == whole.shape
    assert _rel(streamed, whole) < 1e-3
    assert _stats(server)["engines"]["a"]["stream_chunks"] - before >= 2, "the engine must decode it incrementally"

    # Server-sent events: base64 deltas of the same audio, then a done event with usage.
    status, headers, body = _post(
        f"{server}/v1/audio/speech",
        {"model": "a", "voice": "echo", "input": text, "response_format": "pcm", "stream_format": "sse"},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    import base64

    sse_audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert sse_audio == b"".join(pieces)


def test_native_stream_arrives_in_several_pieces(server):
    payload = {"text": "a long streamed line.", "voice": "alloy", "min_new_tokens": 150, "max_new_tokens": 160}
    request = urllib.request.Request(
        f"{server}/v1/tts",
        data=json.dumps({**payload, "stream": True, "response_format": "wav"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    pieces = []
    with urllib.request.urlopen(request, timeout=120) as response:
        while piece := response.read1(1 << 16):
            pieces.append(piece)
    assert len(pieces) >= 2, "a 150-step row must arrive in several reads"
    streamed = _decode(b"".join(pieces), "wav")
    status, _, body = _post(f"{server}/v1/tts", {**payload, "response_format": "wav"})
    assert status == 200
    whole = _decode(body, "wav")
    assert streamed.shape == whole.shape and _rel(streamed, whole) < 1e-3


def test_native_controls_seed_speaker_reference_and_codes(server):
    url = f"{server}/v1/tts"
    base = {"text": "the same words every time.", "return_codes": True, "max_new_tokens": 60}
    runs = {}
    for name, extra in {
        "seed1": {"seed": 1},
        "seed1_again": {"seed": 1},
        "seed2": {"seed": 2},
        "speaker": {"seed": 1, "speaker": "seed:99"},
        "reference": {"seed": 1, "voice": "narrator"},
        "hot": {"seed": 1, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.3},
    }.items():
        status, _, body = _post(url, {**base, **extra})
        assert status == 200, body
        runs[name] = json.loads(body)
    codes = {name: np.asarray(r["codes"]) for name, r in runs.items()}
    for name, c in codes.items():
        assert c.ndim == 2 and c.shape[1] == 4 and c.shape[0] >= 1, name
        audio = _decode(__import__("base64").b64decode(runs[name]["audio"]), "wav")
        assert audio.size == (2 * c.shape[0] - 1) * 256, f"{name}: 2 mel frames (hop 256) per code step"
    np.testing.assert_array_equal(codes["seed1"], codes["seed1_again"])
    for other in ("seed2", "speaker", "reference", "hot"):
        assert not np.array_equal(codes["seed1"], codes[other]), f"{other} must change the codes"


def test_32_concurrent_requests_share_engine_steps(server):
    before = _stats(server)["engines"]["a"]

    def one(i: int) -> int:
        status, _, body = _post(
            f"{server}/v1/tts",
            {"text": f"concurrent request {i}.", "seed": i, "return_codes": True, "min_new_tokens": 100, "max_new_tokens": 120},
        )  # fmt: skip
        assert status == 200, body
        return len(json.loads(body)["codes"])

    with ThreadPoolExecutor(32) as pool:
        frames = list(pool.map(one, range(32)))
    after = _stats(server)["engines"]["a"]
    steps = after["steps"] - before["steps"]
    assert after["finished"] - before["finished"] == 64  # each request: its refine-text row, then its code row
    # One at a time would need >= sum(frames) decode steps; shared steps need about the longest row's.
    assert steps < sum(frames) / 8, f"{steps} engine steps for {sum(frames)} frames: requests did not share steps"
    assert after["max_concurrent"] >= 16, after


def _malformed(rng: random.Random, n: int) -> list[tuple[str, str, bytes, dict]]:
    """(label, path, body, headers) of requests that are all wrong in some way."""
    good = {"model": "tts-1", "input": "hello.", "voice": "alloy", "response_format": "wav"}
    native = {"text": "hello.", "voice": "alloy"}
    json_headers = {"Content-Type": "application/json"}
    junk_values = [None, 1, -1, 1.5, "x", "", [], {}, [1], {"a": 1}, True, "9" * 40, float("nan"), 1e308]
    speech_fields = ["model", "input", "voice", "response_format", "speed", "stream_format", "instructions"]
    native_fields = ["text", "voice", "speaker", "seed", "temperature", "top_p", "top_k", "repetition_penalty",
                     "min_new_tokens", "max_new_tokens", "prompt", "response_format", "stream", "return_codes"]  # fmt: skip
    cases: list[tuple[str, str, bytes, dict]] = []
    raw_bodies = [b"", b"{", b"not json", b"[1,2]", b'"text"', b"\xff\xfe\x00", b"{'model': 1}", b"null", b"123"]
    while len(cases) < n:
        kind = rng.randrange(12)
        if kind == 0:
            cases.append(("bad json", "/v1/audio/speech", rng.choice(raw_bodies), json_headers))
        elif kind == 1:
            body = dict(good)
            field = rng.choice(speech_fields)
            value = rng.choice(junk_values)
            if field == "voice" and isinstance(value, str) and value:
                value = value + "-unknown"
            if field == "input" and isinstance(value, str) and value.strip():
                value = 123  # a string input would be valid
            if field == "speed" and isinstance(value, int | float) and not isinstance(value, bool):
                value = 99
            if field == "instructions":
                value = value + " plain words" if isinstance(value, str) else 5
            body[field] = value
            cases.append((f"speech {field}={value!r:.20}", "/v1/audio/speech", json.dumps(body).encode(), json_headers))
        elif kind == 2:
            body = dict(native)
            field = rng.choice(native_fields)
            value = rng.choice([v for v in junk_values if not (field in ("stream", "return_codes") and v is True)])
            if field in ("voice",) and isinstance(value, str) and value:
                value += "-unknown"
            if field == "text" and isinstance(value, str) and value.strip():
                value = ["list"]
            invalid_numbers = {"seed": -5, "temperature": 0, "top_p": 2, "top_k": -1, "repetition_penalty": 0,
                               "min_new_tokens": 10**6, "max_new_tokens": 10**5}  # fmt: skip
            if field in invalid_numbers and isinstance(value, int | float) and not isinstance(value, bool):
                value = invalid_numbers[field]
            if field in ("speaker", "voice") and value is None:
                value = 0
            if field == "seed" and value is None:
                value = -5
            if field == "max_new_tokens" and value is None:
                value = 10_000
            if field == "speaker" and isinstance(value, str):
                value = "not a speaker string " + value
                body.pop("voice")
            if field == "prompt" and isinstance(value, str):
                value = value + " words"
            body[field] = value
            cases.append((f"tts {field}={value!r:.20}", "/v1/tts", json.dumps(body).encode(), json_headers))
        elif kind == 3:
            body = {**good, "input": "x" * rng.randint(501, 20_000)}
            cases.append(("long input", "/v1/audio/speech", json.dumps(body).encode(), json_headers))
        elif kind == 4:
            cases.append(("huge body", "/v1/tts", b'{"text": "' + b"a" * (70 << 10) + b'"}', json_headers))
        elif kind == 5:
            body = {**good, "model": rng.choice(["tts-2", "b", "", "../a", "a" * 300])}
            cases.append(("unknown model", "/v1/audio/speech", json.dumps(body).encode(), json_headers))
        elif kind == 6:
            body = {**good, "response_format": rng.choice(["aac", "ogg", "mp4", "WAV", "m4a"])}
            cases.append(("bad format", "/v1/audio/speech", json.dumps(body).encode(), json_headers))
        elif kind == 7:
            body = {**good, **{rng.choice(["extra", "seed", "Voice"]): 1}}
            cases.append(("unknown field", "/v1/audio/speech", json.dumps(body).encode(), json_headers))
        elif kind == 8:
            missing = dict(good)
            missing.pop(rng.choice(["model", "input", "voice"]))
            cases.append(("missing field", "/v1/audio/speech", json.dumps(missing).encode(), json_headers))
        elif kind == 9:
            token = rng.choice(["", "Bearer", "Bearer wrong", "Basic abc", "Bearer " + KEY + "x", KEY])
            headers = {**json_headers, **({"Authorization": token} if token else {})}
            cases.append(("bad token", "/small/v1/audio/speech", json.dumps(good).encode(), headers))
        elif kind == 10:
            text = rng.choice(["   ", "\n\t", "?!", "!!!???", "\u200b"])  # digits are spoken (normalize: full)
            cases.append(("unspeakable", "/v1/tts", json.dumps({**native, "text": text}).encode(), json_headers))
        else:
            path = rng.choice(["/v1/audio/speech2", "/v1/audio", "/admin", "/v1/tts/x", "/v1/models/x"])
            cases.append(("unknown route", path, json.dumps(good).encode(), json_headers))
    return cases


def test_a_thousand_malformed_requests_get_only_4xx_and_the_server_stays_up(server):
    cases = _malformed(random.Random(1234), 1100)

    def send(case):
        label, path, body, headers = case
        status, _, reply = _http(f"{server}{path}", body, headers, method="POST")
        return label, status, reply

    # `/small` admits 2 requests and queues 2 (the overload test's app): its bad-token cases go one at a time, so
    # every answer is the app's own and none is the proxy's backpressure 503.
    small = [case for case in cases if case[1].startswith("/small/")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, [case for case in cases if not case[1].startswith("/small/")]))
    results += [send(case) for case in small]
    wrong = [(label, status, reply[:120]) for label, status, reply in results if not 400 <= status < 500]
    assert not wrong, f"{len(wrong)} malformed requests got a non-4xx answer: {sorted({w[:2] for w in wrong})}"
    for label, status, reply in results:
        if status != 404 or not label.startswith("unknown route"):
            error = json.loads(reply)["error"]
            assert error["message"], label
    kinds = {label.split(" ")[0] if label.startswith(("speech ", "tts ")) else label for label, _, _ in results}
    assert len(kinds) >= 12, kinds
    status, _, body = _post(f"{server}/v1/audio/speech", {"model": "a", "input": "still here.", "voice": "alloy", "response_format": "wav"})  # fmt: skip
    assert status == 200 and _decode(body, "wav").size > 0


def test_overload_yields_503_with_retry_after_and_nothing_else(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    payload = {"text": "keep the one slot busy.", "min_new_tokens": 140, "max_new_tokens": 150}

    def one(i: int):
        return _post(f"{server}/small/v1/tts", {**payload, "seed": i}, auth)

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    busy = [(headers, body) for status, headers, body in results if status == 503]
    assert busy, "24 concurrent long requests against one slot and tiny queues must be refused in part"
    assert statuses.count(200) >= 2
    for headers, _ in busy:
        retry = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        assert retry is not None and int(float(retry)) >= 1, headers
    status, _, body = _post(f"{server}/small/v1/tts", {"text": "after the storm.", "max_new_tokens": 20}, auth)
    assert status == 200, body


def test_bearer_auth_when_keys_are_configured(server):
    assert _http(f"{server}/small/v1/models")[0] == 401
    assert _http(f"{server}/small/v1/models", headers={"Authorization": "Bearer nope"})[0] == 401
    status, _, body = _http(f"{server}/small/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and json.loads(body)["data"]
    assert _http(f"{server}/healthz")[0] == 200


def test_switching_models_returns_the_evicted_models_memory(server):
    """A -> B -> A with one resident model: tensor memory comes back to the single-model level (CPU accounting:
    every live tensor storage in the replica, summed by /v1/stats)."""
    base = f"{server}/mux"

    def speak(model: str) -> None:
        status, _, body = _post(f"{base}/v1/tts", {"model": model, "text": "switch models.", "max_new_tokens": 20})
        assert status == 200, body

    speak("a")
    first = _stats(base, tensors=True)
    speak("b")
    middle = _stats(base, tensors=True)
    speak("a")
    last = _stats(base, tensors=True)
    assert first["loaded"] == ["a"] and middle["loaded"] == ["b"] and last["loaded"] == ["a"]
    assert last["unloads"] - first["unloads"] == 2
    single = first["memory"]["tensor_bytes"]
    assert middle["memory"]["tensor_bytes"] < 1.5 * single, "model a's tensors stayed resident after eviction"
    drift = abs(last["memory"]["tensor_bytes"] - single) / single
    assert drift < 0.05, f"tensor memory after A->B->A is {drift:.1%} away from the single-model level"


def test_serve_cli_refuses_public_bind_without_keys():
    from actors.serving.config import ServerConfig
    from jobs.serve import run_server

    config = ServerConfig.model_validate({"host": "0.0.0.0"})
    with pytest.raises(ValueError, match="needs API keys"):
        run_server(config)


def test_serve_config_files_validate():
    from actors.serving.config import ServerConfig

    config = ServerConfig.load(REPO / "jobs" / "examples" / "serve.yaml")
    assert Path(config.app.voices["narrator"].reference_audio) == NARRATOR
    with pytest.raises(ValueError, match="exactly one of"):
        ServerConfig.model_validate({"app": {"voices": {"x": {"seed": 1, "speaker": "abc"}}}})


@pytest.mark.slow
@contextlib.contextmanager
def _serve_command(tmp_path: Path, *args: str) -> Iterator[str]:
    """`raytts serve ARGS` in its own process (own Ray) until healthy; yields its base URL; stops it with SIGTERM."""
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {
        **os.environ,
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="rv", dir="/tmp"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "jobs.cli", "serve", *args, "--port", str(port)]
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            # Ready = the command printed its URL (serve.run returned), and the replica answers.
            if b"raytts serving on" in (tmp_path / "serve.log").read_bytes():
                try:
                    if _http(f"{base}/healthz")[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(1)
        else:
            pytest.fail("raytts serve did not become healthy in 180 s")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            pytest.fail("raytts serve did not stop within 60 s of SIGTERM")
        log.close()
    assert process.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


def test_raytts_serve_command_answers_the_openai_sdk(tmp_path):
    """`raytts serve jobs/examples/serve.yaml` in its own process (own Ray), stopped with SIGTERM."""
    with _serve_command(tmp_path, str(REPO / "jobs/examples/serve.yaml")) as base:
        client = _client(base)
        audio = _decode(
            client.audio.speech.create(model="tts-1", voice="narrator", input="From the command line.", response_format="flac").content,
            "flac",
        )  # fmt: skip
        assert audio.size > 0


def test_raytts_serve_model_tiny_takes_a_stock_openai_client(tmp_path):
    """`raytts serve --model tiny` and code written for OpenAI, unchanged but for the model name it was started
    with: model="tiny" (was 404) and OpenAI's voice names (were unknown without a config) both work."""
    with _serve_command(tmp_path, "--model", "tiny") as base:
        client = _client(base)
        assert {"tiny", "tts-1"} <= {m.id for m in client.models.list().data}
        voices = {v["id"]: v for v in json.loads(_http(f"{base}/v1/voices")[2])["data"]}
        assert set(OPENAI_VOICES) <= set(voices) and voices["alloy"]["seed"] == OPENAI_VOICES["alloy"]
        for model, voice in (("tiny", "alloy"), ("tts-1", "shimmer")):
            speech = client.audio.speech.create(model=model, voice=voice, input="Hello there.", response_format="wav")
            assert _decode(speech.content, "wav").size > 0
        status, _, body = _post(f"{base}/v1/audio/speech", {"model": "tiny", "input": "x", "voice": "nobody"})
        assert status == 400 and b"alloy" in body  # an unknown voice is refused, naming the accepted ones


def test_requests_racing_model_switches_finish_or_get_503(server):
    """Requests for two models interleaved on a one-model replica: a model is unloaded only once the requests
    holding it are done, so every request gets its audio (the others wait for their model to be loaded)."""
    base = f"{server}/mux"

    def one(i: int):
        model = "ab"[i % 2]
        return _post(f"{base}/v1/tts", {"model": model, "text": f"race {i}.", "seed": i, "max_new_tokens": 40})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert [status for status, _, _ in results] == [200] * 16, [(s, b[:200]) for s, _, b in results if s != 200]
    assert all(_decode(body, "wav").size > 0 for _, _, body in results)
    assert _stats(base)["unloads"] >= 2, "the requests must have switched models"


def test_encoded_responses_clip_instead_of_wrapping():
    """Samples beyond [-1, 1] must saturate in 16-bit responses (a wrap would turn a loud peak into a click)."""
    from actors.serving.api import AudioEncoder, encode_whole

    audio = np.array([1.5, -2.0, 0.5, 1.0], dtype=np.float32)
    expected = np.array([32767, -32768, 16384, 32767])
    for fmt in ("wav", "flac"):
        decoded, _ = sf.read(io.BytesIO(encode_whole(audio, fmt)), dtype="int16")
        assert abs(decoded.astype(int) - expected).max() <= 1, (fmt, decoded)
    streamed = AudioEncoder("pcm").push(audio)
    assert abs(np.frombuffer(streamed, "<i2").astype(int) - expected).max() <= 1


def test_openai_voice_names_extend_the_configured_voices_and_models_answer_to_their_source():
    from actors.serving.config import ServeConfig, VoiceSpec

    config = ServeConfig.model_validate(
        {
            "models": {"main": {"source": "hf://2Noise/ChatTTS@abc"}},
            "voices": {"alloy": {"seed": 99}, "me": {"seed": 5}},
        }
    )
    specs = config.voice_specs()
    assert list(specs)[:2] == ["alloy", "me"] and specs["alloy"] == VoiceSpec(seed=99)  # the config's win
    assert specs["shimmer"] == VoiceSpec(seed=OPENAI_VOICES["shimmer"]) and config.voice_name(None) == "alloy"
    for name in ("main", "tts-1", "", None, "2Noise/ChatTTS", "hf://2Noise/ChatTTS@abc"):
        assert config.model_name(name) == "main", name
    assert config.model_name("tiny") is None
    closed = ServeConfig.model_validate({"voices": {"me": {"seed": 5}}, "openai_voices": False})
    assert list(closed.voice_specs()) == ["me"]


def test_hostile_and_alternative_bodies_get_4xx_or_audio_never_500(server):
    """Each answered 500 before: the documented voice form {"id": "alloy"} (a TypeError in validation), a body
    nested 100,000 levels deep (RecursionError), and a 19.6 k-character speaker string that decompresses to 224 MiB
    (now refused after the 1,536 bytes a speaker holds, quickly, while other requests go on)."""
    import lzma

    import pybase16384

    speech = {"model": "tts-1", "input": "hello there.", "response_format": "wav"}
    status, _, body = _post(f"{server}/v1/audio/speech", {**speech, "voice": {"id": "alloy"}})
    assert status == 200 and _decode(body, "wav").size > 0
    status, _, body = _post(f"{server}/v1/audio/speech", {**speech, "voice": {"id": "nobody"}})
    assert status == 400 and b"alloy" in body
    deep = b'{"model": "tts-1", "input": "x", "voice": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = _http(f"{server}/v1/audio/speech", deep, {"Content-Type": "application/json"})
    assert status in (400, 413) and b"error" in body
    bomb = lzma.compress(bytes(224 << 20), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
    speaker = pybase16384.encode_to_string(bomb)
    assert len(speaker) < 20_000
    started = time.monotonic()
    payload = json.dumps({"text": "hello.", "speaker": speaker, "max_new_tokens": 8}, ensure_ascii=False).encode()
    assert len(payload) < 64 << 10  # within the test app's body limit: this is about what the engine does with it
    status, _, body = _http(f"{server}/v1/tts", payload, {"Content-Type": "application/json"})
    assert status == 400 and b"decompresses to more than" in body, body[:300]
    assert time.monotonic() - started < 5
    assert _post(f"{server}/v1/tts", {"text": "still here.", "max_new_tokens": 8})[0] == 200


def test_openapi_spec_declares_request_bodies_and_error_answers(server):
    spec = json.loads(_http(f"{server}/openapi.json")[2])
    for path, required in (("/v1/audio/speech", {"model", "input", "voice"}), ("/v1/tts", {"text"})):
        operation = spec["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["required"]) == required and "$defs" not in json.dumps(schema)
        assert {"200", "400", "401", "404", "413", "503"} <= set(operation["responses"])


def test_schemathesis_finds_no_server_error(server):
    """schemathesis generates requests from the app's own OpenAPI spec (valid and invalid bodies, every route);
    none may get a 5xx but the documented 503 (busy)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    examples = int(os.environ.get("RAYTTS_SCHEMATHESIS_EXAMPLES", "30"))
    failures = []
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()
        if operation.path == "/v1/audio/speech":  # names are free strings in the spec: half the cases use real ones
            strategy = st.tuples(strategy, st.booleans()).map(_with_known_names)

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=strategy)
        def check(case) -> None:
            response = case.call(base_url=server, timeout=120)
            statuses[(case.method, case.path, response.status_code // 100)] += 1
            if response.status_code >= 500 and response.status_code != 503:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

        check()
    assert failures == []
    # it exercised the routes: audio for some generated speech bodies, refusals for others
    assert statuses[("POST", "/v1/audio/speech", 2)] > 0 and statuses[("POST", "/v1/audio/speech", 4)] > 0, statuses
    assert statuses[("POST", "/v1/tts", 2)] > 0 and statuses[("POST", "/v1/tts", 4)] > 0, statuses


def _with_known_names(drawn):
    case, known = drawn
    if known and isinstance(case.body, dict):
        case.body.update(model="tts-1", voice="alloy")
    return case


def test_the_onnx_backend_app_answers_as_the_torch_one_streamed_and_whole(server):
    """engine.backend: onnx behind the same Serve app: the native endpoint returns the torch app's codes and audio,
    refine on (the default), and the OpenAI endpoint streams audio that joins to the whole answer."""
    body = {"text": "It is 9:30, the same words on both backends.", "seed": 4, "return_codes": True,
            "max_new_tokens": 60, "response_format": "wav"}  # fmt: skip
    answers = {}
    for prefix in ("", "/onnx"):
        status, _, raw = _post(f"{server}{prefix}/v1/tts", body)
        assert status == 200, raw
        answers[prefix] = json.loads(raw)
    torch_answer, onnx_answer = answers[""], answers["/onnx"]
    assert onnx_answer["spoken_text"] == torch_answer["spoken_text"]
    np.testing.assert_array_equal(np.asarray(onnx_answer["codes"]), np.asarray(torch_answer["codes"]))
    import base64

    whole_torch = _decode(base64.b64decode(torch_answer["audio"]), "wav")
    whole_onnx = _decode(base64.b64decode(onnx_answer["audio"]), "wav")
    assert whole_onnx.shape == whole_torch.shape and _rel(whole_onnx, whole_torch) < 1e-3

    client = _client(f"{server}/onnx")
    text = "Streaming from the onnx backend. It arrives in pieces."
    with client.audio.speech.with_streaming_response.create(
        model="a", voice="echo", input=text, response_format="pcm"
    ) as response:
        pieces = [piece for piece in response.iter_bytes() if piece]
    whole = client.audio.speech.create(model="a", voice="echo", input=text, response_format="pcm").content
    assert _rel(_decode(b"".join(pieces), "pcm"), _decode(whole, "pcm")) < 1e-3
    assert _stats(f"{server}/onnx")["engines"]["a"]["stream_chunks"] >= 2


LONG_TEXT = " ".join(
    f"Chapter {i}: on 12/06/2026 the team shipped {i * 137} units at $3,999.50 each, a {i % 40}% rise; 今天是2026年12月{i % 28 + 1}日。"
    for i in range(1, 40)
)[:4000]


def test_long_texts_do_not_delay_another_streams_first_audio(server):
    """The text front end of a 4,000-character request takes ~0.5 s; on the engine's thread, 20 of them in flight
    held every stream for seconds (a 2-word stream's first byte went from 0.07 s to 8-16 s). Now long texts are
    prepared in a worker process: with 20 being prepared the short stream's first audio arrives within 2.5 s (the
    20 take ~10 s of front-end work in all). The long texts end in a character strict text refuses, so each costs its
    whole front end and then a 400, and none takes an engine slot: this measures the front end's hold on the engine,
    not the queue for slots."""
    long_body = {"text": LONG_TEXT + " \u2603", "strict_text": True, "voice": "alloy", "response_format": "wav"}
    short = {"text": "hello there", "voice": "echo", "stream": True, "response_format": "pcm", "max_new_tokens": 24}
    with ThreadPoolExecutor(24) as pool:
        answers = [pool.submit(_post, f"{server}/long/v1/tts", long_body) for _ in range(20)]
        time.sleep(0.5)
        started = time.monotonic()
        request = urllib.request.Request(
            f"{server}/long/v1/tts", data=json.dumps(short).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.read1(1 << 16)
            first_audio = time.monotonic() - started
            response.read()
        refused = [future.result() for future in answers]
    assert all(status == 400 and b"strict text is on" in body for status, _, body in refused), refused[0]
    assert first_audio < 2.5, f"the short stream's first audio took {first_audio:.2f} s with 20 long texts in flight"


def test_a_stream_past_its_deadline_ends_in_an_error_the_client_sees(server):
    """`/deadline` answers within 1 s and its rows never end: a stream cut at its deadline used to end as a clean
    HTTP 200 (SSE: `speech.audio.done` with 0 tokens) after part of its audio."""
    import httpx2  # the `openai` SDK's HTTP client
    import openai

    client = _client(f"{server}/deadline")
    received = 0
    with pytest.raises((httpx2.HTTPError, openai.APIError)) as raised:
        with client.audio.speech.with_streaming_response.create(
            model="a", voice="alloy", input="a stream that runs past its deadline.", response_format="pcm"
        ) as response:
            for piece in response.iter_bytes():
                received += len(piece)
    assert received > 0, "some audio arrives before the deadline"
    print("the OpenAI SDK saw", type(raised.value).__name__, raised.value)
    status, _, body = _post(
        f"{server}/deadline/v1/audio/speech",
        {
            "model": "a",
            "voice": "alloy",
            "input": "an event stream past its deadline.",
            "stream_format": "sse",
            "response_format": "pcm",
        },  # fmt: skip
    )
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "request_timeout"
    assert not any(e["type"] == "speech.audio.done" for e in events)
    assert _stats(f"{server}/deadline")["engines"]["a"]["running_rows"] == 0  # cancelled in the engine


def test_refine_bounds_and_head_on_health(server):
    status, _, body = _post(
        f"{server}/v1/tts", {"text": "hello", "refine": {"min_new_tokens": 50, "max_new_tokens": 10}}
    )
    assert status == 400 and b"min_new_tokens 50 > max_new_tokens 10" in body
    status, _, body = _http(f"{server}/healthz", method="HEAD")
    assert status == 200 and body == b""
