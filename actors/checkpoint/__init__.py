"""The one place that knows ChatTTS checkpoint files: where they are, what keys they hold, how they map.

A checkpoint is the HF repo 2Noise/ChatTTS layout: `asset/gpt/{config.json,model.safetensors}`,
`asset/{Embed,Decoder,DVAE,Vocos}.safetensors`, `asset/tokenizer/{tokenizer.json,tokenizer_config.json,
special_tokens_map.json}`. raytts' own random checkpoints add `asset/raytts.json` (the non-GPT shapes, which the
official model takes from code). Sources: a local folder, any smart-open URI (s3://, gs://, azure://, ...;
copied once into a local cache), the HF hub (`hf://2Noise/ChatTTS[@revision]`), or `tiny` (a built-in random model).

Loading is strict: every tensor of every file must map to a parameter with the expected shape, and every
parameter must be filled; otherwise the error names the file, the key and what was expected. Only safetensors
are read; pickled `.pt` files are refused.
"""

from .layout import ASSET_FILES, HF_REPO, HF_REVISION, RAYTTS_CONFIG, CheckpointError, asset_dir, read_model_config
from .loading import load_model, map_state_dict
from .sources import (
    OFFICIAL_SHA256,
    ResolvedCheckpoint,
    default_cache_dir,
    file_sha256,
    official_mismatches,
    resolve,
    stage,
)

__all__ = [
    "ASSET_FILES",
    "HF_REPO",
    "HF_REVISION",
    "OFFICIAL_SHA256",
    "RAYTTS_CONFIG",
    "CheckpointError",
    "ResolvedCheckpoint",
    "asset_dir",
    "default_cache_dir",
    "file_sha256",
    "load_model",
    "map_state_dict",
    "official_mismatches",
    "read_model_config",
    "resolve",
    "stage",
]
