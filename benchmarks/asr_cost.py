"""What the ASR round trip's recogniser costs per row on this machine: Whisper models of the real architectures
(`openai/whisper-large-v3-turbo`, the default, and `openai/whisper-small`) with random weights, since no real
weights can be downloaded here. Compute depends on the architecture and the shapes, not on the weights' values, so
the seconds are what the real models take; what they hear (their error rates on ChatTTS speech) is not measured.

    python benchmarks/asr_cost.py [--models turbo small] [--batches 1 2] [--tokens 24] [--out results/asr-cost.json]

A row is 5 s of speech; Whisper pads every row to its 30 s window, so the encoder's cost per row is the same for
any row up to 30 s, and the decoder runs `--tokens` steps (a 5 s English sentence is ~13 words, ~17 tokens, plus
the language, task and end tokens). float32 on the CPU, torch's default threads; the table gives seconds per row
and per second of audio, and JSON with the CPU model goes to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The published configs' shapes (config.json of each hub model).
ARCHITECTURES = {
    "turbo": {"name": "openai/whisper-large-v3-turbo", "d_model": 1280, "encoder_layers": 32, "decoder_layers": 4,
              "heads": 20, "ffn": 5120, "mels": 128, "vocab": 51866},
    "small": {"name": "openai/whisper-small", "d_model": 768, "encoder_layers": 12, "decoder_layers": 12,
              "heads": 12, "ffn": 3072, "mels": 80, "vocab": 51865},
}  # fmt: skip
ROW_SECONDS = 5.0


def build(spec: dict) -> torch.nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=spec["vocab"], num_mel_bins=spec["mels"], d_model=spec["d_model"],
        encoder_layers=spec["encoder_layers"], decoder_layers=spec["decoder_layers"],
        encoder_attention_heads=spec["heads"], decoder_attention_heads=spec["heads"],
        encoder_ffn_dim=spec["ffn"], decoder_ffn_dim=spec["ffn"], max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50258, pad_token_id=50257, eos_token_id=50257, bos_token_id=50257,
    )  # fmt: skip
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(config).eval()


def features(spec: dict, batch: int) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=spec["mels"])
    rng = np.random.default_rng(0)
    audio = [rng.normal(0, 0.1, int(16000 * ROW_SECONDS)).astype(np.float32) for _ in range(batch)]
    return extractor(audio, sampling_rate=16000, return_tensors="pt").input_features


def time_model(key: str, batches: list[int], tokens: int) -> list[dict]:
    spec = ARCHITECTURES[key]
    model = build(spec)
    params = sum(p.numel() for p in model.parameters())
    results = []
    for batch in batches:
        inputs = features(spec, batch)
        with torch.inference_mode():
            model.model.encoder(inputs[:1])  # warm-up
            started = time.perf_counter()
            encoded = model.model.encoder(inputs)
            encoder_s = time.perf_counter() - started
            started = time.perf_counter()
            model.generate(encoder_outputs=encoded, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            decoder_s = time.perf_counter() - started
        per_row = (encoder_s + decoder_s) / batch
        results.append({
            "model": spec["name"], "params_m": round(params / 1e6), "batch": batch, "tokens": tokens,
            "encoder_s_per_row": round(encoder_s / batch, 3), "decoder_s_per_row": round(decoder_s / batch, 3),
            "s_per_row": round(per_row, 3), "s_per_audio_second": round(per_row / ROW_SECONDS, 3),
        })  # fmt: skip
        print(f"{spec['name']:<32}{params / 1e6:>7.0f}M{batch:>6}{encoder_s / batch:>10.2f}{decoder_s / batch:>10.2f}"
              f"{per_row:>10.2f}{per_row / ROW_SECONDS:>10.2f}", flush=True)  # fmt: skip
    return results


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=["turbo", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(f"CPU {cpu_model()}, {torch.get_num_threads()} torch threads, float32; a row is {ROW_SECONDS:.0f} s of audio")
    print(f"{'model':<32}{'params':>8}{'batch':>6}{'enc s/row':>10}{'dec s/row':>10}{'s/row':>10}{'s/audio s':>10}")
    rows = [r for key in args.models for r in time_model(key, args.batches, args.tokens)]
    if args.out:
        meta = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
