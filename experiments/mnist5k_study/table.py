r"""One Markdown table of several study runs side by side (e.g. CPU vs GPU budgets).

    python -m experiments.mnist5k_study.table \
        'CPU, 1x epochs=experiments/mnist5k_study/results/study.json' \
        'H100, 2x epochs=experiments/mnist5k_study/results/gpu_h100/x2/*/study.json' \
        'H100, 5x epochs=experiments/mnist5k_study/results/gpu_h100/x5/*/study.json'

Each argument is COLUMN=GLOB; the cells of every study.json the glob matches
are merged into that column (a study split over several processes, each with
its own --cells, comes back whole). Rows are the cells in the order first
seen, one per head: the student, then, where the cell has them, its teacher
and the mean accuracy of the EKD branches. Entries are mean ± sample std (n) in %,
as written by the study (experiments/mnist5k_study/report.py); "-" where a column lacks the cell.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from typing import Dict, List, Tuple


def load_column(pattern: str) -> Dict[str, dict]:
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise SystemExit(f'mnist5k_study.table: no file matches {pattern!r}')
  cells: Dict[str, dict] = {}
  for path in paths:
    with open(path) as f:
      cells.update(json.load(f)['cells'])
  return cells


def head_entry(cell: dict, head: str) -> str:
  stats = cell['heads'].get(head)
  if not stats or stats.get('mean') is None:
    return '-'
  std = 100 * stats['std'] if stats.get('std') is not None else float('nan')
  return f'{100 * stats["mean"]:.2f} ± {std:.2f} ({stats["n"]})'


# Sub-rows shown under a cell's student, when some column has them.
SUB_HEADS = {'teacher': 'its teacher', 'branch_mean': 'mean of its branches'}


def rows(
  columns: List[Tuple[str, Dict[str, dict]]],
) -> List[Tuple[str, str, str]]:
  order: List[str] = []
  for _, cells in columns:
    order += [key for key in cells if key not in order]
  out = []
  for key in order:
    cell = next(cells[key] for _, cells in columns if key in cells)
    heads = ['student'] + [
      head
      for head in SUB_HEADS
      if any(
        head in cells.get(key, {}).get('heads', {}) for _, cells in columns
      )
    ]
    for head in heads:
      label = (
        cell['label']
        if head == 'student'
        else f'&nbsp;&nbsp;↳ {SUB_HEADS[head]}'
      )
      out.append((key, head, label))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('columns', nargs='+', metavar='COLUMN=GLOB')
  args = parser.parse_args(argv)
  columns = []
  for spec in args.columns:
    name, sep, pattern = spec.partition('=')
    if not sep:
      parser.error(f'expected COLUMN=GLOB, got {spec!r}')
    columns.append((name, load_column(pattern)))
  print('| cell | ' + ' | '.join(name for name, _ in columns) + ' |')
  print('|---|' + '---|' * len(columns))
  for key, head, label in rows(columns):
    entries = [
      head_entry(cells[key], head) if key in cells else '-'
      for _, cells in columns
    ]
    print(f'| {label} | ' + ' | '.join(entries) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
