"""``python -m experiments.mnist5k_study ARGS``: see the package docstring."""

import sys

from .cli import run

sys.exit(run())
