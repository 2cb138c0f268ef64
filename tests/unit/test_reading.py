"""Reading numbers by their context (actors/reading through actors/text.py's `full` mode): the catalogue of ordinary
sentences with their expected spoken forms (tests/fixtures/reading, written by people who never saw the rules),
invariants over generated text, the date order setting and the user's replacements."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from actors.text import Reading, read_text
from benchmarks.reading import CATALOGUE, HELDOUT, HELDOUT2, fold, load, score, table

_DIGITS = re.compile(r"[0-9０-９]")
_TAG = re.compile(r"\[[^\[\]]*\]")


def _read(text: str) -> tuple[str, str]:
    spoken, dropped, _ = read_text(text, "full")
    return spoken, dropped


@pytest.mark.parametrize(
    ("path", "floor"), [(CATALOGUE, 0.97), (HELDOUT, 0.92), (HELDOUT2, 0.85)], ids=["catalogue", "heldout", "heldout2"]
)
def test_the_catalogue_is_read_right(path, floor):
    """At least `floor` of the sentences read exactly as a narrator would (the per-class table is in the failure
    message and in benchmarks/RESULTS.md); no digit is ever left in spoken text; `dropped_chars` never names a
    character the sentence did not have. `heldout` was written after the rules (one round of fixes came from it),
    `heldout2` later still and never tuned on (benchmarks/RESULTS.md)."""
    result = score(load(path), _read)
    assert result["digit_left"] == 0 and result["invented_dropped"] == 0, table(result)
    wrong = "\n".join(f"{w['id']}: {w['text']!r} -> {w['spoken']!r}" for w in result["wrong"])
    assert result["accuracy"] >= floor, f"{table(result)}\n{wrong}"


def test_the_comparison_folds_only_what_a_listener_cannot_hear():
    assert fold("Two hundred and fifty-five, dollars!") == fold("two hundred fifty five dollars")
    assert fold("会议 在 二〇二六年") == fold("会议在二零二六年")
    assert fold("one hundred") != fold("a hundred") and fold("负二层") != fold("负两层")


@pytest.mark.parametrize(
    ("order", "expected"), [("mdy", "December sixth"), ("dmy", "the twelfth of June")], ids=["mdy", "dmy"]
)
def test_an_ambiguous_date_follows_the_setting_and_says_so(order, expected):
    spoken, _, notes = read_text("The hearing is on 12/06/2026.", "full", Reading.of(order))
    assert expected in spoken and "twenty twenty six" in spoken
    assert "ambiguous date '12/06/2026'" in notes and order in notes
    plain, _, none = read_text("The hearing is on 25/11/2026.", "full", Reading.of(order))
    assert "the twenty fifth of November" in plain and none == ""
    with pytest.raises(ValueError, match="mdy, dmy"):
        Reading.of("ymd")


def test_user_replacements_come_first_whole_words_longest_first_and_are_recorded():
    reading = Reading.of(replacements={"K8s": "Kubernetes", "K8s cluster": "the cluster", "Dr.": "Doctor", "AI": "A I"})
    spoken, _, notes = read_text("Dr. Lee runs the K8s cluster and K8s. SAID [uv_break] AI 2 times.", "full", reading)
    assert spoken.startswith("Doctor Lee runs the the cluster and Kubernetes")
    assert "SAID" in spoken and "A I two times" in spoken  # AI inside SAID is no whole word
    assert "[uv_break]" in spoken
    assert notes.split("; ") == [
        "replaced 'Dr.' with 'Doctor'", "replaced 'K8s cluster' with 'the cluster'", "replaced 'K8s' with 'Kubernetes'",
        "replaced 'AI' with 'A I'",
    ]  # fmt: skip
    untouched, _, _ = read_text("[K8s] stays a tag", "full", Reading.of(replacements={"K8s": "x"}))
    assert untouched.startswith("[K8s]")
    with pytest.raises(ValueError, match="non-empty strings"):
        Reading.of(replacements={" ": "x"})


def test_the_reading_applies_in_every_mode_and_the_default_reading_changes_nothing():
    reading = Reading.of(replacements={"ChatTTS": "chat T T S"})
    for mode in ("full", "upstream", "off"):
        assert "chat T T S" in read_text("ChatTTS speaks.", mode, reading)[0]
    assert read_text("I have 3 cats!", "upstream") == ("I have  cats.", "3", "")


_PIECES = st.sampled_from(
    ["12/06/2026", "-5", "−3", "10-20%", "X-7", "H100", "K8s", "1,250", "3，5", "5000mAh", "100m", "#1", "4.2.1",
     "a@b.com", "www.x.com", "Henry VIII", "第IV章", "$5k", "¥3,999", "+1 800 555 0199", "24/7", "2019-21",
     "[uv_break]", "[speed_5]", "温度", "the", " ", "，", ".", "§", "×", "‰", "±", "~", "/", "&", "1984", "0.004"]
)  # fmt: skip


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(pieces=st.lists(_PIECES | st.text(max_size=6), max_size=10))
@example(pieces=["满 ", "300", " 减 ", "50", " & free shipping"])
@example(pieces=["歼-10C is a multirole fighter"])
@example(pieces=["[0"])  # an unclosed tag: swallowed as written, not read first (found by this test)
@example(pieces=["[a 12[uv_break] 3"])
def test_reading_never_fails_keeps_tags_reads_every_digit_and_records_only_what_was_there(pieces):
    """Over generated mixes of the hard cases and random text: reading never raises, control tags come out unchanged
    and in order, no digit is left in the spoken text outside tags, and every character `dropped_chars` names was in
    the input."""
    text = "".join(pieces)
    spoken, dropped, _ = read_text(text, "full")
    assert _TAG.findall(spoken) == _TAG.findall(text)
    assert not _DIGITS.search(_TAG.sub("", spoken)), (text, spoken)
    assert all(ch in text for ch in dropped), (text, dropped)


def test_the_date_order_and_replacements_are_part_of_a_jobs_identity():
    """A re-run with another date order or dictionary redoes the rows (their audio says something else); the job
    config refuses a date order it does not know."""
    from pydantic import ValidationError

    from pipeline.config import JobConfig
    from pipeline.identity import job_settings

    def settings_of(**changes):
        config = JobConfig.model_validate({"inputs": {"text": ["x"]}, "output": {"path": "o"}} | changes)
        return job_settings(config, "sha", "rules")

    base = settings_of()
    assert (base["date_order"], base["replacements"]) == ("mdy", {})
    assert settings_of(date_order="dmy") != base
    assert settings_of(replacements={"K8s": "Kubernetes"})["replacements"] == {"K8s": "Kubernetes"}
    with pytest.raises(ValidationError, match="date_order"):
        settings_of(date_order="ymd")


def test_an_unknown_unit_is_read_letter_by_letter_and_noted():
    spoken, _, notes = read_text("Add 5qz of flour and 200 g of sugar.", "full")
    assert spoken == "Add five q z of flour and two hundred grams of sugar."
    assert notes == "unknown unit '5qz': read letter by letter"
    assert read_text("Order 2 A4 sheets and a 5k run.", "full")[2] == ""  # codes and known suffixes: no guess
