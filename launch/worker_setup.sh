#!/usr/bin/env bash
# Installs this checkout into .venv on the machine it runs on, with jax[tpu]; tpu_setup.sh runs it
# on every TPU worker. JAX needs Python >= 3.11 and older TPU images ship 3.10, so when no python3,
# python3.12 or python3.11 is new enough it installs python3.11 with apt (as do missing venv modules).
#
# Usage: launch/worker_setup.sh [--python PY] [--dry-run]
#   --python PY   interpreter for the venv, >= 3.11 (default: the first of python3, python3.12,
#                 python3.11 that is new enough)
#   --dry-run     print the commands instead of running them

set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

PYTHON=""
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

is_new_enough() {
  command -v "$1" >/dev/null && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

APT=(sudo apt-get -o DPkg::Lock::Timeout=600 -y -q)  # Fresh VMs hold the apt lock a while.
if [[ -n $PYTHON ]]; then
  is_new_enough "$PYTHON" || die "$PYTHON is missing or older than 3.11, which JAX needs"
else
  for candidate in python3 python3.12 python3.11; do
    if is_new_enough "$candidate"; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [[ -z $PYTHON ]]; then
  PYTHON=python3.11
  run "${APT[@]}" update
  run "${APT[@]}" install python3.11 python3.11-venv
elif ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  run "${APT[@]}" update
  run "${APT[@]}" install "$(basename "$PYTHON")-venv"
fi

run cd "$(dirname "$LAUNCH_DIR")"
run "$PYTHON" -m venv .venv
run .venv/bin/pip install -q -U pip
run .venv/bin/pip install -q -U -e . 'jax[tpu]'
run .venv/bin/python -c 'import jax, vqgan_jax; print("vqgan_jax installed with jax", jax.__version__)'
