"""The report of a table: measured beside published, by the paper's rule.

Each cell reads the finished summary.json of its runs (planner.stored_summary),
turns the head's accuracy into the table's metric (error = 100 - accuracy),
aggregates the seeds by the table's rule and prints it beside the published
number it is compared against, with the difference (measured - published) and
the number of its source. Cells with seeds still to run are marked 'running'
(some run started or finished) or 'missing' (none), unavailable ones name what
is missing, so a table with no runs yet shows every published number.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from etils import epath

from kdjax.reproduce import planner as planning
from kdjax.reproduce import stats
from kdjax.reproduce.spec import Cell


def metric_value(accuracy: float, metric: str) -> float:
  return 100.0 * (1.0 - accuracy if metric.endswith('error %') else accuracy)


def cell_result(plan: planning.TablePlan, cell: Cell) -> Dict[str, Any]:
  """What the runs of ``cell`` measured so far, and its status."""
  seeds = planning.cell_seeds(cell, plan.seeds)
  result: Dict[str, Any] = {
    'cell': cell.id,
    'row': cell.row,
    'column': cell.column,
    'head': cell.head,
    'seeds_planned': len(seeds),
    'published': [vars(p) for p in cell.published],
    'compared_with': vars(cell.reference) if cell.reference else None,
  }
  if cell.id in plan.unavailable:
    return dict(result, status='unavailable', missing=plan.unavailable[cell.id])
  values, begun = [], 0
  for seed in seeds:
    job = plan.job(cell.id, seed)
    summary = planning.stored_summary(job) if job else None
    if summary is not None and cell.head in summary['eval_accuracy']:
      values.append(
        metric_value(summary['eval_accuracy'][cell.head], plan.table.metric)
      )
    elif job is not None and planning.started(job):
      begun += 1
  result['finished_seeds'] = len(values)
  if values:
    result.update(stats.aggregate_values(values, plan.table.rule))
    if cell.reference:
      result['difference'] = result['value'] - cell.reference.value
  if len(values) == len(seeds):
    result['status'] = 'done'
  else:
    result['status'] = 'running' if values or begun else 'missing'
  return result


def results(plan: planning.TablePlan) -> List[Dict[str, Any]]:
  return [cell_result(plan, cell) for cell in plan.table.cells]


def _measured(r: Dict[str, Any], rule: str) -> str:
  if r['status'] == 'unavailable':
    return f'unavailable: {r["missing"]}'
  if not r.get('finished_seeds'):
    return r['status']
  text = f'{r["value"]:.2f}'
  if rule == 'mean_std':
    text += f' ± {r["std"]:.2f}'
  return text if r['status'] == 'done' else f'running: {text}'


def markdown(plan: planning.TablePlan, rows: List[Dict[str, Any]]) -> str:
  table = plan.table
  sources: List[str] = []

  def ref(source: str) -> str:
    if source not in sources:
      sources.append(source)
    return f'[{sources.index(source) + 1}]'

  rule = 'median' if table.rule == 'median' else 'mean ± sample std'
  lines = [
    f'# {table.title}',
    '',
    f'`python -m kdjax.reproduce --table={table.name} --report`: runs under '
    f'`{plan.root}`, {plan.seeds} seed(s). {table.metric}, the {rule} over '
    f'seeds ({table.rule_source}). The difference is measured minus the '
    'published number it is compared with (the first one listed); '
    '"running" marks a cell with seeds still to finish, "missing" one with '
    'no run yet.',
    '',
    '| row | column | measured | seeds | published | difference | source |',
    '|---|---|---|---|---|---|---|',
  ]
  for r, cell in zip(rows, table.cells):
    published = []
    reference = cell.reference
    ordered = ([reference] if reference else []) + [
      p for p in cell.published if p is not reference
    ]
    for p in ordered:
      label = f' ({p.label})' if p.label and len(ordered) > 1 else ''
      published.append(f'{p.value:.2f}{label} {ref(p.source)}')
    difference = (
      f'{r["difference"]:+.2f}' if r.get('difference') is not None else ''
    )
    seeds = (
      ''
      if r['status'] == 'unavailable'
      else f'{r.get("finished_seeds", 0)}/{r["seeds_planned"]}'
    )
    note = f' ({cell.note})' if cell.note else ''
    lines.append(
      f'| {cell.row} | {cell.column}{note} | {_measured(r, table.rule)} | '
      f'{seeds} | {"; ".join(published) or "-"} | {difference} | '
      f'`{cell.source}` |'
    )
  lines += ['', 'Sources of the published numbers:', '']
  lines += [f'{i + 1}. {s}' for i, s in enumerate(sources)]
  if table.notes:
    lines += ['', 'Notes:', ''] + [f'- {n}' for n in table.notes]
  return '\n'.join(lines) + '\n'


def write(plan: planning.TablePlan) -> Dict[str, Any]:
  """report.md and report.json in the table's root; returns both."""
  rows = results(plan)
  text = markdown(plan, rows)
  root = epath.Path(plan.root)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'report.md').write_text(text)
  data = {'table': plan.table.name, 'seeds': plan.seeds, 'cells': rows}
  (root / 'report.json').write_text(json.dumps(data, indent=1, default=str))
  return {'markdown': text, **data}
