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
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model.chattts import ChatTTSModel
from . import blocks as B
from .manifest import FORMAT, MANIFEST, WINDOW_FILE

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


@dataclass
class Block:
    name: str  # file stem, and the manifest key
    kind: str  # the graph it is: layers share "layer"
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    dynamic: list[dict[int, str]]  # per input: axis -> symbolic name
    samples: Callable[[int], tuple[torch.Tensor, ...]]  # random inputs at shape variant 0 or 1


def _blocks(model: ChatTTSModel, dtype: torch.dtype) -> list[Block]:
    config = model.config
    g = config.gpt
    hidden, heads_kv, dim, q = g.hidden_size, g.num_key_value_heads, g.head_dim, g.num_vq
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dt)

    def randint(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen)

    def embed_samples(v: int):
        n = (7, 3)[v]
        return randint(g.num_text_tokens, n), randint(g.num_audio_tokens, n, q), randint(3, n), randn(n, hidden)

    pool = 6

    def layer_samples(v: int):
        batch, seq, nb, block_size = ((2, 5, 2, 16), (3, 1, 3, 8))[v]
        positions = torch.arange(seq).view(1, -1) + randint(30, batch, 1)
        index = (torch.arange(heads_kv).view(-1, 1) * pool + randint(pool, 1, batch * nb)).reshape(-1)
        return randn(batch, seq, hidden), positions, randn(heads_kv, pool, block_size, dim), \
            randn(heads_kv, pool, block_size, dim), index  # fmt: skip

    def sampling_samples(v: int):
        batch, width, codes = ((3, q, g.num_audio_tokens), (2, 1, 40))[v]
        return (
            randn(batch, width, codes, dt=torch.float32) * 3,
            randint(3, batch, width, codes).float(),
            randint(6, batch),
            torch.rand(batch, width, generator=gen) + 0.1,
            torch.rand(batch, generator=gen) * 0.5 + 0.4,
            randint(codes - 3, batch) + 3,
            torch.rand(batch, generator=gen) * 0.3 + 1.0,
            randint(6, batch),
            torch.tensor(codes - 1),
        )

    def frames(steps: list[int]) -> torch.Tensor:
        return torch.tensor([2 * s for s in steps])

    n_mels = config.vocos.input_channels
    blocks = [
        Block("embed", "embed", B.EmbedBlock(model), ["ids", "codes", "kind", "speaker"], ["embeds"],
              [{0: "n"}, {0: "n"}, {0: "n"}, {0: "n"}], embed_samples),
    ]  # fmt: skip
    layer_io = (["x", "positions", "k_pool", "v_pool", "read_index"], ["out", "k_new", "v_new"])
    layer_axes = [
        {0: "batch", 1: "seq"},
        {0: "batch", 1: "seq"},
        {1: "pool_blocks", 2: "block_size"},
        {1: "pool_blocks", 2: "block_size"},
        {0: "reads"},
    ]
    for i, layer in enumerate(model.gpt.layers):
        blocks.append(Block(f"layers/layer_{i:02d}", "layer", B.LayerBlock(layer, g), *layer_io, layer_axes,
                            layer_samples))  # fmt: skip
    blocks += [
        Block("norm", "norm", B.NormBlock(model.gpt.norm), ["x"], ["hidden"], [{0: "batch", 1: "seq"}],
              lambda v: (randn((2, 4)[v], (3, 1)[v], hidden),)),
        Block("code_head", "code_head", B.CodeHeadBlock(model), ["hidden"], ["logits"], [{0: "n"}],
              lambda v: (randn((3, 1)[v], hidden),)),
        Block("text_head", "text_head", B.TextHeadBlock(model), ["hidden"], ["logits"], [{0: "n"}],
              lambda v: (randn((3, 1)[v], hidden),)),
        Block("sampling", "sampling", B.SamplingHeadBlock(),
              ["logits", "counts", "steps", "temperature", "top_p", "top_k", "penalty", "min_new_tokens", "eos"],
              ["scores"],
              [{0: "batch", 1: "width", 2: "codes"}, {0: "batch", 1: "width", 2: "codes"}, {0: "batch"},
               {0: "batch", 1: "width"}, {0: "batch"}, {0: "batch"}, {0: "batch"}, {0: "batch"}, {}],
              sampling_samples),
        Block("decoder", "decoder", B.DecoderBlock(model.decoder), ["hidden", "frames"], ["mel"],
              [{0: "batch", 2: "steps"}, {0: "batch"}],
              lambda v: (randn(2, hidden, (9, 14)[v]), frames([(9, 5), (14, 14)][v]))),
        Block("dvae_decode", "dvae_decode", B.DVAEDecodeBlock(model.dvae), ["codes", "frames"], ["mel"],
              [{0: "batch", 2: "steps"}, {0: "batch"}],
              lambda v: (randint(g.num_audio_tokens - 1, 2, q, (9, 14)[v]), frames([(9, 5), (14, 14)][v]))),
        Block("dvae_encode", "dvae_encode", B.DVAEEncodeBlock(model.dvae), ["audio"], ["codes"],
              [{0: "samples"}], lambda v: (torch.randn((24_000, 37_123)[v], generator=gen) * 0.1,)),
        Block("vocos", "vocos", B.VocosBlock(model.vocos), ["mel", "frames"], ["real", "imag"],
              [{0: "batch", 2: "mel_frames"}, {0: "batch"}],
              lambda v: (randn(2, n_mels, (18, 28)[v]), torch.tensor([(18, 10), (28, 28)][v]))),
    ]  # fmt: skip
    return blocks


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


def _errors(expected: list[np.ndarray], found: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max abs error / max |expected|) over outputs; -inf positions must agree exactly."""
    worst_abs = worst_rel = 0.0
    for want, got in zip(expected, found, strict=True):
        if want.shape != got.shape:
            return float("inf"), float("inf")
        if want.dtype.kind in "iub":
            diff = float(np.mean(want != got))  # integer outputs (codes): the share that differs
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff)
            continue
        finite = np.isfinite(want)
        if not np.array_equal(finite, np.isfinite(got)):
            return float("inf"), float("inf")
        if not finite.any():
            continue
        w, f = want[finite].astype(np.float64), got[finite].astype(np.float64)
        err = float(np.max(np.abs(w - f)))
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(float(np.max(np.abs(w))), 1e-30))
    return worst_abs, worst_rel


def _with_layer_weights(first: Block, first_path: Path, block: Block, path: Path) -> bool:
    """Write `path`: the first layer's exported graph with `block`'s weights. Each initializer of that graph is a
    parameter of the first layer (by name, or by value as it is or transposed, as the exporter lays matmul weights
    out) or a constant of the graph; every parameter must be found exactly once. False (nothing written) when the
    mapping is not clean: the caller exports the layer instead. The file is verified like any export."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(first_path))
    params = {name: p.detach().numpy() for name, p in first.module.named_parameters()}
    wanted = {name: p.detach().numpy() for name, p in block.module.named_parameters()}
    found: dict[str, int] = {}
    for init in graph.graph.initializer:
        value = numpy_helper.to_array(init)
        if init.name in params:
            matches = [(init.name, False)]
        else:
            matches = [
                (name, False) for name, p in params.items() if p.shape == value.shape and np.array_equal(p, value)
            ]
            matches += [
                (name, True) for name, p in params.items() if p.T.shape == value.shape and np.array_equal(p.T, value)
            ]
        if not matches:
            continue  # a constant of the graph (shapes, the rope frequencies)
        if len(matches) > 1:
            return False
        name, transposed = matches[0]
        found[name] = found.get(name, 0) + 1
        new = wanted[name].T if transposed else wanted[name]
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new).astype(value.dtype), init.name))
    if sorted(found) != sorted(params) or any(n != 1 for n in found.values()):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    return True


def verify_block(block: Block, path: Path) -> dict[str, float]:
    """Run the file by onnxruntime at both sample shapes and compare with the torch block."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst_abs = worst_rel = 0.0
    for variant in (0, 1):
        args = block.samples(variant)
        with torch.inference_mode():
            want = block.module(*args)
        want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
        feed = {name: t.numpy() for name, t in zip(block.inputs, args, strict=True)}
        found = session.run(block.outputs, feed)
        err_abs, err_rel = _errors(want, found)
        worst_abs, worst_rel = max(worst_abs, err_abs), max(worst_rel, err_rel)
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel}


def _io(path: Path) -> dict[str, list[dict]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                        "shape": shape})  # fmt: skip
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def graph_digest(path: Path) -> str:
    """Digest of a file's graph without its weights' values: equal for every layer file (one graph)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(node.op_type.encode())
        digest.update(repr([(a.name, a.type) for a in node.attribute]).encode())
        digest.update(repr((list(node.input), list(node.output))).encode())
    for init in model.graph.initializer:
        digest.update(repr((init.name, list(init.dims), init.data_type)).encode())
    return digest.hexdigest()[:16]


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
    tolerance = TOLERANCE[dtype]
    entries: dict[str, dict] = {}
    digests: set[str] = set()
    started = time.perf_counter()
    first_layer: tuple[Block, Path] | None = None
    for block in _blocks(model, DTYPES[dtype]):
        path = output / f"{block.name}.onnx"
        t0 = time.perf_counter()
        if block.kind == "layer" and first_layer is not None and _with_layer_weights(*first_layer, block, path):
            pass  # the first layer's graph with this layer's weights: no second export of the same graph
        else:
            _export(block, path, opset)
            if block.kind == "layer":
                first_layer = (block, path)
        check = verify_block(block, path)
        if not check["max_rel_error"] <= tolerance:
            raise ExportError(
                f"block {block.name!r}: onnxruntime output differs from torch by {check['max_rel_error']:.2e} "
                f"relative (max abs {check['max_abs_error']:.2e}), above the {dtype} limit {tolerance:.0e}; the "
                f"exporter or onnxruntime mistranslated an op of this block: re-export with another --opset, or report it"
            )
        entry = {"file": path.relative_to(output).as_posix(), "kind": block.kind, "dtype": dtype,
                 "quantization": "none", "verify": check, **_io(path)}  # fmt: skip
        if block.kind == "layer":
            entry["graph_digest"] = graph_digest(path)
            digests.add(entry["graph_digest"])
        if quantize == "int8" and block.kind in QUANTIZED_BLOCKS:
            qpath = path.with_name(path.stem + ".int8.onnx")
            _quantize(path, qpath)
            entry["float_verify"] = check
            entry["verify"] = verify_block(block, qpath)  # reported, not failed: int8 is an approximation
            entry["file"], entry["quantization"] = qpath.relative_to(output).as_posix(), "int8"
            entry["int8_scheme"] = INT8_SCHEME
            if first_layer is None or first_layer[1] != path:  # the first layer's float graph serves the others
                path.unlink()
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
