"""The plan: one job per distinct config, teachers first, and the result cache.

Every (cell, seed) becomes a train_and_evaluate call keyed by the hash of its
run identity (config_key: kdjax.train.run_config's result-changing keys) and
of its teachers' keys; identical configs (e.g. the PKKD CNN alone
and the EKD single student) run once. A job whose workdir holds a
study_key.json with the same key and a finished summary.json is reused, not
trained again; one with the same key and no finished summary (a run stopped by
SIGTERM, which stops the whole benchmark with exit code 75) resumes from its
checkpoint. Frozen teachers are jobs of the plan (group 'teachers') that
their students restore through ``checkpoint_dir``; the trainer's in-process
pre-training (``pretrain_epochs``) is never used (see the package docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .cells import Cell, Dep
from .costs import CostModel
from .settings import Settings


def config_key(config, dep_keys: Sequence[str] = ()) -> str:
  """A run's identity: what kdjax.train.run_config says changes its result.

  That is every key of the config but the result-neutral ones (logging and
  checkpoint frequency, eval batch size, data directory, ...: the keys a
  resume may change), plus ``max_steps``: a resume may extend a run, but a
  finished run of 2 steps is not the run of the whole schedule. A teacher's
  key is part of its students' keys (``dep_keys``).
  """
  from kdjax.train import run_config  # pylint: disable=g-import-not-at-top

  identity = {
    key: new
    for key, (_, new) in run_config.diff({}, run_config.record(config)).items()
  }
  identity['max_steps'] = config.get('max_steps', -1)
  text = json.dumps([identity, sorted(dep_keys)], sort_keys=True, default=str)
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
    check_teachers(cell, config, dep_dirs)
    group = (
      cell.study if cell.regime == 'full' else f'{cell.study}_{cell.regime}'
    )
    job = self._add(group, cell.name, seed, config, dep_keys)
    self.cell_jobs[(cell.study, cell.regime, cell.name, seed)] = job.key

  def seed_round(self, seed: int) -> List[Job]:
    return [j for j in self.jobs.values() if j.seed == seed]


def check_teachers(cell: Cell, config, dep_dirs: Dict[str, str]) -> None:
  """Every frozen teacher of ``config`` restores a teacher job of the plan.

  The trainer pre-trains a frozen teacher in-process when its entry has
  pretrain_epochs > 0 and no checkpoint_dir; in the study that would be a
  second, unshared and uncached teacher run, so it is an error here.
  """
  from kdjax import methods  # pylint: disable=g-import-not-at-top

  planned = set(dep_dirs.values())
  for teacher in methods.frozen_teacher_configs(config):
    checkpoint_dir = teacher.get('checkpoint_dir') or ''
    if checkpoint_dir not in planned or teacher.get('pretrain_epochs', 0):
      raise ValueError(
        f'study cell {cell.study}/{cell.regime}/{cell.name}: its frozen '
        f'teacher {teacher.name} has checkpoint_dir={checkpoint_dir!r} and '
        f'pretrain_epochs={teacher.get("pretrain_epochs", 0)}. Study teachers '
        'are planned runs (a Dep of the cell, trained once per seed, cached '
        'and shared): list the teacher in Cell.deps, set its checkpoint_dir '
        f'from the deps given to build (here {sorted(dep_dirs)}) and leave '
        'pretrain_epochs at 0 so the trainer does not pre-train it again.'
      )


def _same_key(job: Job) -> bool:
  """Whether job.workdir was started for this job's key (study_key.json)."""
  marker = os.path.join(job.workdir, 'study_key.json')
  if not os.path.exists(marker):
    return False
  with open(marker) as f:
    return json.load(f).get('key') == job.key


def stored_summary(job: Job) -> Optional[Dict[str, Any]]:
  """The finished summary that run_job would reuse for ``job``, or None."""
  summary_file = os.path.join(job.workdir, 'summary.json')
  if not (_same_key(job) and os.path.exists(summary_file)):
    return None
  with open(summary_file) as f:
    summary = json.load(f)
  if summary.get('eval_accuracy') and not summary.get('preempted'):
    return summary
  return None


def run_job(job: Job, log) -> Dict[str, Any]:
  """Trains (or reuses) one job; returns the trainer's summary."""
  from kdjax import errors  # pylint: disable=g-import-not-at-top
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  summary = stored_summary(job)
  if summary is not None:
    log(f'  reuse {job.group}/{job.label} seed {job.seed} ({job.workdir})')
    return summary
  if not _same_key(job):  # Another config's run, or none: start afresh.
    if os.path.exists(job.workdir):
      shutil.rmtree(job.workdir)
    os.makedirs(job.workdir)
    # Written first, so that a stopped run of this config resumes from its
    # checkpoint (the trainer's resume is bit-identical) instead of restarting.
    with open(os.path.join(job.workdir, 'study_key.json'), 'w') as f:
      json.dump({'key': job.key, 'label': job.label, 'seed': job.seed}, f)
  started = time.time()
  summary = kd_train.train_and_evaluate(job.config, job.workdir)
  if summary.get('preempted'):
    # A stop request (SIGTERM) saved this run's checkpoint; going on with
    # the next job would record this one without an accuracy and keep
    # training after the user asked to stop.
    log(
      f'  stopped: {job.group}/{job.label} seed {job.seed} was preempted at '
      f'step {summary["steps"]} (checkpoint in {job.workdir}). Runs finished '
      'so far are kept; rerun the same command to go on (the stopped run '
      'resumes from its checkpoint).'
    )
    raise SystemExit(errors.EXIT_PREEMPTED)
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
