"""Refresh the KubeRay CRD schemas that tests/unit/test_cluster_configs.py validates the manifests against.

Writes tests/fixtures/kuberay-crds/{rayclusters,rayjobs,rayservices}.json.gz: the `openAPIV3Schema` of each CRD's
served ray.io/v1 version, as the KubeRay operator release VERSION ships them
(ray-operator/config/crd/bases/ray.io_*.yaml), and VERSION beside them. Run it when the operator version in
cluster/README.md changes, then run the tests:

    python tools/refresh_kuberay_crds.py 1.7.0                       # from GitHub (raw.githubusercontent.com)
    python tools/refresh_kuberay_crds.py 1.7.0 --git /path/to/kuberay  # from a clone (reads tag v1.7.0)
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "kuberay-crds"
KINDS = ("rayclusters", "rayjobs", "rayservices")
URL = (
    "https://raw.githubusercontent.com/ray-project/kuberay/v{version}/ray-operator/config/crd/bases/ray.io_{kind}.yaml"
)


def crd_text(kind: str, version: str, git: Path | None) -> str:
    path = f"ray-operator/config/crd/bases/ray.io_{kind}.yaml"
    if git is not None:
        return subprocess.run(
            ["git", "-C", str(git), "show", f"v{version}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    with urllib.request.urlopen(URL.format(version=version, kind=kind), timeout=60) as response:
        return response.read().decode()


def v1_schema(crd: dict) -> dict:
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return served["schema"]["openAPIV3Schema"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="KubeRay release, e.g. 1.7.0")
    parser.add_argument("--git", type=Path, help="a kuberay clone to read the tag from instead of GitHub")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        crd = yaml.safe_load(crd_text(kind, args.version, args.git))
        data = json.dumps({"kind": crd["spec"]["names"]["kind"], "schema": v1_schema(crd)}, sort_keys=True)
        # mtime=0: the same schema gives the same bytes
        (OUT / f"{kind}.json.gz").write_bytes(gzip.compress(data.encode(), mtime=0))
        print(f"{OUT / f'{kind}.json.gz'}: {crd['spec']['names']['kind']} v1 schema ({len(data)} bytes of JSON)")
    (OUT / "VERSION").write_text(args.version + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
