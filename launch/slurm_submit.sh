#!/usr/bin/env bash
# Submits launch/slurm_gpu.sbatch: multi-node GPU training with one process per GPU.
#
# Usage: launch/slurm_submit.sh [options] -- --config=CONFIG --workdir=WORKDIR [--config.KEY=VALUE ...]
#   --nodes N           nodes (default 1)
#   --gpus-per-node G   GPUs per node, and so tasks per node (default 8)
#   --cpus-per-task C   CPUs per task, for the input pipeline (default: the cluster's)
#   --partition P, --account A, --time T, --job-name J   passed to sbatch
#   --dry-run           print the sbatch command instead of running it
# Run it from the repo root with the venv active (the job inherits PATH). Flags after -- go to
# vqgan_jax.main on every task; the workdir must be shared by all nodes.
#
# Example: launch/slurm_submit.sh --nodes 4 --gpus-per-node 8 --partition gpu --time 48:00:00 -- \
#            --config=configs/imagenet.py --workdir=/shared/runs/f16

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

NODES=1
GPUS_PER_NODE=8
SBATCH_OPTIONS=()
MAIN_ARGS=()
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --nodes) need_value "$@"; NODES=$2; shift 2 ;;
    --gpus-per-node) need_value "$@"; GPUS_PER_NODE=$2; shift 2 ;;
    --cpus-per-task | --partition | --account | --time | --job-name)
      need_value "$@"; SBATCH_OPTIONS+=("$1=$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number, got $NODES"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive number, got $GPUS_PER_NODE"
[[ -n $(flag_value --config "${MAIN_ARGS[@]}") ]] ||
  die "pass the main job's flags after --, e.g. -- --config=configs/imagenet.py --workdir=/shared/runs/f16"
run sbatch --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE" \
  "${SBATCH_OPTIONS[@]}" "$LAUNCH_DIR/slurm_gpu.sbatch" "${MAIN_ARGS[@]}"
