"""The job's audio objects `{output}/audio/{id}.{format}`: listing their names and deleting some, local or object
storage (pyarrow's filesystem for the output's scheme). Writing them is the store stage's (`pipeline.store`)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from actors.audio import AUDIO_FORMATS

from .parts import filesystem

log = logging.getLogger(__name__)


def audio_listing(output: str) -> pa.Table:
    """The files under {output}/audio: `name` and `size` (bytes), none when the folder does not exist. A listing
    that fails raises: the books must not take "cannot list" for "no files"."""
    fs, base = filesystem(output)
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/audio", recursive=False, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        raise OSError(
            f"cannot list the job's audio files under {output}/audio ({err}); check the output location and its "
            f"credentials, then run again"
        ) from err
    files = sorted((i.base_name, i.size) for i in infos if i.type == pafs.FileType.File)
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
