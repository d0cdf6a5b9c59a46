"""Wall-time cost model of a study plan, from a per-machine timing table.

The table, step_seconds.json next to this file, holds the seconds per
training step of each network of the default plan and the compile and
start-up overheads, with the machine they were measured on. ``measure``
re-measures it on the machine at hand (``--measure-step-seconds``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .settings import Settings, model_label

STEP_SECONDS_FILE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'step_seconds.json'
)


@dataclasses.dataclass
class StepTable:
  """step_seconds.json, parsed: see its "about" entry for each field."""

  data: Dict[str, Any]
  path: str = STEP_SECONDS_FILE

  @property
  def seconds(self) -> Dict[Tuple[str, str], float]:
    return {(n['label'], n['conv_type']): n['seconds'] for n in self.networks}

  @property
  def networks(self) -> List[Dict[str, Any]]:
    return self.data['networks']

  @property
  def extra(self) -> Dict[str, float]:
    return self.data['method_extra_seconds']

  def entry(self, network: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    kwargs = {
      k: tuple(v) if isinstance(v, list) else v
      for k, v in network['kwargs'].items()
    }
    return network['model'], kwargs


def load_step_table(path: str = STEP_SECONDS_FILE) -> StepTable:
  """Reads and checks a timing table; a clear error names what is wrong."""
  with open(path) as f:
    data = json.load(f)
  missing = {
    'machine',
    'networks',
    'method_extra_seconds',
    'overhead_warm_s',
    'compile_s',
    'compile_adder_s',
  } - set(data)
  if missing:
    raise ValueError(f'{path}: timing table without {sorted(missing)}')
  table = StepTable(data, path)
  for network in table.networks:
    label = model_label(table.entry(network))
    if label != network['label']:
      raise ValueError(
        f'{path}: network {network["model"]} {network["kwargs"]} is labelled '
        f'{network["label"]!r} but its label is {label!r}: the cost model '
        'looks networks up by label, so the entry would never be used.'
      )
  return table


@functools.lru_cache(maxsize=None)
def _gmacs(name: str, kwargs_json: str, conv_type: str) -> float:
  """Forward multiply-accumulates per 28x28x1 image, in units of 1e9."""
  from kdjax import models, opcount  # pylint: disable=g-import-not-at-top

  kwargs = {
    k: tuple(v) if isinstance(v, list) else v
    for k, v in json.loads(kwargs_json).items()
  }
  model = models.build_model(
    name, conv_type=conv_type, num_classes=10, **kwargs
  )
  return (
    opcount.count_ops(model, (28, 28, 1))['multiply_accumulates']['total'] / 1e9
  )


@dataclasses.dataclass
class CostModel:
  """Wall seconds of a run: compile + steps + evaluations, from a StepTable.

  A network missing from the table is scaled from ResNet-8 by its MACs (adder
  networks 3x a CNN); --quick's tiny models cost a ResNet-8 at least.
  """

  table: Optional[StepTable] = None  # None: step_seconds.json
  eval_images: int = 1000

  def __post_init__(self):
    if self.table is None:
      self.table = load_step_table()
    self.step_seconds = self.table.seconds
    self.extra_step_s = self.table.extra
    self.overhead_warm_s = float(self.table.data['overhead_warm_s'])
    self.compile_s = float(self.table.data['compile_s'])
    self.compile_adder_s = float(self.table.data['compile_adder_s'])

  def step_s(self, entry, conv_type: str) -> float:
    key = (model_label(entry), conv_type)
    if key in self.step_seconds:
      return self.step_seconds[key]
    name, kwargs = entry
    macs = _gmacs(name, json.dumps(kwargs, sort_keys=True), conv_type)
    scale = max(1.0, macs / _gmacs('resnet8', '{}', conv_type))
    return (
      self.step_seconds[('resnet8', 'conv')]
      * scale
      * (3.0 if conv_type == 'adder' else 1.0)
    )

  def run_seconds(self, config, compiled: float) -> float:
    """Estimated wall seconds of one train_and_evaluate call.

    Args:
      config: the run's config.
      compiled: which share of its compilations the persistent cache already
        holds: 1 for a config that ran with another seed, 0.5 for one whose
        networks and batch did (evaluation steps do not depend on the loss).
    """
    entry = lambda m: (m.name, dict(m.kwargs))
    student = self.step_s(entry(config.model), config.model.conv_type)
    train, forward = student, student / 3
    if config.method == 'pkkd':
      teacher = self.step_s(entry(config.teacher), 'conv')
      cotrained = config.pkkd.teacher_mode == 'cotrained'
      train += teacher if cotrained else teacher / 3
      forward += teacher / 3
    elif config.method in ('kd', 'ofd'):
      teacher = self.step_s(entry(config.teacher), 'conv') / 3
      train += teacher
      forward += teacher
    elif config.method == 'ekd':
      teachers = sum(self.step_s(entry(t), 'conv') / 3 for t in config.teachers)
      train += teachers
      forward += teachers
    train += self.extra_step_s.get(config.method, 0.0)
    steps_per_epoch = max(
      int(round(4000 * config.dataset.train_fraction)) // config.batch_size, 1
    )
    steps = config.num_epochs * steps_per_epoch
    if config.max_steps > 0:
      steps = min(steps, config.max_steps)
    evals = max(1, math.ceil(steps / steps_per_epoch))
    # Measured at batch 64; part of a step's cost does not shrink with the batch.
    batch_scale = lambda b: 0.3 + 0.7 * b / 64
    eval_images = 64 if '[' in config.dataset.eval_split else self.eval_images
    eval_batch = config.eval_batch_size or config.batch_size
    eval_cost = math.ceil(eval_images / eval_batch) * batch_scale(
      eval_batch
    ) + min(
      config.eval_bn_recalibration_batches, steps_per_epoch
    ) * batch_scale(config.batch_size)
    seconds = (
      self.overhead_warm_s
      + steps * train * batch_scale(config.batch_size)
      + evals * (eval_cost * forward + 0.5)
    )
    adder = 'adder' in (
      config.model.conv_type,
      config.get('teacher', {}).get('conv_type'),
    )
    compile_s = self.compile_s + (self.compile_adder_s if adder else 0.0)
    return seconds + (1.0 - compiled) * compile_s


def cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo), as results record the machine."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _timed_run(entry, conv_type, max_steps, settings, workdir) -> float:
  """The trainer's wall seconds of a supervised run of ``max_steps``."""
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  from . import cells  # pylint: disable=g-import-not-at-top

  config = cells.supervised(settings, 0, entry, 1, conv_type)
  config.max_steps = max_steps
  return float(kd_train.train_and_evaluate(config, workdir)['wall_seconds'])


def measure(
  table: StepTable,
  settings: Settings,
  log: Callable[[str], None],
  steps: int = 20,
  path: Optional[str] = None,
) -> StepTable:
  """Re-measures every network of ``table`` on this machine; writes ``path``.

  Per network, three supervised runs of one config at the table's batch size,
  in fresh temporary workdirs sharing a fresh XLA cache: 2 steps cold, 2 steps
  warm, 2 + ``steps`` steps warm (each ends with the same evaluation and
  checkpoint). seconds = (long - short warm wall) / steps; compile_s = the
  median over conv networks of (cold - warm) wall, compile_adder_s = the
  median over adder networks minus compile_s. Walls are the trainer's
  summary['wall_seconds']. overhead_warm_s and method_extra_seconds are kept.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if steps < 1:
    raise ValueError(f'--measure-steps must be >= 1, got {steps}')
  load_start = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  # A short evaluation: each run ends with the same one, so it cancels out.
  settings = dataclasses.replace(
    settings,
    batch_size=int(table.data.get('batch_size', 64)),
    eval_split='test[:64]',
    eval_batch_size=64,
    recalibration_batches=1,
  )
  data = json.loads(json.dumps(table.data))
  compile_conv, compile_adder = [], []
  cache_options = {
    'jax_compilation_cache_dir': None,
    'jax_persistent_cache_min_compile_time_secs': 0,
    'jax_persistent_cache_min_entry_size_bytes': -1,
  }
  saved = {k: getattr(jax.config, k) for k in cache_options}
  with tempfile.TemporaryDirectory(prefix='study_step_seconds_') as tmp:
    cache_options['jax_compilation_cache_dir'] = os.path.join(tmp, 'cache')
    try:
      for k, v in cache_options.items():
        jax.config.update(k, v)
      for i, network in enumerate(data['networks']):
        walls = [
          _timed_run(
            table.entry(network),
            network['conv_type'],
            max_steps,
            settings,
            os.path.join(tmp, f'{i}_{run}'),
          )
          for run, max_steps in enumerate((2, 2, 2 + steps))
        ]
        cold, short, long = walls
        network['seconds'] = round(max(long - short, 0.0) / steps, 4)
        network.pop('note', None)  # About the measurement it replaces.
        (
          compile_adder if network['conv_type'] == 'adder' else compile_conv
        ).append(cold - short)
        log(
          f'  {network["label"]} {network["conv_type"]}: '
          f'{network["seconds"]:.3f} s a step, compile {cold - short:.1f} s '
          f'(walls {cold:.1f} / {short:.1f} / {long:.1f} s)'
        )
    finally:  # The XLA cache of the caller, as it was.
      for k, v in saved.items():
        jax.config.update(k, v)
  if compile_conv:
    data['compile_s'] = round(statistics.median(compile_conv), 1)
  if compile_adder:
    data['compile_adder_s'] = round(
      max(statistics.median(compile_adder) - data['compile_s'], 0.0), 1
    )
  data['machine'] = {
    'description': f'{cpu_name()}, {os.cpu_count()} CPU core(s) '
    f'(load average {load_start} at the start, '
    f'{", ".join(f"{x:.2f}" for x in os.getloadavg())} at the end)',
    'cpu_count': os.cpu_count(),
    'platform': platform.platform(),
    'method': f'--measure-step-seconds: (wall of {2 + steps} steps - wall of '
    '2 steps) / '
    f'{steps}, warm XLA cache, batch {settings.batch_size}, loader '
    f'{settings.loader}',
    'jax': jax.__version__,
    'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
  }
  out = StepTable(data, path or table.path)
  with open(out.path, 'w') as f:
    json.dump(data, f, indent=1)
    f.write('\n')
  return out
