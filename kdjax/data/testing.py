"""Deprecated: the tfds mocking helpers moved to tests/tfds_mocks.py.

For one release this module still serves them (`mock_dataset`,
`rewrite_record`, `edit_example`, ...) where the repository's tests/ folder is
next to the package (a source checkout or `pip install -e .`). From an
installed wheel it raises ImportError saying where the helpers are.
"""

import importlib.util
import os
import sys
import warnings

_MOCKS_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  'tests',
  'tfds_mocks.py',
)

warnings.warn(
  'kdjax.data.testing moved to tests/tfds_mocks.py (import tfds_mocks from '
  'the tests); the old path will be removed in the next release.',
  DeprecationWarning,
  stacklevel=2,
)


def _load_mocks():
  if 'tfds_mocks' in sys.modules:  # Already imported by the tests.
    return sys.modules['tfds_mocks']
  if not os.path.isfile(_MOCKS_PATH):
    # Only the tests use the mocks and they read tests/fixtures/tfds; a wheel
    # carries no tests/ folder, and never carried those fixtures.
    raise ImportError(
      'kdjax.data.testing moved to tests/tfds_mocks.py in the kdjax '
      f'repository, and this installation has no {_MOCKS_PATH}. Use a source '
      'checkout (pip install -e .) and import tfds_mocks from its tests/.'
    )
  spec = importlib.util.spec_from_file_location('tfds_mocks', _MOCKS_PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules['tfds_mocks'] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules['tfds_mocks']
    raise
  return module


_mocks = _load_mocks()
FIXTURES_DIR = _mocks.FIXTURES_DIR
mock_dataset = _mocks.mock_dataset
rewrite_record = _mocks.rewrite_record
edit_example = _mocks.edit_example
