"""Pure `torch.nn.Module`s of the ChatTTS-compatible model and their configs. No I/O, no sampling.

The package import stays torch-free (`config` is plain dataclasses), so CPU-only pipeline stages can read shapes and
constants without loading torch; the modules live in `chattts`, `gpt`, `embed`, `dvae`, `vocos`.
"""
