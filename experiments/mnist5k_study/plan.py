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

The jobs, keys, cache and runner are kdjax.reproduce.planner's, the planner of
``python -m kdjax.reproduce`` (this study is its table ``mnist5k_study``,
reproduce_table.py); this module adds the study's cells, teachers and
wall-time estimates.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

from kdjax.reproduce import planner as generic
from kdjax.reproduce.planner import Job, config_key

from .cells import Cell, Dep
from .costs import CostModel
from .settings import Settings

# The study's runs are scratch: a workdir started for another key is
# deleted (kdjax.reproduce.planner.run_job with a marker).
MARKER = 'study_key.json'


def _without(tree, names):
  """``tree`` (dicts, lists, ConfigDicts) without the keys in ``names``, at any depth."""
  if hasattr(tree, 'to_dict'):
    tree = tree.to_dict()
  if isinstance(tree, dict):
    return {k: _without(v, names) for k, v in tree.items() if k not in names}
  if isinstance(tree, (list, tuple)):
    return [_without(v, names) for v in tree]
  return tree


class Planner(generic.Planner):
  """Turns (cells, deps, seeds) into jobs, one per distinct config."""

  def __init__(self, settings: Settings, runs_dir: str, cost: CostModel):
    super().__init__()
    self.settings = settings
    self.runs_dir = runs_dir
    self.cost = cost
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
    return self.add(job)

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


def stored_summary(job: Job):
  """The finished summary that run_job would reuse for ``job``, or None."""
  return generic.stored_summary(job, MARKER)


def use_compile_cache(runs_dir: str) -> None:
  """Keeps every compiled program in ``runs_dir``/jax_cache for later runs.

  A cache the caller has already chosen (JAX_COMPILATION_CACHE_DIR, as the
  test suite sets it) is kept: jax opens its cache once per process, at the
  first compile, so a switch made here would take the rest of the process
  (every later test of a pytest worker) off the caller's cache.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update(
    'jax_compilation_cache_dir', os.path.join(runs_dir, 'jax_cache')
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)


def run_job(job: Job, log) -> Dict[str, Any]:
  """Trains (or reuses) one job; returns the trainer's summary."""
  return generic.run_job(job, log, MARKER)


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
