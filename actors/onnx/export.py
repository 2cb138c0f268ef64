"""`raytts export-onnx`: the model as ONNX blocks, each verified by onnxruntime against its torch block at export.

Blocks (see `actors.onnx.blocks`): `embed`, `layers/layer_NN` (the decoder-layer graph, one file per layer with
that layer's weights: every file has the same graph, recorded as `graph_digest` in the manifest), `norm`,
`code_head`, `text_head`, `sampling`, `decoder`, `dvae_decode`, `dvae_encode`, `vocos`. Each is exported by the
pinned torch's exporter (`torch.onnx.export(dynamo=True)`, onnxscript underneath) with dynamic batch/sequence axes,
then run by onnxruntime at two shapes on random inputs and compared with the torch block: the export fails when a
float32 block is off by more than 1e-4 relative (float16: 1e-2). With `quantize="int8"` the GPT blocks whose
weights dominate (layers and heads) are quantised by `onnxruntime.quantization.quantize_dynamic` (int8 weights,
per-channel, activations quantised per call) and their error is reported, not failed.

`manifest.json` lists every block's file, inputs and outputs (names, shapes with symbolic axes, dtypes), its
verification figures, the opset, the dtype and quantisation, and the source checkpoint's digest.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..model.chattts import ChatTTSModel
from .block_specs import Block, export_blocks
from .manifest import FORMAT, MANIFEST, WINDOW_FILE
from .verify import graph_digest, io_of, verify_block, with_layer_weights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16}
QUANTIZE = ("none", "int8")
DEFAULT_OPSET = 18
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
QUANTIZED_BLOCKS = ("layer", "code_head", "text_head")  # where the weights are: quantised with quantize="int8"


# Smallest size of a dynamic axis where the graph needs one: the STFT's reflect padding needs > n_fft / 2 samples.
_MIN_SIZE = {"samples": 1024}


class ExportError(RuntimeError):
    """An export that failed, or a block whose onnxruntime output is off its torch block by more than allowed."""


def _export(block: Block, path: Path, opset: int) -> None:
    args = block.samples(0)
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for axes in block.dynamic:
        spec = {
            axis: dims.setdefault(name, torch.export.Dim(name, min=_MIN_SIZE.get(name, 0)))
            for axis, name in axes.items()
        }
        shapes.append(spec or None)
    path.parent.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()  # the exporter prints its progress and warns about optional packages: kept for errors
    # the exporter and its optimiser log every pass at INFO: errors only (kept for the ExportError otherwise)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                block.module.eval(),
                args,
                dynamo=True,
                input_names=block.inputs,
                output_names=block.outputs,
                dynamic_shapes=tuple(shapes),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types: name the block and keep the cause
        raise ExportError(
            f"torch.onnx.export failed for block {block.name!r} (opset {opset}): {exc}\n{chatter.getvalue()[-2000:]}"
        ) from exc
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    program.save(str(path), external_data=False)


# What int8 means, recorded in the manifest of every quantised block.
INT8_SCHEME = (
    "onnxruntime quantize_dynamic: int8 weights per output channel; activations quantised to uint8 per call with one "
    "scale per tensor, so a row's result depends slightly on the rows batched with it (float exports do not)"
)


def _quantize(src: Path, dst: Path) -> None:
    """`src`'s weight matmuls as int8 (`INT8_SCHEME`): onnxruntime fuses them into integer kernels (VNNI/AVX2)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"MatMulConstBOnly": True},  # the weights' matmuls only: attention stays float
    )


def export_onnx(
    model: ChatTTSModel,
    output: Path,
    *,
    source: dict[str, str],
    dtype: str = "float32",
    quantize: str = "none",
    opset: int = DEFAULT_OPSET,
    progress: Callable[[str], None] = lambda line: None,
) -> dict:
    """Export every block of `model` (loaded on the CPU in `dtype`) into `output`, verify each, write the manifest; returns it.
    `source`: what the weights are (`checkpoint`, `digest`), recorded in the manifest."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {list(QUANTIZE)}, got {quantize!r}")
    if quantize == "int8" and dtype != "float32":
        raise ValueError("int8 quantisation starts from the float32 export: use dtype='float32' with quantize='int8'")
    found = model.embed.emb_text.weight.dtype
    if model.device.type != "cpu" or found != DTYPES[dtype]:
        raise ValueError(f"export needs the model loaded on the CPU in {dtype}, got {found} on {model.device}")
    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    entries: dict[str, dict] = {}
    digests: set[str] = set()
    started = time.perf_counter()
    first_layer: tuple[Block, Path] | None = None
    for block in export_blocks(model, DTYPES[dtype]):
        t0 = time.perf_counter()
        entry, first_layer = _export_block(block, output, opset, dtype, quantize, first_layer)
        if block.kind == "layer":
            digests.add(entry["graph_digest"])
        entries[block.name] = entry
        line = (f"{block.name:<18} {entry['quantization']:>5}  max abs {entry['verify']['max_abs_error']:.2e}  "
                f"max rel {entry['verify']['max_rel_error']:.2e}  ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        log.debug("%s", line)
        progress(line)
    if quantize == "int8" and first_layer is not None:
        first_layer[1].unlink()  # every layer file is written: only the int8 files stay
    if len(digests) > 1:
        raise ExportError(f"the layer files have {len(digests)} different graphs; they must share one: {digests}")
    np.save(output / WINDOW_FILE, model.vocos.head.window.float().numpy(), allow_pickle=False)
    manifest = {
        "format": FORMAT,
        "opset": opset,
        "dtype": dtype,
        "quantize": quantize,
        "source": source,
        "config": model.config.to_dict(),
        "torch": torch.__version__,
        "blocks": entries,
        "istft": {
            "window": WINDOW_FILE,
            "n_fft": model.config.vocos.n_fft,
            "hop_length": model.config.vocos.hop_length,
            "center": True,
        },
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _export_block(
    block: Block, output: Path, opset: int, dtype: str, quantize: str, first_layer: tuple[Block, Path] | None
) -> tuple[dict, tuple[Block, Path] | None]:
    """Export and verify one block (a layer after the first reuses its graph with its own weights); returns its
    manifest entry and the first layer's (block, file)."""
    path = output / f"{block.name}.onnx"
    if block.kind == "layer" and first_layer is not None and with_layer_weights(*first_layer, block, path):
        pass  # the first layer's graph with this layer's weights: no second export of the same graph
    else:
        _export(block, path, opset)
        if block.kind == "layer":
            first_layer = (block, path)
    check = verify_block(block, path)
    tolerance = TOLERANCE[dtype]
    if not check["max_rel_error"] <= tolerance:
        raise ExportError(
            f"block {block.name!r}: onnxruntime output differs from torch by {check['max_rel_error']:.2e} "
            f"relative (max abs {check['max_abs_error']:.2e}), above the {dtype} limit {tolerance:.0e}; the "
            f"exporter or onnxruntime mistranslated an op of this block: re-export with another --opset, or report it"
        )
    entry = {"file": path.relative_to(output).as_posix(), "kind": block.kind, "dtype": dtype,
             "quantization": "none", "verify": check, **io_of(path)}  # fmt: skip
    if block.kind == "layer":
        entry["graph_digest"] = graph_digest(path)
    if quantize == "int8" and block.kind in QUANTIZED_BLOCKS:
        qpath = path.with_name(path.stem + ".int8.onnx")
        _quantize(path, qpath)
        entry["float_verify"] = check
        entry["verify"] = verify_block(block, qpath)  # reported, not failed: int8 is an approximation
        entry["file"], entry["quantization"] = qpath.relative_to(output).as_posix(), "int8"
        entry["int8_scheme"] = INT8_SCHEME
        if first_layer is None or first_layer[1] != path:  # the first layer's float graph serves the others
            path.unlink()
    return entry, first_layer


def export_checkpoint(
    model: str,
    output: Path,
    *,
    dtype: str = "float32",
    quantize: str = "none",
    opset: int = DEFAULT_OPSET,
    fsq: str = "classic",
    verify: str = "auto",
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> dict:
    """Resolve a checkpoint (folder, URI, hf://, `tiny`), load it on the CPU and export it into `output`, written
    to a temporary folder first and renamed into place, so a crash never leaves a half export that looks whole."""
    import shutil
    import tempfile

    from ..checkpoint import load_model, read_model_config, resolve
    from . import require_onnx

    require_onnx("raytts export-onnx")

    checkpoint = resolve(model, cache_dir=cache_dir, verify=verify)
    config = read_model_config(checkpoint.asset)
    torch_model = load_model(checkpoint.asset, config, "cpu", DTYPES[dtype], fsq)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        source = {"checkpoint": checkpoint.source, "model_id": checkpoint.model_id, "sha256": checkpoint.sha256,
                  "fsq": fsq}  # fmt: skip
        manifest = export_onnx(torch_model, staging, source=source, dtype=dtype, quantize=quantize, opset=opset,
                               progress=progress)  # fmt: skip
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def cached_export(
    model: str,
    *,
    dtype: str,
    quantize: str,
    fsq: str = "classic",
    verify: str = "auto",
    cache_dir: Path | None = None,
) -> Path:
    """The export of `model` in the cache (made once, under a file lock, so the replicas of one node that start
    together export it once): `<cache>/onnx/<checkpoint sha256>-<dtype>-<quantize>-<fsq>-opset<N>`."""
    from filelock import FileLock

    from ..checkpoint import resolve
    from ..checkpoint.sources import default_cache_dir

    cache_dir = cache_dir or default_cache_dir()
    checkpoint = resolve(model, cache_dir=cache_dir, verify=verify)
    folder = cache_dir / "onnx" / f"{checkpoint.sha256[:16]}-{dtype}-{quantize}-{fsq}-opset{DEFAULT_OPSET}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / MANIFEST).is_file():
            log.info(
                "exporting %s to ONNX (%s, quantize=%s) into %s: once per checkpoint", model, dtype, quantize, folder
            )
            export_checkpoint(model, folder, dtype=dtype, quantize=quantize, fsq=fsq, verify=verify,
                              cache_dir=cache_dir)  # fmt: skip
    return folder
