"""``python -m experiments.baselines_demo ARGS``: see the package docstring."""

import sys

from .cli import run

sys.exit(run())
