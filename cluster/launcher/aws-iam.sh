#!/usr/bin/env bash
# Creates (or updates) the two IAM roles and instance profiles that cluster/launcher/aws-gpu.yaml names, with exactly
# the permissions in aws-iam/*.json, for one S3 bucket (inputs, outputs, checkpoint copies):
#
#   raytts-head    the head's autoscaler: ec2 RunInstances/CreateTags/Terminate/Stop/Start/Describe*, iam:PassRole
#                  of raytts-worker only, ssm:GetParameter(s) of the Deep Learning AMI parameters (resolve:ssm:
#                  ImageIds are resolved with the caller's rights), ECR pull, S3 on the bucket
#   raytts-worker  ECR pull, S3 on the bucket
#
#   cluster/launcher/aws-iam.sh --bucket YOUR-BUCKET [--dry-run]
#
# Needs the aws CLI with rights to manage IAM. The laptop that runs `ray up` needs its own EC2 rights (Ray's
# bootstrap creates the key pair and security group there), not these.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bucket=""
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bucket) bucket="${2:?--bucket needs a bucket name}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "aws-iam.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$bucket" ]]; then
    echo "aws-iam.sh: --bucket BUCKET is required (the S3 bucket of the job's inputs, outputs and checkpoints)" >&2
    exit 2
fi
run() {
    if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; printf '\n'; else "$@"; fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in head worker; do
    role="raytts-$name"
    sed "s/YOUR-BUCKET/$bucket/g" "$here/aws-iam/$name-policy.json" > "$tmp/$name-policy.json"
    if [[ $dry_run -eq 1 ]] || ! aws iam get-role --role-name "$role" > /dev/null 2>&1; then
        run aws iam create-role --role-name "$role" --assume-role-policy-document "file://$here/aws-iam/trust-policy.json"
    fi
    run aws iam put-role-policy --role-name "$role" --policy-name raytts --policy-document "file://$tmp/$name-policy.json"
    if [[ $dry_run -eq 1 ]] || ! aws iam get-instance-profile --instance-profile-name "$role" > /dev/null 2>&1; then
        run aws iam create-instance-profile --instance-profile-name "$role"
        run aws iam add-role-to-instance-profile --instance-profile-name "$role" --role-name "$role"
    fi
done
echo "instance profiles raytts-head and raytts-worker are ready (bucket $bucket)" >&2
