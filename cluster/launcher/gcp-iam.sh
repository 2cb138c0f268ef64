#!/usr/bin/env bash
# Creates the two service accounts that cluster/launcher/gcp-gpu.yaml names, with the roles they need, for one
# project, one bucket (inputs, outputs, checkpoint copies) and the project's Artifact Registry:
#
#   raytts-head    the head's autoscaler: roles/compute.instanceAdmin.v1 (create, label, delete workers),
#                  roles/iam.serviceAccountUser on raytts-worker only (attach it to the workers it creates),
#                  roles/artifactregistry.reader, roles/storage.objectAdmin on the bucket
#   raytts-worker  roles/artifactregistry.reader, roles/storage.objectAdmin on the bucket
#
#   cluster/launcher/gcp-iam.sh --project PROJECT --bucket YOUR-BUCKET [--dry-run]
#
# Needs gcloud with rights to manage IAM in PROJECT. The laptop that runs `ray up` needs its own compute rights
# (and iam.serviceAccountUser on raytts-head), not these.
set -euo pipefail
project=""
bucket=""
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) project="${2:?--project needs a project id}"; shift 2 ;;
        --bucket) bucket="${2:?--bucket needs a bucket name}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gcp-iam.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$project" || -z "$bucket" ]]; then
    echo "gcp-iam.sh: --project PROJECT and --bucket BUCKET are required" >&2
    exit 2
fi
run() {
    if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}
sa() { echo "raytts-$1@${project}.iam.gserviceaccount.com"; }
for name in head worker; do
    if [[ $dry_run -eq 1 ]] || ! gcloud iam service-accounts describe "$(sa $name)" --project "$project" > /dev/null 2>&1; then
        run gcloud iam service-accounts create "raytts-$name" --project "$project" --display-name "raytts $name"
    fi
    run gcloud projects add-iam-policy-binding "$project" --member "serviceAccount:$(sa $name)" \
        --role roles/artifactregistry.reader --condition None --quiet
    run gcloud storage buckets add-iam-policy-binding "gs://$bucket" --member "serviceAccount:$(sa $name)" \
        --role roles/storage.objectAdmin
done
run gcloud projects add-iam-policy-binding "$project" --member "serviceAccount:$(sa head)" \
    --role roles/compute.instanceAdmin.v1 --condition None --quiet
run gcloud iam service-accounts add-iam-policy-binding "$(sa worker)" --project "$project" \
    --member "serviceAccount:$(sa head)" --role roles/iam.serviceAccountUser
echo "service accounts $(sa head) and $(sa worker) are ready (bucket gs://$bucket)" >&2
