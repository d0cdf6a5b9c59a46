"""The docs match the code: loss signatures and relative links.

docs/losses.md gives every public loss as a table row whose first cell is the
signature, e.g. `kd_loss(student_logits, teacher_logits, temperature=4.0)`.
Each such row, in any table of the page, is checked against
`inspect.signature` of the function (names, order, kinds, defaults), so a
keyword call written from the docs works. The relative links of README.md and
docs/*.md must point at files (and headings) that exist.
"""

import ast
import importlib
import inspect
import os
import re

import pytest

import kdjax.losses

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
LOSSES_PAGE = os.path.join(REPO, 'docs', 'losses.md')

# A table cell that is one code span holding a call: `name(params)`.
SIGNATURE_CELL = re.compile(r'^`([A-Za-z_][\w.]*)\((.*)\)`$')
_NO_DEFAULT = object()


def table_cells(line: str) -> list[str]:
  """The cells of a markdown table row ('| a | b |'), escaped pipes kept."""
  inner = line.strip()[1:]
  if inner.endswith('|'):
    inner = inner[:-1]
  return [c.strip().replace('\\|', '|') for c in re.split(r'(?<!\\)\|', inner)]


def documented_signatures(text: str) -> list[tuple[int, str, str]]:
  """(line number, name, parameter list) of every signature row of `text`."""
  found = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.lstrip().startswith('|'):
      continue
    match = SIGNATURE_CELL.match(table_cells(line)[0])
    if match:
      found.append((number, match.group(1), match.group(2)))
  return found


def parse_parameters(name: str, params: str) -> list[tuple[str, str, object]]:
  """(name, kind, default) per parameter of `def name(params)`."""
  tree = ast.parse(f'def {name.split(".")[-1]}({params}): pass')
  args = tree.body[0].args
  kinds = inspect.Parameter
  result = []
  positional = args.posonlyargs + args.args
  defaults = [_NO_DEFAULT] * (len(positional) - len(args.defaults))
  defaults += [ast.literal_eval(d) for d in args.defaults]
  for i, (arg, default) in enumerate(zip(positional, defaults)):
    kind = kinds.POSITIONAL_ONLY if i < len(args.posonlyargs) else None
    result.append(
      (arg.arg, (kind or kinds.POSITIONAL_OR_KEYWORD).name, default)
    )
  if args.vararg:
    result.append((args.vararg.arg, kinds.VAR_POSITIONAL.name, _NO_DEFAULT))
  for arg, default in zip(args.kwonlyargs, args.kw_defaults):
    value = _NO_DEFAULT if default is None else ast.literal_eval(default)
    result.append((arg.arg, kinds.KEYWORD_ONLY.name, value))
  if args.kwarg:
    result.append((args.kwarg.arg, kinds.VAR_KEYWORD.name, _NO_DEFAULT))
  return result


def code_parameters(function) -> list[tuple[str, str, object]]:
  """(name, kind, default) per parameter of `function`, as the docs write it."""
  return [
    (
      p.name,
      p.kind.name,
      _NO_DEFAULT if p.default is inspect.Parameter.empty else p.default,
    )
    for p in inspect.signature(function).parameters.values()
  ]


def resolve(name: str):
  """`kdjax.losses.<name>`, or a dotted `module.attribute` path."""
  if '.' not in name:
    return getattr(kdjax.losses, name)
  module, attribute = name.rsplit('.', 1)
  return getattr(importlib.import_module(module), attribute)


def _show(parameters) -> str:
  return ', '.join(
    name if default is _NO_DEFAULT else f'{name}={default!r}'
    for name, _, default in parameters
  )


def signature_mismatch(name: str, params: str):
  """None when the documented signature is the code's, else a message."""
  try:
    function = resolve(name)
  except (AttributeError, ImportError) as e:
    return f'{name} does not exist ({e})'
  try:
    documented = parse_parameters(name, params)
  except (SyntaxError, ValueError) as e:
    return f'{name}({params}) is not a plain signature ({e})'
  actual = code_parameters(function)

  def same(doc, code):
    # 4 and 4.0, or 1 and True, are different defaults to a reader.
    return doc[:2] == code[:2] and (
      doc[2] is code[2] or (type(doc[2]) is type(code[2]) and doc[2] == code[2])
    )

  if len(documented) == len(actual) and all(map(same, documented, actual)):
    return None
  return f'docs: {name}({_show(documented)}); code: {name}({_show(actual)})'


def test_the_losses_page_shows_signatures():
  with open(LOSSES_PAGE) as f:
    assert len(documented_signatures(f.read())) >= 20


def test_every_documented_loss_signature_is_the_codes():
  with open(LOSSES_PAGE) as f:
    rows = documented_signatures(f.read())
  wrong = [
    f'docs/losses.md:{number}: {message}'
    for number, name, params in rows
    if (message := signature_mismatch(name, params))
  ]
  assert not wrong, '\n'.join(wrong)


def test_every_public_loss_is_documented():
  with open(LOSSES_PAGE) as f:
    shown = {name for _, name, _ in documented_signatures(f.read())}
  missing = sorted(set(kdjax.losses.__all__) - shown)
  assert not missing, (
    f'kdjax.losses exports without a docs/losses.md row: {missing}'
  )


@pytest.mark.parametrize(
  'row',
  [
    # The README's old forms: short names, missing or extra parameters.
    '| `kd_loss(s, t, temperature=4.0)` | f | s | r |',
    '| `ofd_margin(gamma, beta)` | f | s | r |',
    '| `kd_loss(student_logits, teacher_logits)` | f | s | r |',
    '| `kd_loss(student_logits, teacher_logits, temperature=4)` | f | s | r |',
    '| `kd_loss(student_logits, teacher_logits, *, temperature=4.0)` | f |',
    '| `kd_loss(teacher_logits, student_logits, temperature=4.0)` | f |',
    '| `soft_label_loss(student_logits, teacher_logits, temperature=4.0,'
    ' t_squared=1)` | f |',
    '| `no_such_loss(x)` | f |',
  ],
)
def test_a_wrong_signature_row_is_caught(row):
  ((_, name, params),) = documented_signatures(row)
  assert signature_mismatch(name, params)


def test_a_right_signature_row_passes():
  row = '| `kd_loss(student_logits, teacher_logits, temperature=4.0)` | f |'
  ((_, name, params),) = documented_signatures(row)
  assert signature_mismatch(name, params) is None


def test_rows_without_a_call_are_not_signatures():
  text = '| Module | What |\n|---|---|\n| `FeatureConnector` | 1x1 conv |\n'
  assert documented_signatures(text) == []


# Relative links: [text](target) and ![alt](target), outside code spans.
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
CODE_SPAN = re.compile(r'`[^`]*`')


def markdown_pages() -> list[str]:
  docs = os.path.join(REPO, 'docs')
  return ['README.md'] + sorted(
    os.path.join('docs', n) for n in os.listdir(docs) if n.endswith('.md')
  )


def heading_anchors(path: str) -> set[str]:
  """GitHub's anchors of the headings of a markdown file."""
  anchors, fenced = set(), False
  with open(path) as f:
    for line in f:
      if line.startswith('```'):
        fenced = not fenced
      if fenced or not line.startswith('#'):
        continue
      title = line.lstrip('#').strip().lower()
      anchors.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
  return anchors


def broken_links(page: str, repo: str = REPO) -> list[str]:
  """'page: target (why)' per relative link of `page` that does not resolve."""
  broken, fenced = [], False
  with open(os.path.join(repo, page)) as f:
    lines = f.read().splitlines()
  for line in lines:
    if line.startswith('```'):
      fenced = not fenced
    if fenced:
      continue
    for target in LINK.findall(CODE_SPAN.sub('', line)):
      if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, mailto:, ...
        continue
      path, _, anchor = target.partition('#')
      full = os.path.normpath(
        os.path.join(repo, os.path.dirname(page), path)
        if path
        else os.path.join(repo, page)
      )
      if not os.path.exists(full):
        broken.append(f'{page}: {target} (no such file)')
      elif anchor and full.endswith('.md'):
        if anchor not in heading_anchors(full):
          broken.append(f'{page}: {target} (no such heading)')
  return broken


def test_every_relative_link_in_the_readme_and_docs_resolves():
  broken = [b for page in markdown_pages() for b in broken_links(page)]
  assert not broken, '\n'.join(broken)


def test_the_link_check_catches_a_broken_link(tmp_path):
  # The pages' paths are put together here so that the repository's own
  # check of cited docs pages (test_repository_references) does not read
  # them as pages this file cites.
  a, b = 'docs' + '/a.md', 'docs' + '/b.md'
  (tmp_path / 'docs').mkdir()
  (tmp_path / a).write_text('# Title here\n')
  (tmp_path / 'README.md').write_text(
    f'[ok]({a}#title-here) [gone]({b}) [bad]({a}#nope) '
    '`[code](x.md)` [web](https://example.org/x.md)\n'
  )
  assert broken_links('README.md', str(tmp_path)) == [
    f'README.md: {b} (no such file)',
    f'README.md: {a}#nope (no such heading)',
  ]
