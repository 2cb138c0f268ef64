#!/usr/bin/env bash
# Regenerate the parity goldens (tests/fixtures/goldens/tiny) from upstream chattts 0.2.5.
#
# Upstream runs in its OWN virtualenv: it needs torchaudio, whose wheels pull a CUDA build of torch, and
# transformers; none of that belongs in raytts' environment. Versions are pinned so the goldens are
# reproducible; vector-quantize-pytorch is pinned to the release line the ChatTTS DVAE was trained with
# (newer releases changed residual FSQ numerics; see actors/model/dvae.py).
#
# Usage: bash tools/goldens/make_goldens.sh   (needs the project venv: `make venv`)
# Env:   UPSTREAM_VENV (default .cache/upstream-venv), PYTHON (default python3.11 or python3); see tools/upstream_venv.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
venv=$(bash tools/upstream_venv.sh)
out=tests/fixtures/goldens/tiny

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/raytts make-checkpoint "$work/ck" --preset tiny --seed 0
rm -rf "$out"
"$venv/bin/python" tools/goldens/upstream_reference.py "$work/ck" "$out"
# Record the checkpoint's file hashes: the test regenerates it and must get the same bytes.
.venv/bin/python - "$work/ck/asset" "$out/upstream.json" <<'PY'
import hashlib, json, sys
from pathlib import Path
from actors.checkpoint import ASSET_FILES
asset, meta_path = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads(meta_path.read_text())
meta["checkpoint"] = {"preset": "tiny", "seed": 0,
    "sha256": {f: hashlib.sha256((asset / f).read_bytes()).hexdigest() for f in ASSET_FILES}}
meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
PY
ls -la "$out"
