#!/usr/bin/env bash
# Puts the code on every worker of a TPU VM or pod slice (in ~/vqgan_jax) and installs it into
# ~/vqgan_jax/.venv with jax[tpu], by running launch/worker_setup.sh there. Run it again to update.
#
# Usage: launch/tpu_setup.sh --name NAME --zone ZONE (--repo-url URL [--branch B] | --source-dir DIR)
#   --repo-url URL    git clone URL on each worker (git pull --ff-only when already cloned)
#   --branch B        branch or tag to clone (default: the remote's default branch)
#   --source-dir DIR  copy a local checkout instead (e.g. with uncommitted changes): packed without
#                     .git, .venv and workdirs, copied with `gcloud compute tpus tpu-vm scp`
#   --project P       GCP project (default: gcloud's core/project)
#   --dry-run         print the commands instead of running them
# NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and $TPU_PROJECT.
#
# Example: launch/tpu_setup.sh --name vqgan --zone us-central2-b --source-dir .

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

REPO_URL=""
BRANCH=""
SOURCE_DIR=""
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --repo-url) need_value "$@"; REPO_URL=$2; shift 2 ;;
    --branch) need_value "$@"; BRANCH=$2; shift 2 ;;
    --source-dir) need_value "$@"; SOURCE_DIR=$2; shift 2 ;;
    *) common_option "$@"; shift "$CONSUMED" ;;
  esac
done

require_tpu
[[ -n $REPO_URL || -n $SOURCE_DIR ]] || die "pass --repo-url URL or --source-dir DIR"
[[ -z $REPO_URL || -z $SOURCE_DIR ]] || die "--repo-url and --source-dir exclude each other"
[[ -z $BRANCH || -n $REPO_URL ]] || die "--branch goes with --repo-url"
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=all)
INSTALL="bash $REMOTE_DIR/launch/worker_setup.sh"

if [[ -n $REPO_URL ]]; then
  CLONE=(git clone)
  if [[ -n $BRANCH ]]; then
    CLONE+=(--branch "$BRANCH")
  fi
  CLONE+=("$REPO_URL" "$REMOTE_DIR")
  FETCH="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR pull --ff-only; else $(quote_words "${CLONE[@]}"); fi"
  run "${SSH[@]}" --command "set -e; $FETCH; $INSTALL"
else
  [[ -f $SOURCE_DIR/setup.py && -d $SOURCE_DIR/vqgan_jax ]] || die "$SOURCE_DIR is not a vqgan_jax checkout"
  ARCHIVE="${TMPDIR:-/tmp}/$NAME-vqgan_jax.tar.gz"
  run tar -czf "$ARCHIVE" -C "$SOURCE_DIR" --exclude=.git --exclude=.venv --exclude=workdirs \
    --exclude=__pycache__ --exclude='*.egg-info' .
  run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:vqgan_jax.tar.gz" "${LOCATION[@]}" --worker=all
  run rm "$ARCHIVE"
  UNPACK="mkdir -p $REMOTE_DIR && tar -xzf vqgan_jax.tar.gz -C $REMOTE_DIR && rm vqgan_jax.tar.gz"
  run "${SSH[@]}" --command "set -e; $UNPACK; $INSTALL"
fi
