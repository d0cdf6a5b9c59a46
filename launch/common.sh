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
