"""An exported folder's manifest (torch-free: the offline job's driver-side checks read it without loading torch)."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "raytts-onnx/1"
WINDOW_FILE = "vocos_window.npy"  # the ISTFT window (the checkpoint's), for the host-side ISTFT after `vocos`


class OnnxError(ValueError):
    """An exported folder that cannot be used: missing, of another format or model, or onnxruntime cannot run it."""


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise OnnxError(
            f"{folder} has no {MANIFEST}: it is not a raytts ONNX export; make one with `raytts export-onnx`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise OnnxError(
            f"{path}: format {manifest.get('format')!r}, this raytts reads {FORMAT!r}; re-export with `raytts export-onnx`"
        )
    return manifest


def check_source(folder: str | Path, sha256: str, model_id: str) -> dict:
    """The manifest of `folder`, which must be an export of the checkpoint whose digest is `sha256`."""
    manifest = read_manifest(folder)
    exported = manifest.get("source", {}).get("sha256")
    if exported != sha256:
        raise OnnxError(
            f"the ONNX export {folder} was made from checkpoint sha256 {str(exported)[:16]}, not from {model_id}: export "
            f"this checkpoint (raytts export-onnx --model ...) or point the engine at the checkpoint the export came from"
        )
    return manifest
