"""PKKD where its premise holds strongly (``--grid deep``): a deep network on
little data, every ingredient on its own, selection then confirmation.

The cell: ResNet-20 (student and teacher) on 10 % of the mnist5k train digits
(400, 6 steps an epoch at batch 64), with the demo presets' run settings
(configs/pkkd.py ``DEMO_SETTINGS``: NumPy loader, precise-BN over 4 batches,
eval batch 512). Every arm is a ``demo`` preset with those overrides:

- ``ann`` / ``cnn``: configs/supervised.py:demo, adder or conv;
- PKKD arms: configs/pkkd.py:demo with ``config.pkkd`` changed as ARMS says;
- ``kd_frozen``: configs/kd.py:demo (Hinton KD, T 4, lambda 0.9) from a frozen
  CNN: this cell's ``cnn`` run of the same seed;
- ``ann_*``: the ANN alone with one run setting changed (the adder rate
  scaling eta, precise-BN), to diagnose its spread over seeds. They are not
  PKKD candidates: the selection's leader is never one of them;
- ``today_eta0.5`` / ``alpha0_eta0.5``: PKKD arms with the student at the
  eta that trains the ANN alone fastest, paired with ``ann_eta0.5``.

The grid is data: CELLS (label, network, epochs, train fraction), ARMS
(name, method, changes, what it tests) and PLAN (phase, cell, seeds, arms) in
run order; ``deep_runs`` only expands PLAN. Arms run arm by arm over all their
seeds, so a stopped grid leaves whole arms.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple

from experiments import mnist5k_study as study

from . import runs as sweep_runs
from .tables import paired, pct, signed, stats

SELECT_SEEDS = (0, 1, 2, 3, 4)
CONFIRM_SEEDS = (5, 6, 7, 8, 9)

# (label, network of student and teacher, epochs, class-balanced train share)
CELLS: Tuple[Tuple[str, str, int, float], ...] = (
  ('resnet20_e10_f10', 'resnet20', 10, 0.1),
  ('resnet20_e40_f10', 'resnet20', 40, 0.1),
)

# configs/pkkd.py:demo's knobs before the ramp became a share of the run: a
# fixed 62-step ramp (half of the demo's own run), longer than a 60-step run.
_FIXED_RAMP = dict(ramp_fraction=0.0, ramp_steps=62)
_PAPER = dict(
  alpha=5.0, beta=5.0, kd_t_squared=True, ramp_fraction=0.0, ramp_steps=0
)
# (name, method, changes to the preset, what it tests)
ARMS: Tuple[Tuple[str, str, Dict[str, Any], str], ...] = (
  ('ann', 'supervised', dict(conv_type='adder'), 'adder net alone'),
  ('cnn', 'supervised', dict(conv_type='conv'), 'CNN alone'),
  (
    'today',
    'pkkd',
    _FIXED_RAMP,
    'the demo knobs as the issue ran them: alpha = beta = 0.5, T = 4 without '
    'T^2, ramp over a fixed 62 steps',
  ),
  (
    'ramp_half',
    'pkkd',
    {},
    'the demo knobs with the ramp over half of this run '
    '(configs/pkkd.py:demo now)',
  ),
  (
    'paper',
    'pkkd',
    _PAPER,
    "the paper's weights: alpha = beta = 5, T^2, no ramp",
  ),
  ('beta0', 'pkkd', dict(beta=0.0), 'soft labels only (beta = 0), ramp half'),
  (
    'beta0_noramp',
    'pkkd',
    dict(beta=0.0, ramp_fraction=0.0),
    'soft labels only, no ramp',
  ),
  (
    'alpha0',
    'pkkd',
    dict(alpha=0.0),
    'kernel features only (alpha = 0), ramp half',
  ),
  (
    'kd_frozen',
    'kd',
    {},
    'Hinton KD (T 4, lambda 0.9) from the frozen CNN alone of the same seed',
  ),
)
# The ANN alone with one run setting changed ('section.key': value, over the
# demo's settings): AdderNet's rate scaling eta (0.2 in the preset; None is
# the plain gradient) and precise-BN (4 of the 6 train batches an epoch in
# the preset; 0 evaluates with the running averages).
ANN_KNOB_ARMS: Tuple[Tuple[str, str, Dict[str, Any], str], ...] = tuple(
  (name, 'supervised', dict(conv_type='adder', **{key: value}), what)
  for name, key, value, what in (
    ('ann_eta0.1', 'optimizer.adder_eta', 0.1, 'ANN alone, eta 0.1'),
    ('ann_eta0.5', 'optimizer.adder_eta', 0.5, 'ANN alone, eta 0.5'),
    (
      'ann_eta_none',
      'optimizer.adder_eta',
      None,
      'ANN alone, no adder rate scaling (the plain gradient)',
    ),
    (
      'ann_bn0',
      'eval_bn_recalibration_batches',
      0,
      'ANN alone, no precise-BN (the running averages)',
    ),
    (
      'ann_bn6',
      'eval_bn_recalibration_batches',
      6,
      'ANN alone, precise-BN over all 6 train batches',
    ),
  )
)
# PKKD on the faster-training adder student the knob arms found (eta 0.5):
# the knobs and the 10-epoch leader, each paired with the ANN alone
# at the same eta (PAIRED_WITH), not with the preset's. The co-trained CNN
# keeps its own optimizer (no adder scaling), as in every PKKD arm.
_FAST_STUDENT = {'optimizer.adder_eta': 0.5}
FAST_ANN_ARMS: Tuple[Tuple[str, str, Dict[str, Any], str], ...] = (
  (
    'today_eta0.5',
    'pkkd',
    dict(_FIXED_RAMP, **_FAST_STUDENT),
    '`today` with the student at eta 0.5 (paired with `ann_eta0.5`)',
  ),
  (
    'alpha0_eta0.5',
    'pkkd',
    dict(alpha=0.0, **_FAST_STUDENT),
    '`alpha0` with the student at eta 0.5 (paired with `ann_eta0.5`)',
  ),
)
# The ANN alone each arm is paired with, where it is not ``ann``.
PAIRED_WITH = {name: 'ann_eta0.5' for name, *_ in FAST_ANN_ARMS}
_ARM_NAMES = tuple(a[0] for a in ARMS)
_ANN_KNOB_NAMES = tuple(a[0] for a in ANN_KNOB_ARMS)
_FAST_ANN_NAMES = tuple(a[0] for a in FAST_ANN_ARMS)

# The arm confirmed on CONFIRM_SEEDS: chosen on SELECT_SEEDS only (the largest
# mean paired gain over the ANN alone in the selection table,
# results/deep_select.md).
WINNER: Optional[str] = 'alpha0'

# (phase, cell label, seeds, arms), in run order. Confirmation: the ANN and
# the CNN alone, the demo knobs as the issue ran them, and the winner.
_CONFIRM_ARMS = ('ann', 'cnn', 'today')
PLAN: Tuple[Tuple[str, str, Tuple[int, ...], Tuple[str, ...]], ...] = (
  ('select', 'resnet20_e10_f10', SELECT_SEEDS, _ARM_NAMES),
  ('confirm', 'resnet20_e10_f10', CONFIRM_SEEDS, _CONFIRM_ARMS + ('winner',)),
  # The same cell at 4x the budget: first, does the ANN alone converge
  # there (and its spread over seeds shrink)? Then PKKD on it.
  ('select', 'resnet20_e40_f10', SELECT_SEEDS, ('ann', 'cnn')),
  ('select', 'resnet20_e40_f10', SELECT_SEEDS, ('today', 'winner')),
  # Why the ANN alone spreads over seeds in the short cell: its run settings.
  ('select', 'resnet20_e10_f10', SELECT_SEEDS, _ANN_KNOB_NAMES),
  # Then PKKD on the student that trains fastest there.
  ('select', 'resnet20_e10_f10', SELECT_SEEDS, _FAST_ANN_NAMES),
)
# The rot check: each method once (supervised, PKKD, KD from the CNN alone),
# 2 steps, at the smallest network.
QUICK_PLAN = (
  ('select', 'resnet20_e10_f10', (0,), ('cnn', 'ramp_half', 'kd_frozen')),
)


def arm(name: str) -> Tuple[str, str, Dict[str, Any], str]:
  return {a[0]: a for a in ARMS + ANN_KNOB_ARMS + FAST_ANN_ARMS}[name]


def baseline(name: str) -> str:
  """The ANN alone that arm ``name`` is paired with."""
  return PAIRED_WITH.get(name, 'ann')


def arm_config(
  name: str,
  label: str,
  seed: int,
  quick: bool = False,
  teacher_dir: Optional[str] = None,
):
  """The config of arm ``name`` in cell ``label`` for ``seed``."""
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  _, network, epochs, fraction = {c[0]: c for c in CELLS}[label]
  if quick:  # The smallest network (demo_common sets its widths).
    network = 'resnet8'
  _, method, changes, _ = arm(name)
  # 'section.field' changes are run settings, set last; a PKKD arm's other
  # changes are its config.pkkd knobs.
  settings = {k: v for k, v in changes.items() if '.' in k}
  if method == 'supervised':
    config = sweep_runs.demo_alone(changes['conv_type'], seed, quick)
    top_level = {k: v for k, v in changes.items() if k != 'conv_type'}
    settings = dict(top_level, **settings)
  else:
    config = study.preset(method)
    if method == 'pkkd':
      config.pkkd.update({k: v for k, v in changes.items() if '.' not in k})
    else:  # kd: the frozen teacher is this seed's CNN alone.
      if teacher_dir is None:
        raise ValueError(f'arm {name!r} needs the CNN alone (teacher_dir)')
      config.teacher = config_defaults.model(
        network, 'conv', checkpoint_dir=teacher_dir
      )
      config.model = config_defaults.model(network, 'adder')
    config = sweep_runs.demo_common(config, seed, quick, epochs)
  sweep_runs.set_keys(config, settings)
  config.num_epochs = epochs
  config.dataset.train_fraction = fraction
  for entry in (config.model, config.get('teacher')):
    if entry is not None:
      entry.name = network
  return config


def deep_runs(
  quick: bool,
  phase: str = 'all',
  winner: Optional[str] = None,
  arms: Optional[str] = None,
) -> List[sweep_runs.Run]:
  """PLAN (QUICK_PLAN) expanded into runs, in order; ``phase`` 'select',
  'confirm' or 'all'; ``arms`` (comma-separated) keeps only those arms, with
  the ANN and the CNN alone, and only the cells it names (CELLS labels), if
  it names any."""
  winner = winner or WINNER
  labels = {c[0] for c in CELLS}
  asked = set(arms.split(',')) if arms else set()
  only_labels = asked & labels
  wanted = (asked - labels) | {'ann', 'cnn'} if arms else None
  if wanted:  # With the ANN alone each named arm is paired with.
    wanted |= {baseline(n) for n in wanted}
  if wanted and wanted - set(arm_names()):
    raise SystemExit(
      f'--cells: {", ".join(sorted(wanted - set(arm_names())))} not in this '
      f'grid; its arms: {", ".join(arm_names())}; its cells: '
      f'{", ".join(sorted(labels))}.'
    )
  out, planned = [], set()
  for entry_phase, label, seeds, names in QUICK_PLAN if quick else PLAN:
    if phase not in ('all', entry_phase):
      continue
    if only_labels and label not in only_labels:
      continue
    # The winner comes with the ANN alone it is paired with.
    names = [
      m
      for n in names
      for m in ((baseline(winner), winner) if n == 'winner' else (n,))
    ]
    if None in names:  # No winner chosen yet: the confirmation waits.
      continue
    for name in dict.fromkeys(names):
      if wanted and name not in wanted:
        continue
      for seed in seeds:
        if (f'{label}/{name}', seed) in planned:  # An earlier entry has it.
          continue
        planned.add((f'{label}/{name}', seed))
        build = functools.partial(arm_config, name, label, seed, quick)
        if arm(name)[1] == 'kd':
          run = sweep_runs.Run(
            f'{label}/{name}', seed, build, deps=(f'{label}/cnn',)
          )
        else:
          run = sweep_runs.Run(f'{label}/{name}', seed, build())
        out.append(run)
  return out


def summarize_deep(records) -> Tuple[Dict[str, Any], List[str]]:
  """One table per cell and phase: each arm's student (and teacher), its
  paired difference from the ANN alone, seed by seed, and the verdict."""
  out: Dict[str, Any] = {}
  lines: List[str] = []
  labels = list(dict.fromkeys(r['cell'].split('/')[0] for r in records))
  for label in labels:
    for phase, seeds in (('select', SELECT_SEEDS), ('confirm', CONFIRM_SEEDS)):
      mine = [
        r
        for r in records
        if r['cell'].startswith(label + '/') and r['seed'] in seeds
      ]
      if not mine:
        continue
      table = out.setdefault(label, {}).setdefault(phase, {})
      lines += [
        '',
        f'### {label}, {"selection" if phase == "select" else "confirmation"}'
        f' (seeds {", ".join(map(str, seeds))})',
        '',
        '| arm | what | student | teacher | student - ANN alone (paired) '
        '| per seed | above the ANN alone by more than the pooled std? '
        '| misses | wall s |',
        '|---|---|---|---|---|---|---|---|---|',
      ]
      for cell in dict.fromkeys(r['cell'] for r in mine):
        name = cell.split('/', 1)[1]
        student = stats(records, cell, 'student', seeds)
        teacher = stats(records, cell, 'teacher', seeds)
        alone = baseline(name)
        gain = paired(records, cell, f'{label}/{alone}', seeds)
        result = (
          study.verdict(
            student, stats(records, f'{label}/{alone}', 'student', seeds), '>'
          )[0]
          if name != 'ann'
          else ''
        )
        values = gain.get('values') or []
        misses = sum(v < 0 for v in values)
        walls = [r['wall_seconds'] for r in mine if r['cell'] == cell]
        table[name] = dict(
          student=student,
          teacher=teacher,
          gain_vs_ann=gain,
          paired_with=alone,
          verdict=result,
          misses=misses,
          wall_seconds=sum(walls) / len(walls),
        )
        lines.append(
          f'| {name} | {arm(name)[3]} | {pct(student)} | {pct(teacher)} | '
          f'{signed(gain) if name != "ann" else "0"} | '
          f'{", ".join(f"{100 * v:+.1f}" for v in values) if name != "ann" else "-"} | '
          f'{result} | {misses if name != "ann" else "-"} | '
          f'{sum(walls) / len(walls):.0f} |'
        )
      gains = {
        n: e['gain_vs_ann']['mean']
        for n, e in table.items()
        if n not in ('ann', 'cnn') + _ANN_KNOB_NAMES
        and e['gain_vs_ann'].get('n')
      }
      if phase == 'select' and gains:
        leader = max(gains, key=gains.get)
        table['leader'] = leader
        lines += [
          '',
          f'Largest mean paired gain over the ANN alone: `{leader}` '
          f'({100 * gains[leader]:+.2f} points).',
        ]
  return out, lines


def regime_text() -> Dict[str, Any]:
  module = sweep_runs.demo_module()
  return dict(
    configs='configs/{supervised,pkkd,kd}.py:demo',
    cells=', '.join(
      f'{label} ({net}, {epochs} epochs, {int(100 * fraction)} % of the train digits)'
      for label, net, epochs, fraction in CELLS
    ),
    batch_size=64,
    **module.DEMO_SETTINGS,
  )


def arm_names() -> Tuple[str, ...]:
  """Every arm: ARMS, ANN_KNOB_ARMS, FAST_ANN_ARMS."""
  return _ARM_NAMES + _ANN_KNOB_NAMES + _FAST_ANN_NAMES


__all__ = [
  'ANN_KNOB_ARMS',
  'FAST_ANN_ARMS',
  'PAIRED_WITH',
  'ARMS',
  'CELLS',
  'CONFIRM_SEEDS',
  'PLAN',
  'QUICK_PLAN',
  'SELECT_SEEDS',
  'WINNER',
  'arm_config',
  'arm_names',
  'baseline',
  'deep_runs',
  'regime_text',
  'summarize_deep',
]
