# Helpers shared by launch/gpu_host.sh and launch/tpu_pod.sh; sourced, not run.
# The caller sets PROG (its name in messages) and REPO_ROOT; DRY_RUN before calling run.

die() {
  echo "$PROG: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

# Quotes one word for a POSIX shell, leaving plain words readable.
quote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "+ $(quote_all "$@")"
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

# The version specifier of jax in requirements.txt, e.g. ">=0.10.2,<0.11".
jax_spec() {
  local requirements="$1" spec
  [[ -f "$requirements" ]] || die "no $requirements to read the jax version from"
  spec="$(sed -n -E 's/^[[:space:]]*jax(\[[^]]*\])?[[:space:]]*([<>=!~][^;#[:space:]]*).*/\2/p' \
    "$requirements" | head -n 1)"
  [[ -n "$spec" ]] || die "no jax version specifier (jax[...]>=X) in $requirements"
  printf '%s' "$spec"
}

# configs/pkkd.py:demo, pkkd:demo and pkkd.py:demo all mean configs/pkkd.py:demo.
normalize_config() {
  local config="$1" file preset=""
  file="${config%%:*}"
  [[ "$config" == *:* ]] && preset=":${config#*:}"
  [[ "$file" == */* ]] || file="configs/$file"
  [[ "$file" == *.py ]] || file="$file.py"
  printf '%s%s' "$file" "$preset"
}

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value"
}

# kdjax.main's exit code for "preempted: a checkpoint was saved; run the same command
# again to resume" (EX_TEMPFAIL in sysexits.h).
EXIT_PREEMPTED=75

# Runs a command until the run is done: again while it exits with $EXIT_PREEMPTED,
# at most KDJAX_MAX_RETRIES (default 10) more times. Returns 0 when it succeeds and
# the command's own code on any other failure, which is never retried. Before each
# retry it calls the function named by RETRY_HOOK, if set, with the attempt number;
# a non-zero return from the hook stops the loop with that code. A SIGINT or SIGTERM
# to this shell is passed on to the command as SIGTERM (kdjax saves a checkpoint
# and exits with $EXIT_PREEMPTED) and ends the loop: a stop is not a preemption.
run_until_done() {
  local max_retries="${KDJAX_MAX_RETRIES:-10}" retry=0 rc
  [[ "$max_retries" =~ ^[0-9]+$ ]] ||
    die "KDJAX_MAX_RETRIES must be a number of retries, got: $max_retries"
  RUN_STOPPED=0
  while true; do
    rc=0
    _run_signalled "$@" || rc=$?
    if [[ "$rc" == 0 ]]; then
      return 0
    elif [[ "$rc" != "$EXIT_PREEMPTED" ]]; then
      echo "$PROG: the run failed with exit code $rc; not retrying (only exit" \
        "code $EXIT_PREEMPTED, a preemption, is retried)" >&2
      return "$rc"
    elif [[ "$RUN_STOPPED" == 1 ]]; then
      echo "$PROG: stopped by a signal; the run saved a checkpoint: run the same" \
        "command again to resume" >&2
      return "$rc"
    elif (( retry >= max_retries )); then
      echo "$PROG: the run was preempted $((retry + 1)) times; giving up after" \
        "$max_retries retries (KDJAX_MAX_RETRIES). Its checkpoints are kept: run" \
        "the same command again to resume" >&2
      return "$rc"
    fi
    retry=$((retry + 1))
    echo "$PROG: the run was preempted (exit code $EXIT_PREEMPTED); resuming," \
      "retry $retry of $max_retries" >&2
    if [[ -n "${RETRY_HOOK:-}" ]]; then
      "$RETRY_HOOK" "$retry" || return $?
    fi
  done
}

# Runs a command in the background and waits for it, passing SIGINT and SIGTERM on
# as SIGTERM (RUN_STOPPED=1); returns the command's exit code.
_run_signalled() {
  local child rc
  RUN_WAKE=0
  RUN_CHILD=
  # The trap is set before the command starts: a signal that came between the
  # start and the trap would otherwise stop this loop and leave the run going.
  trap 'RUN_STOPPED=1; RUN_WAKE=1
    [[ -n "$RUN_CHILD" ]] && kill -TERM "$RUN_CHILD" 2>/dev/null; true' INT TERM
  "$@" &
  child=$!
  RUN_CHILD=$child
  # A signal before RUN_CHILD was set found no run to pass it on to.
  if [[ "$RUN_STOPPED" == 1 ]]; then kill -TERM "$child" 2>/dev/null || true; fi
  while true; do
    RUN_WAKE=0
    rc=0
    wait "$child" || rc=$?
    # A trapped signal interrupts `wait` (code > 128) while the command runs on.
    [[ "$RUN_WAKE" == 1 ]] || break
  done
  trap - INT TERM
  RUN_CHILD=
  return "$rc"
}

# Loads the config of a kdjax.main command line here, as the trainer will (file,
# preset, every --config.KEY=VALUE), before any remote or long command:
#   check_config_locally PYTHON... -- KDJAX_MAIN_ARGS...
# Runs python -m kdjax.check_config in REPO_ROOT with the first of
# KDJAX_CHECK_PYTHON and the PYTHONs that can run it. Prints the resolved config
# (stderr) and returns 0; on a config error prints the one-paragraph message and
# exits 2. Returns 3 when no Python here can load configs (CHECK_CONFIG_WHY says
# why), so that the caller decides.
check_config_locally() {
  local pythons=() args=() arg python out rc
  while [[ $# -gt 0 && "$1" != -- ]]; do pythons+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  for arg in "$@"; do
    case "$arg" in --config=*|--config.*) args+=("$arg") ;; esac
  done
  if [[ -n "${KDJAX_CHECK_PYTHON:-}" ]]; then
    pythons=("$KDJAX_CHECK_PYTHON")
  fi
  CHECK_CONFIG_WHY=""
  for python in ${pythons[@]+"${pythons[@]}"}; do
    if ! command -v "$python" >/dev/null 2>&1; then
      CHECK_CONFIG_WHY+="${CHECK_CONFIG_WHY:+; }$python: not found"
      continue
    fi
    rc=0
    out="$(cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
      "$python" -m kdjax.check_config ${args[@]+"${args[@]}"} 2>&1)" || rc=$?
    case "$rc" in
      0) printf '%s\n' "$out" | sed 's/^/config: /' >&2; return 0 ;;
      2)
        printf '%s\n' "$out" >&2
        echo "$PROG: the config does not load; nothing was started." \
          "Fix it and run again (--skip-config-check skips this check)." >&2
        exit 2 ;;
      *) CHECK_CONFIG_WHY+="${CHECK_CONFIG_WHY:+; }$python: $(printf '%s' "$out" | tail -n 1)" ;;
    esac
  done
  return 3
}

# The message for check_config_locally's return code 3.
no_check_python() {
  echo "cannot load the config here to check it: no Python with kdjax's" \
    "requirements (${CHECK_CONFIG_WHY:-none tried}). Create the checkout's venv" \
    "(python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt -e .)," \
    "set KDJAX_CHECK_PYTHON=/path/to/python, or pass --skip-config-check"
}
