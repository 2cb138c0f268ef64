"""Finding a job's shards: files, folders, globs and object-store URIs expanded into shard paths (every input that
yields nothing is a problem the report names), read as bytes and decompressed, handed to parse tasks as a dataset,
and named in `source` relative to the job's folder. Parsing the bytes into rows is `pipeline.shards`."""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any, NamedTuple

import pyarrow as pa

from .inputs import COMPRESSIONS

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt")
SPEAKER_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".csv")
# Reference audio that speaker manifests name: in a speakers folder these are the manifests' companions, read
# through them, so listing the folder does not report them as files it does not read.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf")


def shard_format(name: str, extensions: tuple[str, ...]) -> str | None:
    """The shard format of a file name (".jsonl", ...), case-insensitive and through a compression suffix
    (`A.JSONL.GZ` -> ".jsonl"); None when it is not one of `extensions`."""
    lower = name.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSIONS:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return next((ext for ext in extensions if lower.endswith(ext)), None)


def not_a_shard(path: str, extensions: tuple[str, ...]) -> str:
    return (
        f"{path}: not read: unknown shard format; expected one of {', '.join(extensions)} (any case, optionally "
        f"compressed as {'/'.join(COMPRESSIONS)}); move it out of the input or rename it"
    )


def read_shard(path: str) -> bytes:
    """A shard file's bytes as stored (a local path, file:// or object-storage URI): compression is undone by
    `decompress` while parsing, so a corrupt archive fails its file's row, never the read task (Ray Data's own
    file readers decompress by extension and fail the job on a bad archive). Raises OSError naming the file."""
    import pyarrow.fs as pafs

    try:
        if "://" in path and not path.startswith("file://"):
            fs, inner = pafs.FileSystem.from_uri(path)
        else:
            fs, inner = pafs.LocalFileSystem(), path.removeprefix("file://")
        with fs.open_input_stream(inner, compression=None) as stream:
            return stream.read()
    except (OSError, pa.ArrowException) as err:
        raise OSError(f"{path}: cannot read it ({err}); check that it exists and the Ray workers may read it") from err


def decompress(path: str, data: bytes) -> bytes:
    """A shard's bytes with its whole-file compression (by suffix) undone; raises ValueError naming the file."""
    codec = next((c for suffix, c in COMPRESSIONS.items() if path.lower().endswith(suffix)), None)
    if codec is None:
        return data
    try:
        with pa.CompressedInputStream(pa.BufferReader(data), codec) as stream:
            return stream.read()
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not readable as {codec} ({err})") from err


class Expansion(NamedTuple):
    files: list[str]  # shard files to read
    problems: list[str]  # specs that name nothing readable, files that are no shards
    excluded: list[str]  # files left out because they lie in the job's or another raytts job's output


def expand_paths(
    specs: list[str], extensions: tuple[str, ...], companions: tuple[str, ...] = (), exclude: str | None = None
) -> Expansion:
    """Every spec (a file, folder or glob; local, file:// or an object-storage URI) expanded to the shard files it
    names, each file once even when specs overlap. A spec that names nothing readable is a problem (reported, the
    job goes on with the rest), never an exception; so is each file it names that is no shard, except `companions`
    (files with those extensions, e.g. the audio next to speaker manifests). Files under `exclude` (the job's
    output) are never read: the job's own parts, manifest and report are not input, even in an input folder; nor
    are the files of another job's output found in a folder or glob (`_not_outputs`)."""
    files: list[str] = []
    problems: list[str] = []
    excluded: list[str] = []
    for spec in specs:
        if "://" in spec and not spec.startswith("file://"):
            matched, found = _expand_uri(spec, extensions, companions, exclude, excluded)
        else:
            matched, found = _expand_local(spec, extensions, companions, exclude, excluded)
        problems.extend(p for p in found if p not in problems)  # overlapping specs report a file once
        files.extend(matched)
    # Overlapping specs (a folder and a glob inside it), and local paths that reach one file through symbolic
    # links (a `**` glob over a link loop), name each file once, under its shortest spelling.
    unique = _one_spelling(files)
    if len(unique) < len(files):
        log.info("%d shard files were named more than once; each is read once", len(files) - len(unique))
    return Expansion(unique, problems, sorted(set(excluded)))


def _one_spelling(paths: list[str]) -> list[str]:
    """Each file once, in order of first appearance, under its shortest spelling (not a/loop/loop/.../x.jsonl)."""
    spellings: dict[str, str] = {}
    for path in paths:
        real = path if "://" in path else os.path.realpath(path)
        if real not in spellings or len(path) < len(spellings[real]):
            spellings[real] = path
    return list(spellings.values())


def _expand_local(
    spec: str, extensions: tuple[str, ...], companions: tuple[str, ...], exclude: str | None, excluded: list[str]
) -> tuple[list[str], list[str]]:
    """Files a local spec names, and a problem for each file it names that is not a shard (or for no file at all).
    Folders are walked through symbolic links, each real folder once (a link loop ends there)."""
    local = os.path.abspath(spec.removeprefix("file://"))
    kinds = "/".join(extensions)
    # A path that exists is taken literally, glob characters or not (`take [2].jsonl` names that file).
    if not os.path.exists(local) and any(ch in local for ch in "*?["):
        found = sorted(_one_spelling([p for p in glob.glob(local, recursive=True) if os.path.isfile(p)]))
        found = _outside(_not_outputs(found, excluded), exclude, excluded)
        return _split_shards(spec, found, extensions, companions, f"the glob matches no {kinds} file")
    if os.path.isdir(local) and not _outside([local], exclude, []):
        return [], [f"{spec}: not read: it lies in the job's output {exclude}; point the input elsewhere"]
    if os.path.isdir(local):
        found, unlisted = _walk(local)
        found = _outside(_not_outputs(found, excluded), exclude, excluded)
        shards, problems = _split_shards(spec, found, extensions, companions, f"the folder holds no {kinds} file")
        return shards, unlisted + problems
    if os.path.isfile(local) and not _outside([local], exclude, excluded):
        return [], [f"{spec}: not read: it lies in the job's output {exclude}; point the input elsewhere"]
    if os.path.isfile(local):
        if shard_format(local, extensions) is None:
            return [], [not_a_shard(spec, extensions)]
        return [local], []
    return [], [f"{spec}: no such file or folder"]


def _walk(folder: str) -> tuple[list[str], list[str]]:
    """(files under `folder`, a problem for each sub-folder that could not be listed)."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    unlisted: list[str] = []

    def cannot_list(err: OSError) -> None:
        unlisted.append(f"{err.filename}: not read: cannot list this folder ({err.strerror}); check its permissions")

    for root, dirs, names in os.walk(folder, onerror=cannot_list, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []  # a symbolic link back into a folder already walked
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        found.extend(os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n)))
    return sorted(found), unlisted


def _split_shards(
    spec: str, found: list[str], extensions: tuple[str, ...], companions: tuple[str, ...], none: str
) -> tuple[list[str], list[str]]:
    shards = [f for f in found if shard_format(f, extensions)]
    others = [f for f in found if not shard_format(f, extensions) and not f.lower().endswith(companions)]
    problems = [not_a_shard(f, extensions) for f in others]
    if not shards and not problems:
        problems.append(f"{spec}: {none}")
    return shards, problems


def _expand_uri(
    spec: str, extensions: tuple[str, ...], companions: tuple[str, ...], exclude: str | None, excluded: list[str]
) -> tuple[list[str], list[str]]:
    """An object-storage file, "folder" (key prefix) or glob (`*`, `?`, `[...]` within a path segment, `**` across
    segments), listed through pyarrow's filesystem for the URI's scheme."""
    import pyarrow.fs as pafs

    scheme = spec.split("://", 1)[0]
    kinds = "/".join(extensions)
    pattern = None
    root = spec
    if any(ch in spec.split("://", 1)[1] for ch in "*?[") and not _object_exists(spec):
        head = re.split(r"[*?\[]", spec, maxsplit=1)[0]
        root = head.rsplit("/", 1)[0]
    try:
        fs, root_path = pafs.FileSystem.from_uri(root)
        if root != spec:
            pattern = _glob_regex(root_path + spec[len(root) :])
        info = fs.get_file_info(root_path)
        if info.type == pafs.FileType.File and pattern is None:
            if not _outside([spec], exclude, excluded):
                return [], [f"{spec}: not read: it lies in the job's output {exclude}; point the input elsewhere"]
            if shard_format(root_path, extensions) is None:
                return [], [not_a_shard(spec, extensions)]
            return [spec], []
        if info.type == pafs.FileType.NotFound and pattern is None:
            return [], [f"{spec}: no such object or prefix"]
        listed = fs.get_file_info(pafs.FileSelector(root_path, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        return [], [f"{spec}: cannot list it ({err}); check the URI and the storage credentials of the Ray workers"]
    found = sorted(
        f"{scheme}://{i.path}"
        for i in listed
        if i.type == pafs.FileType.File and (pattern is None or pattern.fullmatch(i.path))
    )
    found = _outside(_not_outputs(found, excluded), exclude, excluded)
    none = f"the {'glob' if pattern else 'prefix'} matches no {kinds} object"
    return _split_shards(spec, found, extensions, companions, none)


def _object_exists(uri: str) -> bool:
    """An object (or prefix) of exactly this name exists: it is taken literally, not as a glob."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException):
        return False


OUTPUT_MARKS = ("/parts/", "/_settings/", "/manifest.jsonl")  # beside `_report.json`: a raytts job's output


def _not_outputs(files: list[str], excluded: list[str]) -> list[str]:
    """`files` without those inside a raytts job's output folder (one holding `_report.json` and its parts, settings
    or manifest), which go to `excluded`: a folder walk must not read another job's parts or manifest as input."""
    reports = [f.removesuffix("/_report.json") for f in files if f.endswith("/_report.json")]
    roots = [r for r in reports if any(f.startswith(r + mark) for f in files for mark in OUTPUT_MARKS)]
    if not roots:
        return files
    inside = {f for f in files if any(f.startswith(root + "/") for root in roots)}
    excluded.extend(sorted(inside))
    return [f for f in files if f not in inside]


def _outside(files: list[str], exclude: str | None, excluded: list[str]) -> list[str]:
    """`files` without those under `exclude` (a local folder or an object-store prefix), which go to `excluded`."""
    if exclude is None:
        return files
    if "://" in exclude and not exclude.startswith("file://"):
        root = exclude.rstrip("/") + "/"
        inside = {f for f in files if f.startswith(root)}
    else:
        root = os.path.realpath(exclude.removeprefix("file://"))
        inside = {f for f in files if "://" not in f and os.path.commonpath([root, os.path.realpath(f)]) == root}
    excluded.extend(sorted(inside))
    return [f for f in files if f not in inside]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over '/'-separated keys: `**/` any number of segments, `*` and `?` within one segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            close = pattern.index("]", i + 2)
            body = pattern[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def shard_paths(files: list[str]) -> Any:
    """A dataset of shard paths for the parse tasks, which read and parse their own files (a file that cannot be
    read or decompressed is that file's error, not a failed read task). Two blocks per cluster CPU, as Ray Data's
    file readers plan: one block per file made 2,000 small shards parse 8x slower (task overhead)."""
    import ray

    blocks = max(1, min(len(files), 2 * int(ray.cluster_resources().get("CPU", 1))))
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)


def source_names(files: list[str], base: str | None) -> dict[str, str]:
    """How local shards are named in `source` (and so in the keys of rows without ids and in .txt ids): relative
    to `base` (`inputs.base`, by default the job YAML's folder) when they lie inside it, so the keys stay the same
    when the whole folder moves, as the package folder `ray job submit --working-dir` unpacks into does with every
    cluster session. Other files keep their absolute path."""
    if base is None:
        return {}
    base = os.path.abspath(base)
    names = {}
    for path in files:
        if "://" not in path and os.path.isabs(path) and os.path.commonpath([base, path]) == base:
            names[path] = os.path.relpath(path, base)
    return names
