#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice.
#
# Usage: launch/tpu_create.sh --name NAME --zone ZONE --accelerator-type TYPE [options] [-- GCLOUD_FLAGS]
#   --accelerator-type TYPE   e.g. v4-8, v4-32, v5litepod-64, v5p-128, v6e-16
#   --runtime-version V       TPU software version; default by family: tpu-ubuntu2204-base (v2-v4),
#                             v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
#   --project P               GCP project (default: gcloud's core/project)
#   --spot | --preemptible    cheaper capacity that can be reclaimed (queued resources: --spot only)
#   --queued                  request through `gcloud compute tpus queued-resources create`, which
#                             waits for capacity instead of failing; the queued resource is named NAME
#   --dry-run                 print the gcloud command instead of running it
# NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and $TPU_PROJECT. Flags after -- go to gcloud
# as they are (e.g. -- --network=NET --reserved).
#
# Example: launch/tpu_create.sh --name vqgan --zone us-central2-b --accelerator-type v4-32 --spot

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

default_runtime_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default runtime version for $1: pass --runtime-version (gcloud compute tpus tpu-vm versions list)" ;;
  esac
}

ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
CAPACITY=""
QUEUED=0
EXTRA=()
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --accelerator-type) need_value "$@"; ACCELERATOR_TYPE=$2; shift 2 ;;
    --runtime-version) need_value "$@"; RUNTIME_VERSION=$2; shift 2 ;;
    --spot | --preemptible)
      [[ -z $CAPACITY || $CAPACITY == "$1" ]] || die "--spot and --preemptible exclude each other"
      CAPACITY=$1; shift ;;
    --queued) QUEUED=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) common_option "$@"; shift "$CONSUMED" ;;
  esac
done

require_tpu
[[ -n $ACCELERATOR_TYPE ]] || die "--accelerator-type is required (e.g. v4-32, v5litepod-64)"
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}
CAPACITY_FLAGS=()
if [[ -n $CAPACITY ]]; then
  CAPACITY_FLAGS=("$CAPACITY")
fi

if ((QUEUED)); then
  [[ $CAPACITY != --preemptible ]] || die "queued resources take --spot, not --preemptible"
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    "${CAPACITY_FLAGS[@]}" "${EXTRA[@]}"
  note "queued; watch it with: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE"
else
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    "${CAPACITY_FLAGS[@]}" "${EXTRA[@]}"
fi
