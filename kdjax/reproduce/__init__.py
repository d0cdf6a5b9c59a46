r"""Reproduce a paper's table: ``python -m kdjax.reproduce`` (docs/reproduce.md).

  python -m kdjax.reproduce --list
  python -m kdjax.reproduce --table=ofd_cifar100 --dry-run
  python -m kdjax.reproduce --table=ofd_cifar100 [--seeds=5] [--shard=i/n]
  python -m kdjax.reproduce --table=ofd_cifar100 --report

Every run of a table lives under --root (default runs/<table>): teachers
first, then every cell on every seed; a finished run is skipped, a preempted
one resumes and a changed config is refused, as kdjax.main does.

Modules: spec.py (Table, Cell, Published: a table as data), tables.py (the
tables, every published number with its source), planner.py (jobs keyed by
run identity, teachers first, the result cache, shards; also the planner of
experiments/mnist5k_study), estimate.py (steps, device-hours, missing data),
stats.py (mean +- std, median, verdicts), report.py (the markdown table),
cli.py.
"""

from kdjax.reproduce.planner import (
  Job,
  Planner,
  TablePlan,
  config_key,
  plan_table,
  run_job,
  shard,
  stored_summary,
)
from kdjax.reproduce.spec import Cell, Published, Table
from kdjax.reproduce.tables import get, names, register

__all__ = [
  'Cell',
  'Job',
  'Planner',
  'Published',
  'Table',
  'TablePlan',
  'config_key',
  'get',
  'names',
  'plan_table',
  'register',
  'run_job',
  'shard',
  'stored_summary',
]
