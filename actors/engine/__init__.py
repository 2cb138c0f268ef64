"""The engine: memory plan, continuous batcher, prompts, sampling and waveform decoding, as plain functions and a
small class over the model. It knows nothing of text, requests, checkpoints or Ray (`make lint` checks)."""
