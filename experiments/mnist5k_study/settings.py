"""Budgets and model sizes of the study (the same within each comparison)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# The committed outputs of this experiment (study.json, study.md, PNGs).
RESULTS = os.path.join(HERE, 'results')
STUDIES = ('pkkd', 'ofd', 'ekd', 'cost')
MIN_SEEDS = 3  # Every cell gets at least this many seeds, whatever the budget.


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


def settings_from_dict(fields: Dict[str, Any]) -> Settings:
  """The Settings recorded in a study.json's meta (JSON lists -> tuples)."""
  return Settings(**{k: _tuples(v) for k, v in fields.items()})
