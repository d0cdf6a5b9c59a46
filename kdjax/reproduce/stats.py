"""Statistics over seeds: mean +- sample std, median, verdicts, paired gains.

Each table aggregates by its paper's rule (spec.RULES): 'median' (OFD reports
the median of 5 runs) or 'mean_std' (mean +- sample std). The mnist5k
study's claim verdicts use ``verdict``: for a claim "A > B", yes when
mean(A) - mean(B) exceeds the pooled std sqrt((sd_A^2 + sd_B^2) / 2); "no
(reversed)" when it is below minus the pooled std; "within noise" otherwise;
"n/a" with fewer than 2 seeds. For "A >~ B" (matches or beats), yes unless A
is below B by more than the pooled std.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Sequence, Tuple


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
  n = len(values)
  mean = sum(values) / n if n else float('nan')
  std = (
    math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  )
  return {'mean': mean, 'std': std, 'n': n, 'values': list(values)}


def aggregate_values(values: Sequence[float], rule: str) -> Dict[str, Any]:
  """{'value', 'n', 'std' (mean_std only), 'values'} by a table's rule."""
  if rule == 'median':
    value = statistics.median(values) if values else float('nan')
    return {'value': value, 'n': len(values), 'values': list(values)}
  if rule == 'mean_std':
    out = mean_std(values)
    return {
      'value': out['mean'],
      'std': out['std'],
      'n': out['n'],
      'values': out['values'],
    }
  raise ValueError(f'unknown aggregation rule {rule!r}')


def head_values(runs: List[Dict[str, Any]], head: str) -> List[float]:
  return [r['accuracy'][head] for r in runs if head in r['accuracy']]


def verdict(
  a: Dict[str, Any], b: Dict[str, Any], relation: str
) -> Tuple[str, Dict[str, Any]]:
  if relation == '<':
    a, b, relation = b, a, '>'
  if not a or not b or a['n'] == 0 or b['n'] == 0:
    return 'n/a (missing)', {}
  diff = a['mean'] - b['mean']
  pooled = math.sqrt((a['std'] ** 2 + b['std'] ** 2) / 2)
  info = {'difference': diff, 'pooled_std': pooled}
  if min(a['n'], b['n']) < 2:
    return 'n/a (< 2 seeds)', info
  if relation == '>':
    if diff > pooled:
      return 'yes', info
    return ('no (reversed)' if diff < -pooled else 'within noise'), info
  if relation == '>~':
    return ('yes' if diff >= -pooled else 'no'), info
  raise ValueError(relation)


def curves(runs: List[Dict[str, Any]], heads: Sequence[str]) -> Dict[str, Any]:
  """Eval accuracy per epoch, mean and std over seeds (epochs all runs reached)."""
  out = {}
  for head in heads:
    series = [[h.get(head) for h in r['history']] for r in runs]
    series = [s for s in series if s and all(v is not None for v in s)]
    if not series:
      continue
    length = min(len(s) for s in series)
    epochs = [h['epoch'] for h in runs[0]['history'][:length]]
    points = [mean_std([s[i] for s in series]) for i in range(length)]
    out[head] = {
      'epoch': epochs,
      'mean': [p['mean'] for p in points],
      'std': [p['std'] for p in points],
    }
  return out


def paired_gain(runs, study, regime, a, b, head='student'):
  """mean/std over seeds of accuracy(a) - accuracy(b), same seed."""
  by = {}
  for r in runs:
    if r['study'] == study and r['regime'] == regime and r['cell'] in (a, b):
      by.setdefault(r['seed'], {})[r['cell']] = r['accuracy'].get(head)
  gains = [
    v[a] - v[b]
    for v in by.values()
    if v.get(a) is not None and v.get(b) is not None
  ]
  return mean_std(gains)
