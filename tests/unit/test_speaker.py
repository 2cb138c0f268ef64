"""Speaker strings, reference prompt strings and seeded speakers."""

from __future__ import annotations

import pytest
import torch

from actors.speaker import (
    SpeakerError,
    decode_prompt,
    decode_speaker,
    encode_prompt,
    encode_speaker,
    normalized_speaker,
    parse_speaker,
    random_speaker,
)


def test_speaker_string_round_trip_is_exact():
    vector = random_speaker(2024, 768)
    text = encode_speaker(vector)
    assert isinstance(text, str) and len(text) < 1200
    assert torch.equal(decode_speaker(text, 768), vector)


def test_seeded_speakers_are_deterministic_and_distinct():
    assert torch.equal(random_speaker(7, 768), random_speaker(7, 768))
    assert not torch.equal(random_speaker(7, 768), random_speaker(8, 768))
    assert random_speaker(7, 768).dtype == torch.float16
    assert torch.equal(random_speaker(7, 128), parse_speaker("seed:7", 128))


def test_reference_prompt_round_trip():
    codes = torch.randint(0, 626, (4, 57))
    assert torch.equal(decode_prompt(encode_prompt(codes)), codes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a speaker string", "LZMA2|base16384"),
        ("", None),
        ("seed:-5", "out of range"),
    ],
)
def test_bad_speaker_strings_raise_clear_errors(text, message):
    if message is None:
        assert parse_speaker(text, 768) is None  # empty means "no speaker"
        return
    with pytest.raises(SpeakerError, match=message):
        parse_speaker(text, 768)


def test_speaker_string_for_another_model_size_is_refused():
    with pytest.raises(SpeakerError, match="holds 768 float16 values; this model needs 128"):
        decode_speaker(encode_speaker(random_speaker(1, 768)), 128)


def test_reference_prompt_with_bad_codes_is_refused():
    with pytest.raises(SpeakerError, match="out of range"):
        decode_prompt(encode_prompt(torch.full((4, 3), 700)))
    with pytest.raises(SpeakerError, match="expected \\[4, T\\]"):
        decode_prompt(encode_prompt(torch.zeros(3, 5, dtype=torch.long)))


def test_normalisation_happens_in_float16():
    vector = random_speaker(3, 768)
    n = normalized_speaker(vector)
    assert n.dtype == torch.float16
    assert abs(float(n.float().norm()) - 1.0) < 1e-2
