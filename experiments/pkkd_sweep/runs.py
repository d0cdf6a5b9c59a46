"""The runs of each grid: configs from the study's builders, in run order.

Every run is an in-process ``train_and_evaluate`` of a config built by
experiments.mnist5k_study's builders (``supervised``, ``pkkd_config``) or from
the ``demo`` presets, run (or reused) by the study's runner (``run_job``,
keyed by ``config_key``: kdjax.train.run_config's run identity).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from experiments import mnist5k_study as study

from .grids import (
  knobs_of,
  SELECT_SEEDS,
  CONFIRM_SEEDS,
  REGIME,
  QUICK_REGIME,
  VARIANTS,
  LATE_VARIANTS,
  QUICK_VARIANTS,
  WINNER,
  DEMO_BASE,
  DEMO_VARIANTS,
  DEMO_WINNER,
  DEMO_LATE_VARIANTS,
  PREMISE_GRID,
  PREMISE_PKKD_CELL,
  PREMISE_PKKD_VARIANTS,
  PREMISE_PKKD_LATE_VARIANTS,
  PREMISE_PKKD_WINNER,
)

REPO = study.REPO


@dataclasses.dataclass
class Run:
  cell: str
  seed: int
  # A config; None: the PKKD config of the sweep variant named `cell`; a
  # callable: called with teacher_dir= (the run directory of deps[0]).
  config: Any
  deps: Tuple[str, ...] = ()
  # The runs directory's name for it (default: the cell), so that a grid can
  # reuse another grid's run of the same config.
  workdir_name: Optional[str] = None


def settings_for(regime: Dict[str, Any], loader: str) -> study.Settings:
  s = study.Settings(
    batch_size=regime['batch_size'],
    # study.finish uses this batch for fraction < 1: the same batch everywhere.
    ekd_10pct_batch_size=regime['batch_size'],
    pkkd_epochs=regime['epochs'],
    recalibration_batches=regime['recalibration_batches'],
    eval_split=regime['eval_split'],
    eval_batch_size=250 if regime['eval_split'] == 'test' else 32,
    max_steps=regime.get('max_steps', -1),
    pkkd_model=regime['model'],
    loader=loader,
  )
  return s


def alone(s, seed, regime, conv_type, entry=None, epochs=None, fraction=None):
  """The regime's network trained alone (configs/supervised.py), conv or adder."""
  return study.supervised(
    s,
    seed,
    entry or regime['model'],
    epochs or regime['epochs'],
    conv_type,
    regime['fraction'] if fraction is None else fraction,
  )


def pkkd_run(s, seed, regime, knobs, teacher_dir=None):
  knobs = dict(knobs)
  if knobs.get('stages') is None:
    knobs.pop('stages')
  config = study.pkkd_config(s, seed, teacher_dir, **knobs)
  return study.finish(config, s, seed, regime['epochs'], regime['fraction'])


def sweep_runs(s, regime, quick: bool) -> List[Run]:
  """Baselines first, then each variant on all its seeds (a stopped sweep
  leaves whole cells), then the confirmation seeds."""
  if _frozen(WINNER) or _frozen('paper'):
    raise ValueError('confirmation of a frozen-teacher cell is not wired')
  select = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  confirm = () if quick else CONFIRM_SEEDS
  variants = QUICK_VARIANTS if quick else [v[0] for v in VARIANTS]
  runs = []
  for seed in select:
    runs.append(Run('ann', seed, alone(s, seed, regime, 'adder')))
    runs.append(Run('cnn', seed, alone(s, seed, regime, 'conv')))
  for name in variants:
    for seed in select:
      runs.append(Run(name, seed, None, ('cnn',) if _frozen(name) else ()))
  # Confirmation cell by cell, the most telling comparison first.
  for name in dict.fromkeys(('ann', WINNER, 'paper', 'cnn')):
    for seed in confirm:
      if name in ('ann', 'cnn'):
        conv_type = 'adder' if name == 'ann' else 'conv'
        runs.append(Run(name, seed, alone(s, seed, regime, conv_type)))
      else:
        runs.append(Run(name, seed, None))
  for name in () if quick else [v[0] for v in LATE_VARIANTS]:
    for seed in select:
      runs.append(Run(name, seed, None, ('cnn',) if _frozen(name) else ()))
  return runs


def variant_run(name: str, seed: int, knobs: Dict[str, Any], build) -> Run:
  """The run of a PKKD variant whose config ``build(teacher_dir=...)`` makes.

  A frozen-teacher variant's teacher is this seed's CNN alone, restored from
  its run: its config is built once that run's directory is known."""
  if knobs['teacher_mode'] == 'frozen':
    return Run(name, seed, build, deps=('cnn',))
  return Run(name, seed, build())


def _frozen(name: str) -> bool:
  return knobs_of(name)['teacher_mode'] == 'frozen'


def premise_runs(s, quick: bool) -> List[Run]:
  runs = []
  grid = PREMISE_GRID[:1] if quick else PREMISE_GRID
  seeds = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  for label, entry, epochs, fraction in grid:
    if quick:
      entry, epochs, fraction = QUICK_REGIME['model'], 1, 0.1
    for seed in seeds:
      for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv')):
        config = alone(s, seed, None, conv_type, entry, epochs, fraction)
        # Quick: the --grid sweep --quick runs of the same configs.
        name = kind if quick else None
        runs.append(Run(f'{label}/{kind}', seed, config, workdir_name=name))
  return runs


def premise_pkkd_regime(quick: bool) -> Dict[str, Any]:
  if quick:
    return dict(QUICK_REGIME)
  (_, entry, epochs, fraction) = dict((g[0], g) for g in PREMISE_GRID)[
    PREMISE_PKKD_CELL
  ]
  return dict(REGIME, model=entry, epochs=epochs, fraction=fraction)


def premise_pkkd_knobs(name: str, total_steps: int) -> Dict[str, Any]:
  knobs = dict(dict(PREMISE_PKKD_VARIANTS + PREMISE_PKKD_LATE_VARIANTS)[name])
  if knobs['ramp_steps'] == 'half':
    knobs['ramp_steps'] = total_steps // 2
  return knobs


def premise_pkkd_runs(
  s, regime, quick: bool, phase: str = 'all', winner: Optional[str] = None
) -> List[Run]:
  """Selection: the ANN and the CNN alone (the premise grid's runs), then
  PREMISE_PKKD_VARIANTS, on SELECT_SEEDS; confirmation: the ANN alone, the
  CNN alone and ``winner`` (default PREMISE_PKKD_WINNER; any variant's name,
  e.g. a late variant chosen on SELECT_SEEDS) seed by seed on CONFIRM_SEEDS,
  then the paper-literal setting there; then PREMISE_PKKD_LATE_VARIANTS on
  SELECT_SEEDS. ``phase``: 'select' (both selections), 'confirm' or 'all'."""
  seeds = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  winner = winner or PREMISE_PKKD_WINNER

  def baselines(seed):
    # The premise grid's runs of this cell (quick: the --grid sweep --quick
    # runs of the same configs).
    return [
      Run(
        kind,
        seed,
        alone(s, seed, regime, conv_type),
        workdir_name=kind if quick else f'{PREMISE_PKKD_CELL}/{kind}',
      )
      for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv'))
    ]

  selection = [run for seed in seeds for run in baselines(seed)]
  if quick:  # The sweep's quick variant, whose run --grid sweep --quick made.
    return selection + [Run('quick', seeds[0], None)]
  total = premise_pkkd_total_steps(s, regime)

  def variant(name, seed):
    knobs = premise_pkkd_knobs(name, total)
    build = functools.partial(pkkd_run, s, seed, regime, knobs)
    return variant_run(name, seed, knobs, build)

  for name, _ in PREMISE_PKKD_VARIANTS:
    selection += [variant(name, seed) for seed in seeds]
  late = [
    variant(name, seed)
    for name, _ in PREMISE_PKKD_LATE_VARIANTS
    for seed in seeds
  ]
  confirm = []
  for seed in CONFIRM_SEEDS:
    confirm += baselines(seed) + [variant(winner, seed)]
  confirm += [variant('paper', seed) for seed in CONFIRM_SEEDS]
  if phase == 'select':
    return selection + late
  if phase == 'confirm':
    return confirm
  return selection + confirm + late


def premise_pkkd_total_steps(s, regime) -> int:
  """The steps of a run in `regime`, as the trainer counts them (its input's
  steps per epoch and its run length), for a ramp over half the run."""
  from kdjax.train import setup as kd_setup  # pylint: disable=g-import-not-at-top

  config = alone(s, SELECT_SEEDS[0], regime, 'adder')
  train_source, _ = kd_setup.build_inputs(config)
  return kd_setup.run_length(config, train_source.steps_per_epoch)


@functools.lru_cache(maxsize=None)
def demo_module():
  # Loaded once: every run of the demo grid reads its constants and presets.
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', 'pkkd.py')
  )


def demo_total_steps() -> int:
  """The steps of one configs/pkkd.py:demo run (its ramp is half of them)."""
  return demo_module().DEMO_EPOCHS * demo_module().DEMO_STEPS_PER_EPOCH


def demo_variant_names() -> List[str]:
  return [v[0] for v in DEMO_VARIANTS + DEMO_LATE_VARIANTS]


def demo_knobs(name: str, total_steps: int) -> Dict[str, Any]:
  knobs = dict(DEMO_BASE)
  late = dict(DEMO_LATE_VARIANTS)
  if name in late:
    knobs.update(dict(DEMO_VARIANTS)[DEMO_WINNER])
    knobs.update(late[name])
  else:
    knobs.update(dict(DEMO_VARIANTS)[name])
  if knobs['ramp_steps'] == 'half':
    knobs['ramp_steps'] = total_steps // 2
  return knobs


def demo_common(config, seed: int, quick: bool, epochs: int):
  """The demo preset's settings (and the quick rot check's cuts)."""
  config.seed = seed
  config.num_epochs = epochs
  for key, value in demo_module().DEMO_SETTINGS.items():
    node, *rest = key.split('.')
    if rest:
      config[node][rest[0]] = value
    else:
      config[key] = value
  config.log_every_steps = 1000
  config.keep_checkpoints = 1
  if quick:
    config.update(
      dict(
        max_steps=2,
        batch_size=8,
        eval_batch_size=8,
        eval_bn_recalibration_batches=1,
      )
    )
    config.dataset.eval_split = 'test[:16]'
    # The network at its smallest, so that compiling stays seconds.
    for entry in (config.model, config.get('teacher')):
      if entry is not None:
        entry.kwargs = dict(stem_width=4, stage_widths=(4, 8, 8))
  return config


def demo_pkkd(
  name: str, seed: int, quick: bool = False, teacher_dir: Optional[str] = None
):
  """configs/pkkd.py:demo with the knobs of the demo variant ``name``; a
  frozen-teacher variant restores its teacher from ``teacher_dir`` (the same
  seed's CNN alone)."""
  module = demo_module()
  config = module.get_config('demo')
  knobs = demo_knobs(name, demo_total_steps())
  if knobs.get('stages') is None:
    knobs.pop('stages')
  if knobs['teacher_mode'] == 'frozen':
    if teacher_dir is None:
      raise ValueError(f'demo variant {name!r} needs a teacher_dir')
    config.teacher.checkpoint_dir = teacher_dir
  # The grid's ramps are step counts (resolved above), not the preset's share.
  config.pkkd.ramp_fraction = 0.0
  config.pkkd.update(knobs)
  return demo_common(config, seed, quick, module.DEMO_EPOCHS)


def demo_alone(conv_type: str, seed: int, quick: bool = False):
  """configs/supervised.py:demo as the demo's network alone (README command)."""
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  module = demo_module()
  config = config_defaults.load_config_module(
    os.path.join(REPO, 'configs', 'supervised.py')
  ).get_config('demo')
  config.model.name = 'resnet8'
  config.model.conv_type = conv_type
  return demo_common(config, seed, quick, module.DEMO_EPOCHS)


def demo_runs(
  quick: bool, phase: str = 'all', winner: Optional[str] = None
) -> List[Run]:
  """Selection: the ANN and the CNN alone, then each variant (DEMO_VARIANTS,
  then DEMO_LATE_VARIANTS) on all seeds; confirmation on the fresh seeds:
  the ANN alone, the CNN alone and ``winner`` (default DEMO_WINNER) seed by
  seed, then DEMO_WINNER (when ``winner`` is another variant) and the
  paper-literal setting."""
  select = SELECT_SEEDS[:1] if quick else SELECT_SEEDS
  winner = winner or DEMO_WINNER

  def variant(name, seed):
    knobs = demo_knobs(name, demo_total_steps())
    build = functools.partial(demo_pkkd, name, seed, quick)
    return variant_run(name, seed, knobs, build)

  runs = []
  if quick:
    runs.append(Run('ann', select[0], demo_alone('adder', select[0], quick)))
    runs.append(variant(DEMO_VARIANTS[0][0], select[0]))
    runs.append(Run('cnn', select[0], demo_alone('conv', select[0], quick)))
    return runs
  if phase in ('all', 'select'):
    for kind, conv_type in (('ann', 'adder'), ('cnn', 'conv')):
      for seed in select:
        runs.append(Run(kind, seed, demo_alone(conv_type, seed)))
    for name in demo_variant_names():
      runs += [variant(name, seed) for seed in select]
  if phase in ('all', 'confirm'):
    # Seed by seed, so that a sweep stopped early leaves complete pairs.
    for seed in CONFIRM_SEEDS:
      runs.append(Run('ann', seed, demo_alone('adder', seed)))
      runs.append(Run('cnn', seed, demo_alone('conv', seed)))
      runs.append(variant(winner, seed))
    # The current default (when another variant is confirmed) and the
    # paper-literal setting beside it, on the same fresh seeds.
    for name in dict.fromkeys((DEMO_WINNER, 'paper')):
      if name != winner:
        runs += [variant(name, seed) for seed in CONFIRM_SEEDS]
  return runs


def execute(
  runs: List[Run], s, regime, runs_dir: str, log, reuse_only: bool = False
) -> List[Dict[str, Any]]:
  """Trains (or reuses) every run in order; returns one record per run.

  With ``reuse_only`` a run not already stored is left out (and logged)."""
  done: Dict[Tuple[str, int], study.Job] = {}
  records = []
  for run in runs:
    config = run.config
    dep_keys = []
    if config is None or callable(config):
      teacher_dir = None
      if run.deps:
        teacher_job = done[(run.deps[0], run.seed)]
        teacher_dir, dep_keys = teacher_job.workdir, [teacher_job.key]
      if config is None:
        config = pkkd_run(s, run.seed, regime, knobs_of(run.cell), teacher_dir)
      else:  # Built once its teacher's run directory is known.
        config = config(teacher_dir=teacher_dir)
    key = study.config_key(config, dep_keys)
    workdir = os.path.join(
      runs_dir, (run.workdir_name or run.cell).replace('/', '_')
    )
    job = study.Job(
      'pkkd_sweep', run.cell, run.seed, config, key, f'{workdir}_s{run.seed}', 0
    )
    if reuse_only and study.stored_summary(job) is None:
      log(f'  missing {run.cell} seed {run.seed} (not run; --reuse-only)')
      continue
    started, cpu_started = time.time(), time.process_time()
    summary = study.run_job(job, log)
    done[(run.cell, run.seed)] = job
    records.append(
      dict(
        cell=run.cell,
        seed=run.seed,
        accuracy=dict(summary['eval_accuracy']),
        wall_seconds=summary['wall_seconds'],
        elapsed_seconds=time.time() - started,
        cpu_seconds=time.process_time() - cpu_started,
        load_average=os.getloadavg(),
        steps=summary['steps'],
        history=summary['history'],
      )
    )
  return records


def only_cells(runs: List[Run], cells: Optional[str]) -> List[Run]:
  """``runs`` restricted to the cells named in ``cells`` (comma-separated;
  None: all) and the ANN and CNN alone (the baselines and frozen teachers)."""
  if not cells:
    return runs
  wanted = set(cells.split(','))
  unknown = wanted - {r.cell for r in runs}
  if unknown:
    raise SystemExit(
      f'--cells: {", ".join(sorted(unknown))} not in this grid; its cells: '
      f'{", ".join(dict.fromkeys(r.cell for r in runs))}.'
    )
  return [r for r in runs if r.cell in wanted | {'ann', 'cnn'}]


def premise_labels(runs: List[Run]) -> set:
  """The premise-grid cell labels of ``runs`` ('<label>/ann' -> label)."""
  return {r.cell.split('/')[0] for r in runs}
