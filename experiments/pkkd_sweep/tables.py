"""The sweep's tables: per-seed statistics, paired gains and verdicts."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from experiments import mnist5k_study as study

from .grids import (
  knobs_of,
  SELECT_SEEDS,
  CONFIRM_SEEDS,
  VARIANTS,
  LATE_VARIANTS,
  QUICK_VARIANT,
  DEMO_VARIANTS,
  DEMO_WINNER,
  DEMO_LATE_VARIANTS,
)


def stats(records, cell, head, seeds):
  values = [
    r['accuracy'][head]
    for r in records
    if r['cell'] == cell and r['seed'] in seeds and head in r['accuracy']
  ]
  return study.mean_std(values)


def paired(records, a, b, seeds, head_a='student', head_b='student'):
  by = {}
  for r in records:
    if r['seed'] in seeds:
      by.setdefault(r['seed'], {})[r['cell']] = r['accuracy']
  gains = [
    v[a][head_a] - v[b][head_b]
    for v in by.values()
    if a in v and b in v and head_a in v[a] and head_b in v[b]
  ]
  return study.mean_std(gains)


def pct(stat) -> str:
  if not stat or not stat['n']:
    return '-'
  return f'{100 * stat["mean"]:.2f} ± {100 * stat["std"]:.2f} ({stat["n"]})'


def signed(stat) -> str:
  if not stat or not stat['n']:
    return '-'
  return f'{100 * stat["mean"]:+.2f} ± {100 * stat["std"]:.2f}'


def changes_text(name: str) -> str:
  table = {v[0]: v for v in VARIANTS + LATE_VARIANTS + (QUICK_VARIANT,)}
  _, base, changes = table[name]
  if base is None:
    return 'alpha = beta = 5, T = 4, T^2, kernels, all stages, co-trained'
  text = ', '.join(f'{k}={v}' for k, v in changes.items())
  return f'{base} + {text}'


def demo_changes_text(name: str) -> str:
  late = dict(DEMO_LATE_VARIANTS)
  if name == 'paper':
    return 'alpha = beta = 5, no ramp, T = 4, T^2 (configs/pkkd.py:demo_paper)'
  if name in late:
    changes = ', '.join(f'{k}={v}' for k, v in late[name].items())
    return f'{DEMO_WINNER} + {changes}'
  changes = dict(DEMO_VARIANTS)[name]
  if not changes:
    return 'alpha = beta = 0.5, ramp over half the run, T = 4, T^2'
  return 'base + ' + ', '.join(f'{k}={v}' for k, v in changes.items())


def summarize_sweep(
  records, describe=changes_text, knobs=knobs_of
) -> Tuple[Dict[str, Any], List[str]]:
  out: Dict[str, Any] = {'select': {}, 'confirm': {}}
  lines = []
  for phase, seeds in (('select', SELECT_SEEDS), ('confirm', CONFIRM_SEEDS)):
    cells = list(
      dict.fromkeys(r['cell'] for r in records if r['seed'] in seeds)
    )
    if not cells:
      continue
    ann = stats(records, 'ann', 'student', seeds)
    cnn = stats(records, 'cnn', 'student', seeds)
    seed_text = ', '.join(str(x) for x in seeds)
    lines += [
      '',
      f'### {"Selection" if phase == "select" else "Confirmation"} '
      f'(seeds {seed_text})',
      '',
      '| cell | setting | ANN student | teacher | student - ANN alone '
      '(paired) | student > ANN alone by more than the pooled std? | wall s |',
      '|---|---|---|---|---|---|---|',
    ]
    for cell in cells:
      student = stats(records, cell, 'student', seeds)
      teacher = stats(records, cell, 'teacher', seeds)
      walls = [
        r['wall_seconds']
        for r in records
        if r['cell'] == cell and r['seed'] in seeds
      ]
      wall = sum(walls) / len(walls)
      entry = {'student': student, 'wall_seconds': wall}
      if cell in ('ann', 'cnn'):
        setting = {
          'ann': 'adder net trained alone (configs/supervised.py)',
          'cnn': 'CNN trained alone (configs/supervised.py)',
        }[cell]
        gain, result = paired(records, cell, 'ann', seeds), ''
        if cell == 'cnn':
          result, _ = study.verdict(cnn, ann, '>')
          result = f'premise (CNN > ANN): {result}'
          entry['premise'] = result
      else:
        setting = describe(cell)
        gain = paired(records, cell, 'ann', seeds)
        # 'yes', 'within noise' or 'no (reversed)': a student level with the
        # ANN alone is not shown as a success.
        result, _ = study.verdict(student, ann, '>')
        entry.update(teacher=teacher, gain_vs_ann=gain, verdict=result)
        entry['knobs'] = knobs(cell)
        entry['per_seed_gain'] = gain.get('values') if gain else None
      out[phase][cell] = entry
      lines.append(
        f'| {cell} | {setting} | {pct(student)} | {pct(teacher)} | '
        f'{signed(gain) if cell != "ann" else "0"} | {result} | {wall:.0f} |'
      )
  return out, lines


def summarize_premise(
  records, grid_labels: Tuple[str, ...] = ()
) -> Tuple[Dict[str, Any], List[str]]:
  out = {}
  lines = [
    '',
    '| cell | steps | CNN alone | ANN alone | CNN - ANN (paired) '
    '| premise CNN > ANN | wall s CNN / ANN |',
    '|---|---|---|---|---|---|---|',
  ]
  labels = list(dict.fromkeys(r['cell'].split('/')[0] for r in records))
  for label in labels + [l for l in grid_labels if l not in labels]:
    if label not in labels:  # A cell of the grid with no stored run yet.
      out[label] = dict(premise='not run')
      lines.append(f'| {label} | - | - | - | - | not run | - |')
      continue
    seeds = tuple(sorted({r['seed'] for r in records}))
    cnn = stats(records, f'{label}/cnn', 'student', seeds)
    ann = stats(records, f'{label}/ann', 'student', seeds)
    gain = paired(records, f'{label}/cnn', f'{label}/ann', seeds)
    result, _ = study.verdict(cnn, ann, '>')
    walls = {
      kind: [
        r['wall_seconds'] for r in records if r['cell'] == f'{label}/{kind}'
      ]
      for kind in ('cnn', 'ann')
    }
    wall = ' / '.join(
      f'{sum(w) / len(w):.0f}' if w else '-' for w in walls.values()
    )
    steps = sorted({r['steps'] for r in records if r['cell'].startswith(label)})
    out[label] = dict(cnn=cnn, ann=ann, gain=gain, premise=result, steps=steps)
    lines.append(
      f'| {label} | {"/".join(map(str, steps))} | {pct(cnn)} | {pct(ann)} '
      f'| {signed(gain)} | {result} | {wall} |'
    )
  return out, lines
