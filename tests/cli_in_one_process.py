"""Runs kdjax.main's command line for several argument lists in one process.

stdin: a JSON list of argument lists (what follows `python -m kdjax.main`).
stdout: a JSON list of {"returncode", "stderr"}, one per list.

Each case goes through the same `parse_flags` and `main` that
`python -m kdjax.main` runs, with the flags reset in between; only the
start-up (python, jax, tensorflow imports) is shared, which is most of the
cost of a case that fails before training. tests/test_run_trust.py also runs
cases through the real entry point in a process of their own.
"""

import contextlib
import io
import json
import sys
import traceback

from absl import flags

from kdjax import main as kdjax_main


def run_case(args):
  argv = ['kdjax.main', *args]
  # config_flags defines a flag per --config.<key> override it parses; a
  # fresh process starts without them.
  for name in list(flags.FLAGS):
    if name.startswith('config.'):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  sys.argv = argv  # main() reads it, as under app.run.
  stderr, code = io.StringIO(), 0
  with contextlib.redirect_stderr(stderr):
    try:
      kdjax_main.main(kdjax_main.parse_flags(argv))
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()  # What the interpreter would print, exit code 1.
      code = 1
  return {'returncode': code, 'stderr': stderr.getvalue()}


if __name__ == '__main__':
  cases = json.load(sys.stdin)
  print(json.dumps([run_case(args) for args in cases]))
