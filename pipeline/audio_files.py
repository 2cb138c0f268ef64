"""The job's audio objects `{output}/audio/{id}.{format}`: listing their names and deleting some, local or object
storage (pyarrow's filesystem for the output's scheme). Writing them is the store stage's (`pipeline.store`)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.fs as pafs

from .parts import filesystem

log = logging.getLogger(__name__)


def audio_names(output: str) -> pa.Array:
    """The file names under {output}/audio (none when the folder does not exist). A listing that fails raises: the
    books must not take "cannot list" for "no files"."""
    fs, base = filesystem(output)
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/audio", recursive=False, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        raise OSError(
            f"cannot list the job's audio files under {output}/audio ({err}); check the output location and its "
            f"credentials, then run again"
        ) from err
    return pa.array(sorted(i.base_name for i in infos if i.type == pafs.FileType.File), pa.string())


def delete_audio(output: str, names: list[str]) -> None:
    """Delete {output}/audio/{name} for each name; one already gone is no error."""
    fs, base = filesystem(output)
    for name in names:
        try:
            fs.delete_file(f"{base}/audio/{name}")
        except FileNotFoundError:
            continue
    log.info("removed %d audio files no current row names", len(names))
