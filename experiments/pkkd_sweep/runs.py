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
from kdjax.reproduce import planner

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
  SWEEP_ORDER,
  PREMISE_ORDER,
  PREMISE_PKKD_ORDER,
  PREMISE_PKKD_QUICK_ORDER,
  DEMO_ORDER,
  DEMO_QUICK_ORDER,
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


def expand(
  order, seeds: Dict[str, Tuple[int, ...]], groups, make_run, phase='all'
) -> List[Run]:
  """The runs of a grid's ``order`` (grids.py: blocks of (phase, seeds, arms,
  by)), each made by ``make_run(arm, seed)``; ``groups`` fills in the arm
  groups ('{variants}', 'winner', ...), ``phase`` keeps that phase's blocks."""
  runs = []
  for block_phase, seed_set, arms, by in order:
    if phase not in ('all', block_phase):
      continue
    names = [n for arm in arms for n in groups.get(arm, (arm,))]
    names = list(dict.fromkeys(names))
    chosen = seeds[seed_set]
    pairs = (
      [(n, seed) for n in names for seed in chosen]
      if by == 'arm'
      else [(n, seed) for seed in chosen for n in names]
    )
    runs += [make_run(n, seed) for n, seed in pairs]
  return runs


def _seeds(quick: bool) -> Dict[str, Tuple[int, ...]]:
  if quick:
    return {'select': SELECT_SEEDS[:1], 'confirm': ()}
  return {'select': SELECT_SEEDS, 'confirm': CONFIRM_SEEDS}


def sweep_runs(s, regime, quick: bool) -> List[Run]:
  """SWEEP_ORDER's runs: baselines, variants, confirmation, late variants."""
  if _frozen(WINNER) or _frozen('paper'):
    raise ValueError('confirmation of a frozen-teacher cell is not wired')

  def make_run(name, seed):
    if name in ('ann', 'cnn'):
      conv_type = 'adder' if name == 'ann' else 'conv'
      return Run(name, seed, alone(s, seed, regime, conv_type))
    return Run(name, seed, None, ('cnn',) if _frozen(name) else ())

  groups = {
    '{variants}': QUICK_VARIANTS if quick else [v[0] for v in VARIANTS],
    '{late}': () if quick else [v[0] for v in LATE_VARIANTS],
    'winner': (WINNER,),
  }
  return expand(SWEEP_ORDER, _seeds(quick), groups, make_run)


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
  """PREMISE_ORDER's runs for each cell of PREMISE_GRID, cell by cell."""
  runs = []
  grid = PREMISE_GRID[:1] if quick else PREMISE_GRID
  for label, entry, epochs, fraction in grid:
    if quick:
      entry, epochs, fraction = QUICK_REGIME['model'], 1, 0.1

    def make_run(kind, seed, entry=entry, epochs=epochs, fraction=fraction):
      conv_type = 'adder' if kind == 'ann' else 'conv'
      config = alone(s, seed, None, conv_type, entry, epochs, fraction)
      # Quick: the --grid sweep --quick runs of the same configs.
      name = kind if quick else None
      return Run(f'{label}/{kind}', seed, config, workdir_name=name)

    runs += expand(PREMISE_ORDER, _seeds(quick), {}, make_run)
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
  """PREMISE_PKKD_ORDER's runs (--quick: PREMISE_PKKD_QUICK_ORDER's, every
  phase): the ANN and the CNN alone (the premise grid's runs of this cell),
  PREMISE_PKKD_VARIANTS, the confirmation of ``winner`` (default
  PREMISE_PKKD_WINNER; any variant's name, e.g. a late variant chosen on
  SELECT_SEEDS) and of the paper-literal setting, then
  PREMISE_PKKD_LATE_VARIANTS. ``phase``: 'select' (both selections),
  'confirm' or 'all'."""
  total = None if quick else premise_pkkd_total_steps(s, regime)

  def make_run(name, seed):
    if name in ('ann', 'cnn'):
      # The premise grid's runs of this cell (quick: the --grid sweep
      # --quick runs of the same configs).
      conv_type = 'adder' if name == 'ann' else 'conv'
      return Run(
        name,
        seed,
        alone(s, seed, regime, conv_type),
        workdir_name=name if quick else f'{PREMISE_PKKD_CELL}/{name}',
      )
    if name == 'quick':  # The sweep's quick variant (--grid sweep --quick).
      return Run('quick', seed, None)
    knobs = premise_pkkd_knobs(name, total)
    build = functools.partial(pkkd_run, s, seed, regime, knobs)
    return variant_run(name, seed, knobs, build)

  if quick:
    return expand(PREMISE_PKKD_QUICK_ORDER, _seeds(True), {}, make_run)
  groups = {
    '{variants}': [v[0] for v in PREMISE_PKKD_VARIANTS],
    '{late}': [v[0] for v in PREMISE_PKKD_LATE_VARIANTS],
    'winner': (winner or PREMISE_PKKD_WINNER,),
  }
  return expand(PREMISE_PKKD_ORDER, _seeds(False), groups, make_run, phase)


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


def set_keys(config, changes: Dict[str, Any]) -> None:
  """``config[key] = value`` for each dotted key of ``changes``; a key the
  config does not have is an error, not a new field."""
  for key, value in changes.items():
    if not planner.set_key(config, key, value):
      raise KeyError(f'{key}: no such key in the config')


def demo_common(config, seed: int, quick: bool, epochs: int):
  """The demo preset's settings (and the quick rot check's cuts)."""
  config.seed = seed
  config.num_epochs = epochs
  set_keys(config, demo_module().DEMO_SETTINGS)
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
  """DEMO_ORDER's runs (--quick: DEMO_QUICK_ORDER's, every phase): the ANN
  and the CNN alone, each variant (DEMO_VARIANTS, then DEMO_LATE_VARIANTS);
  on the fresh seeds the ANN alone, the CNN alone and ``winner`` (default
  DEMO_WINNER) seed by seed, then DEMO_WINNER (when ``winner`` is another
  variant) and the paper-literal setting."""
  winner = winner or DEMO_WINNER

  def make_run(name, seed):
    if name in ('ann', 'cnn'):
      conv_type = 'adder' if name == 'ann' else 'conv'
      return Run(name, seed, demo_alone(conv_type, seed, quick))
    knobs = demo_knobs(name, demo_total_steps())
    build = functools.partial(demo_pkkd, name, seed, quick)
    return variant_run(name, seed, knobs, build)

  if quick:
    groups = {'{first}': (DEMO_VARIANTS[0][0],)}
    return expand(DEMO_QUICK_ORDER, _seeds(True), groups, make_run)
  groups = {
    '{variants}': demo_variant_names(),
    'winner': (winner,),
    '{others}': [n for n in (DEMO_WINNER, 'paper') if n != winner],
  }
  return expand(DEMO_ORDER, _seeds(False), groups, make_run, phase)


def execute(
  runs: List[Run],
  s,
  regime,
  runs_dir: str,
  log,
  reuse_only: bool = False,
  recorded: Optional[Dict[Tuple[str, int], Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
  """Trains (or reuses) every run in order; returns one record per run.

  With ``reuse_only`` a run not already stored is left out (and logged).
  A run in ``recorded`` (by cell and seed: records of an earlier invocation
  under the same regime) is not trained; its record is taken as it is."""
  recorded = recorded or {}
  done: Dict[Tuple[str, int], study.Job] = {}
  records = []
  for run in runs:
    if (run.cell, run.seed) in recorded:
      log(f'  {run.cell} seed {run.seed}: taken from the recorded runs')
      records.append(
        dict(recorded[(run.cell, run.seed)], recorded_earlier=True)
      )
      continue
    config = run.config
    dep_keys = []
    if config is None or callable(config):
      teacher_dir = None
      if run.deps:
        if (run.deps[0], run.seed) not in done:
          raise SystemExit(
            f'{run.cell} seed {run.seed} trains from the run of '
            f'{run.deps[0]} seed {run.seed}, which was taken from the '
            'recorded runs (no run directory here): train that run too.'
          )
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
