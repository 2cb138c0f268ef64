"""Finding a checkpoint: a local folder, any smart-open URI (s3://, gs://, azure://, ...; copied once into a local
cache), the HF hub (`hf://2Noise/ChatTTS[@revision]`), or `tiny` (a built-in random model); and checking the
official release's files against their published sha256."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .layout import ASSET_FILES, HF_REPO, HF_REVISION, RAYTTS_CONFIG, CheckpointError, asset_dir, check_files

log = logging.getLogger(__name__)

# sha256 of the nine official files (published by upstream ChatTTS in res/sha256_map.json).
OFFICIAL_SHA256 = {
    "Decoder.safetensors": "77aa55e0a977949c4733df3c6f876fa85860d3298cba63295a7bc6901729d4e0",
    "DVAE.safetensors": "1d0b044a8368c0513100a2eca98456b289e6be6a18b7a63be1bcaa315ea874d9",
    "Embed.safetensors": "2ff0be7134934155741b643b74e32fb6bf3eec41257984459b2ed60cdb4c48b0",
    "Vocos.safetensors": "07e5561491cce41f7f90cfdb94b2ff263ff5742c3d89339db99b17ad82cc3f44",
    "gpt/config.json": "0aaa1ecd96c49ad4f473459eb1982fa7ad79fa5de08cde2781bf6ad1f9a0c236",
    "gpt/model.safetensors": "cd0806fd971f52f6a22c923ec64982b305e817bcc41ca83417fcf9141b984a0f",
    "tokenizer/special_tokens_map.json": "bd0ac9d9bb1657996b5c5fbcaa7d80f8de530d01a283da97f89deae5b1b8d011",
    "tokenizer/tokenizer_config.json": "43e9d658b554fa5ee8d8e1d763349323bfef1ed7a89c0794220ab8861387d421",
    "tokenizer/tokenizer.json": "843838a64e121e23e774cc75874c6fe862198d9f7dd43747914633a8fd89c20e",
}


# --------------------------------------------------------------------------------------------------------------
# Locating a checkpoint


def default_cache_dir() -> Path:
    root = os.environ.get("RAYTTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "raytts"
    )
    return Path(root)


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): verifying and fingerprinting read each file once."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def official_mismatches(asset: Path) -> list[str]:
    """The checkpoint files whose sha256 differs from the official 2Noise/ChatTTS release (empty: it is that release).
    A checkpoint with raytts.json (raytts' own random ones) is never the official release."""
    if (asset / RAYTTS_CONFIG).exists():
        return sorted(OFFICIAL_SHA256)
    return [name for name, expected in OFFICIAL_SHA256.items() if file_sha256(asset / name) != expected]


def verify_official(asset: Path, source: str) -> None:
    """Raise unless every file is the official release's (what hf://2Noise/ChatTTS downloads, or --verify always)."""
    mismatches = official_mismatches(asset)
    if not mismatches:
        return
    name = mismatches[0]
    raise CheckpointError(
        f"{asset / name}: sha256 {file_sha256(asset / name)} does not match the official 2Noise/ChatTTS file "
        f"({OFFICIAL_SHA256[name]}) that {source!r} was checked against ({len(mismatches)} of {len(OFFICIAL_SHA256)} "
        f"files differ). A corrupt or partial download: delete it and fetch {HF_REPO}@{HF_REVISION} again. "
        f"Fine-tuned or community weights: load them with --verify never (engine.verify: never in a job config, "
        f"models.<name>.verify: never in a serve config)"
    )


def _copy_from_uri(uri: str, cache_dir: Path) -> Path:
    """Copy the checkpoint files under `uri` into the cache once; return the local asset folder."""
    from smart_open import open as sopen

    base = uri.rstrip("/")
    local = cache_dir / "uri" / hashlib.sha256(base.encode()).hexdigest()[:16]
    done = local / ".complete"
    if done.exists():
        return asset_dir(local)
    prefixes = (base + "/asset", base)
    last_error: Exception | None = None
    for prefix in prefixes:
        try:
            with sopen(f"{prefix}/gpt/config.json", "rb") as f:
                f.read(1)
        except (OSError, ValueError) as err:  # smart-open raises these for a missing object
            last_error = err
            continue
        staging = Path(tempfile.mkdtemp(prefix="download-", dir=_ensure(cache_dir)))
        try:
            for name in (*ASSET_FILES, RAYTTS_CONFIG):
                target = staging / "asset" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with sopen(f"{prefix}/{name}", "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                except (OSError, ValueError) as err:
                    target.unlink(missing_ok=True)
                    if name != RAYTTS_CONFIG:
                        raise CheckpointError(f"{prefix}/{name}: could not be read ({err})") from err
            (staging / ".complete").write_text(base)
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("copied checkpoint %s into %s", prefix, local)
        return asset_dir(local)
    raise CheckpointError(f"{uri}: no gpt/config.json under {prefixes[0]}/ or {prefixes[1]}/ ({last_error})")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _from_hub(spec: str, cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    revision = revision or (HF_REVISION if repo == HF_REPO else "main")
    path = snapshot_download(
        repo_id=repo,
        revision=revision,
        allow_patterns=["asset/*.safetensors", "asset/gpt/*", "asset/tokenizer/*", f"asset/{RAYTTS_CONFIG}"],
        cache_dir=str(cache_dir / "hf"),
    )
    return asset_dir(Path(path))


@dataclass(frozen=True)
class ResolvedCheckpoint:
    asset: Path
    source: str

    @functools.cached_property
    def official(self) -> bool:
        """Every file is the official 2Noise/ChatTTS release's (by sha256)."""
        return not official_mismatches(self.asset)

    @functools.cached_property
    def sha256(self) -> str:
        """One digest of the whole checkpoint: sha256 over each of its files' name and sha256 (raytts.json too)."""
        names = [*ASSET_FILES, *([RAYTTS_CONFIG] if (self.asset / RAYTTS_CONFIG).exists() else [])]
        listing = "".join(f"{name} {file_sha256(self.asset / name)}\n" for name in sorted(names))
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def model_id(self) -> str:
        """What output rows record as their model: the source as given and the checkpoint's digest."""
        return f"{self.source}@sha256:{self.sha256[:16]}"


def resolve(model: str | os.PathLike | None, cache_dir: Path | None = None, verify: str = "auto") -> ResolvedCheckpoint:
    """Find (and if needed download) a checkpoint. `verify`: auto (what raytts downloads from hf://2Noise/ChatTTS
    must be the official files), always (any source must be), never. Other weights in the official layout load:
    fine-tuned and community checkpoints; their files' digest is the `model_id` rows record."""
    if verify not in ("auto", "always", "never"):
        raise ValueError(f"verify must be auto, always or never, got {verify!r}")
    cache_dir = cache_dir or default_cache_dir()
    spec = "tiny" if model is None else os.fspath(model)
    if spec == "tiny":
        from .random_weights import builtin_tiny

        asset = asset_dir(builtin_tiny(cache_dir))
        official_download = False
    elif spec.startswith("hf://"):
        asset = _from_hub(spec[len("hf://") :], cache_dir)
        official_download = spec[len("hf://") :].partition("@")[0] == HF_REPO
    elif re.match(r"^[a-z][a-z0-9+.-]*://", spec) and not spec.startswith("file://"):
        asset = _copy_from_uri(spec, cache_dir)
        official_download = False
    else:
        path = Path(spec.removeprefix("file://")).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"model {spec!r} is neither an existing folder, a URI (s3://, gs://, ...), hf://REPO[@REV] nor 'tiny'"
            )
        asset = asset_dir(path)
        official_download = False
    check_files(asset)
    checkpoint = ResolvedCheckpoint(asset=asset, source=spec)
    if verify == "always" or (verify == "auto" and official_download):
        verify_official(asset, spec)
    elif spec != "tiny" and _claims_official_config(asset) and not checkpoint.official:
        log.warning(
            "model %s: the official 2Noise/ChatTTS architecture with other weights (%s differ from the release); "
            "loading it as a fine-tuned or community checkpoint, recorded as %s",
            spec, ", ".join(official_mismatches(asset)), checkpoint.model_id,
        )  # fmt: skip
    return checkpoint


def _claims_official_config(asset: Path) -> bool:
    return not (asset / RAYTTS_CONFIG).exists() and (
        file_sha256(asset / "gpt/config.json") == OFFICIAL_SHA256["gpt/config.json"]
    )


STAGED_MARKER = ".staged"


def stage(model: str, into: Path, verify: str = "auto", cache_dir: Path | None = None) -> Path:
    """Copy checkpoint `model` (any `resolve` source, checked as `resolve` checks it) into the folder `into` as a
    plain local checkpoint (`into/asset/...`), once: a folder already staged from the same source with the same
    files (marker `into/.staged`: source and digest) is kept as it is. Several processes may stage into one folder at
    once (init containers of pods sharing a node's volume): a file lock makes one copy and the others wait for it.
    The copy goes to a sibling folder renamed into place, so a reader never sees half a checkpoint. Returns `into`,
    which `model:` / `--model` can then name."""
    from filelock import FileLock

    into = Path(into)
    into.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(into.parent / f".{into.name}.lock")):
        marker = into / STAGED_MARKER
        if marker.is_file():
            source, _, digest = marker.read_text().strip().partition(" ")
            if source == model and ResolvedCheckpoint(asset_dir(into), str(into)).sha256 == digest:
                log.info("checkpoint %s already staged in %s (sha256 %s)", model, into, digest[:16])
                return into
        elif into.exists() and any(into.iterdir()):
            # never replace what this function did not write (a user's own checkpoint folder, say)
            raise CheckpointError(
                f"{into} is not empty and was not written by stage-model (no {STAGED_MARKER} file): stage into a "
                "new or empty folder"
            )
        checkpoint = resolve(model, cache_dir=cache_dir, verify=verify)
        staging = Path(tempfile.mkdtemp(prefix=f".{into.name}-", dir=into.parent))
        try:
            names = [*ASSET_FILES, *([RAYTTS_CONFIG] if (checkpoint.asset / RAYTTS_CONFIG).exists() else [])]
            for name in names:
                target = staging / "asset" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(checkpoint.asset / name, target)
            (staging / STAGED_MARKER).write_text(f"{model} {checkpoint.sha256}\n")
            shutil.rmtree(into, ignore_errors=True)
            staging.rename(into)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("staged checkpoint %s in %s (sha256 %s)", model, into, checkpoint.sha256[:16])
        return into
