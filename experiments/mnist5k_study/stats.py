"""Statistics over seeds: mean +- sample std, claim verdicts, paired gains.

The functions are kdjax.reproduce.stats'; ``aggregate`` applies them to the
study's cells.

"Reproduces at this scale?": for a claim "A > B", yes when mean(A) - mean(B)
exceeds the pooled std sqrt((sd_A^2 + sd_B^2) / 2); "no (reversed)" when it is
below minus the pooled std; "within noise" otherwise; "n/a" with fewer than 2
seeds. For "A >~ B" (matches or beats), yes unless A is below B by more than
the pooled std.
"""

from __future__ import annotations

from typing import Any, Dict, List

from kdjax.reproduce.stats import (
  curves,
  head_values,
  mean_std,
  paired_gain,  # noqa: F401 (report.py reads it from here)
  verdict,
)

from .cells import Cell


def aggregate(cells: List[Cell], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Per cell and head: mean/std/n over seeds; the claim checks."""
  out = {}
  for cell in cells:
    cell_runs = [
      r
      for r in runs
      if r['study'] == cell.study
      and r['regime'] == cell.regime
      and r['cell'] == cell.name
    ]
    heads = {
      head: mean_std(head_values(cell_runs, head)) for head, _ in cell.heads
    }
    walls = [r['wall_seconds'] for r in cell_runs]
    out[f'{cell.study}/{cell.regime}/{cell.name}'] = {
      'study': cell.study,
      'regime': cell.regime,
      'cell': cell.name,
      'label': cell.label,
      'paper': cell.paper,
      'heads': heads,
      'seeds': [r['seed'] for r in cell_runs],
      'wall_seconds': mean_std(walls),
      'curves': curves(cell_runs, [h for h, _ in cell.heads]),
      'checks': [],
    }
  for cell in cells:
    entry = out[f'{cell.study}/{cell.regime}/{cell.name}']
    for check in cell.checks:
      other = out.get(f'{cell.study}/{cell.regime}/{check.other}')
      a = entry['heads'].get(check.head)
      b = other['heads'].get(check.other_head) if other else None
      result, info = verdict(a, b, check.relation)
      entry['checks'].append(
        dict(claim=check.text, relation=check.relation, verdict=result, **info)
      )
  return out
