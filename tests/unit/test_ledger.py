"""The job's ledger (`pipeline.ledger`): the identity rule over an input split into blocks, loaded the way the job
loads it (one Parquet file per parsed block, written by `write_block_books`), checked against a per-row definition
over generated inputs (hypothesis). No Ray: the files are written by the same function the job's tasks run."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest.mock import patch

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ledger as ledger_module
from pipeline.identity import duplicate_id_error
from pipeline.ledger import Ledger, remove_books_folders, write_block_books

# ids from a small alphabet so that repeats, case variants and empty ids are common
ROW = st.tuples(
    st.sampled_from(["a", "A", "b", "c", "ß", "SS", "", None]),
    st.booleans(),  # derived: the id came from the row's content
    st.sampled_from(["x.jsonl", "y.csv", "x.jsonl.gz"]),
    st.integers(1, 30),  # line
    st.booleans(),  # csv-style "rowN" line
)


def _reference(rows: list[dict]) -> dict[str, dict]:
    """Per-row definition: in (file, line) order, the k-th row (k >= 2) with a repeated derived id gets `{id}-{k}`;
    then a row whose id (ignoring case) an earlier row has is a duplicate keyed by its source."""
    ordered = sorted(rows, key=lambda r: (r["file"], r["line"], r["position"]))
    fixups: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for row in ordered:
        if row["derived"] and row["id"] is not None:
            seen[row["id"]] = seen.get(row["id"], 0) + 1
            if seen[row["id"]] > 1:
                new = f"{row['id']}-{seen[row['id']]}"
                fixups[row["source"]] = {"id": new, "key": new}
    owner: dict[str, tuple[str, str]] = {}
    for row in ordered:
        row_id = fixups.get(row["source"], {}).get("id", row["id"])
        if not row_id:
            continue
        first = owner.setdefault(row_id.lower(), (row_id, row["source"]))
        if first[1] != row["source"]:
            error = duplicate_id_error(row["source"], row_id, *first)
            fixups.setdefault(row["source"], {}).update(error=error, key=f"@{row['source']}")
    return fixups


def _blocks(rows: list[dict], cuts: list[int]) -> list[pa.Table]:
    """The rows as parsed blocks (the parse stage's columns the ledger reads), cut at `cuts`."""
    edges = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    blocks = []
    for start, end in zip(edges, edges[1:], strict=False):
        chunk = rows[start:end]
        blocks.append(pa.table({
            "id": pa.array([r["id"] for r in chunk], pa.string()),
            "source": [r["source"] for r in chunk],
            "key": [r["id"] or f"@{r['source']}" for r in chunk],
            "input_digest": ["d"] * len(chunk),
            "derived": [r["derived"] and r["id"] is not None for r in chunk],
            "unknown_fields": pa.array(["speed\nvoice" if r["line"] % 3 == 0 else None for r in chunk], pa.string()),
        }))  # fmt: skip
    return blocks


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    drawn=st.lists(ROW, max_size=14), cuts=st.lists(st.integers(0, 20), max_size=3), split=st.sampled_from([0, 1, 4])
)
def test_the_identity_rule_over_blocks_matches_the_per_row_definition(tmp_path_factory, drawn, cuts, split):
    """Fixups (renamed repeats, duplicates ignoring case) are the same whatever blocks the rows arrive in and however
    the ledger splits its statements by key (`split` rows per partition; 0: the default, one partition here); the
    final keys are the fixups' keys, every other row keeps its own; loading goes through the job's block files."""
    with patch.object(ledger_module, "PARTITION_ROWS", split or ledger_module.PARTITION_ROWS):
        _check_identity_rule(tmp_path_factory, drawn, cuts)


def _check_identity_rule(tmp_path_factory, drawn, cuts) -> None:
    rows, sources = [], set()
    for position, (row_id, derived, file, line, csv) in enumerate(drawn):
        source = f"{file}:{'row' if csv else ''}{line}"
        if source in sources:
            continue  # a source names one row
        sources.add(source)
        rows.append({"id": row_id, "derived": derived and bool(row_id), "file": file, "line": line,
                     "source": source, "position": position})  # fmt: skip
    blocks = _blocks(rows, cuts)
    folder = tmp_path_factory.mktemp("out") / "_books" / "run"
    sizes = [write_block_books(block, number, str(folder)) for number, block in enumerate(blocks)]
    with Ledger() as ledger:
        ledger.load_blocks(str(folder), sizes)
        ledger.finish_inputs()
        expected = _reference(rows)
        got = ledger.all_fixups()
        assert {s: {k: v for k, v in f.items() if k != "input_digest"} for s, f in got.items()} == expected
        assert all(len(f["input_digest"]) == 32 for f in got.values() if "error" in f)
        keys = dict(ledger.rows("SELECT source, key FROM books"))
        assert keys == {r["source"]: expected.get(r["source"], {}).get("key", r["id"] or f"@{r['source']}")
                        for r in rows}  # fmt: skip
        assert ledger.count == len(rows) == sum(sizes)
        unknown = sum(1 for r in rows if r["line"] % 3 == 0)
        assert ledger.unknown_field_counts() == ({"speed": unknown, "voice": unknown} if unknown else {})
        assert {b for b in ledger.blocks_with_fixups()} == {
            n for n, block in enumerate(blocks) if set(block.column("source").to_pylist()) & set(expected)
        }


def test_a_killed_runs_books_folder_is_removed_and_the_ledger_removes_its_database(tmp_path: Path):
    """`{output}/_books` left by a driver killed mid-parse goes when the next driver (the lease holder) removes it;
    a ledger's database folder goes when it closes, and when it is dropped without closing."""
    stale = tmp_path / "out" / "_books" / "dead"
    stale.mkdir(parents=True)
    (stale / "block-0000000.parquet").write_bytes(b"half a file")
    remove_books_folders(str(tmp_path / "out"))
    assert not (tmp_path / "out" / "_books").exists() and (tmp_path / "out").exists()
    remove_books_folders(str(tmp_path / "out"))  # nothing there: no error
    with Ledger() as ledger:
        closed = ledger.folder
        assert (closed / "books.duckdb").exists()
    assert not closed.exists()
    dropped = Ledger()
    folder = dropped.folder
    dropped.db.close()
    del dropped
    assert not folder.exists()


def test_a_ledger_removes_the_database_folders_of_killed_drivers(tmp_path: Path):
    """A driver killed by SIGKILL leaves its database folder: the next ledger on the machine removes it, and leaves
    the folders of live processes alone."""
    import subprocess
    import sys
    import tempfile

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = Path(tempfile.gettempdir()) / f"raytts-books-{pid}-killed"
    left.mkdir()
    (left / "books.duckdb").write_bytes(b"\0" * 1024)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = Path(tempfile.gettempdir()) / f"raytts-books-{alive.pid}-running"
    busy.mkdir()
    try:
        with Ledger():
            assert not left.exists() and busy.exists()
    finally:
        alive.kill()
        alive.wait()
        shutil.rmtree(busy, ignore_errors=True)
        shutil.rmtree(left, ignore_errors=True)
