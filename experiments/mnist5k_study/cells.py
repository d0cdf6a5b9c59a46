"""The study's cells and their claims, and the configs they train.

A cell is one row of a study table: how to build its config for a seed, which
teacher runs (deps) it restores, which heads it reports and which paper claims
(Check) it is compared on. Configs start from the ``demo`` presets of
configs/*.py and share the overrides of ``finish``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .settings import REPO, Settings, model_label

# -- Configs ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _config_module(method: str):
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{method}.py')
  )


def preset(method: str):
  """``configs/<method>.py:demo`` as a fresh ConfigDict."""
  return _config_module(method).get_config('demo')


def model_entry(
  entry: Tuple[str, Dict[str, Any]], conv_type: str = 'conv', **extra
):
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  name, kwargs = entry
  return config_defaults.model(name, conv_type, **extra, **kwargs)


def finish(config, s: Settings, seed: int, epochs: int, fraction: float = 1.0):
  """The overrides every study run shares."""
  config.seed = seed
  config.num_epochs = epochs
  config.max_steps = s.max_steps
  config.batch_size = (
    s.batch_size if fraction == 1.0 else s.ekd_10pct_batch_size
  )
  config.eval_batch_size = s.eval_batch_size
  config.log_every_steps = 1000
  config.keep_checkpoints = 1
  config.eval_bn_recalibration_batches = s.recalibration_batches
  config.dataset.name = 'mnist5k'
  config.data.loader = s.loader
  config.dataset.train_fraction = fraction
  config.dataset.eval_split = s.eval_split
  return config


def supervised(
  s: Settings,
  seed: int,
  entry,
  epochs: int,
  conv_type: str = 'conv',
  fraction: float = 1.0,
):
  config = preset('supervised')
  config.model = model_entry(entry, conv_type)
  return finish(config, s, seed, epochs, fraction)


def pkkd_config(
  s: Settings, seed: int, teacher_dir: Optional[str] = None, **knobs
):
  config = preset('pkkd')
  config.model = model_entry(s.pkkd_model, 'adder')
  config.teacher = model_entry(s.pkkd_model, 'conv')
  if knobs.get('teacher_mode') == 'frozen':
    config.teacher.checkpoint_dir = teacher_dir
  if 'ramp_steps' in knobs and 'ramp_fraction' not in knobs:
    # A ramp given in steps replaces the preset's share of the run.
    config.pkkd.ramp_fraction = 0.0
  config.pkkd.update(knobs)
  return finish(config, s, seed, s.pkkd_epochs)


def kd_config(
  s: Settings,
  seed: int,
  teacher_dir: str,
  kd_weight=0.9,
  fitnet_weight=0.0,
  at_weight=0.0,
):
  config = preset('kd')
  config.model = model_entry(s.ofd_student)
  config.teacher = model_entry(s.ofd_teacher, checkpoint_dir=teacher_dir)
  config.kd.update(
    dict(kd_weight=kd_weight, fitnet_weight=fitnet_weight, at_weight=at_weight)
  )
  return finish(config, s, seed, s.ofd_epochs)


def ofd_config(s: Settings, seed: int, teacher_dir: str):
  config = preset('ofd')
  config.model = model_entry(s.ofd_student)
  config.teacher = model_entry(s.ofd_teacher, checkpoint_dir=teacher_dir)
  return finish(config, s, seed, s.ofd_epochs)


def ekd_config(
  s: Settings,
  seed: int,
  teacher_dirs: Sequence[str],
  epochs: int,
  fraction: float,
  distill: bool,
):
  config = preset('ekd')
  config.model = model_entry(('ekd_student', s.ekd_student_kwargs))
  config.teachers = [
    model_entry(entry, checkpoint_dir=d)
    for entry, d in zip(s.ekd_teachers, teacher_dirs)
  ]
  if not distill:
    config.ekd.lambda_feat = 0.0
    config.ekd.lambda_kd = 0.0
  return finish(config, s, seed, epochs, fraction)


# -- Cells --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
  """A paper claim turned into a comparison: ``cell/head`` rel ``other/head``."""

  text: str
  other: str  # cell name in the same study and regime
  # '>': this row beats the other; '<': the other beats this row (ablations);
  # '>~': this row matches or beats the other.
  relation: str = '>'
  head: str = 'student'
  other_head: str = 'student'


@dataclasses.dataclass(frozen=True)
class Cell:
  """One row of a study: how to build its config for a seed."""

  study: str
  name: str
  label: str
  # build(settings, seed, deps) -> ConfigDict, deps: dependency name -> workdir.
  build: Callable[..., Any]
  deps: Tuple[str, ...] = ()
  regime: str = 'full'
  heads: Tuple[Tuple[str, str], ...] = (('student', ''),)
  paper: str = ''
  checks: Tuple[Check, ...] = ()


@dataclasses.dataclass(frozen=True)
class Dep:
  """A run other cells need (a frozen teacher): a supervised run per seed."""

  name: str
  label: str
  build: Callable[..., Any]


def pkkd_cells(s: Settings) -> Tuple[List[Cell], Dict[str, Dep]]:
  arch = model_label(s.pkkd_model)
  deps = {
    'pkkd_cnn': Dep(
      'pkkd_cnn',
      f'{arch} CNN, the frozen teacher',
      lambda s, seed, d: supervised(s, seed, s.pkkd_model, s.pkkd_epochs),
    )
  }
  cells = [
    Cell(
      'pkkd',
      'cnn',
      f'CNN alone ({arch})',
      lambda s, seed, d: supervised(s, seed, s.pkkd_model, s.pkkd_epochs),
      paper='CNN 92.93 (C10 R20), 68.75 (C100 R20): above the ANN',
      checks=(Check('CNN > ANN alone', 'ann'),),
    ),
    Cell(
      'pkkd',
      'ann',
      f'ANN alone ({arch} adder)',
      lambda s, seed, d: supervised(
        s, seed, s.pkkd_model, s.pkkd_epochs, 'adder'
      ),
      paper='ANN 92.02 (C10 R20), 67.60 (C100 R20)',
    ),
    Cell(
      'pkkd',
      'pkkd',
      'ANN + PKKD (kernel features, co-trained teacher)',
      lambda s, seed, d: pkkd_config(s, seed),
      heads=(('student', ''), ('teacher', 'its co-trained CNN teacher')),
      paper='PKKD-ANN 92.96 (C10 R20), 69.93 (C100 R20): above the ANN, matches the CNN',
      checks=(
        Check('PKKD-ANN > ANN alone', 'ann'),
        Check('PKKD-ANN >~ CNN alone', 'cnn', '>~'),
        Check('premise: its CNN teacher > ANN alone', 'ann', '>', 'teacher'),
      ),
    ),
    Cell(
      'pkkd',
      'no_kernel_features',
      'ablation: soft labels only (beta = 0)',
      lambda s, seed, d: pkkd_config(s, seed, beta=0.0),
      heads=(('student', ''), ('teacher', 'its co-trained CNN teacher')),
      paper='kernel features add to soft labels (docs/pkkd.md: CE + alpha KD + beta feature)',
      checks=(Check('full PKKD > beta = 0', 'pkkd', '<'),),
    ),
    Cell(
      'pkkd',
      'frozen_teacher',
      'ablation: fixed pretrained CNN teacher',
      lambda s, seed, d: pkkd_config(
        s, seed, d['pkkd_cnn'], teacher_mode='frozen'
      ),
      deps=('pkkd_cnn',),
      heads=(('student', ''), ('teacher', 'the fixed teacher (= CNN alone)')),
      paper='progressive: the teacher is trained at the same time (docs/pkkd.md)',
      checks=(Check('co-trained > fixed teacher', 'pkkd', '<'),),
    ),
    Cell(
      'pkkd',
      'raw_features',
      'ablation: feature loss on raw outputs, no kernels',
      lambda s, seed, d: pkkd_config(s, seed, features='raw'),
      heads=(('student', ''), ('teacher', 'its co-trained CNN teacher')),
      paper='Gaussian / Laplace kernels + 1x1 map align the two feature distributions',
      checks=(Check('kernels > raw features', 'pkkd', '<'),),
    ),
  ]
  return cells, deps


def ofd_cells(s: Settings) -> Tuple[List[Cell], Dict[str, Dep]]:
  teacher, student = model_label(s.ofd_teacher), model_label(s.ofd_student)
  deps = {
    'ofd_teacher': Dep(
      'ofd_teacher',
      f'{teacher} CNN teacher',
      lambda s, seed, d: supervised(
        s, seed, s.ofd_teacher, s.ofd_teacher_epochs
      ),
    )
  }
  base = dict(deps=('ofd_teacher',))
  better = lambda what: (Check(f'{what} > student alone', 'alone'),)
  cells = [
    Cell(
      'ofd',
      'teacher',
      f'teacher ({teacher}, {s.ofd_teacher_epochs} epochs)',
      lambda s, seed, d: supervised(
        s, seed, s.ofd_teacher, s.ofd_teacher_epochs
      ),
      paper='WRN28-4 teacher: 78.91 (21.09 % error), CIFAR-100',
      checks=(Check('premise: teacher > student alone', 'alone'),),
    ),
    Cell(
      'ofd',
      'alone',
      f'student alone ({student})',
      lambda s, seed, d: supervised(s, seed, s.ofd_student, s.ofd_epochs),
      paper='alone: WRN16-2 72.68 (OFD, CIFAR-100); ResNet8x4 72.50 (RepDistiller)',
    ),
    Cell(
      'ofd',
      'kd',
      'Hinton KD (T = 4, lambda = 0.9)',
      lambda s, seed, d: kd_config(s, seed, d['ofd_teacher']),
      **base,
      paper='KD 73.33 (ResNet32x4 -> ResNet8x4, CIFAR-100)',
      checks=better('KD'),
    ),
    Cell(
      'ofd',
      'fitnets',
      'FitNets (hint at stage 2, weight 100)',
      lambda s, seed, d: kd_config(
        s, seed, d['ofd_teacher'], kd_weight=0.0, fitnet_weight=100.0
      ),
      **base,
      paper='FitNet 73.50 (ResNet32x4 -> ResNet8x4)',
      checks=better('FitNets'),
    ),
    Cell(
      'ofd',
      'at',
      'AT (weight 1000/2 per position)',
      lambda s, seed, d: kd_config(
        s, seed, d['ofd_teacher'], kd_weight=0.0, at_weight=500.0
      ),
      **base,
      paper='AT 73.44 (ResNet32x4 -> ResNet8x4)',
      checks=better('AT'),
    ),
    Cell(
      'ofd',
      'ofd',
      'OFD (alpha = 1e-3)',
      lambda s, seed, d: ofd_config(s, seed, d['ofd_teacher']),
      **base,
      paper='OFD 75.92 (24.08 % error; WRN28-4 -> WRN16-2, alone 72.68)',
      checks=better('OFD')
      + (
        Check('OFD > KD', 'kd'),
        Check('OFD > FitNets', 'fitnets'),
        Check('OFD > AT', 'at'),
      ),
    ),
  ]
  return cells, deps


def ekd_cells(s: Settings) -> Tuple[List[Cell], Dict[str, Dep]]:
  cells, deps = [], {}
  k = s.ekd_student_kwargs['num_branches']
  branch_heads = tuple((f'branch{i}', f'branch {i}') for i in range(k))
  teacher_heads = tuple(
    (f'teacher{i}', f'teacher {i}: {model_label(e)}')
    for i, e in enumerate(s.ekd_teachers)
  )
  for regime, fraction, epochs, teacher_epochs in (
    ('full', 1.0, s.ekd_epochs, s.ekd_teacher_epochs),
    ('10pct', s.ekd_fraction, s.ekd_10pct_epochs, s.ekd_10pct_teacher_epochs),
  ):
    teacher_regime = regime if s.ekd_10pct_teachers == 'subset' else 'full'
    teacher_fraction = fraction if teacher_regime == regime else 1.0
    if teacher_regime != regime:
      teacher_epochs = s.ekd_teacher_epochs
    names = []
    for i, entry in enumerate(s.ekd_teachers):
      name = f'ekd_teacher{i}_{teacher_regime}'
      deps[name] = Dep(
        name,
        f'{model_label(entry)} CNN teacher ({teacher_regime})',
        lambda s, seed, d, entry=entry, f=teacher_fraction, e=teacher_epochs: (
          supervised(s, seed, entry, e, fraction=f)
        ),
      )
      names.append(name)
    names = tuple(names)

    def build(
      s, seed, d, distill, names=names, epochs=epochs, fraction=fraction
    ):
      return ekd_config(
        s, seed, [d[n] for n in names], epochs, fraction, distill
      )

    data = (
      'all 4,000'
      if regime == 'full'
      else f'{s.ekd_fraction:.0%}, class-balanced'
    )
    single = model_label(s.ekd_single)
    cells += [
      Cell(
        'ekd',
        'single',
        f'single {single} ({data})',
        lambda s, seed, d, e=epochs, f=fraction: supervised(
          s, seed, s.ekd_single, e, fraction=f
        ),
        regime=regime,
        paper='(compact single student)',
      ),
      Cell(
        'ekd',
        'multi_alone',
        f'{k}-branch student trained alone ({data})',
        functools.partial(build, distill=False),
        deps=names,
        regime=regime,
        heads=(('student', 'ensemble'),)
        + branch_heads
        + (('branch_mean', 'branch mean'),),
        paper='(no teacher: ensemble of branches alone)',
        checks=(
          Check('ensemble > single', 'single'),
          Check(
            'ensemble > its branch mean',
            'multi_alone',
            '>',
            'student',
            'branch_mean',
          ),
        ),
      ),
      Cell(
        'ekd',
        'ekd',
        f'EKD, {k} teachers ({data})',
        functools.partial(build, distill=True),
        deps=names,
        regime=regime,
        heads=(('student', 'ensemble'),)
        + branch_heads
        + (('branch_mean', 'branch mean'),)
        + teacher_heads,
        paper=(
          '7-branch ResNet-8 89.66 % on CIFAR-10 (TAKD 88.01, mutual learning 87.71)'
          if regime == 'full'
          else '10 % of CIFAR: beats ResNet-110 with 3x fewer params, 2.8x fewer FLOPs'
        ),
        checks=(
          Check('EKD ensemble > single', 'single'),
          Check('EKD ensemble > multi-branch alone', 'multi_alone'),
          Check(
            'EKD ensemble > its branch mean',
            'ekd',
            '>',
            'student',
            'branch_mean',
          ),
        ),
      ),
    ]
  return cells, deps


CELL_BUILDERS = {'pkkd': pkkd_cells, 'ofd': ofd_cells, 'ekd': ekd_cells}

# -- The cost study: operation counts of each student -------------------------


def cost_rows(
  settings: Settings, aggregated: Dict[str, Any]
) -> List[Dict[str, Any]]:
  from kdjax import models, opcount  # pylint: disable=g-import-not-at-top

  entries = [
    ('pkkd', 'cnn', 'PKKD study: CNN', settings.pkkd_model, 'conv'),
    ('pkkd', 'ann', 'PKKD study: ANN alone', settings.pkkd_model, 'adder'),
    (
      'pkkd',
      'pkkd',
      'PKKD study: PKKD-trained ANN',
      settings.pkkd_model,
      'adder',
    ),
    ('ofd', 'alone', 'OFD study: student', settings.ofd_student, 'conv'),
    ('ofd', 'teacher', 'OFD study: teacher', settings.ofd_teacher, 'conv'),
    ('ekd', 'single', 'EKD study: single student', settings.ekd_single, 'conv'),
    (
      'ekd',
      'ekd',
      'EKD study: multi-branch student',
      ('ekd_student', settings.ekd_student_kwargs),
      'conv',
    ),
    (
      'ekd',
      'ekd',
      'EKD student in adder form (not trained here)',
      ('ekd_student', settings.ekd_student_kwargs),
      'adder',
    ),
  ]
  rows = []
  for study, cell, what, (name, kwargs), conv_type in entries:
    model = models.build_model(
      name, conv_type=conv_type, num_classes=10, **kwargs
    )
    ops = opcount.count_ops(model, (28, 28, 1))
    result = (
      aggregated.get(f'{study}/full/{cell}', {}).get('heads', {}).get('student')
    )
    if 'not trained' in what:
      result = None
    rows.append(
      {
        'what': what,
        'model': model_label((name, kwargs)),
        'conv_type': conv_type,
        'multiplications': ops['multiplications'],
        'additions': ops['additions'],
        'parameters': ops['parameters'],
        'energy_pj': ops['energy_pj'],
        'layout': ops['layout'],
        'accuracy': result,
      }
    )
  return rows


def cost_checks(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  cnn, ann = rows[0], rows[1]
  mul_share = ann['multiplications'] / max(cnn['multiplications'], 1)
  add_ratio = ann['additions'] / max(cnn['additions'], 1)
  energy_ratio = cnn['energy_pj'] / max(ann['energy_pj'], 1e-9)
  # Paper ResNet-18: CNN 1.8G mul + 1.8G add, ANN ~0 mul + 3.6G add.
  paper_energy_ratio = (3.7 * 1.8 + 0.9 * 1.8) / (0.9 * 3.6)
  return [
    dict(
      claim='ANN has ~no multiplications (paper ResNet-18: ~0 vs 1.8G)',
      value=f"{mul_share:.1%} of the CNN's",
      verdict='yes' if mul_share < 0.05 else 'no',
    ),
    dict(
      claim="ANN additions ~ 2x the CNN's (paper ResNet-18: 3.6G vs 1.8G)",
      value=f'{add_ratio:.2f}x',
      verdict='yes' if 1.8 <= add_ratio <= 2.05 else 'no',
    ),
    dict(
      claim=f"ANN energy below the CNN's (paper ResNet-18: {paper_energy_ratio:.2f}x less)",
      value=f'{energy_ratio:.2f}x less',
      verdict='yes' if energy_ratio > 1 else 'no',
    ),
  ]


def select_cells(
  settings: Settings, studies: Sequence[str], wanted: Sequence[str] = ()
) -> Tuple[List[Cell], Dict[str, Dep]]:
  """The cells of ``studies`` (those named in ``wanted``, if any) and deps.

  ``wanted`` names a cell as NAME, STUDY/NAME or STUDY/REGIME/NAME.
  """
  cells, deps = [], {}
  for study in studies:
    if study in CELL_BUILDERS:
      study_cells, study_deps = CELL_BUILDERS[study](settings)
      if wanted:
        study_cells = [
          c
          for c in study_cells
          if {c.name, f'{c.study}/{c.name}', f'{c.study}/{c.regime}/{c.name}'}
          & set(wanted)
        ]
      cells += study_cells
      deps.update(study_deps)
  return cells, deps
