#!/usr/bin/env bash
# Builds the raytts image from the repository root and tags it raytts:<version> (version from pyproject.toml).
#
#   cluster/image/build.sh                     GPU image (requirements-gpu.lock)  -> raytts:0.1.0
#   cluster/image/build.sh --cpu               CPU image (requirements-cpu.lock)  -> raytts:0.1.0-cpu
#   cluster/image/build.sh --push REGISTRY     also push REGISTRY/raytts:<tag> (an ECR, Artifact Registry or GHCR
#                                              repository) and render every cluster config with the pushed image
#                                              by digest into cluster/rendered/ (cluster/render.py)
#   cluster/image/build.sh --dry-run           print the commands instead of running them
#   cluster/image/build.sh -- ARGS...          pass ARGS to docker build, e.g.
#                                              -- --build-arg PRELOAD_MODEL=hf://2Noise/ChatTTS
#
# The base image is built FROM its tag and digest (cluster/image/base-images.lock). A tag without a digest there
# is pulled once and its digest recorded in that file: commit it, and every later build uses the same bytes.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)
if [[ -z "$version" ]]; then
    echo "build.sh: no 'version = \"...\"' line in $repo/pyproject.toml" >&2
    exit 2
fi

ray_version=2.60.0
python_tag=py311
variant=gpu
registry=""
dry_run=0
extra=()
base_lock=${BASE_IMAGES_LOCK:-$repo/cluster/image/base-images.lock}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu)
            variant=cpu
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
            sed -n '2,14p' "${BASH_SOURCE[0]}"
            exit 0 ;;
        *)
            echo "build.sh: unknown argument $1 (see --help)" >&2
            exit 2 ;;
    esac
done

base_tag="rayproject/ray:${ray_version}-${python_tag}-${variant}"
tag="raytts:${version}"
[[ $variant == cpu ]] && tag="raytts:${version}-cpu"

run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '%q ' "$@"
        printf '\n'
    else
        "$@"
    fi
}

cd "$repo"
digest=$(awk -v tag="$base_tag" '$1 == tag {print $2}' "$base_lock" 2>/dev/null | tail -n 1)
if [[ -z "$digest" ]]; then
    if [[ $dry_run -eq 1 ]]; then
        echo "# $base_tag has no digest in $base_lock yet: a real build pulls it and records the digest"
        digest="sha256:<recorded-at-first-pull>"
    else
        docker pull "$base_tag"
        digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$base_tag" \
            | sed -n 's/^[^@]*@\(sha256:[0-9a-f]\{64\}\)$/\1/p' | head -n 1)
        if [[ -z "$digest" ]]; then
            echo "build.sh: docker reports no registry digest for $base_tag; cannot pin the base image" >&2
            exit 1
        fi
        printf '%s %s\n' "$base_tag" "$digest" >> "$base_lock"
        echo "build.sh: recorded $base_tag@$digest in $base_lock: commit it so every build uses this base" >&2
    fi
fi

# BuildKit reads cluster/image/Dockerfile.dockerignore (keeps .venv and caches out of the context).
export DOCKER_BUILDKIT=1
run docker build \
    -f cluster/image/Dockerfile \
    --build-arg "BASE_IMAGE=${base_tag}@${digest}" \
    --build-arg "VARIANT=${variant}" \
    --label "org.opencontainers.image.version=${version}" \
    --label "org.opencontainers.image.base.name=${base_tag}" \
    --label "org.opencontainers.image.base.digest=${digest}" \
    --label "org.opencontainers.image.revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$tag" \
    "${extra[@]}" \
    .

if [[ -n "$registry" ]]; then
    run docker tag "$tag" "${registry}/${tag}"
    run docker push "${registry}/${tag}"
    if [[ $dry_run -eq 1 ]]; then
        pushed="${registry}/${tag}@sha256:<digest-of-the-push>"
    else
        pushed=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "${registry}/${tag}" \
            | grep -F "${registry}/${tag%%:*}@sha256:" | head -n 1)
        if [[ -z "$pushed" ]]; then
            echo "build.sh: pushed ${registry}/${tag} but docker reports no digest for it" >&2
            exit 1
        fi
        pushed="${registry}/${tag}@${pushed##*@}"
    fi
    run python3 cluster/render.py --image "$pushed"
fi
if [[ $dry_run -eq 0 ]]; then
    echo "built ${tag}${registry:+, pushed and rendered cluster/rendered/ with ${pushed:-}}" >&2
fi
