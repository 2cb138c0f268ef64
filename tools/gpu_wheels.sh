#!/usr/bin/env bash
# Wheels that the device tool's GPU machines lack, for tools/gpu_session.sh. Their image has Python 3.12 with torch,
# numpy, pyarrow, safetensors, tokenizers, transformers, huggingface_hub, scipy, numba, einops, pyyaml and pytest,
# and nothing can be installed from the network there. Run this here (pip reaches the registry); `.whl/` is
# git-ignored and travels with the device call's `carry: [".whl"]`.
#   raytts: pybase16384 (speaker strings) and its cffi backend; wetext (text normalisation) and its kaldifst
#   runtime (needs glibc >= 2.28) and helpers; hypothesis (tests/unit/test_batcher.py's paging invariant);
#   upstream chattts 0.2.5 for the same-GPU comparison: chattts, vector-quantize-pytorch, vocos, encodec, einx,
#   frozendict (the versions of tools/upstream_venv.sh; transformers is the image's own).
set -euo pipefail
cd "$(dirname "$0")/.."
pip=${PIP:-python3 -m pip}
rm -rf .whl
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64 --platform any)
# Compiled: the CPython 3.12 x86-64 builds.
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  pybase16384==0.3.9 cffi==2.1.1 pycparser==3.12 frozendict==2.5.1 \
  hypothesis==6.170.17 sortedcontainers==2.4.0 attrs==26.1.0 \
  kaldifst==1.8.3 pyahocorasick==2.3.1 \
  wetext==0.1.8 contractions==0.1.73 textsearch==0.0.24 anyascii==0.3.3  # the text front end's `full` mode
# Pure Python (some are published as source only): built into py3-none-any wheels here.
$pip wheel -q --no-deps -w .whl \
  chattts==0.2.5 vector-quantize-pytorch==1.14.24 vocos==0.1.0 encodec==0.1.1 einx==0.4.3
ls .whl
du -sh .whl
