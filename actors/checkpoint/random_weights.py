"""Random checkpoints in the exact 2Noise/ChatTTS layout and key names (tests, smoke runs, benchmarks).

Weights come from numpy's legacy `RandomState`, whose streams never change across versions, so a (preset, seed)
pair always yields byte-identical files; the golden tests rely on that. The tokenizer is a synthetic WordPiece
vocabulary of the real size (21128 pieces + the 50 ChatTTS control tokens at ids 21128..21177) in the real
`tokenizer.json` format, with the real file's truncation and fixed padding switched on (a trap loaders must undo).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..model.chattts import ChatTTSModel
from ..model.config import ModelConfig
from ..model.mel import mel_filterbank
from .layout import RAYTTS_CONFIG, asset_dir, gpt_config_to_json

FORMAT_VERSION = 2  # 2: the text head's [Ebreak] gain (refine-text rows end), so built-in caches are rewritten
BERT_VOCAB_SIZE = 21128
CONTROL_TOKENS = (
    ["[Sasr]", "[Pasr]", "[Easr]", "[Stts]", "[Ptts]", "[Etts]", "[Sbreak]", "[Pbreak]", "[Ebreak]"]
    + ["[uv_break]", "[v_break]", "[lbreak]", "[llbreak]", "[undefine]", "[laugh]", "[spk_emb]", "[empty_spk]"]
    + ["[music]", "[pure]"]
    + [f"[break_{i}]" for i in range(8)]
    + [f"[laugh_{i}]" for i in range(3)]
    + [f"[oral_{i}]" for i in range(10)]
    + [f"[speed_{i}]" for i in range(10)]
)
assert len(CONTROL_TOKENS) == 50

_ENGLISH_WORDS = """
the of and to in is was he for it with as his on be at by had are but from or have an they which one you were all
her she there would their we him been has when who will no more if out so up said what its about than into them can
only other time new some could these two may first then do any like my now over such our man me even most made after
also did many off before must well back through years much where your way down should because each just those people
how too little state good very make world still see own men work long here get both between life being under never
day same another know while last might us great old year come since against go came right used take three hello speech
voice audio text model data test sentence short long story chapter book read quick brown fox jumps lazy dog morning
evening today tomorrow yesterday thank thanks please welcome number one two three four five six seven eight nine ten
""".split()


def build_vocab() -> list[str]:
    """A WordPiece vocabulary shaped like bert-base-chinese: specials, ASCII, words, ## pieces, then CJK."""
    pieces = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "<T>"]
    pieces += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces += list("，。、！？：；“”‘’（）《》…—·")
    pieces += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    seen = set(pieces)
    for word in _ENGLISH_WORDS:
        if word not in seen:
            pieces.append(word)
            seen.add(word)
    code = 0x4E00
    while len(pieces) < BERT_VOCAB_SIZE:
        pieces.append(chr(code))
        code += 1
    return pieces


def write_tokenizer(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    vocab = build_vocab()
    tokenizer = Tokenizer(
        WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in CONTROL_TOKENS])
    # The published tokenizer.json ships with these switched on; loaders must turn them off.
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(length=256, pad_id=0, pad_token="[PAD]")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    assert tokenizer.get_vocab_size(with_added_tokens=True) == BERT_VOCAB_SIZE + len(CONTROL_TOKENS)
    special_map = {
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "clean_up_tokenization_spaces": True,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        **special_map,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


class _Init:
    """Deterministic random tensors, one draw per key in a fixed order."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.from_numpy((self.rng.standard_normal(shape) * std + mean).astype(np.float32))

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.from_numpy(self.rng.uniform(low, high, shape).astype(np.float32))


def _random_tensor(init: _Init, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    leaf = key.rsplit(".", 1)[-1]
    if key.endswith("coef"):
        return init.uniform(shape, 0.5, 1.5)
    if key.endswith("emb_text.weight"):
        return init.normal(shape, 1.0)
    if ".emb_code." in key:
        return init.normal(shape, 0.5)
    if "norm" in key and leaf == "weight":
        return init.normal(shape, 0.1, mean=1.0)
    if leaf == "gamma" or (leaf == "weight" and len(shape) == 1):
        return init.normal(shape, 0.05, mean=0.25)  # ConvNeXt layer scale
    if leaf == "bias":
        return init.normal(shape, 0.02)
    fan_in = int(np.prod(shape[1:]))
    return init.normal(shape, 1.0 / np.sqrt(fan_in))


EOS_GAIN = 1.2  # the tests' and goldens' checkpoints
# The text head's gain on [Ebreak], so a random model's refine-text rows end (tiny: after ~20-80 tokens at upstream's
# temperature 0.7, instead of running to the 384-token limit). Applied after every draw: no other tensor changes.
TEXT_EOS_GAIN = 2.0
TEXT_EOS_ID = BERT_VOCAB_SIZE + CONTROL_TOKENS.index("[Ebreak]")  # 21136, as in the real tokenizer


def random_state(
    config: ModelConfig,
    seed: int,
    head_gain: float = 2.5,
    eos_gain: float = EOS_GAIN,
    text_eos_gain: float = TEXT_EOS_GAIN,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-file state dicts with checkpoint key names, like the real files."""
    with torch.device("meta"):
        skeleton = ChatTTSModel(config)
    init = _Init(seed)
    ours: dict[str, torch.Tensor] = {}
    for key, value in skeleton.state_dict().items():
        if key.startswith("embed.head_"):
            continue
        ours[key] = _random_tensor(init, key, tuple(value.shape))
    hidden, codes = config.gpt.hidden_size, config.gpt.num_audio_tokens
    embed = {k.removeprefix("embed."): v for k, v in ours.items() if k.startswith("embed.")}
    v_text = init.normal((config.gpt.num_text_tokens, hidden), 1.0)
    text_gain = init.uniform((config.gpt.num_text_tokens, 1), 1.0, 3.0)
    embed["head_text.parametrizations.weight.original0"] = text_gain
    embed["head_text.parametrizations.weight.original1"] = v_text
    for i in range(config.gpt.num_vq):
        gain = init.uniform((codes, 1), 0.8 * head_gain, 1.2 * head_gain)
        gain[config.gpt.eos_code] *= eos_gain
        embed[f"head_code.{i}.parametrizations.weight.original0"] = gain
        embed[f"head_code.{i}.parametrizations.weight.original1"] = init.normal((codes, hidden), 1.0)
    text_gain[TEXT_EOS_ID] *= text_eos_gain  # after every draw above, so no other weight changes
    window = torch.hann_window(config.vocos.n_fft)
    fb = mel_filterbank(config.vocos.n_fft // 2 + 1, config.vocos.input_channels)
    dvae = {}
    for key, value in ours.items():
        if not key.startswith("dvae."):
            continue
        name = key.removeprefix("dvae.").replace("vq_layer.rvqs.", "vq_layer.quantizer.rvqs.")
        name = name.replace("preprocessor_mel.window", "preprocessor_mel.mel_spec.spectrogram.window")
        name = name.replace("preprocessor_mel.fb", "preprocessor_mel.mel_spec.mel_scale.fb")
        dvae[name] = value
    dvae["preprocessor_mel.mel_spec.spectrogram.window"] = window.clone()
    dvae["preprocessor_mel.mel_spec.mel_scale.fb"] = fb.clone()
    vocos = {
        k.removeprefix("vocos.").replace("head.window", "head.istft.window"): v
        for k, v in ours.items()
        if k.startswith("vocos.")
    }
    vocos["head.istft.window"] = window.clone()
    vocos["feature_extractor.mel_spec.spectrogram.window"] = window.clone()
    vocos["feature_extractor.mel_spec.mel_scale.fb"] = fb.clone()
    return {
        "gpt/model.safetensors": {k.removeprefix("gpt."): v for k, v in ours.items() if k.startswith("gpt.")},
        "Embed.safetensors": embed,
        "Decoder.safetensors": {k.removeprefix("decoder."): v for k, v in ours.items() if k.startswith("decoder.")},
        "DVAE.safetensors": dvae,
        "Vocos.safetensors": vocos,
    }


def write_checkpoint(root: Path | str, preset: str = "tiny", seed: int = 0, eos_gain: float = EOS_GAIN) -> Path:
    """Write a random `preset` checkpoint under `root`/asset; returns the asset folder. A larger `eos_gain` makes
    the end-of-audio code win more often, so rows end at mixed lengths as with real weights (benchmarks)."""
    config = ModelConfig.from_name(preset)
    asset = Path(root) / "asset"
    (asset / "gpt").mkdir(parents=True, exist_ok=True)
    for name, tensors in random_state(config, seed, eos_gain=eos_gain).items():
        contiguous = {k: v.contiguous() for k, v in sorted(tensors.items())}
        save_file(contiguous, str(asset / name), metadata={"format": "pt"})
    (asset / "gpt" / "config.json").write_text(json.dumps(gpt_config_to_json(config.gpt), indent=2) + "\n")
    write_tokenizer(asset / "tokenizer")
    extra = config.to_dict()
    extra.pop("gpt")
    extra.update({"seed": seed, "official": False, "format_version": FORMAT_VERSION})
    (asset / RAYTTS_CONFIG).write_text(json.dumps(extra, indent=2) + "\n")
    return asset


def builtin_tiny(cache_dir: Path, seed: int = 0) -> Path:
    """The built-in tiny random model, written once into the cache (safe when several processes race)."""
    target = cache_dir / "builtin" / f"tiny-seed{seed}-v{FORMAT_VERSION}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        write_checkpoint(staging, "tiny", seed)
        (staging / ".complete").write_text("ok\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    asset_dir(target)
    return target
