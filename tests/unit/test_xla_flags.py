"""experiments/ runs under the suite's XLA flags (tests/xla_flags.py).

experiments/conftest.py cannot import tests/xla_flags.py (tests/ is not a
package), so it writes the flags again; this keeps the two copies equal.
"""

import ast
import os

import xla_flags

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_experiments_use_the_suites_compile_flags():
  with open(os.path.join(REPO, 'experiments', 'conftest.py')) as f:
    tree = ast.parse(f.read())
  values = [
    ast.literal_eval(node.value)
    for node in tree.body
    if isinstance(node, ast.Assign)
    and [getattr(t, 'id', None) for t in node.targets] == ['COMPILE_FLAGS']
  ]
  assert values == [xla_flags.COMPILE_FLAGS]
