"""Share of docstring lines in the kdjax library, per package and in total.

Usage: python benchmarks/docstring_share.py [ROOT]  (ROOT defaults to kdjax/)

Prints JSON. For every package (a directory under ROOT; top-level modules are
grouped as "kdjax") it gives `docstring_lines` (lines spanned by module, class
and function docstrings, found with `ast`), `comment_lines` (lines whose first
non-blank character is `#`), `lines` (non-blank lines) and `share` =
docstring_lines / lines. Blank lines count nowhere.
"""

import ast
import json
import pathlib
import sys

_DOC_OWNERS = (
  ast.Module,
  ast.ClassDef,
  ast.FunctionDef,
  ast.AsyncFunctionDef,
)


def _docstring_lines(source: str) -> set[int]:
  lines = set()
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, _DOC_OWNERS) or not node.body:
      continue
    first = node.body[0]
    if (
      isinstance(first, ast.Expr)
      and isinstance(first.value, ast.Constant)
      and isinstance(first.value.value, str)
    ):
      lines.update(range(first.lineno, first.end_lineno + 1))
  return lines


def measure_file(path: pathlib.Path) -> dict[str, int]:
  source = path.read_text()
  text = source.splitlines()
  nonblank = {i + 1 for i, line in enumerate(text) if line.strip()}
  comments = {i for i in nonblank if text[i - 1].lstrip().startswith('#')}
  return {
    'docstring_lines': len(_docstring_lines(source) & nonblank),
    'comment_lines': len(comments),
    'lines': len(nonblank),
  }


def measure(root: pathlib.Path) -> dict:
  packages: dict[str, dict[str, int]] = {}
  for path in sorted(root.rglob('*.py')):
    rel = path.relative_to(root)
    name = rel.parts[0] if len(rel.parts) > 1 else root.name
    counts = packages.setdefault(
      name, {'docstring_lines': 0, 'comment_lines': 0, 'lines': 0}
    )
    for key, value in measure_file(path).items():
      counts[key] += value
  total = {'docstring_lines': 0, 'comment_lines': 0, 'lines': 0}
  for counts in packages.values():
    for key in total:
      total[key] += counts[key]
  for counts in [*packages.values(), total]:
    counts['share'] = round(
      counts['docstring_lines'] / max(counts['lines'], 1), 3
    )
  return {'root': root.name, 'packages': packages, 'total': total}


def main(argv: list[str]) -> None:
  default = pathlib.Path(__file__).resolve().parent.parent / 'kdjax'
  root = pathlib.Path(argv[1]) if len(argv) > 1 else default
  print(json.dumps(measure(root), indent=2))


if __name__ == '__main__':
  main(sys.argv)
