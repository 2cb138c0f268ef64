"""Time upstream chattts 0.2.5 `Chat.infer` on a checkpoint and a text list; print one JSON line.

Runs inside the upstream virtualenv (tools/upstream_venv.sh); imports nothing from raytts except the golden
script's `configure` (shapes from raytts.json), which is plain Python. Like raytts's worker in benchmarks/engine.py,
it runs one short untimed `Chat.infer` first, so neither side's timing includes first-call set-up.
Usage: python upstream_infer.py CHECKPOINT_ROOT TEXTS_JSON MAX_NEW_TOKEN THREADS [DEVICE] [REFINE]
(DEVICE: cpu by default, or cuda: upstream's own choices there, as `Chat.load` makes them. REFINE: off by default
(skip_refine_text=True); on: upstream's refine-text stage first, deterministic (temperature 1e-6), its other
refine defaults.)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "goldens"))
from ChatTTS.core import Chat
from upstream_reference import configure


def main() -> None:
    root, texts_path, max_new, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    device = torch.device(sys.argv[5] if len(sys.argv) > 5 else "cpu")
    refine = len(sys.argv) > 6 and sys.argv[6] == "on"
    refine_params = Chat.RefineTextParams(temperature=1e-6, show_tqdm=False, manual_seed=0)
    torch.set_num_threads(threads)
    texts = json.loads(texts_path.read_text())
    chat = Chat()
    configure(chat, root / "asset")
    paths = {k: str(root / v) for k, v in asdict(chat.config.path).items()}
    assert chat._load(device=device, **paths)
    params = Chat.InferCodeParams(
        temperature=1e-6, max_new_token=max_new, min_new_token=2, show_tqdm=False, manual_seed=0
    )
    # The same untimed warm-up raytts gets (benchmarks/engine.py: one short row, 8 steps): one-time initialisation
    # (CUDA context, cuBLAS/cuDNN handles, allocator pools, lazy imports) counts against neither system.
    warm = Chat.InferCodeParams(temperature=1e-6, max_new_token=8, show_tqdm=False, manual_seed=0)
    chat.infer(
        ["warm up."],
        skip_refine_text=True,
        split_text=False,
        do_homophone_replacement=False,
        params_infer_code=warm,
    )
    frames = 0

    # Count generated frames the way upstream produces them (per-row code lengths), timing infer as a whole.
    original = chat._infer_code

    def counting(*args, **kwargs):
        nonlocal frames
        for result in original(*args, **kwargs):
            frames += sum(int(ids.shape[0]) for ids in result.ids)
            yield result

    chat._infer_code = counting
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    wavs = chat.infer(
        texts,
        skip_refine_text=not refine,
        params_refine_text=refine_params,
        split_text=False,
        do_homophone_replacement=False,
        params_infer_code=params,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    print(
        json.dumps(
            {
                "wall_s": wall,
                "frames": frames,
                "rows": len(texts),
                "returned_rows": len(wavs),
                "refine": refine,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
