#!/usr/bin/env bash
# Starts TensorBoard on worker 0 for a run's workdir and forwards its port to this machine, so it
# opens at http://localhost:PORT while this command runs (Ctrl-C ends both).
#
# Usage: launch/tpu_tensorboard.sh --name NAME --zone ZONE --workdir WORKDIR [--port PORT]
#   --workdir DIR   the run's --workdir: gs://BUCKET/RUN, or a path on worker 0 (relative paths
#                   start in ~/vqgan_jax, where tpu_run.sh runs)
#   --port PORT     port on both ends (default 6006)
#   --project P     GCP project (default: gcloud's core/project)
#   --dry-run       print the gcloud command instead of running it
# NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and $TPU_PROJECT. For a gs:// workdir a
# local `tensorboard --logdir=gs://BUCKET/RUN` works too, without the TPU.
#
# Example: launch/tpu_tensorboard.sh --name vqgan --zone us-central2-b --workdir gs://my-bucket/run

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

WORKDIR=""
PORT=6006
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --port) need_value "$@"; PORT=$2; shift 2 ;;
    *) common_option "$@"; shift "$CONSUMED" ;;
  esac
done

require_tpu
[[ -n $WORKDIR ]] || die "--workdir is required"
[[ $PORT =~ ^[0-9]+$ ]] || die "--port must be a number, got $PORT"
TENSORBOARD=(.venv/bin/tensorboard --logdir="$WORKDIR" --host=localhost --port="$PORT")
run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=0 \
  --command "cd $REMOTE_DIR && $(quote_words "${TENSORBOARD[@]}")" -- -L "$PORT:localhost:$PORT"
