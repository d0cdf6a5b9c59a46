"""Research on top of kdjax, kept out of the library's path (README.md here).

Each experiment is a package run from the repository root as a module, e.g.
``python -m experiments.mnist5k_study --quick --out /tmp/study``; its tests
sit beside it and run with the suite (pyproject.toml's testpaths).
"""
