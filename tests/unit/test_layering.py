"""The package's layers: no import cycle between kdjax's subpackages.

The folders read ops -> models -> losses -> methods -> train -> main; a
subpackage imports only those before it (and the small shared modules). The
imports are read from the source with `ast`, so a cycle hidden behind a
function-level import counts too.
"""

import ast
import pathlib

KDJAX = pathlib.Path(__file__).resolve().parents[2] / 'kdjax'


def _unit(module: str) -> str:
  """'kdjax.train.loop' -> 'train'; top-level modules are their own unit."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: pathlib.Path, root: pathlib.Path = KDJAX) -> str:
  rel = path.relative_to(root.parent).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _imports(path: pathlib.Path, root: pathlib.Path):
  """Every kdjax module that `path` imports, at any depth of its code."""
  package = _module_name(path, root)
  if path.name != '__init__.py':
    package = package.rsplit('.', 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith('kdjax'))
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')[: len(package.split('.')) - node.level + 1]
        module = '.'.join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ''
      if module == 'kdjax':  # from kdjax import models, losses
        found.update(f'kdjax.{a.name}' for a in node.names)
      elif module.startswith('kdjax'):
        found.add(module)
  return found


def unit_graph(root: pathlib.Path = KDJAX):
  graph = {}
  for path in root.rglob('*.py'):
    source = _unit(_module_name(path, root))
    for target in _imports(path, root):
      target_unit = _unit(target)
      if target_unit != source:
        graph.setdefault(source, set()).add(target_unit)
  return graph


def find_cycle(graph):
  """One cycle of `graph` as a list of nodes, or None."""
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state:
        cycle = visit(nxt, stack)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_one_and_only_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
    'a',
    'b',
    'c',
    'a',
  ]
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None


def test_unit_graph_reads_function_level_and_relative_imports(tmp_path):
  root = tmp_path / 'kdjax'
  (root / 'models').mkdir(parents=True)
  (root / 'losses').mkdir()
  (root / 'models' / '__init__.py').write_text('')
  (root / 'losses' / '__init__.py').write_text('from .. import models\n')
  (root / 'models' / 'layers.py').write_text(
    'def f():\n  from kdjax.losses import pkkd\n'
  )
  graph = unit_graph(root)
  assert graph == {'models': {'losses'}, 'losses': {'models'}}
  assert find_cycle(graph) in (
    ['losses', 'models', 'losses'],
    ['models', 'losses', 'models'],
  )


def test_no_import_cycle_between_subpackages():
  graph = unit_graph()
  assert find_cycle(graph) is None, graph


def test_layers_point_one_way():
  graph = unit_graph()
  assert 'losses' not in graph.get('models', set())
  assert 'methods' not in graph.get('losses', set())
  assert not {'train', 'main'} & graph.get('methods', set())
  assert 'main' not in graph.get('train', set())


def test_no_test_module_imports_another():
  """Shared test code lives in helper modules (helpers.py, loss_parity.py, ...)."""
  repo = KDJAX.parent
  offenders = []
  for path in [*repo.glob('tests/**/*.py'), *repo.glob('experiments/**/*.py')]:
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module or '']
      offenders += [
        f'{path.relative_to(repo)}: {n}'
        for n in names
        if n.split('.')[-1].startswith('test_')
      ]
  assert not offenders, offenders
