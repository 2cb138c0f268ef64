"""Audio out of the engine: the one 16-bit quantisation and the one file encoder, shared by the offline job,
`raytts synth` and the Serve endpoint. Torch-free: the store stage encodes audio without loading the model.
"""

from __future__ import annotations

import io

import numpy as np

from .model.config import SAMPLE_RATE

# Format name (also the file extension) -> soundfile container and subtype. flac and wav are lossless 16-bit; ogg
# (Vorbis) and opus (Ogg Opus, 24 kHz is one of Opus' native rates) are lossy and several times smaller. Each decodes to
# exactly the stored `num_samples` (libsndfile trims Opus' pre-skip and padding).
AUDIO_FORMATS = {
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float audio -> int16 samples: clipped to [-1, 1] (16-bit formats would wrap), scaled by 32767, rounded."""
    return np.round(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def pcm16_flat(audios: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Every row's float audio (None: no audio) quantised exactly as `to_pcm16` does, into one flat int16 buffer:
    (offsets [n + 1] int32, samples). One allocation for the batch and one reused scratch row instead of
    `to_pcm16`'s four fresh multi-MB temporaries per row and a concatenation: 0.38 instead of 1.25 ms per 16-second
    row in the engine actor (benchmarks/RESULTS.md, "The CPU stages around an engine")."""
    sizes = [0 if audio is None else int(np.size(audio)) for audio in audios]
    offsets = np.zeros(len(audios) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.int16)
    scratch = np.empty(max(sizes, default=0), dtype=np.float32)
    for audio, start, end in zip(audios, offsets[:-1], offsets[1:], strict=True):
        if audio is None or start == end:
            continue
        work = scratch[: end - start]
        # clip-then-scale equals scale-then-clip at +-32767 (a monotonic scale by a positive constant)
        np.multiply(np.asarray(audio, dtype=np.float32).reshape(-1), np.float32(32767.0), out=work)
        np.clip(work, -32767.0, 32767.0, out=work)
        np.rint(work, out=work)  # half to even, as np.round
        flat[start:end] = work  # whole numbers within int16: the cast is exact
    return offsets, flat


def encode_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "flac") -> bytes:
    """float32 mono or int16 PCM -> an encoded file. Float audio bound for a 16-bit format is quantised by
    `to_pcm16` first (libsndfile's own float conversion rounds differently), so every 16-bit file raytts writes
    holds the same samples whichever path made it; lossy formats encode the float samples."""
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio format must be one of {sorted(AUDIO_FORMATS)}, got {fmt!r}")
    import soundfile as sf  # here, not at import: the CLI imports this module and GPU images may lack soundfile

    container, subtype = AUDIO_FORMATS[fmt]
    buffer = io.BytesIO()
    if audio.dtype == np.int16:
        samples = audio
    else:
        samples = to_pcm16(audio) if subtype == "PCM_16" else np.clip(audio, -1.0, 1.0)
    sf.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
