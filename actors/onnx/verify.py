"""Checking an exported block: onnxruntime's outputs against the torch block's at two shapes, the file's inputs
and outputs as the manifest records them, the digest of its graph without its weights, and reusing the first
layer's graph with another layer's weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .block_specs import Block


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


def with_layer_weights(first: Block, first_path: Path, block: Block, path: Path) -> bool:
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


def io_of(path: Path) -> dict[str, list[dict]]:
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
