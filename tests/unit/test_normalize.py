"""The `full` normalisation mode (actors/normalize.py through actors/text.py): numbers, dates, times, money,
percentages, phone numbers, units and symbols are spoken, in English, Chinese and text mixing both, control tags are
untouched, and what the front end changes is recorded. The grammars are the real `wetext` FSTs (no mock)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from actors.normalize import spoken_form
from actors.settings import NormalizeMode
from actors.text import cleaned_and_dropped, normalize_mode, text_front_end
from actors.validation import RequestError

_DIGITS = re.compile(r"[0-9]")

# (text, words the spoken text must contain): English, Chinese, mixed. Each case is asserted on its own.
CATALOGUE = [
    # English
    (
        "Call me at 555-1234 on March 3rd, 2025.",
        ["five five five, one two three four", "march third", "twenty twenty five"],
    ),
    ("The price is $12.50, about 20% off!", ["twelve", "dollars", "twenty percent"]),
    ("2025", ["twenty twenty five"]),
    ("I was born on 03/15/1990.", ["march fifteenth", "nineteen ninety"]),
    ("The meeting is at 14:30.", ["fourteen thirty"]),
    ("He weighs 70 kg.", ["seventy kilograms"]),
    ("It is -5°C outside.", ["minus five degrees celsius"]),
    ("Pi is about 3.14159.", ["three point one four one five nine"]),
    ("She ate 3/4 of the cake.", ["three quarters"]),
    ("This is the 21st century.", ["twenty first century"]),
    ("Call 555-123-4567 now.", ["five five five", "four five six seven"]),
    ("It costs €20 or £15.", ["twenty euros", "fifteen pounds"]),
    ("I have 1,000,000 dollars.", ["one million dollars"]),
    ("Go to room 101.", ["one zero one"]),
    ("He came 1st and she came 2nd.", ["first", "second"]),
    ("Tom & Jerry.", ["tom and jerry"]),
    ("Email me @ home.", ["at home"]),
    ("Call #5 now.", ["number five"]),
    ("2 + 2 = 4", ["two plus two equals four"]),
    ("It is 5km away.", ["five kilometers"]),
    ("It's 3:45 pm.", ["three forty five"]),
    ("Dr. Smith is 42 years old.", ["doctor", "forty two"]),
    ("The flight leaves at 7:00am on 2025-12-01.", ["seven", "december first", "twenty twenty five"]),
    ("The file is 3.5 GB.", ["three point five gigabytes"]),
    ("Add 50 % more and 1/2 cup of sugar.", ["fifty percent", "one half"]),
    ("Mr. Brown paid $1,250 for 12 chairs.", ["mister", "dollars", "twelve chairs"]),
    # Chinese
    ("我有3个苹果，价格是12.5元。", ["三个", "十二点五元"]),
    ("今天是2025年3月3日。", ["二零二五年", "三月三日"]),
    ("现在是下午3:45。", ["三点四十五分"]),
    ("销量增长了20%。", ["百分之二十"]),
    ("他的电话是138-1234-5678。", ["一三八"]),
    ("这条路长5km。", ["五公里"]),
    ("温度是-5°C。", ["负五摄氏度"]),
    ("我们还有1/3的时间。", ["三分之一"]),
    ("第1名是小明。", ["第一名"]),
    ("他跑了100米，用了9.58秒。", ["一百米", "九点五八秒"]),
    ("会议在2024-05-06举行。", ["二零二四年五月六日"]),
    ("身高1.75m，体重65kg。", ["一点七五米", "六十五公斤"]),
    ("共计1,234,567元。", ["一百二十三万四千五百六十七元"]),
    ("会议在2024年3月15日下午3点开始，电话是13812345678。", ["三月十五日", "下午三点", "幺三八"]),
    # mixed
    ("他说 I have 3 cats and 2 dogs 然后走了。", ["three cats", "two dogs"]),
    ("混合 English 和中文 100 个 words.", ["一百个", "english", "words"]),
    ("我的 iPhone 15 花了5000元。", ["十五", "五千元"]),
    ("Meet me at 3pm. 我们3点见。", ["three", "三点"]),
    ("这本书 costs 30元。", ["三十元"]),
]


@pytest.mark.parametrize(("text", "words"), CATALOGUE, ids=[f"{i:02d}" for i in range(len(CATALOGUE))])
def test_numbers_dates_money_and_symbols_are_spoken(text, words):
    """Default mode: no digit survives into the spoken text and none is dropped (they are read, not deleted), and
    the expected words are there."""
    spoken, dropped = cleaned_and_dropped(text)
    assert not _DIGITS.search(spoken), spoken
    assert not _DIGITS.search(dropped), (spoken, dropped)
    for word in words:
        assert word in spoken.lower(), (word, spoken)


def test_the_catalogue_is_the_size_the_issue_asks_for():
    english = sum(1 for text, _ in CATALOGUE if not re.search(r"[\u4e00-\u9fff]", text))
    assert len(CATALOGUE) >= 40 and english >= 15 and len(CATALOGUE) - english >= 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[speed_5]Pay $5 now[uv_break] ok", "[speed_5]Pay five dollars now[uv_break] ok"),
        ("我[uv_break]有3个[laugh]苹果[lbreak]", "我[uv_break]有三个[laugh]苹果[lbreak]"),
        ("Hello [uv_break] world 42 [laugh] times.", "Hello [uv_break] world forty two [laugh] times."),
        ("[oral_2][laugh_0][break_6]", "[oral_2][laugh_0][break_6]"),
    ],
)
def test_control_tags_pass_through_untouched(text, expected):
    """A grammar would read `[speed_5]` as "speed five": only the text between tags is normalised, and the white
    space around each piece is kept (the grammars strip it)."""
    assert spoken_form(text) == expected


def test_an_english_sentence_the_grammar_cannot_parse_is_read_token_by_token():
    """wetext's English grammar has no path through `#1` or `+5` (it raises): the sentence is read token by token,
    a failing token with its symbol and digits apart."""
    assert spoken_form("#1 @home +5 -3") == "number one at home plus five minus three"


def test_each_sentence_gets_its_own_language():
    """A Chinese sentence reads its numbers in Chinese, an English one in English, in the same row."""
    assert spoken_form("I have 2 cats. 我有2只猫。") == "I have two cats. 我有两只猫。"


def test_upstream_and_off_modes_keep_todays_cleaning():
    """`upstream` is upstream ChatTTS without a normaliser (the parity goldens' mode): digits are deleted and
    recorded; `off` skips the punctuation mapping too."""
    assert cleaned_and_dropped("I have 3 cats!", "upstream") == ("I have  cats.", "3")
    assert cleaned_and_dropped("我有3只猫!", "upstream") == ("我有只猫。", "3")
    assert cleaned_and_dropped("我有3只猫!", "off") == ("我有只猫.", "3")
    assert cleaned_and_dropped("我有3只猫!", "full") == ("我有三只猫。", "")


def test_strict_turns_a_row_that_would_lose_characters_into_an_error(tiny_tokenizer):
    common = dict(prompt="[speed_5]", has_speaker=False, reference_text="", max_segment_tokens=120, max_chars=1000)
    ok = text_front_end("I paid $5 (cash).", tiny_tokenizer, normalize="full", **common)
    assert ok.spoken_text == "I paid five dollars ,cash,." and ok.dropped == ""
    lossy = text_front_end("Is it 5?", tiny_tokenizer, normalize="full", **common)
    assert lossy.dropped == "?"
    with pytest.raises(RequestError, match=r"cannot say.*'\?'.*strict"):
        text_front_end("Is it 5?", tiny_tokenizer, normalize="full", strict=True, **common)
    with pytest.raises(RequestError, match="nothing speakable after 'upstream'"):
        text_front_end("2025", tiny_tokenizer, normalize="upstream", **common)
    only_number = text_front_end("2025", tiny_tokenizer, normalize="full", **common)
    assert only_number.spoken_text == "twenty twenty five"


def test_the_mode_setting_accepts_names_and_the_older_booleans():
    class Body(BaseModel):
        normalize: NormalizeMode = "full"

    assert [Body(normalize=v).normalize for v in ("full", "upstream", "off", True, False)] == [
        "full",
        "upstream",
        "off",
        "full",
        "off",
    ]
    with pytest.raises(ValidationError, match="full"):
        Body(normalize="wetext")
    assert normalize_mode(" Upstream ") == "upstream"
    with pytest.raises(ValueError, match="full, upstream, off"):
        normalize_mode(1)


_TAG = re.compile(r"\[[^\[\]]*\]")


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("ab Zx我是，。,.!?-:/$%&@#+[]_0123456789")) | st.characters(), max_size=40
    )
)
@example(text="[speed_5]5")
@example(text="[5")
@example(text="#5 我")
def test_normalisation_never_fails_keeps_tags_and_records_what_it_deletes(text):
    """Over generated text: normalising never raises, every complete control tag comes out unchanged and in order,
    and `full` is upstream's cleaning of the normalised text: no digit is left outside tags in the spoken text, and
    the spoken text plus the deleted characters account for every character of the normalised text."""
    normalised = spoken_form(text)
    assert _TAG.findall(normalised) == _TAG.findall(text)
    spoken, dropped = cleaned_and_dropped(text, "full")
    assert (spoken, dropped) == cleaned_and_dropped(normalised, "upstream")
    assert not _DIGITS.search(_TAG.sub("", spoken))
    assert len(spoken) + len(dropped) == len(normalised)


def test_the_jobs_prepare_stage_normalises_and_applies_strict(tiny_checkpoint):
    """The offline job's CPU prepare stage (pipeline/prepare.py, where the job's front end runs; never the GPU
    actors): the default reads numbers, `upstream` deletes them and records it, strict fails a lossy row naming it."""
    import pyarrow as pa

    from pipeline.config import JobConfig
    from pipeline.job import tokenizer_of
    from pipeline.prepare import prepare_rows

    rows = pa.table({
        "id": ["n", "q"], "text": ["I owe you $20.", "Really?"], "source": ["t.jsonl:1", "t.jsonl:2"],
        "fields": ["{}", "{}"], "error": pa.array([None, None], pa.string()),
    })  # fmt: skip
    tokenizer = tokenizer_of(str(tiny_checkpoint), "auto")
    config = JobConfig.model_validate({"inputs": {"text": ["x"]}, "output": {"path": "out"}})
    assert (config.normalize, config.strict_text) == ("full", False)  # the defaults

    def prepared(**changes):
        settings = {"speaker": None, "normalize": config.normalize, "strict_text": config.strict_text,
                    "max_segment_tokens": 120, "max_chars": 1000, "references": {}} | changes  # fmt: skip
        table = prepare_rows(rows, tokenizer, settings)
        return table.select(["spoken_text", "dropped_chars", "error"]).to_pylist()

    assert prepared() == [
        {"spoken_text": "I owe you twenty dollars.", "dropped_chars": "", "error": None},
        {"spoken_text": "Really", "dropped_chars": "?", "error": None},
    ]
    assert prepared(normalize="upstream")[0] == {"spoken_text": "I owe you .", "dropped_chars": "$20", "error": None}
    dated = JobConfig.model_validate({"inputs": {"text": ["x"]}, "output": {"path": "out"}, "date_order": "dmy",
                                      "replacements": {"you": "thee"}})  # fmt: skip
    notes = prepare_rows(rows.slice(0, 1), tokenizer, {
        "speaker": None, "normalize": "full", "strict_text": False, "max_segment_tokens": 120, "max_chars": 1000,
        "references": {}, "reading": dated.reading(),
    }).select(["spoken_text", "reading_notes"]).to_pylist()  # fmt: skip
    assert notes == [{"spoken_text": "I owe thee twenty dollars.", "reading_notes": "replaced 'you' with 'thee'"}]
    strict = prepared(strict_text=True)
    assert strict[0]["error"] is None
    assert strict[1]["spoken_text"] is None and strict[1]["error"].startswith("t.jsonl:2: ")
    assert "strict" in strict[1]["error"] and "'?'" in strict[1]["error"]
