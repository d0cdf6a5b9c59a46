"""The command line: ``python -m kdjax.reproduce`` (docs/reproduce.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

from kdjax.reproduce import estimate, report, tables
from kdjax.reproduce import planner as planning

PROG = 'python -m kdjax.reproduce'
USAGE = f"""examples:
  {PROG} --list
  {PROG} --table=ofd_cifar100 --dry-run
  {PROG} --table=ofd_cifar100 [--seeds=5] [--shard=0/4] [--root=runs/ofd_cifar100]
  {PROG} --table=ofd_cifar100 --report
"""


def parse_args(argv: Optional[List[str]]):
  parser = argparse.ArgumentParser(
    prog=PROG,
    description='Reproduce a paper table: plan, run, resume and report every '
    'run it needs (teachers first) under one root directory.',
    epilog=USAGE,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--list', action='store_true', help='name every table')
  parser.add_argument('--table', help='the table: ' + ', '.join(tables.names()))
  parser.add_argument(
    '--root', help='where every run of the table lives (default runs/<table>)'
  )
  parser.add_argument(
    '--seeds', type=int, help="seeds 0..N-1 per cell (default: the table's)"
  )
  parser.add_argument(
    '--shard',
    default='0/1',
    help='i/n: this process runs every n-th run of the plan, from the i-th',
  )
  parser.add_argument(
    '--cells',
    default='',
    help='only these cell ids (ROW/COLUMN), comma-separated',
  )
  parser.add_argument(
    '--dry-run',
    action='store_true',
    help='print every run (command, workdir, teachers, estimate); train nothing',
  )
  parser.add_argument(
    '--report',
    action='store_true',
    help='write ROOT/report.md (and .json) from the finished runs and print it',
  )
  args = parser.parse_args(argv)
  if not args.list and not args.table:
    parser.error('give --list or --table=NAME')
  try:
    args.shard = planning.parse_shard(args.shard)
  except ValueError as e:
    parser.error(str(e))
  if args.seeds is not None and args.seeds < 1:
    parser.error('--seeds must be >= 1')
  args.cells = [c.strip() for c in args.cells.split(',') if c.strip()]
  return args


def list_tables(out) -> Dict[str, Any]:
  listed = {}
  for name in tables.names():
    try:
      table = tables.get(name)
    except ValueError as e:
      print(f'{name}: unavailable here: {e}', file=out)
      listed[name] = None
      continue
    print(f'{name}: {table.title} ({len(table.cells)} cells)', file=out)
    listed[name] = table.title
  return listed


def _state(job, finished: set) -> str:
  if job.key in finished:
    return 'finished'
  if any(d not in finished for d in job.deps):
    return 'waits for its teachers'
  return 'resumes' if planning.started(job) else 'to run'


def dry_run(plan: planning.TablePlan, jobs, out) -> Dict[str, Any]:
  table = plan.table
  finished = {j.key for j in plan.jobs if planning.stored_summary(j)}
  todo = [j for j in jobs if j.key not in finished]
  total, left = estimate.totals(jobs), estimate.totals(todo)
  p = lambda *a: print(*a, file=out)
  p(f'table {table.name}: {table.title}')
  p(
    f'root {plan.root}; {plan.seeds} seed(s); {table.metric}, {table.rule} '
    f'over seeds ({table.rule_source})'
  )
  p(
    f'plan: {total["runs"]} runs, {total["steps"]:,} steps, ~'
    f'{estimate.hours(total["device_hours"] * 3600)}'
    f' device-hours; left: {left["runs"]} runs, ~'
    f'{estimate.hours(left["device_hours"] * 3600)} device-hours'
  )
  p(f'  estimate: {table.step_seconds_source or estimate.STEP_SECONDS_SOURCE}')
  missing = estimate.missing_data(j.config for j in jobs)
  for name, root, fix in missing:
    p(f'missing data: {name} is not prepared in {root}; prepare it with:')
    p(f'  {fix}')
  for cell_id, why in plan.unavailable.items():
    p(f'unavailable: {cell_id}: {why}')
  by_key = plan.by_key
  for i, job in enumerate(jobs):
    phase = 'teacher' if job.phase == 0 else 'student'
    p(
      f'[{i}] {phase} {job.cell} seed {job.seed}: {_state(job, finished)}; '
      f'{job.steps:,} steps, ~{estimate.hours(job.estimate_s)} device-hours'
    )
    p(f'    workdir {job.workdir}')
    for dep in job.deps:
      p(f'    waits for {by_key[dep].workdir}/checkpoints')
    p(f'    {job.command}')
  return {
    'jobs': [
      {
        'cell': j.cell,
        'seed': j.seed,
        'phase': j.phase,
        'workdir': j.workdir,
        'command': j.command,
        'steps': j.steps,
        'device_hours': j.estimate_s / 3600,
        'waits_for': [by_key[d].workdir for d in j.deps],
        'state': _state(j, finished),
      }
      for j in jobs
    ],
    'unavailable': dict(plan.unavailable),
    'missing_data': missing,
    'totals': total,
  }


def _initialize_distributed() -> None:
  """Joins a multi-host job as kdjax.main does (every host runs every job)."""
  multi = os.environ.get('JAX_COORDINATOR_ADDRESS') or (
    os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0
  )
  if multi:
    from kdjax import main as kdjax_main  # pylint: disable=g-import-not-at-top

    kdjax_main.initialize_distributed()


def run_jobs(plan: planning.TablePlan, jobs, log) -> Dict[str, Any]:
  """Trains the jobs in order; a job whose teacher is unfinished waits."""
  finished = {j.key for j in plan.jobs if planning.stored_summary(j)}
  ran, skipped, waiting = [], [], []
  for job in jobs:
    name = f'{job.cell} seed {job.seed}'
    if job.key in finished:
      log(f'  finished already: {name} ({job.workdir})')
      skipped.append(job.workdir)
      continue
    if any(d not in finished for d in job.deps):
      log(f'  waiting: {name} needs a teacher another shard has not finished')
      waiting.append(job.workdir)
      continue
    planning.run_job(job, log)
    finished.add(job.key)
    ran.append(job.workdir)
  return {'ran': ran, 'skipped': skipped, 'waiting': waiting}


def main(argv: Optional[List[str]] = None, out=None) -> Dict[str, Any]:
  """The CLI; returns what it printed as data (for tests)."""
  out = out or sys.stdout
  args = parse_args(argv)
  if args.list:
    return {'tables': list_tables(out)}
  try:
    table = tables.get(args.table)
  except ValueError as e:
    raise SystemExit(f'{PROG}: {e}') from None
  root = args.root or os.path.join('runs', table.name)
  plan = planning.plan_table(table, root, args.seeds, cells=args.cells)
  if args.report:
    written = report.write(plan)
    print(written['markdown'], file=out, end='')
    print(f'wrote {plan.root}/report.md and report.json', file=out)
    return written
  jobs = planning.shard(plan.jobs, *args.shard)
  if args.dry_run:
    return dry_run(plan, jobs, out)
  started = time.time()

  def log(message):
    print(f'[reproduce {time.time() - started:6.0f}s] {message}', file=out)
    out.flush()

  missing = estimate.missing_data(j.config for j in jobs)
  if missing:
    raise SystemExit(
      f'{PROG}: data missing; prepare it first (nothing is downloaded):\n'
      + '\n'.join(f'  {fix}' for _, _, fix in missing)
    )
  _initialize_distributed()
  log(
    f'table {table.name}: {len(jobs)} of {len(plan.jobs)} runs in shard '
    f'{args.shard[0]}/{args.shard[1]}, root {plan.root}'
  )
  done = run_jobs(plan, jobs, log)
  log(
    f'{len(done["ran"])} trained, {len(done["skipped"])} finished already, '
    f'{len(done["waiting"])} waiting for teachers of other shards (run the '
    f'same command again when they finish); `{PROG} --table={table.name} '
    f'--root={plan.root} --report` gives the table'
  )
  return done


def run(argv: Optional[List[str]] = None) -> int:
  """The exit status: 0, 75 when a run was preempted, a user error's code."""
  from kdjax import errors  # pylint: disable=g-import-not-at-top

  try:
    main(argv)
  except errors.KdjaxError as e:  # e.g. ConfigChangedError: as kdjax.main.
    print(f'{PROG}: {e}', file=sys.stderr)
    return getattr(e, 'exit_code', errors.EXIT_USER_ERROR)
  return 0
