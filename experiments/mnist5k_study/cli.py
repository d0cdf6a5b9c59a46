"""The command line: ``python -m experiments.mnist5k_study`` (from the repository root)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Any, Dict, List

from . import __doc__ as package_doc
from . import costs, report
from .cells import select_cells
from .costs import CostModel
from .plan import Planner, collect_runs, run_job, use_compile_cache
from .report import write_outputs
from .settings import (
  MIN_SEEDS,
  RESULTS,
  STUDIES,
  Settings,
  apply_override,
  model_label,
  quick_settings,
  scaled,
)

# The documented command, as study.json records it.
DEFAULT_PROG = 'python -m experiments.mnist5k_study'


def parse_args(argv, prog: str = DEFAULT_PROG):
  parser = argparse.ArgumentParser(
    prog=prog,
    description=package_doc.split('\n')[0],
    epilog='\n'.join(package_doc.split('\n')[1:]),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--out',
    default=RESULTS,
    help='where study.json, study.md and the PNGs go; runs go in '
    'OUT/study_runs (default: experiments/mnist5k_study/results/)',
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
  parser.add_argument(
    '--step-seconds',
    default=costs.STEP_SECONDS_FILE,
    help='timing table of the cost model (default: '
    'experiments/mnist5k_study/step_seconds.json)',
  )
  parser.add_argument(
    '--measure-step-seconds',
    action='store_true',
    help='re-measure the timing table on this machine (three short '
    'supervised runs per network, minutes) and rewrite --step-seconds; '
    'trains nothing else',
  )
  parser.add_argument(
    '--measure-steps',
    type=int,
    default=20,
    help='--measure-step-seconds: extra steps timed per network',
  )
  parser.add_argument(
    '--report-from',
    default=None,
    metavar='STUDY_JSON',
    help='write study.md and the PNGs again from this study.json (in '
    '--out if given, else next to it), statistics recomputed from its '
    'runs; trains nothing',
  )
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(argv)
  args.argv = argv
  args.prog = prog
  args.out_given = any(a == '--out' or a.startswith('--out=') for a in argv)
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


def main(argv=None, prog: str = DEFAULT_PROG) -> Dict[str, Any]:
  """The CLI; returns study.json's content (or the plan, or the table)."""
  args = parse_args(argv, prog)
  if args.report_from:
    result, written = report.rebuild(
      args.report_from, args.out if args.out_given else None
    )
    print('\n'.join(f'wrote {p}' for p in written))
    return result
  started = time.time()
  load_start = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  out_dir = os.path.abspath(args.out)
  runs_dir = os.path.join(out_dir, 'study_runs')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

  # --measure-step-seconds times cold compilations in a cache of its own.
  if not (args.no_compile_cache or args.dry_run or args.measure_step_seconds):
    use_compile_cache(runs_dir)
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
  cost = CostModel(costs.load_step_table(args.step_seconds))
  if args.measure_step_seconds:
    log(
      f'measuring {len(cost.table.networks)} networks, '
      f'{args.measure_steps} steps each, into {args.step_seconds}'
    )
    table = costs.measure(
      cost.table, settings, log, args.measure_steps, args.step_seconds
    )
    log(f'wrote {table.path}')
    return table.data
  cells, deps = select_cells(settings, args.studies, args.cells)
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

  def write(final: bool) -> Dict[str, Any]:
    return write_outputs(
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
      final=final,
    )

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
    write(final=False)
  result = write(final=True)
  log(f'wall time {(time.time() - started) / 60:.1f} min; outputs in {out_dir}')
  if failures:
    log(
      f'{len(failures)} run(s) failed: '
      + '; '.join(
        f'{f["group"]}/{f["label"]} seed {f["seed"]}' for f in failures
      )
    )
  return result


def run(argv=None, prog: str = DEFAULT_PROG) -> int:
  """Exit status: 1 when a run failed."""
  result = main(argv, prog)
  return 1 if result.get('failures') else 0
