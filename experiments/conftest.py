"""Test setup of the experiments' tests: the suite's environment.

tests/suite_env.py's settings (8 fake CPU devices, the suite's XLA flags,
non-partitionable threefry, its persistent compilation cache and cheap GC),
set before jax initializes, so that `pytest experiments` alone runs as the
whole suite does. tests/ is not a package, so the module is loaded from its
file.
"""

import importlib.util
import os
import sys


def _suite_env():
  """tests/suite_env.py, the module tests/conftest.py imports as `suite_env`."""
  if 'suite_env' not in sys.modules:  # Not yet imported by tests/conftest.py.
    path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'tests',
      'suite_env.py',
    )
    spec = importlib.util.spec_from_file_location('suite_env', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules['suite_env'] = module
  return sys.modules['suite_env']


suite_env = _suite_env()
suite_env.set_environment()


def pytest_collection_finish(session):
  del session
  suite_env.make_gc_cheap()
