"""Text cleaning (upstream-compatible modes) and long-text segmentation; the `full` mode's normalisation is
tests/unit/test_normalize.py's."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.text import clean_text, cleaned_and_dropped, decorate, detect_language, split_segments


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Hello world, this is a test.", "Hello world, this is a test."),
        ("Wow! Really?", "Wow. Really"),  # '!' simplified, '?' deleted
        ("I have 3 cats: Tom and Jerry.", "I have  cats, Tom and Jerry."),
        ("你好，世界!", "你好，世界。"),  # Chinese: half-width '!' -> full width -> '。'
        ("[laugh] ok [uv_break] fine", "[laugh] ok [uv_break] fine"),
        ("[lbreak]数字123", "[lbreak]数字"),
    ],
)
def test_clean_text_matches_upstream_rules(raw, cleaned):
    assert clean_text(raw, "upstream") == cleaned


def test_without_normalisation_invalid_characters_are_still_handled():
    assert clean_text("你好!", normalize="off") == "你好."


def test_language_detection():
    assert detect_language("你好世界 hello") == "zh"
    assert detect_language("hello world 你") == "en"


def test_decorate_builds_the_code_prompt_and_strips_injected_tags():
    assert decorate("hi", "[speed_5]", True, "ref.") == "[Stts][spk_emb]ref.[speed_5]hi[Ptts]"
    assert decorate("[Stts] hi [empty_spk]", "[speed_5]", False) == "[Stts][empty_spk][speed_5]hi[Ptts]"


def test_short_text_is_one_unchanged_segment(tiny_tokenizer):
    text = "A short sentence. Another one."
    assert split_segments(text, 120, tiny_tokenizer.count) == [text]


def test_long_text_splits_at_sentence_ends_within_the_budget(tiny_tokenizer):
    sentences = [f"Sentence number {word} is here and it is fine." for word in ["one", "two", "three", "four"] * 10]
    text = " ".join(sentences)
    segments = split_segments(text, 60, tiny_tokenizer.count)
    assert len(segments) > 3
    assert all(tiny_tokenizer.count(s) <= 60 for s in segments)
    assert all(s.endswith(".") for s in segments), "cuts fall at sentence ends"
    assert " ".join(segments).split() == text.split(), "no text lost or reordered"


def test_a_single_overlong_sentence_is_cut_at_clauses_then_words(tiny_tokenizer):
    text = ", ".join(["the quick brown fox jumps over the lazy dog"] * 12) + "."
    segments = split_segments(text, 40, tiny_tokenizer.count)
    assert len(segments) > 1
    assert all(tiny_tokenizer.count(s) <= 40 for s in segments)
    assert " ".join(segments).replace(" ", "") == text.replace(" ", "")
    unbroken = "汉" * 300
    pieces = split_segments(unbroken, 50, tiny_tokenizer.count)
    assert "".join(pieces) == unbroken and all(tiny_tokenizer.count(p) <= 50 for p in pieces)


@pytest.mark.parametrize(
    ("raw", "spoken", "dropped"),
    [
        ("Call me at 555-1234 on March 3rd, 2025.", "Call me at , on March rd, .", "555123432025"),
        ("The price is $12.50, about 20% off!", "The price is ., about  off.", "$125020%"),
        ("我有3个苹果，价格是12.5元。", "我有个苹果，价格是。元。", "3125"),
        ("hello [uv_break] world 42 [laugh", "hello [uv_break] world  ", "42[laugh"),  # an unclosed [ is swallowed
        ("plain words.", "plain words.", ""),
    ],
)
def test_the_front_end_names_every_character_it_deletes(raw, spoken, dropped):
    """In `upstream` mode (no normaliser: digits cannot be said and are deleted), every deleted character is named."""
    assert cleaned_and_dropped(raw, "upstream") == (spoken, dropped)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab 我是，。,.!?-:()[]_0123456789$%&@#")) | st.characters(), max_size=60),
       normalize=st.sampled_from(["upstream", "off"]))  # fmt: skip
def test_cleaning_only_deletes_and_says_what(text, normalize):
    """Over generated text: the cleaned text plus the dropped characters account for every input character (the
    punctuation maps are one character to one), the cleaned text is what `clean_text` gives, and nothing it keeps
    outside tags is a character the model cannot say."""
    cleaned, dropped = cleaned_and_dropped(text, normalize)
    assert cleaned == clean_text(text, normalize)
    assert len(cleaned) + len(dropped) == len(text)
    if dropped:
        assert not _REJECTED.search(_TAGS.sub("", cleaned))


_REJECTED = re.compile(r"[^\u4e00-\u9fffA-Za-z，。、,\. ]")
_TAGS = re.compile(r"\[[^\]]*\]")  # what the bracket scanner keeps as a tag
