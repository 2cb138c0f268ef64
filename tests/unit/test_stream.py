"""Streaming decode: chunks emitted while a row generates join to the one-shot waveform."""

from __future__ import annotations

import pytest
import torch

from actors.engine.generate import decode_waveforms, generate
from actors.engine.prompt import CodePrompt
from actors.engine.sampling import SamplingParams
from actors.engine.stream import StreamDecoder, receptive_field_mel_frames
from actors.model.config import ModelConfig
from actors.text import decorate


def test_receptive_field_of_the_full_model():
    full = ModelConfig.from_name("full")
    # Decoder: 2 input convs + 12 blocks x dilation 2 x 3 + output conv; Vocos: embed + 8 blocks x 3
    assert receptive_field_mel_frames(full, use_decoder=True) == 75 + 27


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("use_decoder", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 24])
def test_streamed_chunks_join_to_the_one_shot_waveform(request, tiny_tokenizer, dtype, use_decoder, chunk):
    """Also in float16, the online path's default dtype on CUDA (run here on the CPU)."""
    tiny_model = request.getfixturevalue("tiny_model" if dtype == "float32" else "tiny_model_fp16")
    prompt = CodePrompt(tiny_tokenizer.encode(decorate("a streaming test sentence.", "[speed_5]", False)))
    row = generate(
        tiny_model,
        [prompt],
        [SamplingParams(temperature=0.5, min_new_tokens=70, max_new_tokens=70, seed=1)],
        tiny_tokenizer.spk_emb_id,
    )[0]
    rows = row.hidden if use_decoder else row.codes
    one_shot = decode_waveforms(tiny_model, [rows], use_decoder)[0]
    stream = StreamDecoder(tiny_model, use_decoder)
    pieces, first_at = [], None
    for steps in range(chunk, rows.shape[0], chunk):
        piece = stream.push(rows[:steps])
        if piece.numel() and first_at is None:
            first_at = steps
        pieces.append(piece)
    pieces.append(stream.push(rows, final=True))
    joined = torch.cat(pieces)
    assert joined.shape == one_shot.shape
    assert float((joined - one_shot).norm() / one_shot.norm()) <= 1e-3
    assert first_at is not None and first_at < rows.shape[0] // 2, "audio must start flowing early"
