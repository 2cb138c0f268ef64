"""The listening page: `{output}/report.html`, a static page next to a job's output (local folder or object storage,
no server) for the rows a listener should hear first. `raytts report OUTPUT` writes it, and so does the end of every
`raytts run`.

What it holds: the rows' totals and flag counts, histograms of the quality measures (matplotlib, as SVG images in the
page), and a table of chosen rows with audio players: the worst `per_flag` rows of each flag (by that flag's own
measure, e.g. the longest loop for `loop`), a fixed sample of clean rows to compare them with (of each part's first
`per_flag` clean rows, those whose ids hash lowest: spread over the parts, the same on every run), and the first
failed rows with their errors. Filters by flag, speaker and language (Chinese, English or mixed, from
`spoken_text`) show and hide table rows.

The parts are read one at a time, a few columns each, counted in Arrow kernels, and only the rows the page may show
become Python objects: the page costs the same memory for ten rows and for a hundred million, and ~12 us a row
(200,000 rows in 2.4 s, matplotlib's import included). Players link `audio/{id}.{format}` relatively where the job wrote
audio files (the page works wherever the folder is served or copied whole); rows whose audio lives only in the
Parquet `audio.bytes` (`output.audio_files: false`) are embedded in the page.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import io
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.quality import FLAG_MEANINGS, FLAGS, HISTOGRAMS, QualitySummary

from .parts import RUN_SCHEMA, filesystem, iter_outputs

PAGE = "report.html"
PER_FLAG = 12  # worst rows shown per flag, clean rows sampled, failed rows listed
_COLUMNS = [
    "id", "spoken_text", "speaker", "seed", "duration_s", "error", "error_kind", "source", "qc", "qc_flags",
    "qc_attempts", "asr_text", "asr_error_rate", "audio.path", "audio_size",
]  # fmt: skip
# Each flag's own measure, and whether a larger value is worse (+1) or a smaller one (-1).
SEVERITY: dict[str, tuple[str, int]] = {
    "truncated": ("truncated_segments", 1),
    "too_fast": ("seconds_per_unit", -1),
    "too_slow": ("seconds_per_unit", 1),
    "lead_silence": ("lead_silence_s", 1),
    "trail_silence": ("trail_silence_s", 1),
    "long_pause": ("longest_pause_s", 1),
    "too_quiet": ("rms_dbfs", -1),
    "clipped": ("clipped_share", 1),
    "loop": ("loop_s", 1),
    "asr_mismatch": ("asr_error_rate", 1),
}
HISTOGRAM_TITLES = {
    "duration_s": "duration (s)",
    "seconds_per_unit": "seconds per word / character",
    "longest_pause_s": "longest pause (s)",
    "lead_silence_s": "leading silence (s)",
    "trail_silence_s": "trailing silence (s)",
    "rms_dbfs": "loudness (dBFS)",
    "loop_s": "longest code loop (s)",
    "asr_error_rate": "ASR error rate",
}
MIME = {"flac": "audio/flac", "wav": "audio/wav", "ogg": "audio/ogg", "opus": "audio/ogg"}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]{2,}")
_TAG = re.compile(r"\[\w+\]")


def language(text: str | None) -> str:
    """zh, en, mixed or other: what `spoken_text` is written in (the page's language filter)."""
    plain = _TAG.sub(" ", text or "")  # control tags ([laugh], [uv_break]) are no language
    zh, en = bool(_CJK.search(plain)), bool(_LATIN.search(plain))
    return "mixed" if zh and en else "zh" if zh else "en" if en else "other"


@dataclass
class Listening:
    """What the page shows, gathered part by part (`gather`)."""

    output: str
    per_flag: int = PER_FLAG
    rows: int = 0
    ok: int = 0
    failed: int = 0
    summary: QualitySummary = field(default_factory=QualitySummary)
    worst: dict[str, list[tuple[float, str, dict[str, Any]]]] = field(default_factory=dict)  # flag -> min-heap
    clean: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # max-heap by -hash
    failures: list[dict[str, Any]] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def add_table(self, table: pa.Table) -> None:
        """One part's rows: counts and histograms in Arrow kernels; Python objects only for the rows the page may
        show (each flag's worst candidates, the part's first clean rows, the first failed rows)."""
        table = table.combine_chunks()
        self.rows += table.num_rows
        failed = pc.is_valid(table.column("error"))
        errors = table.filter(failed)
        self.failed += errors.num_rows
        for entry in pc.value_counts(pc.fill_null(errors.column("error_kind"), "unknown")).to_pylist():
            self.error_kinds[entry["values"]] = self.error_kinds.get(entry["values"], 0) + entry["counts"]
        self.failures.extend(errors.slice(0, max(0, self.per_flag - len(self.failures))).to_pylist())
        ok = table.filter(pc.invert(failed))
        self.ok += ok.num_rows
        columns = ("qc", "qc_flags", "qc_attempts", "asr_error_rate")
        self.summary.add_columns(*(ok.column(c) for c in columns))
        measured = ok.filter(pc.is_valid(ok.column("qc")))
        flags = measured.column("qc_flags")
        flat, parents = pc.list_flatten(flags), pc.list_parent_indices(flags)
        for flag in pc.unique(flat).to_pylist():
            self._worst(flag, measured.take(parents.filter(pc.equal(flat, flag))))
        lengths = pc.fill_null(pc.list_value_length(flags), 0)
        for row in measured.filter(pc.equal(lengths, 0)).slice(0, self.per_flag).to_pylist():
            digest = int.from_bytes(hashlib.blake2b(row["id"].encode(), digest_size=8).digest(), "big")
            _push(self.clean, (-digest, row["id"], row), self.per_flag)

    def _worst(self, flag: str, rows: pa.Table) -> None:
        """Keep the flag's `per_flag` worst rows: the part's candidates (values at or past its per_flag-th worst,
        ties included) become Python rows, the heap picks among them."""
        measure, sign = SEVERITY.get(flag, ("duration_s", 1))
        column = rows.column(measure) if measure in rows.column_names else pc.struct_field(rows.column("qc"), measure)
        values = sign * pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        if values.size > self.per_flag:
            cut = np.partition(values, values.size - self.per_flag)[values.size - self.per_flag]
            rows = rows.filter(pa.array(values >= cut))
        heap = self.worst.setdefault(flag, [])
        for row in rows.to_pylist():
            value = row["qc"].get(measure, row.get(measure)) if row.get("qc") else row.get(measure)
            _push(heap, (sign * (value or 0.0), row["id"], row), self.per_flag)

    def shown(self) -> list[dict[str, Any]]:
        """The table's rows: each flag's worst (worst first), then the clean sample, each row once."""
        seen: dict[str, dict[str, Any]] = {}
        for flag in FLAGS:
            for _, row_id, row in sorted(self.worst.get(flag, []), reverse=True):
                seen.setdefault(row_id, row)
        for _, row_id, row in sorted(self.clean, reverse=True):
            seen.setdefault(row_id, row)
        return list(seen.values())


def _push(heap: list, item: tuple, size: int) -> None:
    """Keep the `size` largest items of a stream in a min-heap (ties broken by id, so the choice is stable)."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _tables(output: str, columns: list[str]) -> Iterator[pa.Table]:
    """The output's rows a part at a time: a job's `parts/` (`raytts run`), else the Parquet files at the top of the
    folder (`raytts synth`'s part-00000.parquet), their missing columns read as nulls."""
    fs, base = filesystem(output)
    if fs.get_file_info(f"{base}/parts").type == pafs.FileType.Directory:
        yield from iter_outputs(output, columns)
        return
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        names = pq.read_schema(info.path, filesystem=fs).names
        table = pq.read_table(info.path, filesystem=fs, columns=[c for c in columns if c.split(".")[0] in names])
        table = table.rename_columns([c.split(".")[-1] for c in table.column_names])  # audio.path reads as path
        for column in columns:  # a column an older file lacks reads as nulls of its type
            name = column.split(".")[-1]
            if name not in table.column_names:
                kind = RUN_SCHEMA.field(name).type if name in RUN_SCHEMA.names else pa.string()
                table = table.append_column(name, pa.nulls(table.num_rows, kind))
        yield table


def gather(output: str, per_flag: int = PER_FLAG) -> Listening:
    """Read the output's parts one at a time and keep what the page shows."""
    listening = Listening(output=output, per_flag=per_flag)
    for table in _tables(output, _COLUMNS):
        listening.add_table(table.rename_columns([c if c != "path" else "audio_path" for c in table.column_names]))
    return listening


def _players(listening: Listening, rows: list[dict[str, Any]]) -> dict[str, str]:
    """id -> the player's source: `audio/{file}` relative to the page, or a data: URI of the Parquet bytes for rows
    with no audio file (read in one more pass over the parts, the chosen rows' bytes only)."""
    sources: dict[str, str] = {}
    embed: set[str] = set()
    for row in rows:
        if row.get("audio_size") is not None and row.get("audio_path"):
            sources[row["id"]] = "audio/" + posixpath.basename(row["audio_path"])
        else:
            embed.add(row["id"])
    if embed:
        wanted = pa.array(sorted(embed), pa.string())
        for table in _tables(listening.output, ["id", "audio"]):
            table = table.filter(pc.is_in(table["id"], value_set=wanted))
            for row in table.to_pylist():
                audio = row["audio"] or {}
                if audio.get("bytes"):
                    mime = MIME.get(posixpath.splitext(audio.get("path") or "")[1].lstrip("."), "audio/flac")
                    sources[row["id"]] = f"data:{mime};base64," + base64.b64encode(audio["bytes"]).decode()
    return sources


def _histogram(name: str, counts: list[int]) -> str:
    """One measure's histogram as a data: URI of an SVG image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    edges = HISTOGRAMS[name]
    labels = [_bin_label(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    figure = Figure(figsize=(4.6, 2.6), layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(counts)), counts, color="#4c72b0")
    axes.set_xticks(range(len(counts)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_title(HISTOGRAM_TITLES.get(name, name), fontsize=9)
    axes.set_ylabel("rows", fontsize=8)
    axes.tick_params(axis="y", labelsize=7)
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, not glyph outlines: 5x smaller
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _bin_label(lo: float, hi: float) -> str:
    if hi == float("inf"):
        return f"{lo:g}+"
    if lo == float("-inf"):
        return f"< {hi:g}"
    return f"{lo:g}-{hi:g}"


def render(listening: Listening) -> str:
    """The page's HTML."""
    import jinja2

    rows = listening.shown()
    sources = _players(listening, rows)
    table = [
        {
            "id": row["id"],
            "flags": row.get("qc_flags") or [],
            "speaker": row.get("speaker") or "",
            "language": language(row.get("spoken_text")),
            "text": row.get("spoken_text") or "",
            "heard": row.get("asr_text"),
            "asr_error_rate": row.get("asr_error_rate"),
            "qc": row.get("qc") or {},
            "attempts": row.get("qc_attempts") or 1,
            "seed": row.get("seed"),
            "src": sources.get(row["id"]),
        }
        for row in rows
    ]
    summary = listening.summary.to_dict()
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("report.html.j2").render(
        output=listening.output,
        totals={"rows": listening.rows, "ok": listening.ok, "failed": listening.failed},
        summary=summary,
        flags=[(flag, FLAG_MEANINGS[flag], summary["flags"].get(flag, 0)) for flag in FLAGS],
        histograms=[
            (HISTOGRAM_TITLES[name], _histogram(name, hist["counts"]))
            for name, hist in summary["histograms"].items()
            if name != "asr_error_rate" or any(hist["counts"])  # the ASR round trip is off by default
        ],
        rows=table,
        speakers=sorted({r["speaker"] for r in table}),
        languages=sorted({r["language"] for r in table}),
        failures=listening.failures,
        error_kinds=listening.error_kinds,
        per_flag=listening.per_flag,
    )


def write_page(output: str, per_flag: int = PER_FLAG) -> tuple[str, Listening]:
    """Write {output}/report.html; returns its location and what it shows."""
    listening = gather(output, per_flag)
    html = render(listening).encode()
    fs, base = filesystem(output)
    with fs.open_output_stream(f"{base}/{PAGE}", metadata={"Content-Type": "text/html; charset=utf-8"}) as sink:
        sink.write(html)
    return f"{output.rstrip('/')}/{PAGE}", listening
