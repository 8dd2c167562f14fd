#!/usr/bin/env bash
# Deletes (or stops) a Cloud TPU VM or pod slice. gcloud asks for confirmation unless --yes.
#
# Usage: launch/tpu_delete.sh --name NAME --zone ZONE [--queued | --stop] [--yes]
#   --queued     it was created with tpu_create.sh --queued: delete the queued resource NAME and
#                its TPU (queued-resources delete --force)
#   --stop       stop the VM instead of deleting it (single-host TPU VMs; start it again with
#                gcloud compute tpus tpu-vm start)
#   --yes        do not ask (gcloud --quiet)
#   --project P  GCP project (default: gcloud's core/project)
#   --dry-run    print the gcloud command instead of running it
# NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and $TPU_PROJECT.
#
# Example: launch/tpu_delete.sh --name vqgan --zone us-central2-b

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

ACTION=delete
YES=()
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --queued | --stop)
      [[ $ACTION == delete || $ACTION == "$1" ]] || die "--queued and --stop exclude each other"
      ACTION=$1; shift ;;
    --yes) YES=(--quiet); shift ;;
    *) common_option "$@"; shift "$CONSUMED" ;;
  esac
done

require_tpu
case $ACTION in
  delete) run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" "${YES[@]}" ;;
  --queued) run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force "${YES[@]}" ;;
  --stop) run gcloud compute tpus tpu-vm stop "$NAME" "${LOCATION[@]}" "${YES[@]}" ;;
esac
