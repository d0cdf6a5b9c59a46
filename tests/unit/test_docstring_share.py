"""benchmarks/docstring_share.py counts what it says, on a package written here."""

import importlib.util
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _load():
  path = REPO / 'benchmarks' / 'docstring_share.py'
  spec = importlib.util.spec_from_file_location('docstring_share', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_counts_docstring_comment_and_blank_lines(tmp_path):
  root = tmp_path / 'pkg'
  (root / 'sub').mkdir(parents=True)
  # 1 comment and 6 non-blank lines.
  (root / 'top.py').write_text(
    '"""Module.\n\nSecond line."""\n\n# A comment.\ndef f():\n  """One."""\n'
    '  return "not a docstring"\n'
  )
  # A class docstring of 2 lines, a string that is not first: 4 non-blank.
  (root / 'sub' / 'mod.py').write_text(
    'class C:\n  """Two\n  lines."""\n  x = 1\n'
  )
  result = _load().measure(root)
  assert result['packages']['pkg'] == {
    # Lines 1, 3 and 7: the blank line inside the module docstring does not
    # count, nor does the string that is not first in its body.
    'docstring_lines': 3,
    'comment_lines': 1,
    'lines': 6,
    'share': 0.5,
  }
  assert result['packages']['sub'] == {
    'docstring_lines': 2,
    'comment_lines': 0,
    'lines': 4,
    'share': 0.5,
  }
  assert result['total']['docstring_lines'] == 5
  assert result['total']['lines'] == 10


def test_cli_prints_json_for_the_library():
  done = subprocess.run(
    [sys.executable, 'benchmarks/docstring_share.py'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout)
  assert {'losses', 'models', 'ops', 'train'} <= set(result['packages'])
  assert 0 < result['total']['share'] < 1
