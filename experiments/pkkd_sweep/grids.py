"""The sweep's grids as data: regimes, seeds and variants (config overrides).

A variant is a name and the ``config.pkkd`` overrides it makes: against a base
variant (``VARIANTS``: (name, base, changes), one factor at a time), against
DEMO_BASE / the demo winner (``DEMO_*``), or whole (``PREMISE_PKKD_*``).
``ramp_steps='half'`` stands for half of the run's steps. runs.py turns a grid
into runs of the study's builders; tables.py reports them.
"""

from typing import Any, Dict, Optional, Tuple

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
QUICK_VARIANT = (
  'quick',
  'paper',
  dict(kd_t_squared=False, ramp_steps=1, teacher_kd_weight=1.0),
)
# Chosen from the seeds 0-2 table only (README.md here).
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
# README.md here), on the selection seeds, after the confirmation (the winner was
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
# Chosen from the selection seeds 0-2 only (results/premise_pkkd.md).
PREMISE_PKKD_WINNER = 'measured'


# Each grid's run order, as data: blocks of (phase, seeds, arms, by), run in
# turn (runs.expand). seeds: 'select' or 'confirm', the seed sets above
# (--quick: the first selection seed, no confirmation seed). arms: names, or
# a group in braces that the grid fills in ('{variants}': its variants in
# table order; 'winner': --winner or its default). by: 'arm' runs each arm
# over all the seeds in turn (a stopped grid leaves whole arms), 'seed' every
# arm of a seed before the next seed (whole pairs). --phase keeps the blocks
# of that phase; a repeated arm runs once per block.
Block = Tuple[str, str, Tuple[str, ...], str]
SWEEP_ORDER: Tuple[Block, ...] = (
  ('select', 'select', ('ann', 'cnn'), 'seed'),
  ('select', 'select', ('{variants}',), 'arm'),
  # The confirmation, the most telling comparison first.
  ('confirm', 'confirm', ('ann', 'winner', 'paper', 'cnn'), 'arm'),
  ('select', 'select', ('{late}',), 'arm'),
)
PREMISE_ORDER: Tuple[Block, ...] = (  # Per cell of PREMISE_GRID, in order.
  ('select', 'select', ('ann', 'cnn'), 'seed'),
)
PREMISE_PKKD_ORDER: Tuple[Block, ...] = (
  ('select', 'select', ('ann', 'cnn'), 'seed'),
  ('select', 'select', ('{variants}',), 'arm'),
  ('confirm', 'confirm', ('ann', 'cnn', 'winner'), 'seed'),
  ('confirm', 'confirm', ('paper',), 'arm'),
  # Chosen after the confirmation: the late variants, on the selection seeds.
  ('select', 'select', ('{late}',), 'arm'),
)
PREMISE_PKKD_QUICK_ORDER: Tuple[Block, ...] = (
  ('select', 'select', ('ann', 'cnn'), 'seed'),
  ('select', 'select', ('quick',), 'arm'),
)
DEMO_ORDER: Tuple[Block, ...] = (
  ('select', 'select', ('ann', 'cnn'), 'arm'),
  ('select', 'select', ('{variants}',), 'arm'),
  ('confirm', 'confirm', ('ann', 'cnn', 'winner'), 'seed'),
  # The default (when another variant is confirmed) and the paper beside it.
  ('confirm', 'confirm', ('{others}',), 'arm'),
)
DEMO_QUICK_ORDER: Tuple[Block, ...] = (
  ('select', 'select', ('ann', '{first}', 'cnn'), 'seed'),
)


def knobs_of(name: str) -> Dict[str, Any]:
  """The full config.pkkd of a variant, resolved through its bases."""
  table = {v[0]: v for v in VARIANTS + LATE_VARIANTS + (QUICK_VARIANT,)}
  _, base, changes = table[name]
  knobs = dict(PAPER) if base is None else knobs_of(base)
  knobs.update(changes)
  return knobs
