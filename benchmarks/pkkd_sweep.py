r"""PKKD knob sweep on mnist5k: select on seeds 0-2, confirm on fresh seeds 3-7.

    nice -n 10 python benchmarks/pkkd_sweep.py                 # regenerates results/pkkd_sweep/
    python benchmarks/pkkd_sweep.py --quick --out /tmp/sweep   # rot check: 2 steps a run
    python benchmarks/pkkd_sweep.py --grid premise             # CNN vs ANN alone, no PKKD
    nice -n 10 python benchmarks/pkkd_sweep.py --grid demo     # the demo regime

Every run is an in-process ``train_and_evaluate`` of a config built by
benchmarks/study.py's builders (``supervised``, ``pkkd_config``) from the
``demo`` presets, with the in-memory loader (``--config.data.loader=numpy``,
no TensorFlow) and one small budget (``REGIME``) shared by every cell, so the
ANN alone, the CNN alone and every PKKD variant are comparable seed by seed.

Selection (``--grid sweep``, the default): each entry of ``VARIANTS`` changes
one knob of ``config.pkkd`` against a base (the preset as it was, then the
best so far), runs on ``SELECT_SEEDS`` and is compared with the ANN alone of
the same seed (paired difference, mean +- sample std over seeds).
Confirmation: ``WINNER`` (chosen from the selection table only) and the
paper-literal setting (alpha = beta = 5, T = 4, T^2 on) on ``CONFIRM_SEEDS``,
never used for selection, against the ANN alone and the CNN alone.

Demo regime (``--grid demo``): the runs are ``configs/pkkd.py:demo`` itself
(full-width adder ResNet-8 student, CNN teacher, DEMO_EPOCHS epochs of batch
64, the preset's DEMO_SETTINGS) with ``config.pkkd`` set to each of
``DEMO_VARIANTS``, and the baselines are ``configs/supervised.py:demo`` with
the same network, epochs and settings (``demo_alone``: the README's ANN-alone
command). Selection on SELECT_SEEDS: the ANN and the CNN alone, the
variants, then ``DEMO_LATE_VARIANTS`` (each remaining knob one at a time
around ``DEMO_WINNER``, a frozen teacher restored from the seed's CNN alone,
and the paper-literal weights). Confirmation on CONFIRM_SEEDS: the ANN
alone, the CNN alone and ``DEMO_WINNER`` (or ``--winner NAME``, chosen on
SELECT_SEEDS) seed by seed, then ``DEMO_WINNER`` beside another winner and
the paper-literal setting; ``--phase`` runs one of the two.

Premise (``--grid premise``): CNN alone vs ANN alone of the same architecture
over the cells of ``PREMISE_GRID`` (depth / width / epochs / data fraction),
3 seeds each; "premise holds" when mean(CNN) - mean(ANN) exceeds the pooled
std sqrt((sd_CNN^2 + sd_ANN^2) / 2) (``study.verdict``). The same rule marks a
PKKD cell "yes" only when its student beats the ANN alone by more than the
pooled std ("within noise" when level, "no (reversed)" when below).

PKKD where the premise holds (``--grid premise_pkkd``): the premise grid's
ResNet-20 cell, its ANN and CNN alone reused. ``PREMISE_PKKD_VARIANTS`` (the
measured and the paper-literal weights) on SELECT_SEEDS; then
``PREMISE_PKKD_WINNER`` and the paper setting on CONFIRM_SEEDS; then
``PREMISE_PKKD_LATE_VARIANTS``, one knob at a time around ``measured`` (T^2,
beta, temperature, the teacher learning from the student, a frozen teacher
restored from the seed's CNN alone, raw features, the last stage only, sigma
scales, no ramp, alpha), on SELECT_SEEDS. ``--winner NAME --phase confirm``
confirms another variant on CONFIRM_SEEDS (one chosen on SELECT_SEEDS);
``--grid demo`` takes it too.

Finished runs are reused from ``--out/runs`` (same config key, as study.py),
so an interrupted sweep resumes and a rerun only rewrites the tables; XLA
compilations are cached in ``--out/runs/jax_cache``. Outputs: ``--out``/
``<grid>.json`` (every run and the aggregates) and ``<grid>.md``.
``--cells NAME,...`` runs only those cells of a grid (with the ANN and CNN
alone they are compared with), e.g. a few variants on another machine; its
outputs are ``<grid>[_<phase>]_cells.json`` and ``.md``.
``--tables-from <grid>.json`` trains nothing and rebuilds the tables from the
runs a JSON recorded (the runs directory is not committed).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402  (benchmarks/ is not a package)

REPO = study.REPO
SELECT_SEEDS = (0, 1, 2)
CONFIRM_SEEDS = (3, 4, 5, 6, 7)

# The regime every sweep cell shares: the demo network family at a budget
# that keeps one run near half a minute on 2 CPU cores.
REGIME = dict(
  model=('resnet8', {'stem_width': 4, 'stage_widths': (4, 8, 16)}),
  epochs=1,
  fraction=0.5,
  batch_size=32,
  recalibration_batches=4,
  eval_split='test',
)
QUICK_REGIME = dict(
  model=('resnet8', {'stem_width': 4, 'stage_widths': (4, 8, 8)}),
  epochs=1,
  fraction=0.1,
  batch_size=16,
  recalibration_batches=1,
  eval_split='test[:32]',
  max_steps=2,
)

# The preset's knobs before this sweep (= the paper-literal loss weights).
PAPER = dict(
  alpha=5.0,
  beta=5.0,
  temperature=4.0,
  kd_t_squared=True,
  features='kernel',
  teacher_mode='cotrained',
  sigma_scale_teacher=1.0,
  sigma_scale_student=1.0,
  stages=None,
  ramp_steps=0,
  teacher_kd_weight=0.0,
)

# (name, base, changes): base names an earlier variant; one factor at a time.
VARIANTS: Tuple[Tuple[str, Optional[str], Dict[str, Any]], ...] = (
  # Round 1: one factor at a time around the preset as it was.
  ('paper', None, {}),
  ('alpha0.5', 'paper', dict(alpha=0.5)),
  ('noT2', 'paper', dict(kd_t_squared=False)),
  ('ramp', 'paper', dict(ramp_steps=31)),
  ('mutual', 'paper', dict(teacher_kd_weight=1.0)),
  # Round 2: one factor at a time around the best of round 1 (alpha0.5).
  ('a0.5_noT2', 'alpha0.5', dict(kd_t_squared=False)),
  ('a0.5_beta0.5', 'alpha0.5', dict(beta=0.5)),
  ('a0.5_ramp', 'alpha0.5', dict(ramp_steps=31)),
  ('a0.5_mutual', 'alpha0.5', dict(teacher_kd_weight=1.0)),
  # Round 3: one factor at a time around the best of round 2 (a0.5_ramp).
  ('a0.5_ramp_noT2', 'a0.5_ramp', dict(kd_t_squared=False)),
  ('a0.5_ramp_beta0.5', 'a0.5_ramp', dict(beta=0.5)),
  ('a0.5_ramp62', 'a0.5_ramp', dict(ramp_steps=62)),
  ('a0.2_ramp', 'a0.5_ramp', dict(alpha=0.2)),
)
# Round 1, the remaining factors around the paper setting: every one is far
# below the ANN alone, so they run after the confirmation (same seeds 0-2).
LATE_VARIANTS: Tuple[Tuple[str, Optional[str], Dict[str, Any]], ...] = (
  ('T1', 'paper', dict(temperature=1.0)),
  ('beta0.5', 'paper', dict(beta=0.5)),
  ('frozen', 'paper', dict(teacher_mode='frozen')),
  ('raw', 'paper', dict(features='raw')),
  ('sigma4', 'paper', dict(sigma_scale_teacher=4.0, sigma_scale_student=4.0)),
  ('last_stage', 'paper', dict(stages=(2,))),
)
# The rot check's variants: every new knob in one run.
QUICK_VARIANTS = ('quick',)
_QUICK = (
  'quick',
  'paper',
  dict(kd_t_squared=False, ramp_steps=1, teacher_kd_weight=1.0),
)
# Chosen from the seeds 0-2 table only (docs/pkkd.md).
WINNER = 'a0.5_ramp_beta0.5'

# Demo regime: (name, knobs changed from DEMO_BASE). DEMO_BASE is the proxy
# sweep's winner as the demo preset ran it (ramp over half of the run);
# written out so that the cells keep their meaning when DEMO_KNOBS changes.
DEMO_BASE = dict(
  PAPER,
  alpha=0.5,
  beta=0.5,
  ramp_steps='half',  # half of the demo's steps (resolved in demo_knobs)
)
DEMO_VARIANTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
  ('base', {}),
  ('noT2', dict(kd_t_squared=False)),
)
# Chosen from the demo selection table (seeds 0-2) only.
DEMO_WINNER = 'noT2'
# Each remaining knob of issue 11's list, one at a time around DEMO_WINNER
# (the preset's DEMO_KNOBS), and the paper-literal weights; selection seeds,
# after DEMO_VARIANTS. (name, changes from DEMO_WINNER's knobs.)
DEMO_LATE_VARIANTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
  ('paper', dict(alpha=5.0, beta=5.0, kd_t_squared=True, ramp_steps=0)),
  ('d_frozen', dict(teacher_mode='frozen')),
  ('d_noramp', dict(ramp_steps=0)),
  ('d_alpha1', dict(alpha=1.0)),
  ('d_alpha0.2', dict(alpha=0.2)),
  ('d_beta0', dict(beta=0.0)),
  ('d_beta2', dict(beta=2.0)),
  ('d_T2', dict(temperature=2.0)),
  ('d_T8', dict(temperature=8.0)),
  ('d_mutual', dict(teacher_kd_weight=1.0)),
  ('d_raw', dict(features='raw')),
  ('d_last_stage', dict(stages=(2,))),
  ('d_sigma4', dict(sigma_scale_teacher=4.0, sigma_scale_student=4.0)),
)

# The REGIME keys that each premise cell sets for itself.
PREMISE_CELL_KEYS = ('model', 'epochs', 'fraction')
# Premise grid: (label, model entry, epochs, train fraction), batch 32 (REGIME).
# Roughly cheapest first, so that a stopped grid leaves whole cells (ResNet-32
# moved before the full-width ResNet-8 once ResNet-20 showed the premise).
# Depth (ResNet-8 / 20 / 32), width (stem and stage widths w4 = 4-8-16, w8 =
# 8-16-32, full = 16-32-64), epochs 2-32 and class-balanced train fractions
# 10 %, 25 %, 50 %, 100 % of the 4,000 train digits. Each label says all four.
_W4 = {'stem_width': 4, 'stage_widths': (4, 8, 16)}
_W8 = {'stem_width': 8, 'stage_widths': (8, 16, 32)}
PREMISE_GRID: Tuple[Tuple[str, Tuple[str, Dict[str, Any]], int, float], ...] = (
  ('resnet8_w4_e2_f50', ('resnet8', _W4), 2, 0.5),
  ('resnet8_w8_e16_f10', ('resnet8', _W8), 16, 0.1),
  ('resnet8_w8_e8_f25', ('resnet8', _W8), 8, 0.25),
  ('resnet8_w8_e32_f25', ('resnet8', _W8), 32, 0.25),
  ('resnet8_w8_e8_f50', ('resnet8', _W8), 8, 0.5),
  ('resnet20_w8_e4_f50', ('resnet20', _W8), 4, 0.5),
  ('resnet32_w8_e4_f50', ('resnet32', _W8), 4, 0.5),
  ('resnet8_full_e4_f100', ('resnet8', {}), 4, 1.0),
)


# PKKD where the premise holds (--grid premise_pkkd): the premise grid's cell
# with the largest CNN - ANN gap, its ANN and CNN alone reused from that grid.
PREMISE_PKKD_CELL = 'resnet20_w8_e4_f50'
# The demo preset's measured weights (DEMO_KNOBS), ramp over half the run.
_MEASURED = dict(
  PAPER, alpha=0.5, beta=0.5, kd_t_squared=False, ramp_steps='half'
)
PREMISE_PKKD_VARIANTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
  ('measured', _MEASURED),
  ('paper', dict(PAPER)),
)
# One knob at a time around `measured` (the unconfirmed choices of
# docs/pkkd.md), on the selection seeds, after the confirmation (the winner was
# chosen from the two above before these existed); most telling first, so
# that a stopped sweep leaves whole cells.
PREMISE_PKKD_LATE_VARIANTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
  ('m_T2sq', dict(_MEASURED, kd_t_squared=True)),
  ('m_beta0', dict(_MEASURED, beta=0.0)),
  ('m_T2', dict(_MEASURED, temperature=2.0)),
  ('m_mutual', dict(_MEASURED, teacher_kd_weight=1.0)),
  ('m_frozen', dict(_MEASURED, teacher_mode='frozen')),
  ('m_raw', dict(_MEASURED, features='raw')),
  ('m_last_stage', dict(_MEASURED, stages=(2,))),
  (
    'm_sigma4',
    dict(_MEASURED, sigma_scale_teacher=4.0, sigma_scale_student=4.0),
  ),
  ('m_noramp', dict(_MEASURED, ramp_steps=0)),
  ('m_T8', dict(_MEASURED, temperature=8.0)),
  ('m_alpha1', dict(_MEASURED, alpha=1.0)),
)
# Chosen from the selection seeds 0-2 only (results/pkkd_sweep/premise_pkkd.md).
PREMISE_PKKD_WINNER = 'measured'


@dataclasses.dataclass
class Run:
  cell: str
  seed: int
  # A config; None: the PKKD config of the sweep variant named `cell`; a
  # callable: called with teacher_dir= (the run directory of deps[0]).
  config: Any
  deps: Tuple[str, ...] = ()
  # The runs directory's name for it (default: the cell), so that a grid can
  # reuse another grid's run of the same config.
  workdir_name: Optional[str] = None


def settings_for(regime: Dict[str, Any], loader: str) -> study.Settings:
  s = study.Settings(
    batch_size=regime['batch_size'],
    # study.finish uses this batch for fraction < 1: the same batch everywhere.
    ekd_10pct_batch_size=regime['batch_size'],
    pkkd_epochs=regime['epochs'],
    recalibration_batches=regime['recalibration_batches'],
    eval_split=regime['eval_split'],
    eval_batch_size=250 if regime['eval_split'] == 'test' else 32,
    max_steps=regime.get('max_steps', -1),
    pkkd_model=regime['model'],
    loader=loader,
  )
  return s


def knobs_of(name: str) -> Dict[str, Any]:
  """The full config.pkkd of a variant, resolved through its bases."""
  table = {v[0]: v for v in VARIANTS + LATE_VARIANTS + (_QUICK,)}
  _, base, changes = table[name]
  knobs = dict(PAPER) if base is None else knobs_of(base)
  knobs.update(changes)
  return knobs


def alone(s, seed, regime, conv_type, entry=None, epochs=None, fraction=None):
  """The regime's network trained alone (configs/supervised.py), conv or adder."""
  return study.supervised(
    s,
    seed,
    entry or regime['model'],
    epochs or regime['epochs'],
    conv_type,
    regime['fraction'] if fraction is None else fraction,
  )


def pkkd_run(s, seed, regime, knobs, teacher_dir=None):
  knobs = dict(knobs)
  if knobs.get('stages') is None:
    knobs.pop('stages')
  config = study.pkkd_config(s, seed, teacher_dir, **knobs)
  return study.finish(config, s, seed, regime['epochs'], regime['fraction'])


def sweep_runs(s, regime, quick: bool) -> List[Run]:
  """Baselines first, then each variant on all its seeds (a stopped sweep
  leaves whole cells), then the confirmation seeds."""
  if _frozen(WINNER) or _frozen('paper'):
    raise ValueError('confirmation of a frozen-teacher cell is not wired')
  select = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  confirm = () if quick else CONFIRM_SEEDS
  variants = QUICK_VARIANTS if quick else [v[0] for v in VARIANTS]
  runs = []
  for seed in select:
    runs.append(Run('ann', seed, alone(s, seed, regime, 'adder')))
    runs.append(Run('cnn', seed, alone(s, seed, regime, 'conv')))
  for name in variants:
    for seed in select:
      runs.append(Run(name, seed, None, ('cnn',) if _frozen(name) else ()))
  # Confirmation cell by cell, the most telling comparison first.
  for name in dict.fromkeys(('ann', WINNER, 'paper', 'cnn')):
    for seed in confirm:
      if name in ('ann', 'cnn'):
        conv_type = 'adder' if name == 'ann' else 'conv'
        runs.append(Run(name, seed, alone(s, seed, regime, conv_type)))
      else:
        runs.append(Run(name, seed, None))
  for name in () if quick else [v[0] for v in LATE_VARIANTS]:
    for seed in select:
      runs.append(Run(name, seed, None, ('cnn',) if _frozen(name) else ()))
  return runs


def variant_run(name: str, seed: int, knobs: Dict[str, Any], build) -> Run:
  """The run of a PKKD variant whose config ``build(teacher_dir=...)`` makes.

  A frozen-teacher variant's teacher is this seed's CNN alone, restored from
  its run: its config is built once that run's directory is known."""
  if knobs['teacher_mode'] == 'frozen':
    return Run(name, seed, build, deps=('cnn',))
  return Run(name, seed, build())


def _frozen(name: str) -> bool:
  return knobs_of(name)['teacher_mode'] == 'frozen'


def premise_runs(s, quick: bool) -> List[Run]:
  runs = []
  grid = PREMISE_GRID[:1] if quick else PREMISE_GRID
  seeds = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  for label, entry, epochs, fraction in grid:
    if quick:
      entry, epochs, fraction = QUICK_REGIME['model'], 1, 0.1
    for seed in seeds:
      for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv')):
        config = alone(s, seed, None, conv_type, entry, epochs, fraction)
        # Quick: the --grid sweep --quick runs of the same configs.
        name = kind if quick else None
        runs.append(Run(f'{label}/{kind}', seed, config, workdir_name=name))
  return runs


def premise_pkkd_regime(quick: bool) -> Dict[str, Any]:
  if quick:
    return dict(QUICK_REGIME)
  (_, entry, epochs, fraction) = dict((g[0], g) for g in PREMISE_GRID)[
    PREMISE_PKKD_CELL
  ]
  return dict(REGIME, model=entry, epochs=epochs, fraction=fraction)


def premise_pkkd_knobs(name: str, total_steps: int) -> Dict[str, Any]:
  knobs = dict(dict(PREMISE_PKKD_VARIANTS + PREMISE_PKKD_LATE_VARIANTS)[name])
  if knobs['ramp_steps'] == 'half':
    knobs['ramp_steps'] = total_steps // 2
  return knobs


def premise_pkkd_runs(
  s, regime, quick: bool, phase: str = 'all', winner: Optional[str] = None
) -> List[Run]:
  """Selection: the ANN and the CNN alone (the premise grid's runs), then
  PREMISE_PKKD_VARIANTS, on SELECT_SEEDS; confirmation: the ANN alone, the
  CNN alone and ``winner`` (default PREMISE_PKKD_WINNER; any variant's name,
  e.g. a late variant chosen on SELECT_SEEDS) seed by seed on CONFIRM_SEEDS,
  then the paper-literal setting there; then PREMISE_PKKD_LATE_VARIANTS on
  SELECT_SEEDS. ``phase``: 'select' (both selections), 'confirm' or 'all'."""
  seeds = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  winner = winner or PREMISE_PKKD_WINNER

  def baselines(seed):
    # The premise grid's runs of this cell (quick: the --grid sweep --quick
    # runs of the same configs).
    return [
      Run(
        kind,
        seed,
        alone(s, seed, regime, conv_type),
        workdir_name=kind if quick else f'{PREMISE_PKKD_CELL}/{kind}',
      )
      for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv'))
    ]

  selection = [run for seed in seeds for run in baselines(seed)]
  if quick:  # The sweep's quick variant, whose run --grid sweep --quick made.
    return selection + [Run('quick', seeds[0], None)]
  total = premise_pkkd_total_steps(s, regime)

  def variant(name, seed):
    knobs = premise_pkkd_knobs(name, total)
    build = functools.partial(pkkd_run, s, seed, regime, knobs)
    return variant_run(name, seed, knobs, build)

  for name, _ in PREMISE_PKKD_VARIANTS:
    selection += [variant(name, seed) for seed in seeds]
  late = [
    variant(name, seed)
    for name, _ in PREMISE_PKKD_LATE_VARIANTS
    for seed in seeds
  ]
  confirm = []
  for seed in CONFIRM_SEEDS:
    confirm += baselines(seed) + [variant(winner, seed)]
  confirm += [variant('paper', seed) for seed in CONFIRM_SEEDS]
  if phase == 'select':
    return selection + late
  if phase == 'confirm':
    return confirm
  return selection + confirm + late


def premise_pkkd_total_steps(s, regime) -> int:
  """The steps of a run in `regime`, as the trainer counts them (its input's
  steps per epoch and its run length), for a ramp over half the run."""
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  config = alone(s, SELECT_SEEDS[0], regime, 'adder')
  train_source, _ = kd_train.build_inputs(config)
  return kd_train.run_length(config, train_source.steps_per_epoch)


@functools.lru_cache(maxsize=None)
def _demo_module():
  # Loaded once: every run of the demo grid reads its constants and presets.
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', 'pkkd.py')
  )


def demo_total_steps() -> int:
  """The steps of one configs/pkkd.py:demo run (its ramp is half of them)."""
  return _demo_module().DEMO_EPOCHS * _demo_module().DEMO_STEPS_PER_EPOCH


def demo_variant_names() -> List[str]:
  return [v[0] for v in DEMO_VARIANTS + DEMO_LATE_VARIANTS]


def demo_knobs(name: str, total_steps: int) -> Dict[str, Any]:
  knobs = dict(DEMO_BASE)
  late = dict(DEMO_LATE_VARIANTS)
  if name in late:
    knobs.update(dict(DEMO_VARIANTS)[DEMO_WINNER])
    knobs.update(late[name])
  else:
    knobs.update(dict(DEMO_VARIANTS)[name])
  if knobs['ramp_steps'] == 'half':
    knobs['ramp_steps'] = total_steps // 2
  return knobs


def _demo_common(config, seed: int, quick: bool, epochs: int):
  """The demo preset's settings (and the quick rot check's cuts)."""
  config.seed = seed
  config.num_epochs = epochs
  for key, value in _demo_module().DEMO_SETTINGS.items():
    node, *rest = key.split('.')
    if rest:
      config[node][rest[0]] = value
    else:
      config[key] = value
  config.log_every_steps = 1000
  config.keep_checkpoints = 1
  if quick:
    config.update(
      dict(
        max_steps=2,
        batch_size=8,
        eval_batch_size=8,
        eval_bn_recalibration_batches=1,
      )
    )
    config.dataset.eval_split = 'test[:16]'
    # The network at its smallest, so that compiling stays seconds.
    for entry in (config.model, config.get('teacher')):
      if entry is not None:
        entry.kwargs = dict(stem_width=4, stage_widths=(4, 8, 8))
  return config


def demo_pkkd(
  name: str, seed: int, quick: bool = False, teacher_dir: Optional[str] = None
):
  """configs/pkkd.py:demo with the knobs of the demo variant ``name``; a
  frozen-teacher variant restores its teacher from ``teacher_dir`` (the same
  seed's CNN alone)."""
  module = _demo_module()
  config = module.get_config('demo')
  knobs = demo_knobs(name, demo_total_steps())
  if knobs.get('stages') is None:
    knobs.pop('stages')
  if knobs['teacher_mode'] == 'frozen':
    if teacher_dir is None:
      raise ValueError(f'demo variant {name!r} needs a teacher_dir')
    config.teacher.checkpoint_dir = teacher_dir
  config.pkkd.update(knobs)
  return _demo_common(config, seed, quick, module.DEMO_EPOCHS)


def demo_alone(conv_type: str, seed: int, quick: bool = False):
  """configs/supervised.py:demo as the demo's network alone (README command)."""
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  module = _demo_module()
  config = config_defaults.load_config_module(
    os.path.join(REPO, 'configs', 'supervised.py')
  ).get_config('demo')
  config.model.name = 'resnet8'
  config.model.conv_type = conv_type
  return _demo_common(config, seed, quick, module.DEMO_EPOCHS)


def demo_runs(
  quick: bool, phase: str = 'all', winner: Optional[str] = None
) -> List[Run]:
  """Selection: the ANN and the CNN alone, then each variant (DEMO_VARIANTS,
  then DEMO_LATE_VARIANTS) on all seeds; confirmation on the fresh seeds:
  the ANN alone, the CNN alone and ``winner`` (default DEMO_WINNER) seed by
  seed, then DEMO_WINNER (when ``winner`` is another variant) and the
  paper-literal setting."""
  select = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  winner = winner or DEMO_WINNER

  def variant(name, seed):
    knobs = demo_knobs(name, demo_total_steps())
    build = functools.partial(demo_pkkd, name, seed, quick)
    return variant_run(name, seed, knobs, build)

  runs = []
  if quick:
    runs.append(Run('ann', select[0], demo_alone('adder', select[0], quick)))
    runs.append(variant(DEMO_VARIANTS[0][0], select[0]))
    runs.append(Run('cnn', select[0], demo_alone('conv', select[0], quick)))
    return runs
  if phase in ('all', 'select'):
    for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv')):
      for seed in select:
        runs.append(Run(kind, seed, demo_alone(conv_type, seed)))
    for name in demo_variant_names():
      runs += [variant(name, seed) for seed in select]
  if phase in ('all', 'confirm'):
    # Seed by seed, so that a sweep stopped early leaves complete pairs.
    for seed in CONFIRM_SEEDS:
      runs.append(Run('ann', seed, demo_alone('adder', seed)))
      runs.append(Run('cnn', seed, demo_alone('conv', seed)))
      runs.append(variant(winner, seed))
    # The current default (when another variant is confirmed) and the
    # paper-literal setting beside it, on the same fresh seeds.
    for name in dict.fromkeys((DEMO_WINNER, 'paper')):
      if name != winner:
        runs += [variant(name, seed) for seed in CONFIRM_SEEDS]
  return runs


def _stored(job) -> bool:
  """Whether run_job would reuse this job: same key, a finished summary."""
  marker = os.path.join(job.workdir, 'study_key.json')
  summary_file = os.path.join(job.workdir, 'summary.json')
  if not (os.path.exists(summary_file) and os.path.exists(marker)):
    return False
  with open(marker) as f:
    if json.load(f).get('key') != job.key:
      return False
  with open(summary_file) as f:
    summary = json.load(f)
  return bool(summary.get('eval_accuracy')) and not summary.get('preempted')


def execute(
  runs: List[Run], s, regime, runs_dir: str, log, reuse_only: bool = False
) -> List[Dict[str, Any]]:
  """Trains (or reuses) every run in order; returns one record per run.

  With ``reuse_only`` a run not already stored is left out (and logged)."""
  done: Dict[Tuple[str, int], study.Job] = {}
  records = []
  for run in runs:
    config = run.config
    dep_keys = []
    if config is None or callable(config):
      teacher_dir = None
      if run.deps:
        teacher_job = done[(run.deps[0], run.seed)]
        teacher_dir, dep_keys = teacher_job.workdir, [teacher_job.key]
      if config is None:
        config = pkkd_run(s, run.seed, regime, knobs_of(run.cell), teacher_dir)
      else:  # Built once its teacher's run directory is known.
        config = config(teacher_dir=teacher_dir)
    key = study.config_key(config, dep_keys)
    workdir = os.path.join(
      runs_dir, (run.workdir_name or run.cell).replace('/', '_')
    )
    job = study.Job(
      'pkkd_sweep', run.cell, run.seed, config, key, f'{workdir}_s{run.seed}', 0
    )
    if reuse_only and not _stored(job):
      log(f'  missing {run.cell} seed {run.seed} (not run; --reuse-only)')
      continue
    started, cpu_started = time.time(), time.process_time()
    summary = study.run_job(job, log)
    done[(run.cell, run.seed)] = job
    records.append(
      dict(
        cell=run.cell,
        seed=run.seed,
        accuracy=dict(summary['eval_accuracy']),
        wall_seconds=summary['wall_seconds'],
        elapsed_seconds=time.time() - started,
        cpu_seconds=time.process_time() - cpu_started,
        load_average=os.getloadavg(),
        steps=summary['steps'],
        history=summary['history'],
      )
    )
  return records


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
  table = {v[0]: v for v in VARIANTS + LATE_VARIANTS + (_QUICK,)}
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


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--grid',
    choices=('sweep', 'premise', 'premise_pkkd', 'demo'),
    default='sweep',
  )
  parser.add_argument(
    '--phase',
    choices=('all', 'select', 'confirm'),
    default='all',
    help='--grid demo / premise_pkkd: selection seeds, confirmation seeds, '
    'or both',
  )
  parser.add_argument(
    '--out', default=os.path.join(REPO, 'results', 'pkkd_sweep')
  )
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
  names = {
    'premise_pkkd': [
      v[0] for v in PREMISE_PKKD_VARIANTS + PREMISE_PKKD_LATE_VARIANTS
    ],
    'demo': demo_variant_names(),
  }
  if args.winner and args.winner not in names.get(args.grid, ()):
    parser.error(
      f'--winner {args.winner}: only --grid premise_pkkd and --grid demo '
      'take it, each with one of its variants: '
      + '; '.join(f'{g}: {", ".join(n)}' for g, n in names.items())
    )
  return args


def only_cells(runs: List[Run], cells: Optional[str]) -> List[Run]:
  """``runs`` restricted to the cells named in ``cells`` (comma-separated;
  None: all) and the ANN and CNN alone (the baselines and frozen teachers)."""
  if not cells:
    return runs
  wanted = set(cells.split(','))
  unknown = wanted - {r.cell for r in runs}
  if unknown:
    raise SystemExit(
      f'--cells: {", ".join(sorted(unknown))} not in this grid; its cells: '
      f'{", ".join(dict.fromkeys(r.cell for r in runs))}.'
    )
  return [r for r in runs if r.cell in wanted | {'ann', 'cnn'}]


def premise_labels(runs: List[Run]) -> set:
  """The premise-grid cell labels of ``runs`` ('<label>/ann' -> label)."""
  return {r.cell.split('/')[0] for r in runs}


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import jax  # pylint: disable=g-import-not-at-top

  runs_dir = args.runs_dir or os.path.join(args.out, 'runs')
  if not args.tables_from:  # Which trains nothing and leaves no runs dir.
    os.makedirs(runs_dir, exist_ok=True)
    jax.config.update(
      'jax_compilation_cache_dir', os.path.join(runs_dir, 'jax_cache')
    )
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  regime = copy.deepcopy(QUICK_REGIME if args.quick else REGIME)
  s = settings_for(regime, args.loader)
  log = lambda text: print(text, flush=True)
  if args.grid == 'sweep':
    runs = sweep_runs(s, regime, args.quick)
  elif args.grid == 'demo':
    runs = demo_runs(args.quick, args.phase, args.winner)
    if not args.quick:
      module = _demo_module()
      regime = dict(
        config='configs/pkkd.py:demo (configs/supervised.py:demo alone)',
        model='resnet8 (full width)',
        epochs=module.DEMO_EPOCHS,
        steps=demo_total_steps(),
        batch_size=64,
        **module.DEMO_SETTINGS,
      )
  elif args.grid == 'premise_pkkd':
    regime = premise_pkkd_regime(args.quick)
    s = settings_for(regime, args.loader)
    runs = premise_pkkd_runs(s, regime, args.quick, args.phase, args.winner)
  else:
    runs = premise_runs(s, args.quick)
  runs = only_cells(runs, args.cells)
  started = time.time()
  if args.tables_from:
    with open(args.tables_from) as f:
      recorded = json.load(f)
    if recorded.get('grid') != args.grid:
      raise SystemExit(
        f'--tables-from={args.tables_from} holds --grid '
        f'{recorded.get("grid")!r} runs, not --grid {args.grid!r}.'
      )
    # The runs' own regime (a preset may have changed since).
    records, regime = recorded['runs'], recorded['regime']
    total_s = 60 * recorded['minutes']
  else:
    records = execute(runs, s, regime, runs_dir, log, args.reuse_only)
    total_s = time.time() - started
  if args.grid == 'sweep':
    summary, lines = summarize_sweep(records)
    title = 'PKKD knob sweep'
  elif args.grid == 'demo':
    total = 2 if args.quick else demo_total_steps()
    summary, lines = summarize_sweep(
      records, demo_changes_text, lambda name: demo_knobs(name, total)
    )
    title = 'PKKD sweep in the demo regime'
  elif args.grid == 'premise_pkkd':
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
    title = f'PKKD where the premise holds ({PREMISE_PKKD_CELL})'
  else:
    # The grid's cells that this invocation asked for (--cells: not the
    # others), in the grid's order.
    asked = premise_labels(runs)
    summary, lines = summarize_premise(
      records,
      () if args.quick else tuple(g[0] for g in PREMISE_GRID if g[0] in asked),
    )
    title = 'PKKD premise grid: CNN vs ANN of the same architecture, alone'
  # The CPU model matters: XLA's CPU code differs between CPU families, and
  # so do a run's numbers (e.g. the demo: 94.9 % on one machine kind, 94.5 %
  # on another, same seed).
  machine = (
    # The machine the recorded runs ran on, not the one rebuilding the tables.
    recorded['machine']
    if args.tables_from
    else f'{study.costs.cpu_name()}, {os.cpu_count()} CPUs'
  )
  header = [
    f'# {title}',
    '',
    f'`python benchmarks/pkkd_sweep.py --grid {args.grid}'
    + ('' if args.phase == 'all' else f' --phase {args.phase}')
    + (f' --cells {args.cells}' if args.cells else '')
    + (f' --winner {args.winner}' if args.winner else '')
    + f'` on {machine} '
    f'({jax.default_backend()}), machine shared with other jobs; '
    + (
      f'{len(records)} runs; tables rebuilt from the runs recorded in '
      f'{os.path.relpath(args.tables_from, REPO)} (`--tables-from`; the '
      f'invocation that wrote it took {total_s / 60:.1f} min) '
      if args.tables_from
      else f'{len(records)} runs, {total_s / 60:.1f} min this invocation '
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
      if args.grid == 'demo'
      else f', loader={args.loader}, optimizer of the demo presets.'
    ),
  ]
  winner = {
    'sweep': WINNER,
    'demo': args.winner or DEMO_WINNER,
    'premise_pkkd': args.winner or PREMISE_PKKD_WINNER,
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
    header.append('')
    header.append(
      f'Largest mean paired gain on the selection seeds: `{best}` '
      f'({100 * gains[best]:+.2f} points). The variant that `--phase '
      f'confirm` runs by default (chosen on earlier selection runs): '
      f'`{winner}`; `--winner NAME` confirms another.'
    )
  elif winner:
    header.append('')
    header.append(f'Winner (chosen on the selection seeds): `{winner}`.')
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
  }
  os.makedirs(args.out, exist_ok=True)
  name = args.grid + ('' if args.phase == 'all' else f'_{args.phase}')
  # A part of a grid never overwrites the whole grid's tables; its header
  # names the cells.
  name += '_cells' if args.cells else ''
  with open(os.path.join(args.out, f'{name}.json'), 'w') as f:
    json.dump(document, f, indent=1, default=str)
  with open(os.path.join(args.out, f'{name}.md'), 'w') as f:
    f.write('\n'.join(header + lines) + '\n')
  print('\n'.join(lines))
  return document


if __name__ == '__main__':
  main()
