"""Context rules that run before the grammars: they read what the grammars read wrongly or not at all, by what
surrounds it. A sentence in `lang` ("en" or "zh") goes through them in order, each writing its reading in words of
that language, or in a form the grammar then reads right:

1. addresses: emails, URLs, file names, @handles, spoken with "dot", "at", ... (`tokens`);
2. dates by locale and English dates with a month's name (`March 15, 2026`) (`12/06/2026` by `date_order`, recorded when ambiguous; `2026-12-07`; `on 11/25`) (`numbers`);
3. phone numbers, digit by digit, and extensions; codes, PINs, card, order and room numbers digit by digit; Chinese
   clock times with seconds and durations (`10:00:15`, `成绩2:58:30`);
4. section and version numbers (`4.2.1`, `Python 3.11`);
5. money (`$1.50`, `£12.99`, `$5k`, `¥3,999`, `50¢`);
6. names with a hyphen and a number (`X-7`, `COVID-19`, `歼-20`: never "minus");
7. ranges (`10-20%`, `30%–50%`, `9am-5pm`) and signs (`-5`, `−5`, `+5`);
8. thousands separators by script (`1,250,000`, `1 000 000`, `3，5`);
9. units after numbers (`100m` is metres, `5000mAh`, `120km/h`);
10. codes and identifiers, letters spelled and long digit runs one by one (`H100`, `K8s`, `SF1234567890`);
11. symbols (`×`, `x` between numbers, `&`, `#1`, `‰`, `±`, `≈`, `~`);
12. Roman numerals after titles and names (`Chapter IV`, `Henry VIII`, `第IV章`);
13. English four-digit counts against years (`1984 people`), decades (`1990s`, `'90s`).
"""

from __future__ import annotations

from collections.abc import Callable

from . import dates, digits, numbers, tokens
from .dates import DATE_ORDERS, DEFAULT_DATE_ORDER
from .words import Speaker

__all__ = ["DATE_ORDERS", "DEFAULT_DATE_ORDER", "chinese_hyphens", "read"]


def chinese_hyphens(sentence: str) -> str:
    """A Chinese sentence's hyphens before numbers, decided before its English stretches are cut out: a name's
    (`歼-10C` -> `歼10C`) goes, a sign's becomes `−`, a range's stays (`numbers.read_signs_and_ranges`)."""
    return numbers.chinese_hyphens(sentence)


def read(sentence: str, lang: str, grammar: Callable[[str], str], notes: list[str], date_order: str) -> str:
    """`sentence` with every rule applied, for `lang`'s grammar to finish; what a rule guessed is appended to notes."""
    say = Speaker(lang, grammar, notes)
    for scheme in tokens.SCHEME.findall(sentence):
        notes.append(f"{scheme!r} not read (narrators skip a web address's scheme)")
    text = tokens.ADDRESS.sub(lambda m: tokens.read_address(m, say), sentence)
    text = tokens.read_aircraft(text, say)
    text = dates.read_scores(text, say)
    text = dates.read_dates(text, say, notes.append, date_order)
    text = dates.read_month_dates(text, say)
    text = digits.read_phones(text, say)
    text = digits.read_digit_strings(text, say)
    text = dates.read_chinese_times(text, say)
    text = numbers.read_sections(text, say)
    text = digits.read_money(text, say)
    text = tokens.HYPHEN_NAME.sub(lambda m: tokens.read_hyphen_name(m, say), text)
    text = numbers.read_signs_and_ranges(text, say)
    text = tokens.read_times_signs(text, say)
    text = tokens.read_inches(text, say)
    text = tokens.UNIT.sub(lambda m: tokens.read_unit(m, say), text)
    text = numbers.read_separators(text, say)
    text = numbers.read_decimals(text, say)
    text = tokens.CODE.sub(lambda m: tokens.read_code(m, say), text)
    text = tokens.read_symbols(text, say)
    text = tokens.read_roman(text, say)
    return numbers.read_years_and_counts(text, say)
