"""``python benchmarks/study.py ARGS``: the study's CLI, kept for that command.

The study is the package benchmarks/study/ (its docstring describes it);
this file only runs it, same flags as ``python -m benchmarks.study ARGS``.
"""

import os
import sys

if __name__ == '__main__':
  # Run as a script, benchmarks/ is sys.path[0]; the package is imported
  # from the repository root as benchmarks.study.
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  from benchmarks.study import cli  # noqa: E402

  sys.exit(cli.run())
