"""The command line: ``python -m experiments.pkkd_sweep`` (package docstring)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

from experiments import mnist5k_study as study

from . import __doc__ as package_doc
from . import deep
from .grids import (
  PAPER,
  PREMISE_CELL_KEYS,
  PREMISE_GRID,
  PREMISE_PKKD_CELL,
  PREMISE_PKKD_LATE_VARIANTS,
  PREMISE_PKKD_VARIANTS,
  PREMISE_PKKD_WINNER,
  QUICK_REGIME,
  REGIME,
  WINNER,
  DEMO_WINNER,
)
from .runs import (
  REPO,
  Run,
  demo_module,
  demo_runs,
  demo_total_steps,
  demo_variant_names,
  demo_knobs,
  execute,
  knobs_of,
  only_cells,
  premise_labels,
  premise_pkkd_knobs,
  premise_pkkd_regime,
  premise_pkkd_runs,
  premise_pkkd_total_steps,
  premise_runs,
  settings_for,
  sweep_runs,
)
from .tables import demo_changes_text, summarize_premise, summarize_sweep

# The documented command, as the tables' headers name it.
PROG = 'python -m experiments.pkkd_sweep'
# The committed tables (--out's default); runs go in its runs/ (not committed).
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog=PROG, description=package_doc.split('\n')[0]
  )
  parser.add_argument(
    '--grid',
    choices=('sweep', 'premise', 'premise_pkkd', 'demo', 'deep'),
    default='sweep',
  )
  parser.add_argument(
    '--phase',
    choices=('all', 'select', 'confirm'),
    default='all',
    help='--grid demo / premise_pkkd / deep: selection seeds, confirmation seeds, '
    'or both',
  )
  parser.add_argument('--out', default=RESULTS)
  parser.add_argument(
    '--quick', action='store_true', help='rot check: 2 steps a run, 1 seed'
  )
  parser.add_argument('--loader', default='numpy', choices=('numpy', 'tfds'))
  parser.add_argument(
    '--reuse-only',
    action='store_true',
    help='train nothing: tabulate the stored runs, leave the others out',
  )
  parser.add_argument(
    '--runs-dir',
    default=None,
    help='where runs are kept (default: --out/runs; not committed)',
  )
  parser.add_argument(
    '--tables-from',
    default=None,
    metavar='JSON',
    help="train nothing: rebuild this grid's tables from the runs recorded "
    'in JSON (an earlier output of the same grid), e.g. after a change of '
    'the table format when the runs directory is gone',
  )
  parser.add_argument(
    '--with-recorded',
    action='append',
    default=None,
    metavar='JSON',
    help='take the runs this document of the same grid and regime already '
    'records (by cell and seed) instead of training them again; the tables '
    'written hold both. Give it again for more documents (the first one '
    'that records a run gives it)',
  )
  parser.add_argument(
    '--cells',
    default=None,
    metavar='NAME,...',
    help='only these cells of the grid (e.g. m_T8,m_alpha1), with the '
    'ANN and the CNN alone they are compared with',
  )
  parser.add_argument(
    '--winner',
    default=None,
    metavar='NAME',
    help='--grid premise_pkkd / demo: the variant the confirmation runs on '
    f'the fresh seeds (default {PREMISE_PKKD_WINNER!r} / {DEMO_WINNER!r}; '
    'choose it on the selection seeds only)',
  )
  args = parser.parse_args(argv)
  if args.with_recorded and args.tables_from:
    parser.error(
      '--with-recorded takes recorded runs into a training invocation; '
      '--tables-from trains nothing and reads all its runs from its own '
      'document: give one of them.'
    )
  names = {
    'premise_pkkd': [
      v[0] for v in PREMISE_PKKD_VARIANTS + PREMISE_PKKD_LATE_VARIANTS
    ],
    'demo': demo_variant_names(),
    'deep': [a[0] for a in deep.ARMS + deep.FAST_ANN_ARMS],
  }
  if args.winner and args.winner not in names.get(args.grid, ()):
    parser.error(
      f'--winner {args.winner}: only --grid premise_pkkd, demo and deep '
      'take it, each with one of its variants: '
      + '; '.join(f'{g}: {", ".join(n)}' for g, n in names.items())
    )
  return args


def grid_runs(args) -> Tuple[List[Run], Any, Dict[str, Any]]:
  """The runs of ``args.grid`` (only ``--cells``), their Settings and regime."""
  regime = copy.deepcopy(QUICK_REGIME if args.quick else REGIME)
  s = settings_for(regime, args.loader)
  if args.grid == 'sweep':
    runs = sweep_runs(s, regime, args.quick)
  elif args.grid == 'demo':
    runs = demo_runs(args.quick, args.phase, args.winner)
    if not args.quick:
      module = demo_module()
      regime = dict(
        config='configs/pkkd.py:demo (configs/supervised.py:demo alone)',
        model='resnet8 (full width)',
        epochs=module.DEMO_EPOCHS,
        steps=demo_total_steps(),
        batch_size=64,
        **module.DEMO_SETTINGS,
      )
  elif args.grid == 'deep':
    runs = deep.deep_runs(args.quick, args.phase, args.winner, args.cells)
    regime = deep.regime_text()
    return runs, s, regime
  elif args.grid == 'premise_pkkd':
    regime = premise_pkkd_regime(args.quick)
    s = settings_for(regime, args.loader)
    runs = premise_pkkd_runs(s, regime, args.quick, args.phase, args.winner)
  else:
    runs = premise_runs(s, args.quick)
  return only_cells(runs, args.cells), s, regime


def recorded_runs(args, path=None, flag='--tables-from') -> Dict[str, Any]:
  """``--tables-from``'s (or ``path``'s) document, checked to be of
  ``args.grid``."""
  path = path or args.tables_from
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(
      f'{flag}={path}: not a document this runner wrote ({e}). Give the '
      '.json file an earlier invocation wrote beside its tables.'
    ) from None
  if recorded.get('grid') != args.grid:
    raise SystemExit(
      f'{flag}={path} holds --grid '
      f'{recorded.get("grid")!r} runs, not --grid {args.grid!r}.'
    )
  return recorded


def runs_to_take(args, regime) -> Dict[Tuple[str, int], Dict[str, Any]]:
  """``--with-recorded``'s runs by (cell, seed), if its regime is this one."""
  if not args.with_recorded:
    return {}
  ours = json.loads(json.dumps(regime, default=str))
  taken = {}
  for path in args.with_recorded:
    recorded = recorded_runs(args, path, '--with-recorded')
    if recorded['regime'] != ours:
      raise SystemExit(
        f'--with-recorded={path} was run under another regime '
        f'({recorded["regime"]}), not this one ({ours}): its runs are not '
        'these runs. Train them again (leave the flag out).'
      )
    for r in recorded['runs']:
      taken.setdefault((r['cell'], r['seed']), r)
  return taken


def summarize(args, records, s, regime, runs):
  """(summary, table lines, title) of ``args.grid``'s records."""
  if args.grid == 'sweep':
    summary, lines = summarize_sweep(records)
    return summary, lines, 'PKKD knob sweep'
  if args.grid == 'demo':
    total = 2 if args.quick else demo_total_steps()
    summary, lines = summarize_sweep(
      records, demo_changes_text, lambda name: demo_knobs(name, total)
    )
    return summary, lines, 'PKKD sweep in the demo regime'
  if args.grid == 'deep':
    summary, lines = deep.summarize_deep(records)
    return (
      summary,
      lines,
      'PKKD where its premise holds strongly (ResNet-20, 10 % of the digits)',
    )
  if args.grid == 'premise_pkkd':
    total = premise_pkkd_total_steps(s, regime)
    knobs = lambda name: (
      knobs_of(name) if args.quick else premise_pkkd_knobs(name, total)
    )
    summary, lines = summarize_sweep(
      records,
      # The loss weights always, every other knob where it is not the paper's.
      lambda name: ', '.join(
        f'{k}={v}'
        for k, v in knobs(name).items()
        if k in ('alpha', 'beta', 'temperature', 'kd_t_squared', 'ramp_steps')
        or v != PAPER.get(k)
      ),
      knobs,
    )
    return summary, lines, f'PKKD where the premise holds ({PREMISE_PKKD_CELL})'
  # The grid's cells that this invocation asked for (--cells: not the
  # others), in the grid's order.
  asked = premise_labels(runs)
  summary, lines = summarize_premise(
    records,
    () if args.quick else tuple(g[0] for g in PREMISE_GRID if g[0] in asked),
  )
  return (
    summary,
    lines,
    'PKKD premise grid: CNN vs ANN of the same architecture, alone',
  )


def header_lines(args, title, records, total_s, machine, regime, backend):
  """The table file's title, command, machine and regime paragraphs."""
  return [
    f'# {title}',
    '',
    f'`{PROG} --grid {args.grid}'
    + ('' if args.phase == 'all' else f' --phase {args.phase}')
    + (f' --cells {args.cells}' if args.cells else '')
    + (f' --winner {args.winner}' if args.winner else '')
    + ''.join(
      f' --with-recorded {os.path.relpath(p, REPO)}'
      for p in args.with_recorded or ()
    )
    + f'` on {machine} '
    f'({backend}), machine shared with other jobs; '
    + (
      f'{len(records)} runs; tables rebuilt from the runs recorded in '
      f'{os.path.relpath(args.tables_from, REPO)} (`--tables-from`; the '
      f'invocation that wrote it took {total_s / 60:.1f} min) '
      if args.tables_from
      else f'{len(records)} runs, {total_s / 60:.1f} min this invocation '
    )
    + (
      f'({sum(bool(r.get("recorded_earlier")) for r in records)} of them taken '
      f'from {", ".join(os.path.relpath(p, REPO) for p in args.with_recorded)}'
      ', `--with-recorded`) '
      if args.with_recorded
      else ''
    )
    + '(reused runs cost ~0; "wall s" is each run\'s own). Accuracy on the 1,000 mnist5k test digits in %, '
    'mean ± sample std (seeds); "paired" differences are per seed.',
    '',
    'Regime: '
    # The premise grid's cells set their own model, epochs and fraction (the
    # cell label says them): the shared regime's values are not theirs.
    + (
      'model, epochs and train fraction per cell (its label), '
      if args.grid == 'premise'
      else ''
    )
    # As JSON has it (lists for tuples): the same text from --tables-from.
    + ', '.join(
      f'{k}={v}'
      for k, v in json.loads(json.dumps(regime, default=str)).items()
      if args.grid != 'premise' or k not in PREMISE_CELL_KEYS
    )
    + (
      ', optimizer of the demo presets.'
      if args.grid in ('demo', 'deep')
      else f', loader={args.loader}, optimizer of the demo presets.'
    ),
  ]


def winner_lines(args, summary) -> Tuple[Any, List[str]]:
  """The grid's winner, and the lines that name it (and the leader)."""
  winner = {
    'sweep': WINNER,
    'demo': args.winner or DEMO_WINNER,
    'premise_pkkd': args.winner or PREMISE_PKKD_WINNER,
    'deep': args.winner or deep.WINNER,
  }.get(args.grid)
  # The selection's own leader: which variant a --winner confirmation of
  # this table would take (the default winner was chosen on earlier runs).
  # (A premise summary is keyed by cell label and has no 'select' phase.)
  gains = {
    cell: entry['gain_vs_ann']['mean']
    for cell, entry in summary.get('select', {}).items()
    if entry.get('gain_vs_ann') and entry['gain_vs_ann'].get('n')
  }
  if winner and args.phase == 'select' and gains:
    best = max(gains, key=gains.get)
    return winner, [
      '',
      f'Largest mean paired gain on the selection seeds: `{best}` '
      f'({100 * gains[best]:+.2f} points). The variant that `--phase '
      f'confirm` runs by default (chosen on earlier selection runs): '
      f'`{winner}`; `--winner NAME` confirms another.',
    ]
  if winner:
    return winner, ['', f'Winner (chosen on the selection seeds): `{winner}`.']
  return winner, []


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=g-import-not-at-top

  runs_dir = args.runs_dir or os.path.join(args.out, 'runs')
  if not args.tables_from:  # Which trains nothing and leaves no runs dir.
    os.makedirs(runs_dir, exist_ok=True)
    study.use_compile_cache(runs_dir)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  runs, s, regime = grid_runs(args)
  started = time.time()
  if args.tables_from:
    recorded = recorded_runs(args)
    # The runs' own regime (a preset may have changed since).
    records, regime = recorded['runs'], recorded['regime']
    total_s = 60 * recorded['minutes']
    # The machine the recorded runs ran on, not the one rebuilding the tables.
    machine = recorded['machine']
    # The documents its invocation took runs from, for the header.
    args.with_recorded = [
      os.path.join(REPO, p) for p in recorded.get('with_recorded', ())
    ]
  else:
    log = lambda text: print(text, flush=True)
    records = execute(
      runs,
      s,
      regime,
      runs_dir,
      log,
      args.reuse_only,
      recorded=runs_to_take(args, regime),
    )
    total_s = time.time() - started
    # The CPU model matters: XLA's CPU code differs between CPU families, and
    # so do a run's numbers (e.g. the demo: 94.9 % on one machine kind, 94.5 %
    # on another, same seed).
    machine = f'{study.costs.cpu_name()}, {os.cpu_count()} CPUs'
  summary, lines, title = summarize(args, records, s, regime, runs)
  header = header_lines(
    args, title, records, total_s, machine, regime, jax.default_backend()
  )
  winner, named = winner_lines(args, summary)
  document = {
    'grid': args.grid,
    'regime': {k: v for k, v in regime.items()},
    'loader': args.loader,
    'machine': machine,
    'backend': jax.default_backend(),
    'winner': winner,
    'summary': summary,
    'runs': records,
    'minutes': total_s / 60,
    'with_recorded': [
      os.path.relpath(p, REPO) for p in args.with_recorded or ()
    ],
  }
  os.makedirs(args.out, exist_ok=True)
  name = args.grid + ('' if args.phase == 'all' else f'_{args.phase}')
  # A part of a grid never overwrites the whole grid's tables; its header
  # names the cells.
  name += '_cells' if args.cells else ''
  with open(os.path.join(args.out, f'{name}.json'), 'w') as f:
    json.dump(document, f, indent=1, default=str)
  with open(os.path.join(args.out, f'{name}.md'), 'w') as f:
    f.write('\n'.join(header + named + lines) + '\n')
  print('\n'.join(lines))
  return document
