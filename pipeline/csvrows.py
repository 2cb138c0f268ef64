"""CSV records that never take a shard down and never take longer than linear time, however dirty the quoting.

Python's `csv` reader (strict) raises on a malformed record. Parsing resumes on the line after the failing record's
first line, with a new reader over the same list of lines (`_Lines`, fed by index: slicing off the rest of the file
after each error made a dirty 160k-line file take 75 s). Each line is fed a bounded number of times: in strict mode
a record only runs on across lines inside a quoted field, which closes at the first lone quote, and a line read
again after a failed record starts in the unquoted state, so no span of lines is re-read more than twice.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator


class _Lines:
    """The lines the csv reader asks for, from `start` on, by index (no copy of the rest of the file)."""

    def __init__(self, lines: list[str], start: int) -> None:
        self.lines, self.position = lines, start
        self.fed = 0  # lines handed to the reader

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.position >= len(self.lines):
            raise StopIteration
        self.position += 1
        self.fed += 1
        return self.lines[self.position - 1]


def csv_records(text: str, work: list[int] | None = None) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line, values, error) for each CSV record; `line` is the record's last physical line (its first for a
    malformed record). A malformed record (e.g. an opening quote never closed, which would otherwise swallow every
    later line into one field) becomes one error and parsing resumes on the next line, so no row vanishes. `work`,
    when given, receives the number of lines each reader was fed (their sum stays within twice the file's)."""
    lines = re.split(r"(?<=\n)", text)  # only newlines end lines (str.splitlines also splits at \u2028, \x1c, ...)
    if lines and not lines[-1]:
        lines.pop()
    start = 0  # line (0-based) where the reader (re)starts
    while start < len(lines):
        feed = _Lines(lines, start)
        reader = csv.reader(feed, strict=True)
        consumed = 0
        try:
            for values in reader:
                consumed = reader.line_num
                yield start + consumed, values, None
        except csv.Error as err:
            broken = start + consumed  # the failing record's first line (0-based)
            yield (
                broken + 1,
                None,
                f"malformed CSV record starting on this line ({err}); the lines after it are read on",
            )
            start = broken + 1
        else:
            start = len(lines)
        if work is not None:
            work.append(feed.fed)
