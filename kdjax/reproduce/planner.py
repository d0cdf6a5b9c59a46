"""The generic planner: jobs keyed by run identity, teachers first, a cache.

A job is one ``train_and_evaluate(config, workdir)`` call. Its key is the
hash of its run identity (config_key: the result-changing keys of
kdjax.train.run_config, plus ``max_steps``) and of its teachers' keys, so
two cells with the same config run once. The result cache is the trainer's
own: a finished ``summary.json`` in the job's workdir whose config has the
job's identity (or, with a ``marker`` file, whose marker holds the job's
key). run_job trains what is not cached; the trainer then resumes a
preempted run and refuses a changed config (ConfigChangedError), exactly as
``python -m kdjax.main`` does. A preempted run stops everything with exit
code 75 (rerun to resume).

plan_table turns a spec.Table into jobs: every available cell on every seed,
teachers first (phase 0: the cells others restore; phase 1: the rest), each
with its workdir under the table's root, its kdjax.main command and the
teacher workdirs it waits for. shard(jobs, i, n) is every n-th job in that
order; a job whose teacher has not finished is 'waiting', not run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from etils import epath

from kdjax.reproduce import estimate
from kdjax.reproduce.spec import Cell, Table, slug

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


# -- Identity and jobs ----------------------------------------------------------


def identity(record: Dict[str, Any]) -> Dict[str, Any]:
  """A recorded config's result-changing keys, plus ``max_steps``.

  A resume may change the others (logging, checkpoint frequency, eval batch,
  data directory; kdjax.train.run_config), and may extend ``max_steps``, but a
  finished run of 2 steps is not the run of the whole schedule.
  """
  from kdjax.train import run_config  # pylint: disable=g-import-not-at-top

  out = {key: new for key, (_, new) in run_config.diff({}, record).items()}
  out['max_steps'] = record.get('max_steps', -1)
  return out


def config_key(config, dep_keys: Sequence[str] = ()) -> str:
  """A run's identity as a short hash; a teacher's key is part of its students'."""
  from kdjax.train import run_config  # pylint: disable=g-import-not-at-top

  text = json.dumps(
    [identity(run_config.record(config)), sorted(dep_keys)],
    sort_keys=True,
    default=str,
  )
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Job:
  """One train_and_evaluate call of a plan.

  deps are the keys of the jobs it restores as teachers; command is the
  ``python -m kdjax.main`` line that trains it by hand; phase 0 holds the
  teachers of a table, phase 1 the rest.
  """

  group: str
  label: str
  seed: int
  config: Any
  key: str
  workdir: str
  estimate_s: float
  deps: Tuple[str, ...] = ()
  command: str = ''
  steps: int = 0
  cell: str = ''
  phase: int = 1


class Planner:
  """Jobs in insertion order, one per key."""

  def __init__(self):
    self.jobs: Dict[str, Job] = {}

  def add(self, job: Job) -> Job:
    return self.jobs.setdefault(job.key, job)

  def seed_round(self, seed: int) -> List[Job]:
    return [j for j in self.jobs.values() if j.seed == seed]


# -- The result cache and running a job ---------------------------------------------


def _read_json(path: epath.Path) -> Optional[Dict[str, Any]]:
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except (OSError, ValueError):
    return None


def _same_key(job: Job, marker: str) -> bool:
  """Whether job.workdir was started for this job's key (the marker file)."""
  data = _read_json(epath.Path(job.workdir) / marker)
  return bool(data) and data.get('key') == job.key


def stored_summary(job: Job, marker: Optional[str] = None):
  """The finished summary of ``job`` in its workdir, or None.

  Finished: not preempted, with eval accuracies. Of this job: with a
  ``marker``, the marker file holds job.key; without, the summary's config
  has the job config's identity (so a run made by its kdjax.main command
  counts too).
  """
  summary = _read_json(epath.Path(job.workdir) / 'summary.json')
  if (
    not summary or summary.get('preempted') or not summary.get('eval_accuracy')
  ):
    return None
  if marker is not None:
    return summary if _same_key(job, marker) else None
  from kdjax.train import run_config  # pylint: disable=g-import-not-at-top

  recorded = summary.get('config')
  if recorded is None:
    return None
  mine = run_config.record(job.config)
  return summary if identity(recorded) == identity(mine) else None


def started(job: Job) -> bool:
  """Whether the workdir holds a checkpoint or summary (a run to resume)."""
  path = epath.Path(job.workdir)
  return (path / 'summary.json').exists() or (path / 'checkpoints').exists()


def run_job(
  job: Job, log: Callable[[str], None], marker: Optional[str] = None
) -> Dict[str, Any]:
  """Trains (or reuses) one job; returns the trainer's summary.

  With a ``marker`` (the mnist5k study's scratch runs), a workdir started
  for another key is deleted and the job starts afresh. Without one (tables),
  the trainer decides, as kdjax.main does: it resumes a preempted run,
  returns a finished one, and refuses a changed config (ConfigChangedError).
  """
  from kdjax import errors  # pylint: disable=g-import-not-at-top
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  summary = stored_summary(job, marker)
  if summary is not None:
    log(f'  reuse {job.group}/{job.label} seed {job.seed} ({job.workdir})')
    return summary
  if marker is not None and not _same_key(job, marker):
    if os.path.exists(job.workdir):  # Another config's run: start afresh.
      shutil.rmtree(job.workdir)
    os.makedirs(job.workdir)
    # Written first, so that a stopped run of this config resumes from its
    # checkpoint (the trainer's resume is bit-identical) instead of restarting.
    with open(os.path.join(job.workdir, marker), 'w') as f:
      json.dump({'key': job.key, 'label': job.label, 'seed': job.seed}, f)
  begun = time.time()
  summary = kd_train.train_and_evaluate(job.config, job.workdir)
  if summary.get('preempted'):
    # A stop request (SIGTERM) saved this run's checkpoint; going on with
    # the next job would keep training after the user asked to stop.
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
    f'({time.time() - begun:.0f} s, estimated {job.estimate_s:.0f} s)'
  )
  return summary


def parse_shard(text: str) -> Tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  try:
    index, count = (int(x) for x in text.split('/'))
  except ValueError:
    raise ValueError(f'--shard={text!r}: expected i/n, e.g. 0/4') from None
  if not 0 <= index < count:
    raise ValueError(f'--shard={text!r}: need 0 <= i < n')
  return index, count


def shard(jobs: Sequence[Job], index: int, count: int) -> List[Job]:
  """Every count-th job of the plan's order, starting at index."""
  return list(jobs)[index::count]


# -- Tables -----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _config_module(path: str):
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  return config_defaults.load_config_module(path)


def set_key(config, key: str, value) -> bool:
  """config[key] = value for a dotted key; False where the key is missing."""
  node, parts = config, key.split('.')
  for part in parts[:-1]:
    try:
      node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    except (KeyError, IndexError, ValueError, AttributeError):
      return False
  if parts[-1] not in node:
    return False
  node[parts[-1]] = value
  return True


def missing_names(config) -> List[str]:
  """The method and model names of ``config`` that kdjax does not have."""
  from kdjax import methods, models  # pylint: disable=g-import-not-at-top

  out = []
  if config.method not in methods.METHODS:
    out.append(f'method {config.method!r} (not in kdjax.methods.METHODS)')
  known = set(models.available_models())
  entries = [config.get('model')] + [config.get('teacher')]
  entries += list(config.get('teachers') or []) + list(
    config.get('peers') or []
  )
  for entry in entries:
    if entry is not None and entry.get('name') not in known:
      out.append(f'model {entry.get("name")!r} (not in the kdjax model zoo)')
  return out


def cell_config(cell: Cell, seed: int, teacher_dirs: Dict[str, str], repo: str):
  """(config, missing): the cell's config for ``seed``, or why there is none."""
  if cell.build is not None:
    try:
      config = cell.build(seed, dict(teacher_dirs))
    except Exception as e:  # pylint: disable=broad-except
      return None, f'its builder failed: {type(e).__name__}: {e}'
  else:
    path = os.path.join(repo, cell.config)
    if not os.path.exists(path):
      return None, f'{cell.config} does not exist'
    try:
      config = _config_module(path).get_config(cell.preset)
    except ValueError as e:  # The config says why: no such preset, or a
      # cell kdjax cannot run yet (configs/benchmark.py names what is missing).
      return None, f'{cell.config}:{cell.preset}: {e}'
    for key, value in cell.overrides.items():
      if not set_key(config, key, value):
        return None, f'override {key}: no such key in {cell.source}'
    config.seed = seed
    for key, workdir in teacher_dirs.items():
      if not set_key(config, key, workdir):
        return None, f'teacher key {key}: no such key in {cell.source}'
  missing = missing_names(config)
  if missing:
    return None, 'kdjax has no ' + ', no '.join(missing)
  return config, ''


def _value(value) -> str:
  if isinstance(value, (tuple, list)):
    inner = ','.join(str(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  return str(value)


def command(cell: Cell, job_seed: int, workdir: str, teacher_dirs, table, root):
  """The kdjax.main line of a cell's run (or the reproduce line for builders)."""
  if cell.build is not None:
    return (
      f'python -m kdjax.reproduce --table={table} --root={shlex.quote(root)} '
      f'--cells={shlex.quote(cell.id)} --seeds={job_seed + 1}'
    )
  parts = [
    'python -m kdjax.main',
    f'--config={cell.config}:{shlex.quote(cell.preset)}',
    f'--workdir={shlex.quote(workdir)}',
    f'--config.seed={job_seed}',
  ]
  for key, value in {**cell.overrides, **teacher_dirs}.items():
    parts.append(shlex.quote(f'--config.{key}={_value(value)}'))
  return ' '.join(parts)


@dataclasses.dataclass
class TablePlan:
  """The jobs of a table, in order, and what each (cell, seed) maps to."""

  table: Table
  root: str
  seeds: int
  jobs: List[Job]
  cell_jobs: Dict[Tuple[str, int], str]  # (cell id, seed) -> job key
  unavailable: Dict[str, str]  # cell id -> what is missing

  def job(self, cell_id: str, seed: int) -> Optional[Job]:
    key = self.cell_jobs.get((cell_id, seed))
    return None if key is None else self.by_key[key]

  @property
  def by_key(self) -> Dict[str, Job]:
    return {j.key: j for j in self.jobs}


def cell_seeds(cell: Cell, seeds: int) -> List[int]:
  return list(range(seeds if cell.seeds is None else min(seeds, cell.seeds)))


def _teacher_ids(table: Table) -> List[str]:
  used = {t for c in table.cells for t in c.teachers.values()}
  return [c.id for c in table.cells if c.id in used]


def plan_table(
  table: Table,
  root: str,
  seeds: Optional[int] = None,
  repo: str = REPO,
  cells: Sequence[str] = (),
) -> TablePlan:
  """Every available cell of ``table`` on every seed, teachers first.

  ``cells``: only these cell ids (and the teachers they restore).
  """
  seeds = table.seeds if seeds is None else seeds
  if '://' not in root:
    root = os.path.abspath(root)
  wanted = set(cells)
  for cell_id in list(wanted):
    if cell_id not in {c.id for c in table.cells}:
      raise ValueError(f'table {table.name} has no cell {cell_id!r}')
    wanted.update(table.cell(cell_id).teachers.values())
  teachers = _teacher_ids(table)
  ordered = [table.cell(t) for t in teachers] + [
    c for c in table.cells if c.id not in teachers
  ]
  planner = Planner()
  cell_jobs: Dict[Tuple[str, int], str] = {}
  unavailable: Dict[str, str] = {}
  for phase in (0, 1):
    for cell in ordered:
      if (cell.id in teachers) != (phase == 0):
        continue
      if wanted and cell.id not in wanted:
        continue
      for seed in cell_seeds(cell, seeds):
        dirs, dep_keys, missing = {}, [], ''
        for key, teacher_id in cell.teachers.items():
          teacher = table.cell(teacher_id)
          teacher_seed = cell_seeds(teacher, seed + 1)[-1]
          job_key = cell_jobs.get((teacher_id, teacher_seed))
          if job_key is None:
            missing = f'its teacher {teacher_id} is unavailable: ' + (
              unavailable.get(teacher_id, 'not planned')
            )
            break
          dirs[key] = planner.jobs[job_key].workdir
          dep_keys.append(job_key)
        config = None
        if not missing:
          config, missing = cell_config(cell, seed, dirs, repo)
        if missing:
          unavailable[cell.id] = missing
          break
        workdir = os.path.join(
          root, slug(cell.row), slug(cell.column), f'seed{seed}'
        )
        steps = estimate.steps(config)
        job = planner.add(
          Job(
            group=cell.row,
            label=cell.column,
            seed=seed,
            config=config,
            key=config_key(config, dep_keys),
            workdir=workdir,
            estimate_s=steps * estimate.step_seconds(config, table),
            deps=tuple(dep_keys),
            command=command(cell, seed, workdir, dirs, table.name, root),
            steps=steps,
            cell=cell.id,
            phase=phase,
          )
        )
        cell_jobs[(cell.id, seed)] = job.key
  return TablePlan(
    table, root, seeds, list(planner.jobs.values()), cell_jobs, unavailable
  )
