"""The ONNX route: the model exported as verified blocks (`export`), and those blocks run by onnxruntime behind the
model interface the engine drives (`runtime.OnnxChatTTS`, `engine.backend: onnx`). Needs the `onnx` extra."""

from __future__ import annotations

import importlib.util

EXTRA = ("onnx", "onnxscript", "onnxruntime")


def require_onnx(purpose: str) -> None:
    """Raise ModuleNotFoundError saying what to install when a package of the `onnx` extra is missing (torch's
    exporter otherwise fails deep inside with "No module named 'onnxscript'")."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{purpose} needs the onnx extra, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"installed: pip install 'raytts[onnx]' (onnx, onnxscript, onnxruntime; onnxruntime-gpu for CUDA)"
        )
