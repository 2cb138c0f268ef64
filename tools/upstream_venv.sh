#!/usr/bin/env bash
# Create (or update) the separate virtualenv holding upstream chattts 0.2.5 and its pinned dependencies.
# It is never the project's environment: torchaudio pulls a CUDA build of torch. Prints the venv path.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${UPSTREAM_VENV:-$repo/.cache/upstream-venv}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi
"$venv/bin/pip" install -q \
  chattts==0.2.5 torch==2.11.0 torchaudio==2.11.0 vector-quantize-pytorch==1.14.24 \
  transformers==5.23.0 vocos==0.1.0 pybase16384 requests >&2
echo "$venv"
