"""Render the cluster configs for one image: every launcher config (cluster/launcher/*.yaml) and KubeRay manifest
(cluster/kuberay/*.yaml) names its image as the placeholder RAYTTS_IMAGE (and its registry host, for the login
commands, as RAYTTS_REGISTRY_HOST); this writes copies with the real reference into cluster/rendered/, which is what
`ray up` and `kubectl apply` take. One setting, every reference: nothing is edited by hand, and an unrendered file
fails at once (Kubernetes: InvalidImageName; docker: invalid reference format) instead of pulling a wrong image.

    python3 cluster/render.py --image 123456789012.dkr.ecr.us-west-2.amazonaws.com/raytts:0.1.0@sha256:...
    python3 cluster/render.py --registry us-docker.pkg.dev/my-project/raytts      # REGISTRY/raytts:<version>
    python3 cluster/render.py                 # again, after editing a config, for the image of the last rendering

build.sh --push REGISTRY runs it with the pushed digest. Standard library only (runs before any venv exists).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CLUSTER = Path(__file__).resolve().parent
REPO = CLUSTER.parent
SOURCES = ("launcher", "kuberay")
IMAGE_TOKEN = "RAYTTS_IMAGE"
HOST_TOKEN = "RAYTTS_REGISTRY_HOST"
# A docker reference: [host[:port]/]path[:tag][@sha256:digest], lowercase path components (docker's grammar, less
# the rare corners: no uppercase, which docker refuses anyway).
REFERENCE = re.compile(
    r"^(?:(?P<host>[a-z0-9.-]+(?::[0-9]+)?)/)?(?P<path>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f'{REPO / "pyproject.toml"}: no version = "..." line')
    return match.group(1)


def registry_host(image: str) -> str:
    """The registry host of an image reference (docker.io for a bare name such as raytts:0.1.0)."""
    match = REFERENCE.match(image)
    if match is None:
        raise ValueError(
            f"{image!r} is not an image reference: expected [REGISTRY/]NAME[:TAG][@sha256:DIGEST] in lowercase, "
            "e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com/raytts:0.1.0"
        )
    host = match.group("host")
    # docker reads the first component as a host only if it has a dot or a port, or is localhost
    if host and ("." in host or ":" in host or host == "localhost"):
        return host
    return "docker.io"


def sources() -> list[Path]:
    return sorted(path for folder in SOURCES for path in (CLUSTER / folder).glob("*.yaml"))


def render_text(text: str, image: str) -> str:
    return text.replace(IMAGE_TOKEN, image).replace(HOST_TOKEN, registry_host(image))


def render(image: str, output: Path) -> list[Path]:
    """Write every source config with `image` into `output` (same relative paths); returns the files written."""
    registry_host(image)  # validates
    written = []
    for path in sources():
        target = output / path.relative_to(CLUSTER)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = render_text(path.read_text(), image)
        assert IMAGE_TOKEN not in text and HOST_TOKEN not in text
        target.write_text(text)
        written.append(target)
    (output / "IMAGE").write_text(image + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--image", help="the full reference, best with its digest: REGISTRY/raytts:TAG@sha256:...")
    which.add_argument("--registry", help="REGISTRY: renders REGISTRY/raytts:<pyproject version> (no digest)")
    parser.add_argument("--output", type=Path, default=CLUSTER / "rendered", help="default: cluster/rendered")
    args = parser.parse_args(argv)
    last = args.output / "IMAGE"
    if args.image is None and args.registry is None:
        if not last.is_file():
            parser.error(f"give --image or --registry (no earlier rendering in {args.output} to take the image from)")
        args.image = last.read_text().strip()  # render again (after editing a config) for the same image
    image = args.image or f"{args.registry.rstrip('/')}/raytts:{project_version()}"
    try:
        written = render(image, args.output)
    except ValueError as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 2
    if "@sha256:" not in image:
        print(
            f"render.py: {image} has no digest: nodes pull whatever the tag points at when they start", file=sys.stderr
        )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
