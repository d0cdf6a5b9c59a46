"""The comparison: rows (what each method trains), the runs, the table."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from typing import Dict, List, Optional

import ml_collections

from kdjax import config_defaults
from kdjax.train import plan
from kdjax.train import train

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
DEFAULT_WORKDIR = '/tmp/kdjax/baselines_demo'


def _load(name):
  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{name}.py')
  )


def _kd_variant(**kd):
  def build():
    config = _load('kd').get_config('demo')
    config.kd.update(kd)
    return config

  return build


def rows() -> Dict[str, tuple]:
  """method -> (how its config is named in the table, config builder)."""
  distill = _load('distill')
  table = {
    'student alone': (
      'configs/distill.py:demo_kd, method=supervised',
      _student_alone,
    ),
    'fitnet': (
      'configs/kd.py:demo, kd_weight=0, fitnet_weight=100',
      _kd_variant(kd_weight=0.0, fitnet_weight=100.0),
    ),
    'at': (
      'configs/kd.py:demo, kd_weight=0, at_weight=500',
      _kd_variant(kd_weight=0.0, at_weight=500.0),
    ),
  }
  for method in distill.METHODS:
    table[method] = (
      f'configs/distill.py:demo_{method}',
      lambda m=method: distill.get_config(f'demo_{m}'),
    )
  table['crd'] = (
    'configs/crd.py:demo',
    lambda: _load('crd').get_config('demo'),
  )
  return table


def _student_alone():
  """The distillation demo's student, schedule and data, without a teacher."""
  config = _load('distill').get_config('demo_kd')
  del config['teacher'], config['distill']
  config.method = 'supervised'
  return config


def _shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """--quick: 4-channel networks on 16 synthetic 16x16 images, 2 steps."""
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.update(
    train_examples=16, eval_examples=8, image_size=16
  )
  for key in ('model', 'teacher'):
    if key in config:
      config[key].kwargs.stage_widths = (4, 4, 4)
      if key == 'teacher':
        config[key].name = 'resnet8'
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  config.log_every_steps = 1000
  if 'crd' in config:  # Fewer negatives than the 16 synthetic images.
    config.crd.num_negatives = 4
  return config


def _teacher_config(quick: bool) -> ml_collections.ConfigDict:
  """The supervised run that trains the shared teacher (as the demos' plan)."""
  config = _load('distill').get_config('demo_kd')
  if quick:
    config = _shrink(config)
  return plan.teacher_run_config(config, config.teacher)


def _accuracy(summary, head) -> Optional[float]:
  value = (summary.get('eval_accuracy') or {}).get(head)
  return None if value is None else 100.0 * float(value)


def run_all(workdir: str, quick: bool, only: Optional[List[str]] = None):
  """Trains the teacher once, then every row; returns (rows, meta).

  WORKDIR/table.md and results.json are rewritten after every row.
  """
  table = rows()
  names = list(table) if not only else only
  unknown = sorted(set(names) - set(table))
  if unknown:
    raise SystemExit(f'--only: unknown {unknown}; choose from {list(table)}')
  teacher_dir = os.path.join(workdir, 'teacher')
  teacher_config = _teacher_config(quick)
  start = time.time()
  teacher_summary = train.train_and_evaluate(teacher_config, teacher_dir)
  teacher_seconds = time.time() - start
  meta = dict(
    quick=quick,
    teacher=teacher_config.model.name,
    teacher_accuracy=_accuracy(teacher_summary, 'student'),
    teacher_seconds=round(teacher_seconds, 1),
    machine=_machine(),
  )
  # --only reruns some rows: the others stay as WORKDIR/results.json has them.
  kept = {}
  if only and os.path.exists(os.path.join(workdir, 'results.json')):
    with open(os.path.join(workdir, 'results.json')) as f:
      kept = {r['method']: r for r in json.load(f)['results']}
  results = []
  for name in names:
    source, build = table[name]
    config = build()
    if quick:
      config = _shrink(config)
    if 'teacher' in config:
      config.teacher = copy.deepcopy(config.teacher)
      config.teacher.checkpoint_dir = teacher_dir
      config.teacher.pretrain_epochs = 0
    start = time.time()
    run_dir = os.path.join(workdir, name.replace(' ', '_'))
    summary = train.train_and_evaluate(config, run_dir)
    kept[name] = dict(
      method=name,
      config=source,
      student=_accuracy(summary, 'student'),
      teacher=_accuracy(summary, 'teacher'),
      seconds=round(time.time() - start, 1),
      steps=summary.get('steps'),
    )
    results = [kept[n] for n in table if n in kept]
    _write(workdir, results, meta)
  return results, meta


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [ln.split(':', 1)[1].strip() for ln in f if 'model name' in ln]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return f'{cpu}, {os.cpu_count()} cores'


def _percent(value) -> str:
  return '-' if value is None else f'{value:.2f}'


def markdown(results, meta) -> str:
  lines = [
    '| method | config | student % | teacher % | wall s |',
    '|---|---|---|---|---|',
  ]
  for r in results:
    teacher = _percent(r['teacher'])
    lines.append(
      f'| {r["method"]} | `{r["config"]}` | {_percent(r["student"])} | '
      f'{teacher} | {r["seconds"]:.0f} |'
    )
  lines.append('')
  lines.append(
    f'Teacher ({meta["teacher"]}, trained once): '
    f'{_percent(meta["teacher_accuracy"])} %, {meta["teacher_seconds"]:.0f} s.'
    f' Machine: {meta["machine"]}.'
  )
  return '\n'.join(lines) + '\n'


def _write(workdir, results, meta) -> str:
  text = markdown(results, meta)
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(dict(meta=meta, results=results), f, indent=1)
  return text


def run(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.baselines_demo',
    description='Every baseline once on mnist5k at the demo budget.',
  )
  parser.add_argument('--workdir', default=DEFAULT_WORKDIR)
  parser.add_argument(
    '--quick', action='store_true', help='tiny synthetic runs of 2 steps'
  )
  parser.add_argument(
    '--only', default='', help='comma-separated methods (default: all)'
  )
  args = parser.parse_args(argv)
  only = [m for m in args.only.split(',') if m] or None
  os.makedirs(args.workdir, exist_ok=True)
  results, meta = run_all(args.workdir, args.quick, only)
  print(_write(args.workdir, results, meta))
  return 0
