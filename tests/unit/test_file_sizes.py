"""No tracked Python file outside tests/ is longer than 600 lines.

A longer file has grown more than one responsibility: split it along them
(the trainer under kdjax/train/ is split so). Test modules are exempt; the
experiments' tests are not, since they sit beside the code they check.
"""

import os
import subprocess

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
MAX_LINES = 600


def long_python_files(repo: str, paths: list[str]) -> list[tuple[str, int]]:
  """(path, line count) of each .py file of `paths` outside tests/ over MAX_LINES."""
  found = []
  for path in paths:
    if not path.endswith('.py') or path.split('/')[0] == 'tests':
      continue
    full = os.path.join(repo, path)
    if not os.path.isfile(full):  # Deleted in the working tree.
      continue
    with open(full, encoding='utf-8') as f:
      count = sum(1 for _ in f)
    if count > MAX_LINES:
      found.append((path, count))
  return found


def test_no_python_file_outside_tests_is_over_600_lines():
  listing = subprocess.run(
    ['git', 'ls-files', '-z'], cwd=REPO, capture_output=True, check=True
  ).stdout
  paths = [p for p in listing.decode().split('\0') if p]
  assert any(p.startswith('kdjax/') for p in paths)  # The listing is real.
  assert long_python_files(REPO, paths) == []


def test_the_check_catches_a_long_file(tmp_path):
  files = {
    'kdjax/long.py': MAX_LINES + 1,
    'kdjax/at_the_limit.py': MAX_LINES,
    'experiments/study/test_long.py': MAX_LINES + 5,
    'tests/unit/test_long.py': 2 * MAX_LINES,
    'notes/long.txt': 2 * MAX_LINES,
  }
  for path, lines in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text('x = 1\n' * lines)
  assert long_python_files(str(tmp_path), sorted(files)) == [
    ('experiments/study/test_long.py', MAX_LINES + 5),
    ('kdjax/long.py', MAX_LINES + 1),
  ]
