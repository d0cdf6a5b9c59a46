"""No tracked file points outside the repository.

Code, configs, docs and results cite docs/*.md; a path into the machine the
repository was written on (an absolute home or work directory, a sibling
folder next to the checkout, or a fact sheet kept beside the repository) means
nothing to someone who clones it. The patterns are assembled from pieces so
that this file does not match itself.
"""

import os
import re
import subprocess

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

_SHEET = 'SP' + 'EC'
OUTSIDE = re.compile(
  '|'.join(
    [
      r'\.\./' + 'shared' + r'\b',  # a sibling folder of the checkout
      r'\b' + _SHEET + r'\b',  # the fact sheet beside the repository
      # Absolute paths into a machine's home or work folders (not /tmp, which
      # examples use for scratch output, and not a URL's path).
      r'(?<![\w./~-])/(?:'
      + '|'.join(['wo' + 'rk', 'ro' + 'ot', 'home'])
      + ')/',
    ]
  )
)


def outside_references(text: str) -> list[tuple[int, str]]:
  """(line number, line) of every line of `text` that points outside."""
  return [
    (number, line.strip())
    for number, line in enumerate(text.splitlines(), 1)
    if OUTSIDE.search(line)
  ]


def tracked_files(repo: str) -> list[str]:
  listing = subprocess.run(
    ['git', 'ls-files', '-z'],
    cwd=repo,
    capture_output=True,
    check=True,
  ).stdout
  return [p for p in listing.decode().split('\0') if p]


def tracked_texts(repo: str):
  """(path, text) of every tracked text file of `repo` (binaries skipped)."""
  for path in tracked_files(repo):
    full = os.path.join(repo, path)
    if not os.path.isfile(full):  # Deleted in the working tree.
      continue
    with open(full, 'rb') as f:
      data = f.read()
    if b'\0' in data[:8192]:  # Binary (images, checkpoints).
      continue
    yield path, data.decode('utf-8', errors='replace')


def offenders(repo: str) -> list[str]:
  """'path:line: text' for every reference outside `repo` in its tracked files."""
  return [
    f'{path}:{n}: {line}'
    for path, text in tracked_texts(repo)
    for n, line in outside_references(text)
  ]


PLANTED = [
  'Formulas: ' + '../' + 'shared/' + _SHEET + '.md',
  'see ' + _SHEET + ' section 2',
  '(' + _SHEET + ' \N{SECTION SIGN}4)',
  'paper claim (' + _SHEET + ')',
  'data_dir=' + '/wo' + 'rk/main/data',
  'cp model.pt ' + '/ro' + 'ot/models/',
  '"/ho' + 'me/alice/run"',
]
HARMLESS = [
  'JAX_' + _SHEET + '="$(jax_spec requirements.txt)"',
  'PartitionSpec, ' + _SHEET.lower() + ' = model_spec(name)',
  '--workdir=/tmp/kdjax/teacher',
  'https://example.org/' + 'wo' + 'rk/page',
  'kdjax/home/page.md, docs/adder.md, ./shared/x',
]


@pytest.mark.parametrize('line', PLANTED)
def test_detector_flags_references_outside(line):
  assert outside_references(f'first line\n{line}\nlast') == [(2, line)]


@pytest.mark.parametrize('line', HARMLESS)
def test_detector_leaves_other_text_alone(line):
  assert outside_references(line) == []


def test_detector_finds_a_planted_file_in_a_git_checkout(tmp_path):
  def git(*args):
    subprocess.run(
      ['git', *args], cwd=tmp_path, check=True, capture_output=True
    )

  git('init', '-q')
  (tmp_path / 'clean.py').write_text('"""See docs/adder.md."""\n')
  (tmp_path / 'planted.md').write_text('# Notes\n\n' + PLANTED[0] + '\n')
  (tmp_path / 'untracked.md').write_text(PLANTED[1] + '\n')
  git('add', 'clean.py', 'planted.md')
  assert offenders(str(tmp_path)) == [f'planted.md:3: {PLANTED[0]}']


def test_no_tracked_file_references_a_path_outside_the_repository():
  if not os.path.exists(os.path.join(REPO, '.git')):
    pytest.skip('not a git checkout: no list of tracked files')
  found = offenders(REPO)
  assert not found, (
    f'{len(found)} line(s) point outside the repository; cite the docs/ '
    'pages instead:\n' + '\n'.join(found)
  )


DOCS_PAGE = re.compile(r'\bdocs/([\w-]+\.md)\b')


def cited_docs_pages(repo: str) -> dict[str, list[str]]:
  """{docs page: [files citing it]} over the tracked text files of `repo`."""
  cited = {}
  for path, text in tracked_texts(repo):
    for page in DOCS_PAGE.findall(text):
      cited.setdefault(page, []).append(path)
  return cited


def test_every_cited_docs_page_exists():
  if not os.path.exists(os.path.join(REPO, '.git')):
    pytest.skip('not a git checkout: no list of tracked files')
  cited = cited_docs_pages(REPO)
  assert {'adder.md', 'ofd.md', 'ekd.md', 'trainer.md'} <= set(cited)
  missing = {
    page: sorted(set(paths))
    for page, paths in cited.items()
    if not os.path.isfile(os.path.join(REPO, 'docs', page))
  }
  assert not missing, f'cited docs pages that do not exist: {missing}'
