"""The ONNX route: the model exported as verified blocks (`export`), and those blocks run by onnxruntime behind the
model interface the engine drives (`runtime.OnnxChatTTS`, `engine.backend: onnx`). Needs the `onnx` extra."""
