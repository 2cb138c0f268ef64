#!/usr/bin/env bash
# Builds the raytts image from the repository root and tags it raytts:<version> (version from pyproject.toml).
#
#   cluster/image/build.sh                     GPU image (torch CUDA 13.0 build)   -> raytts:0.1.0
#   cluster/image/build.sh --cpu               CPU image (torch CPU build)         -> raytts:0.1.0-cpu
#   cluster/image/build.sh --push REGISTRY     also tag and push REGISTRY/raytts:<tag> (e.g. an ECR/GAR/GHCR repo)
#   cluster/image/build.sh --dry-run           print the docker commands instead of running them
#   cluster/image/build.sh -- ARGS...          pass ARGS to docker build, e.g.
#                                              -- --build-arg PRELOAD_MODEL=hf://2Noise/ChatTTS
#
# The cluster configs (cluster/launcher, cluster/kuberay) reference raytts:<version>: after --push, point them at
# REGISTRY/raytts:<version> (see cluster/README.md).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)
if [[ -z "$version" ]]; then
    echo "build.sh: no 'version = \"...\"' line in $repo/pyproject.toml" >&2
    exit 2
fi

ray_version=2.60.0
python_tag=py311
base_image="rayproject/ray:${ray_version}-${python_tag}-gpu"
torch_cuda=cu130
tag="raytts:${version}"
registry=""
dry_run=0
extra=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu)
            base_image="rayproject/ray:${ray_version}-${python_tag}-cpu"
            torch_cuda=cpu
            tag="raytts:${version}-cpu"
            shift ;;
        --push)
            registry="${2:?--push needs a registry, e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com}"
            registry="${registry%/}"
            shift 2 ;;
        --dry-run)
            dry_run=1
            shift ;;
        --)
            shift
            extra=("$@")
            break ;;
        -h|--help)
            sed -n '2,12p' "${BASH_SOURCE[0]}"
            exit 0 ;;
        *)
            echo "build.sh: unknown argument $1 (see --help)" >&2
            exit 2 ;;
    esac
done

run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

cd "$repo"
# BuildKit reads cluster/image/Dockerfile.dockerignore (keeps .venv and caches out of the context).
export DOCKER_BUILDKIT=1
run docker build \
    -f cluster/image/Dockerfile \
    --build-arg "BASE_IMAGE=${base_image}" \
    --build-arg "TORCH_CUDA=${torch_cuda}" \
    --label "org.opencontainers.image.version=${version}" \
    --label "org.opencontainers.image.revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$tag" \
    "${extra[@]}" \
    .

if [[ -n "$registry" ]]; then
    run docker tag "$tag" "${registry}/${tag}"
    run docker push "${registry}/${tag}"
fi
if [[ $dry_run -eq 0 ]]; then
    echo "built ${tag}${registry:+ and pushed ${registry}/${tag}}" >&2
fi
