"""The runs one config asks for: each teacher it pre-trains, then itself.

A frozen teacher with ``pretrain_epochs`` and no ``checkpoint_dir`` is an
ordinary supervised run in ``<workdir>/teachers/<i>_<name>`` (so it resumes
like any run), or a KD run from the entry's own ``distill_from`` teacher
(TAKD's chain); the student's run then reads that directory as the teacher's
``checkpoint_dir``. A method with an initialization phase
(``Method.init_phase_config``: AB, FT, FSP's init) gets a run of it in
``<workdir>/init_phase`` before its own, which then reads it as
``distill.init_dir``. Every run gets its own config: nothing is edited in
place.
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
  """The run that pre-trains `teacher` for `config`.

  A supervised run of the teacher's model; or, when the entry names a
  ``distill_from`` teacher of its own (TAKD's teacher assistant), a KD run
  from that teacher with `config`'s KD settings (configs/takd.py).
  """
  sub = copy.deepcopy(config)
  sub.unlock()  # The command line's config is locked; this copy is ours.
  # Only what the teacher's own training reads, so that changing a setting of
  # the distillation does not count as a change of the teacher run.
  for key in ('teacher', 'teachers', config.method):
    if key in sub:
      del sub[key]
  model = ml_collections.ConfigDict(teacher.to_dict())
  distill_from = model.get('distill_from')
  if distill_from is None:
    sub.method = 'supervised'
  else:
    del model['distill_from']
    sub.method = 'kd'
    sub.kd = ml_collections.ConfigDict(config.kd.to_dict())
    sub.teacher = ml_collections.ConfigDict(distill_from.to_dict())
  sub.model = model
  sub.num_epochs = teacher.pretrain_epochs
  sub.max_steps = -1
  return sub


def init_phase_dir(workdir: str) -> str:
  return os.path.join(workdir, 'init_phase')


def _student_config(config, workdir) -> ml_collections.ConfigDict:
  """A copy of `config` whose pre-trained teachers point at their runs."""
  # A deep copy: ConfigDict(config.to_dict()) would share the entries of a
  # list of teachers with `config`.
  student = copy.deepcopy(config)
  for i, teacher in _pretrained_teachers(student):
    teacher.checkpoint_dir = pretrained_teacher_dir(workdir, i, teacher)
  return student


def _init_phase_run(student, workdir, role) -> List[Run]:
  """The initialization run `student` needs (none when its dir is given)."""
  init = methods.init_phase_config(student)
  if init is None or student[student.method].get('init_dir'):
    return []
  with student.unlocked():
    student[student.method].init_dir = init_phase_dir(workdir)
  return [
    Run(
      role='initialization phase'
      if role == 'student'
      else f'{role}, initialization phase',
      config=init,
      workdir=init_phase_dir(workdir),
      record=run_config.record(init),
    )
  ]


def build(
  config: ml_collections.ConfigDict, workdir: str, role: str = 'student'
) -> List[Run]:
  """The runs of `config` in order: each pre-trained teacher, then the student.

  A pre-trained teacher that is itself distilled (``distill_from``) brings
  its own teacher's runs first, in its own workdir's ``teachers/``: a chain
  of any length, each link's checkpoint feeding the next.
  """
  runs = []
  for i, teacher in _pretrained_teachers(config):
    name = f'teacher {i} ({teacher.name})'
    runs += build(
      teacher_run_config(config, teacher),
      pretrained_teacher_dir(workdir, i, teacher),
      name if role == 'student' else f'{role}, {name}',
    )
  student = _student_config(config, workdir)
  runs += _init_phase_run(student, workdir, role)
  runs.append(
    Run(
      role=role,
      config=student,
      workdir=workdir,
      record=run_config.record(config),
    )
  )
  return runs
