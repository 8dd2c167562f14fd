# Shared by the launch/ scripts: option checks, shell quoting, and `run`, which prints each command
# instead of executing it under --dry-run. Sourced, never executed; the variables it sets are read
# by the scripts that source it (hence SC2034 off for the file).
# shellcheck shell=bash disable=SC2034

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "launch/ scripts need bash >= 4.4, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 2
fi

DRY_RUN=0
PROG=$(basename "$0")
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REMOTE_DIR=vqgan_jax  # The checkout on each TPU worker, relative to the login directory.

die() {
  printf '%s: error: %s (see %s --help)\n' "$PROG" "$1" "$PROG" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$PROG" "$1" >&2
}

# Prints the comment block at the top of the calling script (its usage).
usage() {
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# Splits "--opt=value" into "--opt" "value" (up to a "--"), so each parser sees one form. Sets ARGS.
split_equals() {
  ARGS=()
  while (($#)); do
    case $1 in
      --) ARGS+=("$@"); return ;;
      --*=*) ARGS+=("${1%%=*}" "${1#*=}") ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# Called as `need_value "$@"` for an option that takes a value.
need_value() {
  [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$1 needs a value"
}

# Prints the value of flag $1, given as "$1=V" or "$1 V", in the remaining arguments (the last one).
flag_value() {
  local flag=$1 value=""
  shift
  while (($#)); do
    case $1 in
      "$flag"=*) value=${1#*=} ;;
      "$flag") value=${2-} ;;
    esac
    shift
  done
  printf '%s' "$value"
}

# One word, quoted for a POSIX shell only when needed, so printed commands paste back exactly.
shell_quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_words() {
  local words=() word
  for word in "$@"; do
    words+=("$(shell_quote "$word")")
  done
  printf '%s' "${words[*]}"
}

# Runs a command, echoing it to stderr first; under --dry-run only prints it to stdout.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}

# Options every TPU script takes; NAME, ZONE and PROJECT default to $TPU_NAME, $TPU_ZONE and
# $TPU_PROJECT. Called as `common_option "$@"` from a parser's fallback case; sets CONSUMED.
NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
common_option() {
  CONSUMED=2
  case $1 in
    --name) need_value "$@"; NAME=$2 ;;
    --zone) need_value "$@"; ZONE=$2 ;;
    --project) need_value "$@"; PROJECT=$2 ;;
    --dry-run) DRY_RUN=1; CONSUMED=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
}

# Checks --name and --zone and sets LOCATION to the gcloud flags that address the TPU.
require_tpu() {
  [[ -n $NAME ]] || die "--name is required (or set TPU_NAME)"
  [[ -n $ZONE ]] || die "--zone is required (or set TPU_ZONE)"
  LOCATION=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}
