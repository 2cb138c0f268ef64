"""The job's audio objects `{output}/audio/{id}.{format}`: listing their names and deleting some, local or object
storage (pyarrow's filesystem for the output's scheme). Writing them is the store stage's (`pipeline.store`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from actors.audio import AUDIO_FORMATS

from .parts import filesystem

log = logging.getLogger(__name__)


def audio_listing(output: str, batch: int = 65_536) -> Iterator[pa.Table]:
    """The files under {output}/audio, `batch` at a time: `name` and `size` (bytes), none when the folder does not
    exist. A local folder is read entry by entry (a million files never sit in memory at once); object storage is
    listed by pyarrow in one call. A listing that fails raises: the books must not take "cannot list" for "no
    files"."""
    fs, base = filesystem(output)
    folder = f"{base}/audio"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            yield from _local_listing(folder, batch)
            return
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        raise OSError(
            f"cannot list the job's audio files under {output}/audio ({err}); check the output location and its "
            f"credentials, then run again"
        ) from err
    files = [(i.base_name, i.size) for i in infos if i.type == pafs.FileType.File]
    del infos
    for start in range(0, len(files), batch):
        yield _listing(files[start : start + batch])


def _local_listing(folder: str, batch: int) -> Iterator[pa.Table]:
    if not os.path.isdir(folder):
        return
    files: list[tuple[str, int]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                files.append((entry.name, entry.stat().st_size))
                if len(files) == batch:
                    yield _listing(files)
                    files = []
    if files:
        yield _listing(files)


def _listing(files: list[tuple[str, int]]) -> pa.Table:
    return pa.table({"name": pa.array([f[0] for f in files], pa.string()),
                     "size": pa.array([f[1] for f in files], pa.int64())})  # fmt: skip


def is_audio_name(names: pa.Array) -> pa.Array:
    """Which names are audio files a job writes (`{id}.{format}`): only those may be removed as orphans, never a
    file someone else put in the folder."""
    pattern = "(?i)\\.(" + "|".join(AUDIO_FORMATS) + ")$"
    return pc.match_substring_regex(names, pattern)


def delete_audio(output: str, names: list[str]) -> None:
    """Delete {output}/audio/{name} for each name; one already gone is no error."""
    fs, base = filesystem(output)
    for name in names:
        try:
            fs.delete_file(f"{base}/audio/{name}")
        except FileNotFoundError:
            continue
    log.info("removed %d audio files no current row names", len(names))
