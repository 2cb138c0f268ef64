"""Shared fixtures: a tiny random checkpoint in the real layout, the loaded model, a SeaweedFS S3 server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config: pytest.Config) -> None:
    """Ray Data's usage poller would end this process at random after a test's `ray.shutdown()`
    (`actors.cluster.disarm_ray_data_usage_poller`): disarm it before any test runs a dataset."""
    from actors.cluster import disarm_ray_data_usage_poller

    disarm_ray_data_usage_poller()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from actors.checkpoint.random_weights import write_checkpoint

    root = tmp_path_factory.mktemp("tiny-ck")
    write_checkpoint(root, "tiny", 0)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from actors.checkpoint import load_model

    return load_model(tiny_checkpoint / "asset")


@pytest.fixture(scope="session")
def tiny_model_fp16(tiny_checkpoint: Path):
    """The tiny model in float16 (the CUDA default) on the CPU: the half-precision code path without a GPU."""
    import torch

    from actors.checkpoint import load_model

    return load_model(tiny_checkpoint / "asset", device="cpu", dtype=torch.float16)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_checkpoint: Path):
    from actors.tokenizer import TextTokenizer

    return TextTokenizer(tiny_checkpoint / "asset" / "tokenizer", 21178)


@pytest.fixture(scope="session")
def synthesizer(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    from actors.replica import Synthesizer

    return Synthesizer(model=str(tiny_checkpoint), device="cpu", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.s3 import seaweed_s3

    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported by `raytts export-onnx` (float32, every block verified by onnxruntime)."""
    from jobs.cli import main

    out = tmp_path_factory.mktemp("onnx") / "tiny-float32"
    assert main(["export-onnx", "--model", str(tiny_checkpoint), "--output", str(out)]) == 0
    return out
