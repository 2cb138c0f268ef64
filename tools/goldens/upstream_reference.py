"""Golden outputs from upstream `chattts` 0.2.5 on a raytts random checkpoint.

Runs INSIDE the upstream virtualenv that `tools/goldens/make_goldens.sh` builds (chattts, its CUDA-built torch
and torchaudio: none of it belongs in raytts' environment). It imports nothing from raytts.

What it records, per case (see CASES): the normalised text and token ids upstream feeds its GPT, the codes it
generates under deterministic sampling (temperature 1e-6), and the waveform of each row decoded ALONE through
upstream's hidden-state Decoder + Vocos and through its DVAE + Vocos (upstream zero-pads a batch to its longest
row before decoding, which changes the tail of shorter rows; a row alone is the well-defined reference). It
also records the DVAE encoder's prompt codes for a fixed synthetic reference waveform.

The refine-text stage (`Chat._refine_text`, upstream's `infer(skip_refine_text=False)` default): for every row, its
normalised text refined ALONE under deterministic sampling (temperature 1e-6, upstream's other refine defaults:
top_P 0.7, top_K 20, repetition penalty 1.0, up to 384 tokens) with the default (empty) refine prompt and, for the
first row, with REFINE_PROMPT; the generated ids, the ids kept (< [break_0]) decoded to text, and then the case's
code stage run on the refined texts (as `_infer`: no second normalisation): its token ids and codes.

Usage: python upstream_reference.py CHECKPOINT_ROOT OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import ChatTTS
import numpy as np
import pybase16384 as b14
import torch
from ChatTTS.config.config import DVAE as DVAEConf
from ChatTTS.config.config import VQ, Decoder
from ChatTTS.core import Chat

MAX_NEW_TOKEN = 48
MIN_NEW_TOKEN = 2
REFINE = {"temperature": 1e-6, "top_P": 0.7, "top_K": 20, "repetition_penalty": 1.0, "max_new_token": 384,
          "min_new_token": 0}  # fmt: skip
REFINE_PROMPT = "[oral_2][laugh_0][break_6]"

CASES = [
    {
        "name": "speaker_string",
        "speaker_seed": 1234,
        "texts": [
            "Hello world, this is a quick test.",
            "The quick brown fox jumps over the lazy dog!",
            "你好，欢迎使用语音合成。",
            "今天天气很好，我们去公园散步吧！",
            "Chapter 3: a short story [uv_break] about speech.",
        ],
    },
    {
        "name": "no_speaker",
        "speaker_seed": None,
        "texts": ["混合 English 和中文的句子。", "One two three four five six seven eight nine ten."],
    },
    {
        "name": "reference_audio",
        "speaker_seed": None,
        "reference": True,
        "texts": ["[laugh] 谢谢 thanks please."],
    },
]


def reference_waveform(seconds: float = 1.5, sample_rate: int = 24_000) -> np.ndarray:
    """A fixed, reproducible 'voice-like' signal: a gliding harmonic tone with a little seeded noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    noise = np.random.RandomState(7).standard_normal(t.shape) * 0.01
    return (wave + noise).astype(np.float32)


def configure(chat: Chat, asset: Path) -> None:
    """Point upstream's hard-coded shapes at the checkpoint's own (raytts.json), as a custom model would."""
    gpt_cfg = json.loads((asset / "gpt" / "config.json").read_text())
    hidden = gpt_cfg["hidden_size"]
    extra = json.loads((asset / "raytts.json").read_text())
    dec = extra["decoder"]["stack"]
    dv = extra["dvae"]
    chat.config.decoder = Decoder(**{k: dec[k] for k in ("idim", "odim", "hidden", "n_layer", "bn_dim")})
    chat.config.dvae = DVAEConf(
        encoder=Decoder(**{k: dv["encoder"][k] for k in ("idim", "odim", "hidden", "n_layer", "bn_dim")}),
        decoder=Decoder(**{k: dv["decoder"][k] for k in ("idim", "odim", "hidden", "n_layer", "bn_dim")}),
        vq=VQ(
            dim=dv["vq"]["dim"], levels=tuple(dv["vq"]["levels"]), G=dv["vq"]["groups"], R=dv["vq"]["num_quantizers"]
        ),
    )
    voc = extra["vocos"]
    chat.config.vocos.backbone.init_args.dim = voc["dim"]
    chat.config.vocos.backbone.init_args.intermediate_dim = voc["intermediate_dim"]
    chat.config.vocos.backbone.init_args.num_layers = voc["num_layers"]
    chat.config.vocos.head.init_args.dim = voc["dim"]
    chat.config.embed.hidden_size = hidden
    chat.config.gpt.hidden_size = hidden
    chat.config.gpt.intermediate_size = gpt_cfg["intermediate_size"]
    chat.config.gpt.num_attention_heads = gpt_cfg["num_attention_heads"]
    chat.config.gpt.num_hidden_layers = gpt_cfg["num_hidden_layers"]
    # The speaker statistics are 2 x 768 in upstream's config; a narrower model keeps the first `hidden` of each.
    stat = np.frombuffer(b14.decode_from_string(chat.config.spk_stat), dtype=np.float16)
    std, mean = stat[:768], stat[768:]
    chat.config.spk_stat = b14.encode_to_string(np.concatenate([std[:hidden], mean[:hidden]]).tobytes())


def _refine(chat: Chat, text: str, prompt: str) -> tuple[list[int], str]:
    """One text through upstream's refine stage alone: (generated ids, the decoded text of those < [break_0])."""
    params = Chat.RefineTextParams(prompt=prompt, show_tqdm=False, manual_seed=0, **REFINE)
    refined = chat._refine_text([text], chat.device, params)
    ids = refined.ids[0]
    kept = ids[ids.less(chat.tokenizer.break_0_ids)]
    decoded = chat.tokenizer.decode([kept])[0]
    generated = [int(i) for i in ids.tolist()]
    refined.destroy()
    return generated, decoded


def _run_case(chat: Chat, case: dict, meta: dict, arrays: dict[str, np.ndarray], ref_prompt: str, row: int) -> int:
    """One case's texts through upstream's code stage and both decoders, recorded from row `row` on, and through
    its refine stage then code stage; returns the next row number."""
    texts = [chat.normalizer(t, True, False) for t in case["texts"]]
    spk = meta["speakers"][str(case["speaker_seed"])] if case["speaker_seed"] is not None else None
    params = Chat.InferCodeParams(
        prompt=meta["prompt"],
        spk_emb=spk,
        spk_smp=ref_prompt if case.get("reference") else None,
        txt_smp=meta["reference_text"] if case.get("reference") else None,
        temperature=meta["temperature"],
        top_P=meta["top_p"],
        top_K=meta["top_k"],
        repetition_penalty=meta["repetition_penalty"],
        max_new_token=MAX_NEW_TOKEN,
        min_new_token=MIN_NEW_TOKEN,
        show_tqdm=False,
        manual_seed=0,
    )
    decorated = chat.speaker.decorate_code_prompts(list(texts), params.prompt, params.txt_smp, params.spk_emb)
    result = next(chat._infer_code(list(texts), False, chat.device, True, params))
    for i, text in enumerate(case["texts"]):
        ids = chat.tokenizer._tokenizer(decorated[i], add_special_tokens=False)["input_ids"]
        codes = result.ids[i].cpu().numpy().astype(np.int64)
        hidden = result.hiddens[i]
        wav_hidden = chat._decode_to_wavs([hidden.clone()], True)[0]
        wav_dvae = chat._decode_to_wavs([result.ids[i].clone()], False)[0]
        arrays[f"row{row}_codes"] = codes
        arrays[f"row{row}_wav_hidden"] = np.asarray(wav_hidden, dtype=np.float32)
        arrays[f"row{row}_wav_dvae"] = np.asarray(wav_dvae, dtype=np.float32)
        arrays[f"row{row}_token_ids"] = np.asarray(ids, dtype=np.int64)
        meta["rows"].append(
            {
                "row": row,
                "case": case["name"],
                "text": text,
                "normalized": texts[i],
                "decorated": decorated[i],
                "speaker_seed": case["speaker_seed"],
                "reference": bool(case.get("reference")),
                "frames": int(codes.shape[0]),
            }
        )
        row += 1
    result.destroy()
    # The refine stage, each text alone, then the case's code stage on the refined texts (batched as above).
    first = row - len(texts)
    refined_texts = []
    for i, text in enumerate(texts):
        generated, decoded = _refine(chat, text, "")
        arrays[f"row{first + i}_refine_ids"] = np.asarray(generated, dtype=np.int64)
        meta["rows"][first + i]["refined"] = decoded
        refined_texts.append(decoded)
        if first + i == 0:
            generated, decoded = _refine(chat, text, REFINE_PROMPT)
            arrays["row0_refine_prompt_ids"] = np.asarray(generated, dtype=np.int64)
            meta["rows"][0]["refined_with_prompt"] = decoded
    decorated = chat.speaker.decorate_code_prompts(list(refined_texts), params.prompt, params.txt_smp, params.spk_emb)
    result = next(chat._infer_code(list(refined_texts), False, chat.device, True, params))
    for i in range(len(texts)):
        ids = chat.tokenizer._tokenizer(decorated[i], add_special_tokens=False)["input_ids"]
        arrays[f"row{first + i}_refined_token_ids"] = np.asarray(ids, dtype=np.int64)
        arrays[f"row{first + i}_refined_codes"] = result.ids[i].cpu().numpy().astype(np.int64)
    result.destroy()
    return row


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    asset = root / "asset"
    torch.set_num_threads(2)
    chat = Chat()
    configure(chat, asset)
    paths = {k: str(root / v) for k, v in asdict(chat.config.path).items()}
    assert chat._load(device=torch.device("cpu"), compile=False, **paths), "upstream failed to load the checkpoint"

    arrays: dict[str, np.ndarray] = {}
    meta: dict = {
        "chattts_version": getattr(ChatTTS, "__version__", "0.2.5"),
        "torch": torch.__version__,
        "max_new_token": MAX_NEW_TOKEN,
        "min_new_token": MIN_NEW_TOKEN,
        "temperature": 1e-6,
        "top_p": 0.7,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "prompt": "[speed_5]",
        "refine": {**REFINE, "seed": 0, "prompt": "", "row0_prompt": REFINE_PROMPT},
        "rows": [],
        "speakers": {},
    }
    from importlib.metadata import version

    import vector_quantize_pytorch  # noqa: F401  (version recorded: its FSQ numerics changed across releases)

    meta["vector_quantize_pytorch"] = version("vector-quantize-pytorch")
    meta["transformers"] = version("transformers")

    ref_wave = reference_waveform()
    ref_codes = chat.dvae.sample_audio(torch.from_numpy(ref_wave)).cpu().numpy().astype(np.int64)
    arrays["reference_wave"] = ref_wave
    arrays["reference_codes"] = ref_codes
    ref_prompt = chat.speaker.encode_prompt(torch.from_numpy(ref_codes))
    meta["reference_prompt"] = ref_prompt
    meta["reference_text"] = "a short reference sentence."

    for seed in (1234, 42):
        torch.manual_seed(seed)
        meta["speakers"][str(seed)] = chat.sample_random_speaker()

    row = 0
    for case in CASES:
        row = _run_case(chat, case, meta, arrays, ref_prompt, row)

    np.savez_compressed(out / "upstream.npz", **arrays)
    (out / "upstream.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps([(r["row"], r["frames"]) for r in meta["rows"]]))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
