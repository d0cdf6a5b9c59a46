"""``python -m benchmarks.study ARGS``: see the package docstring."""

import sys

from .cli import run

sys.exit(run(prog='python -m benchmarks.study'))
