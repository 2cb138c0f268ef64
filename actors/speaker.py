"""Speakers: seeded random voices, upstream speaker strings, and reference-audio prompt codes.

Two different string formats exist upstream and both are supported here:
- a *speaker string*: float16 speaker vector -> raw LZMA2 (preset 9 | extreme) -> base16384;
- a *reference prompt*: uint16 codes [4, T] -> 4-byte little-endian shape header + raw LZMA2 -> base16384.
Random speakers are `randn(H, float16) * std + mean` with upstream's published speaker statistics
(`data/spk_stat.npy`, 2 x 768 float16); a narrower model (the tiny preset) uses the first H of each.
"""

from __future__ import annotations

import binascii
import lzma
import math
import re
from functools import lru_cache
from importlib import resources

import numpy as np
import pybase16384 as b14
import torch
import torch.nn.functional as F

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_SEED_SPEC = re.compile(r"seed:(-?\d+)")  # fullmatch: `$` would pass "seed:1\n"


class SpeakerError(ValueError):
    """A speaker specification or string that cannot be used; the message says what was expected."""


@lru_cache(maxsize=1)
def _official_stats() -> np.ndarray:
    with resources.files("actors.data").joinpath("spk_stat.npy").open("rb") as f:
        return np.load(f, allow_pickle=False)


def speaker_stats(hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(std, mean) float16 vectors of length `hidden`."""
    stats = _official_stats()
    if hidden > stats.shape[1]:
        raise SpeakerError(f"speaker statistics cover {stats.shape[1]} dims; the model's hidden size is {hidden}")
    return torch.from_numpy(stats[0, :hidden].copy()), torch.from_numpy(stats[1, :hidden].copy())


def _randn_half(n: int, seed: int) -> np.ndarray:
    """`torch.manual_seed(seed); torch.randn(n, dtype=float16)` exactly as torch <= 2.12 computed it on CPU.

    torch 2.13 changed how float16 normals are drawn, which would silently change every seeded voice. This
    reproduces the older stream from the (unchanged) mt19937 words: 11-bit uniforms, then Box-Muller on each block
    of 16 with float16 rounding after every operation.
    """
    if n % 16:
        raise SpeakerError(f"seeded speakers need a hidden size divisible by 16, got {n}")
    generator = torch.Generator().manual_seed(seed)
    words = np.round(torch.rand(n, dtype=torch.float32, generator=generator).double().numpy() * 2**24)
    uniform = ((words.astype(np.int64) & 0x7FF) / 2048.0).astype(np.float16)
    out = np.empty(n, dtype=np.float16)
    for start in range(0, n, 16):
        u1 = np.float16(1) - uniform[start : start + 8]
        u2 = uniform[start + 8 : start + 16]
        radius = np.sqrt(np.float16(-2) * np.log(u1))
        theta = (np.float32(2 * math.pi) * u2.astype(np.float32)).astype(np.float16)
        out[start : start + 8] = radius * np.cos(theta)
        out[start + 8 : start + 16] = radius * np.sin(theta)
    return out


def random_speaker(seed: int, hidden: int) -> torch.Tensor:
    """The speaker upstream draws after `torch.manual_seed(seed)` (torch <= 2.12): float16 [hidden]."""
    std, mean = speaker_stats(hidden)
    vector = _randn_half(hidden, seed) * std.numpy() + mean.numpy()
    return torch.from_numpy(vector.astype(np.float16))


def _b14_decode(text: str, what: str) -> bytes:
    try:
        return b14.decode_from_string(text)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as err:
        raise SpeakerError(f"{what} is not base16384 text ({err})") from None


def _lzma_decompress(data: bytes, what: str, size: int) -> bytes:
    """Raw LZMA2 -> at most `size` bytes (what the string must hold): a few KB of text can expand to hundreds of
    MB (an LZMA bomb), so decompression stops past the expected size instead of allocating it all."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        raw = decompressor.decompress(data, max_length=size + 1)
    except lzma.LZMAError as err:
        raise SpeakerError(f"{what} does not hold LZMA2 data ({err})") from None
    if len(raw) > size:
        raise SpeakerError(f"{what} decompresses to more than the {size} bytes it should hold; it is not one")
    return raw


def encode_speaker(vector: torch.Tensor) -> str:
    """float speaker vector -> upstream speaker string."""
    raw = vector.detach().to(device="cpu", dtype=torch.float16).numpy().tobytes()
    return b14.encode_to_string(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))


def decode_speaker(text: str, hidden: int) -> torch.Tensor:
    """Upstream speaker string -> float16 [hidden]."""
    what = f"speaker string {_preview(text)}"
    # bounded well above any model's speaker (2 bytes a value), so a string for another size is named as such
    raw = _lzma_decompress(_b14_decode(text, what), what, max(2 * hidden, 1 << 16))
    if len(raw) != 2 * hidden:
        raise SpeakerError(
            f"{what} holds {len(raw) // 2} float16 values; this model needs {hidden}. "
            f"Use a speaker string made for a model with hidden size {hidden}, or 'seed:N'"
        )
    vector = np.frombuffer(raw, dtype=np.float16).copy()
    if not np.isfinite(vector).all():
        raise SpeakerError(f"{what} contains NaN or infinite values")
    return torch.from_numpy(vector)


def encode_prompt(codes: torch.Tensor | np.ndarray) -> str:
    """Reference codes [num_vq, T] -> upstream reference prompt string."""
    arr = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes).astype("<u2")
    if arr.ndim != 2:
        raise SpeakerError(f"reference codes must be 2-D [num_vq, T], got shape {arr.shape}")
    header = np.array(arr.shape, dtype="<u2").tobytes()
    return b14.encode_to_string(header + lzma.compress(arr.tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))


def decode_prompt(text: str, num_vq: int = 4, num_codes: int = 626) -> torch.Tensor:
    """Upstream reference prompt string -> int64 codes [num_vq, T]."""
    what = f"reference prompt {_preview(text)}"
    raw = _b14_decode(text, what)
    if len(raw) < 4:
        raise SpeakerError(f"{what} is too short to hold a shape header")
    shape = tuple(int(v) for v in np.frombuffer(raw[:4], dtype="<u2"))
    if shape[0] != num_vq:
        raise SpeakerError(f"{what}: header says {shape}; expected [{num_vq}, T]")
    codes = np.frombuffer(_lzma_decompress(raw[4:], what, 2 * shape[0] * shape[1]), dtype="<u2")
    if codes.size != shape[0] * shape[1]:
        raise SpeakerError(f"{what}: header says {shape}, payload has {codes.size} codes; expected [{num_vq}, T]")
    if codes.size and int(codes.max()) >= num_codes:
        raise SpeakerError(f"{what}: code {int(codes.max())} is out of range [0, {num_codes})")
    return torch.from_numpy(codes.astype(np.int64).reshape(shape))


def parse_speaker(spec: str | None, hidden: int) -> torch.Tensor | None:
    """`seed:N`, an upstream speaker string, or None/'' (no speaker: the prompt uses [empty_spk])."""
    if spec is None or not str(spec).strip():
        return None
    if not isinstance(spec, str):
        raise SpeakerError(f"speaker must be a string ('seed:N' or a speaker string), got {type(spec).__name__}")
    spec = spec.strip()
    match = _SEED_SPEC.fullmatch(spec)
    if match:
        seed = int(match.group(1))
        if not 0 <= seed < 2**63:
            raise SpeakerError(f"speaker seed {seed} is out of range [0, 2**63)")
        return random_speaker(seed, hidden)
    return decode_speaker(spec, hidden)


def normalized_speaker(vector: torch.Tensor) -> torch.Tensor:
    """L2-normalised in float16 on the CPU, as upstream does before the vector enters the model."""
    return F.normalize(vector.to(device="cpu", dtype=torch.float16), p=2.0, dim=0, eps=1e-12)


def _preview(text: str) -> str:
    text = str(text)
    return repr(text if len(text) <= 24 else text[:24] + "...") + f" ({len(text)} chars)"
