#!/usr/bin/env bash
# Runs `python -m vqgan_jax.main ARGS` on every worker of a TPU VM or pod slice (each worker runs the
# same command; vqgan_jax.main sets up jax.distributed by itself on TPU VMs), or follows/stops it.
#
# Usage: launch/tpu_run.sh --name NAME --zone ZONE [options] -- --config=CONFIG --workdir=WORKDIR [...]
#   (default)        start in the background with nohup on every worker, appending to
#                    ~/vqgan_jax/logs/main.log there; refuses while a run is still going
#   --foreground     run attached instead, streaming every worker's output (and still logging)
#   --logs           follow the log (tail -F) of --worker (default 0; "all" prefixes hostnames)
#   --stop           stop the background run on every worker
#   --worker W       worker for --logs: a number or all
#   --project P      GCP project (default: gcloud's core/project)
#   --dry-run        print the gcloud command instead of running it
# NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and $TPU_PROJECT. On a pod slice the
# workdir must be shared by all workers: use a gs:// bucket. A rerun with the same workdir resumes.
#
# Example: launch/tpu_run.sh --name vqgan --zone us-central2-b -- \
#            --config=configs/imagenet.py --workdir=gs://my-bucket/vqgan_f16_16384

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

MODE=background
WORKER=""
MAIN_ARGS=()
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --foreground) MODE=foreground; shift ;;
    --logs) MODE=logs; shift ;;
    --stop) MODE=stop; shift ;;
    --worker) need_value "$@"; WORKER=$2; shift 2 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) common_option "$@"; shift "$CONSUMED" ;;
  esac
done

require_tpu
LOG=logs/main.log
PID=logs/main.pid
# True on a worker while the run whose pid tpu_run.sh recorded is alive (a reused pid is not).
RUNNING="[ -f $PID ] && grep -qs vqgan_jax.main /proc/\$(cat $PID)/cmdline"
MAIN=".venv/bin/python -m vqgan_jax.main"
if ((${#MAIN_ARGS[@]})); then
  MAIN+=" $(quote_words "${MAIN_ARGS[@]}")"
fi
if [[ $MODE == background || $MODE == foreground ]]; then
  [[ -n $(flag_value --config "${MAIN_ARGS[@]}") ]] ||
    die "pass the main job's flags after --, e.g. -- --config=configs/imagenet.py --workdir=gs://BUCKET/RUN"
  [[ $(flag_value --workdir "${MAIN_ARGS[@]}") == gs://* ]] ||
    note "the workdir is not a gs:// bucket: fine on one host, but every worker of a pod slice needs the same one"
fi
[[ -z $WORKER || $MODE == logs ]] || die "--worker goes with --logs"

case $MODE in
  background)
    WORKERS=all
    COMMAND="cd $REMOTE_DIR && mkdir -p logs"
    COMMAND+=" && if $RUNNING; then"
    COMMAND+=" echo \"\$(hostname): still running (pid \$(cat $PID)); stop it with --stop\" >&2; exit 1; fi"
    COMMAND+=" && echo === \$(date -u +%FT%TZ) $(shell_quote "$MAIN") >> $LOG"
    COMMAND+=" && { nohup $MAIN >> $LOG 2>&1 < /dev/null & echo \$! > $PID; }"
    COMMAND+=" && echo \"\$(hostname): started pid \$(cat $PID), log ~/$REMOTE_DIR/$LOG\""
    ;;
  foreground)
    WORKERS=all
    COMMAND="set -o pipefail && cd $REMOTE_DIR && mkdir -p logs && $MAIN 2>&1 | tee -a $LOG"
    ;;
  logs)
    WORKERS=${WORKER:-0}
    COMMAND="tail -n 200 -F $REMOTE_DIR/$LOG"
    if [[ $WORKER == all ]]; then
      COMMAND+=" | sed -u \"s/^/[\$(hostname)] /\""
    fi
    ;;
  stop)
    WORKERS=all
    COMMAND="cd $REMOTE_DIR && if $RUNNING && kill \$(cat $PID);"
    COMMAND+=" then echo \"\$(hostname): stopped\"; else echo \"\$(hostname): not running\"; fi && rm -f $PID"
    ;;
esac
run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$WORKERS" --command "$COMMAND"
