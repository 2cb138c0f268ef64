"""One definition per setting: every default read through every door (Python, `raytts synth` flags, a job YAML, a
Serve YAML, the native HTTP body, the offline job's engine actors) is the same, every engine, sampling and refine
setting is a `raytts synth` flag whose value arrives where the YAML's would, and the Serve deployment's request
limits follow the replica's planned slots. No Ray, no model."""

from __future__ import annotations

import json

import pytest

from actors.serving.api import NativeRequest
from actors.serving.config import DeploymentSpec, ServeConfig
from actors.settings import ActorFields, EngineSettings, RefineSettings, RowTextFields, SamplingFields, SamplingSettings
from actors.tts_stage import StageSettings
from jobs.cli import parser
from jobs.flags import given
from jobs.synth_cli import SYNTH_EXCLUDED_ENGINE
from pipeline.config import JobConfig
from pipeline.graph import stage_settings

MINIMAL_JOB = {"inputs": {"text": ["texts/"]}, "output": {"path": "out"}}


def _synth_args(*flags: str):
    return parser().parse_args(["synth", "--input", "in.jsonl", "--output", "out", *flags])


def test_every_default_is_the_same_through_every_door():
    job = JobConfig.model_validate(MINIMAL_JOB)
    serve = ServeConfig()
    args = _synth_args()
    engine, sampling, refine = (given(args, name) for name in ("engine", "sampling", "refine"))
    assert (engine, sampling, refine) == ({}, {}, {}), "a flag not given must leave the model's default"
    assert job.engine == serve.engine == EngineSettings() == EngineSettings(**engine)
    assert job.sampling == SamplingSettings() == SamplingSettings(**sampling)
    assert job.refine == serve.refine == RefineSettings() == RefineSettings(**refine)
    native = NativeRequest.model_validate({"text": "x"})
    assert {n: getattr(native, n) for n in SamplingFields.model_fields} == {
        n: getattr(job.sampling, n) for n in SamplingFields.model_fields
    }
    actor = stage_settings(job)
    for shared in (*RowTextFields.model_fields, *ActorFields.model_fields):
        assert getattr(actor, shared) == getattr(job, shared, getattr(job.actors, shared, None)), shared
        assert StageSettings.model_fields[shared] is not None


def test_the_native_api_bounds_sampling_as_the_configs_do():
    """The native API allowed temperature 5 and top-k 10,000 while the configs did not: now they share the field
    definitions, so the JSON schemas (types, bounds, defaults) are equal."""
    native = NativeRequest.model_json_schema()["properties"]
    settings = SamplingSettings.model_json_schema()["properties"]
    for name in SamplingFields.model_fields:
        assert native[name] == settings[name], name
    with pytest.raises(ValueError, match="min_new_tokens 9 > max_new_tokens 3"):
        SamplingSettings(min_new_tokens=9, max_new_tokens=3)


@pytest.mark.parametrize(
    "model,dest,prefix,excluded",
    [(EngineSettings, "engine", "", SYNTH_EXCLUDED_ENGINE), (SamplingSettings, "sampling", "", ()),
     (RefineSettings, "refine", "refine-", ())],
)  # fmt: skip
def test_every_setting_is_a_synth_flag_and_arrives_as_the_yaml_value_would(model, dest, prefix, excluded):
    """Each field gets a flag (booleans --x/--no-x), and a non-default value given by flag builds the same settings
    as that value in a YAML."""
    flat = {name: info for name, info in model.model_fields.items() if name not in excluded}
    values = {
        "device": "cpu", "dtype": "bfloat16", "budget_fraction": 0.5, "budget_mib": 256, "max_slots": 7,
        "max_prompt_tokens": 300, "max_segment_tokens": 90, "decoder": "dvae", "fsq": "symmetric", "verify": "never",
        "stream_chunk_steps": 5, "threads": 3, "backend": "onnx", "compile": "off", "temperature": 0.6, "top_p": 0.5,
        "top_k": 7, "repetition_penalty": 1.2, "max_new_tokens": 300, "min_new_tokens": 4, "seed": 9, "enabled": False,
        "prompt": "[oral_2]", "only": True,
    }  # fmt: skip
    flags, expected = [], {}
    for name in flat:
        if name == "onnx":
            flags += ["--onnx-path", "/exports/x", "--onnx-quantize", "int8"]
            expected["onnx"] = {"path": "/exports/x", "quantize": "int8"}
            continue
        if name == "quality":
            flags += ["--quality-on-fail", "error", "--quality-max-pause-s", "3.5", "--quality-allow-truncated"]
            expected["quality"] = {"on_fail": "error", "max_pause_s": 3.5, "allow_truncated": True}
            continue
        assert name in values, f"{model.__name__}.{name} has no test value: add one"
        value = values[name]
        if name == "enabled" and dest == "refine":
            flags.append("--no-refine")
        elif isinstance(value, bool):
            flags.append(f"--{prefix}{name.replace('_', '-')}" if value else f"--no-{prefix}{name.replace('_', '-')}")
        else:
            flags += [f"--{prefix}{name.replace('_', '-')}", str(value)]
        expected[name] = value
    if dest == "refine":
        expected["enabled"], flags = True, [f for f in flags if f != "--no-refine"]  # only needs the stage on
    from_flags = given(_synth_args(*flags), dest)
    if dest == "engine":
        from_flags["onnx"]["path"] = "/exports/x"  # synth makes the flag's path absolute; the YAML's is
    assert model(**from_flags) == model.model_validate(json.loads(json.dumps(expected)))
    assert _synth_args("--max-batch-size", "3").__dict__["engine.max_slots"] == 3  # the older spelling still works


def test_serve_request_limits_follow_the_planned_slots():
    """Serve's deployment said 512 requests in the decorator and the serve YAML, 2048 in its config class, and a
    target of 64 requests per replica whatever the replica's slots: now one DeploymentSpec, and what it leaves
    unset follows the slots (a replica takes twice its slots, autoscaling adds one at half)."""
    from actors.serving.sizing import request_limits

    cpu = ServeConfig(engine=EngineSettings(device="cpu"))
    limits = request_limits(cpu, DeploymentSpec(), num_gpus=0)
    assert (limits.slots, limits.max_ongoing_requests, limits.max_queued_requests) == (64, 128, 128)
    assert limits.target_ongoing_requests == 32
    capped = request_limits(ServeConfig(engine=EngineSettings(max_slots=10)), DeploymentSpec(), num_gpus=1)
    assert (capped.slots, capped.max_ongoing_requests, capped.target_ongoing_requests) == (10, 20, 5)
    gpu = request_limits(ServeConfig(models={"m": {"source": "hf://2Noise/ChatTTS"}}, default_model="m"),
                         DeploymentSpec(), num_gpus=1)  # fmt: skip
    assert 300 < gpu.slots < 800 and "L4" not in gpu.why and "24 GB" in gpu.why  # no Ray here: the default GPU
    given_limits = request_limits(cpu, DeploymentSpec(max_ongoing_requests=9, target_ongoing_requests=3), 0)
    assert (given_limits.max_ongoing_requests, given_limits.target_ongoing_requests) == (9, 3)
