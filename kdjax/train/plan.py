"""The runs one config asks for: each teacher it pre-trains, then itself.

A frozen teacher with ``pretrain_epochs`` and no ``checkpoint_dir`` is an
ordinary supervised run in ``<workdir>/teachers/<i>_<name>`` (so it resumes
like any run); the student's run then reads that directory as the teacher's
``checkpoint_dir``. Every run gets its own config: nothing is edited in place.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, List

import ml_collections

from kdjax import methods
from kdjax.train import run_config


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a plan.

  Attributes:
    role: how the console names it ('student', 'teacher 0 (resnet20)').
    config: what the run trains, with every teacher directory filled in.
    workdir: where its checkpoints, events and summary.json go.
    record: its config as checkpoints record it, for the resume check. For
      the student this is the config as given, before the teacher
      directories are filled in, so the same command resumes the same run.
  """

  role: str
  config: ml_collections.ConfigDict
  workdir: str
  record: Dict[str, Any]


def pretrained_teacher_dir(workdir: str, index: int, teacher) -> str:
  return os.path.join(workdir, 'teachers', f'{index}_{teacher.name}')


def _pretrained_teachers(config: ml_collections.ConfigDict):
  """(index, entry) of the frozen teachers trained in-process."""
  return [
    (i, teacher)
    for i, teacher in enumerate(methods.frozen_teacher_configs(config))
    if not teacher.get('checkpoint_dir') and teacher.get('pretrain_epochs', 0)
  ]


def teacher_run_config(config, teacher) -> ml_collections.ConfigDict:
  """The supervised run that pre-trains `teacher` for `config`."""
  sub = ml_collections.ConfigDict(config.to_dict())
  # Only what the teacher's own training reads, so that changing a setting of
  # the distillation does not count as a change of the teacher run.
  for key in ('teacher', 'teachers', config.method):
    if key in sub:
      del sub[key]
  sub.method = 'supervised'
  sub.model = ml_collections.ConfigDict(teacher.to_dict())
  sub.num_epochs = teacher.pretrain_epochs
  sub.max_steps = -1
  return sub


def _student_config(config, workdir) -> ml_collections.ConfigDict:
  """A copy of `config` whose pre-trained teachers point at their runs."""
  # A deep copy: ConfigDict(config.to_dict()) would share the entries of a
  # list of teachers with `config`.
  student = copy.deepcopy(config)
  for i, teacher in _pretrained_teachers(student):
    teacher.checkpoint_dir = pretrained_teacher_dir(workdir, i, teacher)
  return student


def build(config: ml_collections.ConfigDict, workdir: str) -> List[Run]:
  """The runs of `config` in order: each pre-trained teacher, then the student."""
  runs = []
  for i, teacher in _pretrained_teachers(config):
    teacher_config = teacher_run_config(config, teacher)
    runs.append(
      Run(
        role=f'teacher {i} ({teacher.name})',
        config=teacher_config,
        workdir=pretrained_teacher_dir(workdir, i, teacher),
        record=run_config.record(teacher_config),
      )
    )
  runs.append(
    Run(
      role='student',
      config=_student_config(config, workdir),
      workdir=workdir,
      record=run_config.record(config),
    )
  )
  return runs
