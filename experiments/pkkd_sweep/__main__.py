"""``python -m experiments.pkkd_sweep ARGS``: see the package docstring."""

from .cli import main

main()
