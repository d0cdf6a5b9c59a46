#!/usr/bin/env bash
# Train kdjax on a single-GPU Linux host: venv, jax[cudaNN], one run, its summary.json.
#
#   launch/gpu_host.sh pkkd:cifar100_resnet20 workdir/pkkd_c100
#   launch/gpu_host.sh --cuda=13 configs/kd.py:demo /tmp/kd_demo --config.num_epochs=2
#   launch/gpu_host.sh --dry-run pkkd:demo /tmp/pkkd_demo     # print the commands only
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PROG="launch/gpu_host.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] CONFIG[:PRESET] WORKDIR [--config.KEY=VALUE ...] [-- more kdjax.main flags]

Creates a venv (unless it exists), installs requirements.txt, kdjax (editable) and
jax[cudaNN] at the jax version requirements.txt pins, checks that jax sees the GPU,
runs python -m kdjax.main on CONFIG[:PRESET] with WORKDIR and prints WORKDIR/summary.json.
Re-running the same command resumes from the newest checkpoint in WORKDIR. The config
(file, preset, overrides) is loaded first, before the install where a Python here can.

  CONFIG[:PRESET]     configs/pkkd.py:cifar100_resnet20, or pkkd:cifar100_resnet20
  WORKDIR             checkpoints, TensorBoard events, summary.json

Options (the environment variable in brackets is the default):
  --cuda=12|13        [KDJAX_CUDA]   jax[cuda12] (driver >= 525) or jax[cuda13]
                                     (driver >= 580); default 12
  --venv=DIR          [KDJAX_VENV]   virtual environment (default <repo>/.venv)
  --python=EXE        [KDJAX_PYTHON] Python >= 3.11 that creates the venv (default python3)
  --data-dir=DIR      [TFDS_DATA_DIR] tfds data dir (--config.dataset.data_dir)
  --mode=train|eval                  kdjax.main --mode (default train)
  --skip-install                     use the venv as it is
  --retry                            while the run exits with 75 (preempted; resume), run
                                     it again, at most KDJAX_MAX_RETRIES (10) times
  --skip-config-check                do not load the config before installing and running
  --dry-run           [DRY_RUN=1]    print the commands instead of running them
  -h, --help                         this message
EOF
}

# shellcheck disable=SC1091  # common.sh is checked on its own.
source "$SCRIPT_DIR/common.sh"

CUDA="${KDJAX_CUDA:-12}"
VENV="${KDJAX_VENV:-$REPO_ROOT/.venv}"
PYTHON="${KDJAX_PYTHON:-python3}"
DATA_DIR="${TFDS_DATA_DIR:-}"
MODE="train"
SKIP_INSTALL=0
RETRY=0
SKIP_CONFIG_CHECK=0
DRY_RUN="${DRY_RUN:-0}"
POSITIONAL=()
EXTRA=()

while [[ $# -gt 0 ]]; do
  arg="$1"
  if [[ "$arg" == --*=* && "$arg" != --config.* ]]; then
    opt="${arg%%=*}"
    val="${arg#*=}"
    shift
    [[ -n "$val" ]] || die "option $opt needs a value"
    set -- "$opt" "$val" "$@"
    continue
  fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --cuda) need_value "$@"; CUDA="$2"; shift 2 ;;
    --venv) need_value "$@"; VENV="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --mode) need_value "$@"; MODE="$2"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --retry) RETRY=1; shift ;;
    --skip-config-check) SKIP_CONFIG_CHECK=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config.*) EXTRA+=("$arg"); shift ;;
    --)
      shift
      # --dry-run is never meant for kdjax.main: honour it even here.
      for arg in "$@"; do
        if [[ "$arg" == --dry-run ]]; then DRY_RUN=1; else EXTRA+=("$arg"); fi
      done
      break ;;
    -*) die "unknown option: $arg" ;;
    *) POSITIONAL+=("$arg"); shift ;;
  esac
done

[[ ${#POSITIONAL[@]} -eq 2 ]] || { usage >&2; exit 2; }
CONFIG="$(normalize_config "${POSITIONAL[0]}")"
WORKDIR="${POSITIONAL[1]}"
case "$CUDA" in 12|13) ;; *) die "--cuda must be 12 or 13, got: $CUDA" ;; esac
case "$MODE" in train|eval) ;; *) die "--mode must be train or eval, got: $MODE" ;; esac
[[ -f "$REPO_ROOT/${CONFIG%%:*}" ]] || die "no config file ${CONFIG%%:*} in $REPO_ROOT"
# kdjax.main runs in the repository root: make a relative workdir relative to the caller.
if [[ "$WORKDIR" != /* && "$WORKDIR" != *://* ]]; then
  WORKDIR="$PWD/$WORKDIR"
fi

JAX_SPEC="$(jax_spec "$REPO_ROOT/requirements.txt")"
VENV_PYTHON="$VENV/bin/python"

# The config check, before the install (minutes) where some Python here can load
# configs; otherwise right after it, before training.
CONFIG_ARGS=("--config=$CONFIG")
[[ -n "$DATA_DIR" ]] && CONFIG_ARGS+=("--config.dataset.data_dir=$DATA_DIR")
CONFIG_ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})
CHECK_AFTER_INSTALL=0
if [[ "$SKIP_CONFIG_CHECK" != 1 ]]; then
  if ! check_config_locally "$VENV_PYTHON" "$REPO_ROOT/.venv/bin/python" python3 -- \
    "${CONFIG_ARGS[@]}"; then
    if [[ "$SKIP_INSTALL" == 1 ]]; then
      die "$(no_check_python)"
    fi
    CHECK_AFTER_INSTALL=1
    echo "$PROG: no Python here loads configs yet; the config is checked after the install" >&2
  fi
fi

if [[ "$SKIP_INSTALL" != 1 ]]; then
  if [[ "$DRY_RUN" != 1 ]]; then
    command -v "$PYTHON" >/dev/null || die "no $PYTHON on this host; give --python=python3.11"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
      die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); kdjax needs >= 3.11 (--python=...)"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
    else
      echo "$PROG: warning: no nvidia-smi; is the NVIDIA driver installed?" >&2
    fi
  fi
  if [[ ! -x "$VENV_PYTHON" ]]; then
    run "$PYTHON" -m venv "$VENV"
  fi
  run "$VENV_PYTHON" -m pip install -q --upgrade pip
  run "$VENV_PYTHON" -m pip install -q -r "$REPO_ROOT/requirements.txt" -e "$REPO_ROOT"
  run "$VENV_PYTHON" -m pip install -q "jax[cuda$CUDA]$JAX_SPEC"
  run "$VENV_PYTHON" -c 'import jax, sys; print("jax", jax.__version__, jax.devices()); sys.exit(None if jax.default_backend() == "gpu" else "jax sees no GPU: check the driver and --cuda")'
fi
if [[ "$CHECK_AFTER_INSTALL" == 1 && "$DRY_RUN" != 1 ]]; then
  check_config_locally "$VENV_PYTHON" -- "${CONFIG_ARGS[@]}" || die "$(no_check_python)"
fi

TRAIN=("$VENV_PYTHON" -m kdjax.main "--config=$CONFIG" "--workdir=$WORKDIR")
[[ -n "$DATA_DIR" ]] && TRAIN+=("--config.dataset.data_dir=$DATA_DIR")
[[ "$MODE" != train ]] && TRAIN+=("--mode=$MODE")
TRAIN+=(${EXTRA[@]+"${EXTRA[@]}"})

if [[ "$DRY_RUN" == 1 ]]; then
  echo "+ cd $(quote "$REPO_ROOT")"
else
  cd "$REPO_ROOT"
fi
if [[ "$RETRY" == 1 ]]; then
  run_until_done run "${TRAIN[@]}"
else
  run "${TRAIN[@]}"
fi

# Evaluation prints its result; training also leaves summary.json.
if [[ "$MODE" == train ]]; then
  if [[ "$WORKDIR" == gs://* ]]; then
    run gcloud storage cat "$WORKDIR/summary.json"
  else
    run cat "$WORKDIR/summary.json"
  fi
fi
