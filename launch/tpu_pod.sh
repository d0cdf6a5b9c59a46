#!/usr/bin/env bash
# Train kdjax on a Cloud TPU VM (a single host or a multi-host pod slice).
#
# A typical session (see launch/README.md):
#   export TPU_NAME=kdjax-v4 ZONE=us-central2-b PROJECT=my-project ACCELERATOR=v4-32
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh install                  # uploads this checkout to every worker
#   launch/tpu_pod.sh run --config=pkkd:cifar100_resnet20 \
#       --workdir=gs://my-bucket/pkkd_c100 --data-dir=gs://my-bucket/tensorflow_datasets
#   launch/tpu_pod.sh copy-back --workdir=gs://my-bucket/pkkd_c100 --dest=runs/pkkd_c100
#   launch/tpu_pod.sh delete
#
# Every subcommand accepts --dry-run: it prints the commands instead of running them.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PROG="launch/tpu_pod.sh"

usage() {
  cat <<EOF
Usage: $PROG COMMAND [options] [-- extra kdjax.main flags]

Commands:
  create      create the TPU VM (gcloud compute tpus tpu-vm create)
  install     put the code on every worker (--source upload or --repo clone), create a
              venv there, pip install -r requirements.txt -e . and the matching jax[tpu]
  run         run python -m kdjax.main on every worker (all workers run the same command)
  logs        show the end of the log of a --detach run (worker 0 unless --worker=N)
  stop        send SIGTERM to a --detach run: kdjax saves a checkpoint and exits
  copy-back   copy summary.json and the TensorBoard events of --workdir to --dest
  delete      delete the TPU VM

Options (the environment variable in brackets is the default):
  --name=NAME          [TPU_NAME]     TPU VM name (required)
  --zone=ZONE          [ZONE]         zone, e.g. us-central2-b (required)
  --project=PROJECT    [PROJECT]      GCP project (default: gcloud's configured project)
  --accelerator=TYPE   [ACCELERATOR]  create: accelerator type (default v4-32)
  --version=RUNTIME    [TPU_VERSION]  create: TPU VM runtime (default tpu-ubuntu2204-base;
                                      v5e needs v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --spot                              create: a Spot TPU (cheaper, can be preempted)
  --preemptible                       create: a legacy preemptible TPU
  --source=DIR         [KDJAX_SOURCE] install: upload this local checkout, without .git,
                                      .venv, runs/ and workdir* (default: the checkout
                                      holding this script, unless --repo is given)
  --repo=URL           [KDJAX_REPO]   install: git clone URL on every worker instead
  --branch=REF                        install: branch or tag to clone (with --repo)
  --python=EXE         [KDJAX_PYTHON] install: Python >= 3.11 on the workers (default
                                      python3.11; apt-installed when missing)
  --remote-dir=DIR     [KDJAX_REMOTE_DIR] code directory on the workers, relative to the
                                      home directory or absolute (default kdjax)
  --config=FILE[:PRESET]              run: configs/pkkd.py:cifar100_resnet20 or pkkd:cifar100_resnet20
  --workdir=DIR        [WORKDIR]      run, copy-back: gs://BUCKET/RUN (a pod slice needs a
                                      bucket; a local path is relative to --remote-dir)
  --data-dir=DIR       [TFDS_DATA_DIR] run: tfds data dir, e.g. gs://BUCKET/tensorflow_datasets
  --mode=train|eval                   run: kdjax.main --mode (default train)
  --detach                            run: keep running after ssh disconnects (nohup); the
                                      log goes to <remote-dir>/kdjax_run.log on every worker
  --retry                             run: while the run exits with 75 (preempted; resume),
                                      run it again, at most KDJAX_MAX_RETRIES (10) times;
                                      a PREEMPTED VM is recreated first (delete, create
                                      with --accelerator/--version/--spot, install)
  --skip-config-check                 run: do not load the config here first (that needs a
                                      local Python with kdjax's requirements: KDJAX_CHECK_PYTHON,
                                      else the checkout's .venv, else python3)
  --worker=N                          logs: which worker (default 0)
  --dest=DIR                          copy-back: local directory (default runs/<run name>)
  --with-checkpoints                  copy-back: also copy checkpoints/
  --yes                               delete: do not ask for confirmation
  --dry-run            [DRY_RUN=1]    print the commands instead of running them
  -h, --help                          this message

Arguments after --, and any --config.KEY=VALUE, go to kdjax.main unchanged, e.g.
  $PROG run --config=pkkd:cifar100_resnet20 --workdir=gs://b/r --config.num_epochs=10
EOF
}

# shellcheck disable=SC1091  # common.sh is checked on its own.
source "$SCRIPT_DIR/common.sh"

# --- Options -----------------------------------------------------------------

COMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
SPOT=0
PREEMPTIBLE=0
SOURCE="${KDJAX_SOURCE:-}"
REPO="${KDJAX_REPO:-}"
BRANCH=""
PYTHON="${KDJAX_PYTHON:-python3.11}"
REMOTE_DIR="${KDJAX_REMOTE_DIR:-kdjax}"
CONFIG=""
WORKDIR="${WORKDIR:-}"
DATA_DIR="${TFDS_DATA_DIR:-}"
MODE="train"
DETACH=0
RETRY=0
SKIP_CONFIG_CHECK=0
WORKER=0
DEST=""
WITH_CHECKPOINTS=0
YES=0
DRY_RUN="${DRY_RUN:-0}"
EXTRA=()

while [[ $# -gt 0 ]]; do
  arg="$1"
  # Accept both --opt=value and --opt value.
  if [[ "$arg" == --*=* && "$arg" != --config.* ]]; then
    opt="${arg%%=*}"
    val="${arg#*=}"
    shift
    set -- "$opt" "$val" "$@"
    [[ -n "$val" ]] || die "option $opt needs a value"
    continue
  fi
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator|--accelerator-type) need_value "$@"; ACCELERATOR="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
    --repo) need_value "$@"; REPO="$2"; shift 2 ;;
    --branch) need_value "$@"; BRANCH="$2"; shift 2 ;;
    --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --data-dir) need_value "$@"; DATA_DIR="$2"; shift 2 ;;
    --mode) need_value "$@"; MODE="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --retry) RETRY=1; shift ;;
    --skip-config-check) SKIP_CONFIG_CHECK=1; shift ;;
    --worker) need_value "$@"; WORKER="$2"; shift 2 ;;
    --dest) need_value "$@"; DEST="$2"; shift 2 ;;
    --with-checkpoints) WITH_CHECKPOINTS=1; shift ;;
    --yes) YES=1; shift ;;
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
    *)
      [[ -z "$COMMAND" ]] || die "unexpected argument: $arg (the command is already $COMMAND)"
      COMMAND="$arg"; shift ;;
  esac
done

[[ -n "$COMMAND" ]] || { usage >&2; exit 2; }
case "$COMMAND" in
  create|install|run|logs|stop|copy-back|delete) ;;
  *) die "unknown command: $COMMAND" ;;
esac
[[ -n "$NAME" ]] || die "the TPU VM name is required: --name=NAME or TPU_NAME=NAME"
[[ -n "$ZONE" ]] || die "the zone is required: --zone=ZONE or ZONE=ZONE (e.g. us-central2-b)"
[[ "$REMOTE_DIR" != *" "* ]] || die "--remote-dir must not contain spaces"
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got: $WORKER"
case "$MODE" in train|eval) ;; *) die "--mode must be train or eval, got: $MODE" ;; esac

TPU=(gcloud compute tpus tpu-vm)
WHERE=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=("--project=$PROJECT")

# Runs a shell command on the workers (default: all of them, in parallel).
remote() {
  local worker="$1" command="$2"
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" "--worker=$worker" --command="$command"
}

# A --detach run's log and pid, in --remote-dir on every worker.
LOG="kdjax_run.log"
PIDFILE="kdjax_run.pid"

# kdjax.main joins a multi-host job (jax.distributed.initialize) when TPU_WORKER_HOSTNAMES
# lists several hosts. Cloud TPU VMs publish the workers in their metadata, not in the
# environment: export them (with this worker's id, as jax's TPU cluster detection expects).
# shellcheck disable=SC2016
TPU_ENV='md() { curl -sf -m 10 -H Metadata-Flavor:Google "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }; if [ -z "${TPU_WORKER_HOSTNAMES:-}" ] && endpoints="$(md worker-network-endpoints)" && worker_id="$(md agent-worker-number)"; then TPU_WORKER_HOSTNAMES="$(echo "$endpoints" | tr , "\n" | cut -d: -f3 | paste -sd, -)"; TPU_WORKER_ID="$worker_id"; export TPU_WORKER_HOSTNAMES TPU_WORKER_ID; fi'

# --- Commands ----------------------------------------------------------------

cmd_create() {
  local args=("${TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR"
              "--version=$VERSION")
  [[ "$SPOT" == 1 ]] && args+=(--spot)
  [[ "$PREEMPTIBLE" == 1 ]] && args+=(--preemptible)
  run "${args[@]}"
}

cmd_install() {
  local requirements script spec
  [[ -z "$SOURCE" || -z "$REPO" ]] || die "give --source or --repo, not both"
  if [[ -z "$REPO" && -z "$SOURCE" ]]; then
    SOURCE="$REPO_ROOT"
  fi
  if [[ -n "$SOURCE" ]]; then
    [[ -d "$SOURCE" ]] || die "--source $SOURCE is not a directory"
    SOURCE="$(cd "$SOURCE" && pwd)"
    requirements="$SOURCE/requirements.txt"
  else
    # The clone's requirements.txt is on the workers; the jax pin is read from this checkout.
    requirements="$REPO_ROOT/requirements.txt"
  fi
  spec="$(jax_spec "$requirements")"

  # Plain sh syntax: the workers run it with the login shell.
  local apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q"
  script="set -eu"
  script+="; if ! command -v $(quote "$PYTHON") >/dev/null; then $apt update && $apt install -y"
  script+=" $(quote "$PYTHON") $(quote "$PYTHON-venv"); fi"
  if [[ -n "$SOURCE" ]]; then
    ARCHIVE="${TMPDIR:-/tmp}/kdjax-src-$$.tgz"  # global: the EXIT trap removes it
    if [[ "$DRY_RUN" != 1 ]]; then
      trap 'rm -f "$ARCHIVE"' EXIT
    fi
    run env COPYFILE_DISABLE=1 tar -czf "$ARCHIVE" -C "$SOURCE" --exclude=./.git --exclude=./.venv \
      --exclude=./runs --exclude='./workdir*' --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=.pytest_cache .
    run "${TPU[@]}" scp "$ARCHIVE" "$NAME:/tmp/kdjax-src.tgz" "${WHERE[@]}" --worker=all
    script+="; mkdir -p $(quote "$REMOTE_DIR")"
    script+="; tar -xzf /tmp/kdjax-src.tgz -C $(quote "$REMOTE_DIR"); rm -f /tmp/kdjax-src.tgz"
  else
    local clone=(git clone)
    [[ -n "$BRANCH" ]] && clone+=(--branch "$BRANCH")
    clone+=("$REPO" "$REMOTE_DIR")
    script+="; if [ -d $(quote "$REMOTE_DIR/.git") ]; then git -C $(quote "$REMOTE_DIR") pull --ff-only;"
    script+=" else $(quote_all "${clone[@]}"); fi"
  fi
  script+="; cd $(quote "$REMOTE_DIR")"
  script+="; [ -x .venv/bin/python ] || $(quote "$PYTHON") -m venv .venv"
  script+="; . .venv/bin/activate"
  script+="; python -m pip install -q --upgrade pip"
  script+="; python -m pip install -q -r requirements.txt -e ."
  script+="; python -m pip install -q $(quote "jax[tpu]$spec")"
  script+="; python -c 'import importlib.metadata as m, kdjax;"
  script+=" print(\"jax\", m.version(\"jax\"), \"libtpu\", m.version(\"libtpu\"))'"
  remote all "$script"
}

cmd_run() {
  [[ -n "$CONFIG" ]] || die "run needs --config=FILE[:PRESET], e.g. --config=pkkd:cifar100_resnet20"
  [[ -n "$WORKDIR" ]] || die "run needs --workdir=DIR, e.g. --workdir=gs://BUCKET/RUN"
  [[ "$RETRY" == 0 || "$DETACH" == 0 ]] ||
    die "--retry needs a foreground run (it waits for the exit code): drop --detach"
  local config train script
  config="$(normalize_config "$CONFIG")"
  if [[ ! -f "$REPO_ROOT/${config%%:*}" ]]; then
    echo "$PROG: warning: ${config%%:*} is not in this checkout" >&2
  fi
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "$PROG: warning: $WORKDIR is not a gs:// path; a pod slice with several hosts" \
      "needs a shared workdir (a bucket) for its checkpoints" >&2
  fi
  train=(python -m kdjax.main "--config=$config" "--workdir=$WORKDIR")
  [[ -n "$DATA_DIR" ]] && train+=("--config.dataset.data_dir=$DATA_DIR")
  [[ "$MODE" != train ]] && train+=("--mode=$MODE")
  train+=(${EXTRA[@]+"${EXTRA[@]}"})
  if [[ "$SKIP_CONFIG_CHECK" != 1 ]]; then
    # Here, before anything starts on the TPU: a config error costs seconds, not a start-up.
    check_config_locally "$REPO_ROOT/.venv/bin/python" python3 -- "${train[@]}" ||
      die "$(no_check_python)"
  fi
  script="$TPU_ENV; cd $(quote "$REMOTE_DIR") && . .venv/bin/activate && "
  if [[ "$DETACH" == 1 ]]; then
    script+="{ nohup $(quote_all "${train[@]}") > $LOG 2>&1 < /dev/null & echo \$! > $PIDFILE; }"
    script+=" && echo \"started on \$(hostname): pid \$(cat $PIDFILE), log $LOG\""
  else
    script+="$(quote_all "${train[@]}")"
  fi
  if [[ "$RETRY" == 1 && "$DRY_RUN" != 1 ]]; then
    RUN_SCRIPT="$script"
    RETRY_HOOK=prepare_retry
    run_until_done run_attempt
  else
    [[ "$RETRY" == 1 ]] && echo "$PROG: --retry: runs this again while it exits with" \
      "$EXIT_PREEMPTED, recreating the TPU VM first if it was preempted" >&2
    remote all "$script"
  fi
}

# The TPU VM's state (READY, PREEMPTED, ...), or nothing when it does not exist.
tpu_state() {
  "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || true
}

# One try of a --retry run. A Spot preemption may drop the ssh session before the
# workers' exit code 75 comes back: a PREEMPTED VM then counts as a preemption too.
run_attempt() {
  local rc=0
  remote all "$RUN_SCRIPT" || rc=$?
  if [[ "$rc" != 0 && "$rc" != "$EXIT_PREEMPTED" && "$(tpu_state)" == PREEMPTED ]]; then
    echo "$PROG: $NAME was preempted (the ssh session ended with $rc)" >&2
    rc="$EXIT_PREEMPTED"
  fi
  return "$rc"
}

# Before a retry: a READY VM is used as it is; a preempted or missing one is recreated.
prepare_retry() {
  local state
  state="$(tpu_state)"
  case "$state" in
    READY) return 0 ;;
    PREEMPTED|TERMINATED|"")
      echo "$PROG: $NAME is ${state:-gone}: recreating it (delete, create, install)" >&2
      if [[ -n "$state" ]]; then YES=1 cmd_delete; fi
      cmd_create && cmd_install ;;
    *)
      echo "$PROG: $NAME is $state; not retrying (wait until it is READY and run" \
        "the same command again to resume)" >&2
      return 1 ;;
  esac
}

cmd_logs() {
  remote "$WORKER" "cd $(quote "$REMOTE_DIR") && tail -n 50 $LOG"
}

cmd_stop() {
  remote all "cd $(quote "$REMOTE_DIR") && if [ -f $PIDFILE ] && kill -TERM \"\$(cat $PIDFILE)\" 2>/dev/null; then echo \"\$(hostname): SIGTERM sent\"; else echo \"\$(hostname): no run\"; fi"
}

cmd_copy_back() {
  [[ -n "$WORKDIR" ]] || die "copy-back needs --workdir=DIR (the run's workdir)"
  local run_name
  run_name="$(basename "${WORKDIR%/}")"
  [[ -n "$DEST" ]] || DEST="runs/$run_name"
  run mkdir -p "$DEST"
  if [[ "$WORKDIR" == gs://* ]]; then
    local sync=(gcloud storage rsync --recursive)
    [[ "$WITH_CHECKPOINTS" == 1 ]] || sync+=("--exclude=(^|.*/)checkpoints/.*")
    [[ -n "$PROJECT" ]] && sync+=("--project=$PROJECT")
    run "${sync[@]}" "${WORKDIR%/}" "$DEST"
  else
    # A local workdir lives on worker 0 (the process that writes summaries).
    local tar_cmd=(tar -czf /tmp/kdjax-copy-back.tgz)
    [[ "$WITH_CHECKPOINTS" == 1 ]] || tar_cmd+=(--exclude=checkpoints)
    tar_cmd+=(-C "$WORKDIR" .)
    remote 0 "cd $(quote "$REMOTE_DIR") && $(quote_all "${tar_cmd[@]}")"
    run "${TPU[@]}" scp "$NAME:/tmp/kdjax-copy-back.tgz" "$DEST/" "${WHERE[@]}" --worker=0
    run tar -xzf "$DEST/kdjax-copy-back.tgz" -C "$DEST"
    run rm -f "$DEST/kdjax-copy-back.tgz"
  fi
  if [[ "$DRY_RUN" != 1 ]]; then
    echo "Copied to $DEST; view with: tensorboard --logdir $DEST" >&2
    [[ -f "$DEST/summary.json" ]] && cat "$DEST/summary.json"
  fi
  return 0
}

cmd_delete() {
  local args=("${TPU[@]}" delete "$NAME" "${WHERE[@]}")
  [[ "$YES" == 1 ]] && args+=(--quiet)
  run "${args[@]}"
}

case "$COMMAND" in
  create) cmd_create ;;
  install) cmd_install ;;
  run) cmd_run ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  copy-back) cmd_copy_back ;;
  delete) cmd_delete ;;
esac
