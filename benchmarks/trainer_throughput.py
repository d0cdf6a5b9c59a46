r"""The trainer's steady-state speed against its bare jitted step.

  python benchmarks/trainer_throughput.py --config=configs/pkkd.py:demo
  python benchmarks/trainer_throughput.py --devices 8   # 8 fake CPU devices
  python benchmarks/trainer_throughput.py --quick       # seconds: a rot check

Both run the same config on `--config.dataset.name=synthetic` batches, in one
process, alternating: bare, trainer, bare, ... (`--rounds` trainer runs, one
more bare run), so that a slow phase of a noisy machine hits both.
  bare     the trainer's own jitted step (step.compile_functions) in a tight loop
           over batches already on the devices, timed after `--warmup` steps
           (the first compiles), waiting for the device every `--log-every`
           steps as the trainer does at its log boundaries;
  trainer  train.train_and_evaluate, whose summary.json reports the
           steady-state throughput of its log windows after the first (which
           compiles), without eval or checkpoint windows.
Prints one JSON line: images/s of every run, and `trainer_vs_bare` =
median(trainer) / median(bare); `trainer_vs_bare_step_median` is the same
comparison made from step times: each run's median over its log windows (the
bare loop also waits for the device every `--log-every` steps, as the
trainer's log boundaries do; the trainer drops its first window, which
compiles), then bare / trainer of the medians over runs. The host-side work of the trainer (reading and
copying each batch, the progress bar, the guard reads at log boundaries) is
what the ratio measures; with no per-step host sync it should stay near 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/pkkd.py:demo')
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--log-every', type=int, default=10)
  parser.add_argument('--batch-size', type=int, default=0, help='0: preset')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument(
    '--quick', action='store_true', help='tiny model, few steps'
  )
  return parser.parse_args()


def main():
  args = _parse()
  if args.devices > 1:  # Before jax initializes its backend.
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '')
      + f' --xla_force_host_platform_device_count={args.devices}'
    )
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from kdjax.train import mesh, setup, step as run_step, train

  # pylint: enable=g-import-not-at-top

  path, _, preset = args.config.partition(':')
  module = config_defaults.load_config_module(path)
  config = module.get_config(preset) if preset else module.get_config()
  config.dataset.name = 'synthetic'
  config.num_devices = args.devices
  config.eval_bn_recalibration_batches = 0
  config.eval_batch_size = 0  # The train batch, a multiple of the devices.
  config.checkpoint_every_steps = 10**9  # Only the final save.
  config.debug_disallow_host_sync = True
  steps, log_every = args.steps, args.log_every
  if args.quick:
    steps, log_every = 6, 2
    config.model.kwargs.stage_widths = (4, 4, 4)
    if 'teacher' in config and config.teacher is not None:
      config.teacher.kwargs.stage_widths = (4, 4, 4)
    config.batch_size = 8 * args.devices
  if args.batch_size:
    config.batch_size = args.batch_size
  config.max_steps = steps
  config.log_every_steps = log_every
  config.dataset.synthetic.train_examples = config.batch_size * (steps + 1)
  config.dataset.synthetic.eval_examples = config.batch_size

  run = setup.setup(config)
  # The trainer's own jitted functions, one set for every bare run: only the
  # first run compiles.
  fns = run_step.compile_functions(config, run.method, run.optimizers)
  step = fns.step

  init = jax.jit(
    functools.partial(
      setup.init_state, config, run.method, run.optimizers, run.frozen
    ),
    out_shardings=run.replicated,
  )

  def bare():
    with jax.set_mesh(run.mesh):
      state = init(run.sample)
      frozen = jax.device_put(run.frozen, run.replicated)
      batches = [
        mesh.to_global(b, run.batch_sharding) for b in run.train_source.epoch(0)
      ][:4]
      shapes = jax.eval_shape(fns.train, state, frozen, batches[0])[1]
      guard = jax.device_put(run_step.init_guard(shapes), run.replicated)
      for i in range(max(args.warmup, 1)):  # The first call compiles.
        state, guard, _ = step(state, guard, frozen, batches[i % len(batches)])
      jax.block_until_ready(state)
      # Windows of log_every steps, each ended by one wait for the device,
      # as the trainer's log boundaries end its windows.
      windows, start = [], time.perf_counter()
      window_start, window_step = start, 0
      for i in range(steps):
        state, guard, _ = step(state, guard, frozen, batches[i % len(batches)])
        if (i + 1) % log_every == 0 or i + 1 == steps:
          jax.block_until_ready((state, guard))
          now = time.perf_counter()
          windows.append((now - window_start) / (i + 1 - window_step))
          window_start, window_step = now, i + 1
      total = time.perf_counter() - start
      return steps * config.batch_size / total, float(np.median(windows))

  bare_runs, bare_step_medians = [], []
  trainer_runs, step_medians = [], []

  def bare_round():
    images_per_second, step_median = bare()
    bare_runs.append(images_per_second)
    bare_step_medians.append(step_median)

  bare_round()
  for _ in range(max(args.rounds, 1)):
    with tempfile.TemporaryDirectory() as workdir:
      summary = train.train_and_evaluate(config, workdir)
    trainer_runs.append(summary['throughput']['train_images_per_second'])
    step_medians.append(summary['throughput']['step_seconds_median'])
    bare_round()
  result = {
    'config': args.config,
    'quick': args.quick,
    'devices': args.devices,
    'platform': jax.devices()[0].platform,
    'batch_size': config.batch_size,
    'steps': steps,
    'log_every_steps': log_every,
    'warmup_steps': args.warmup,
    'images_per_second': {'bare': bare_runs, 'trainer': trainer_runs},
    'step_seconds_median': {
      'bare': bare_step_medians,
      'trainer': step_medians,
    },
    'trainer_vs_bare': float(np.median(trainer_runs) / np.median(bare_runs)),
    # The same ratio from the per-window step times (median over windows of
    # a run, then over runs): robust to one slow window of a noisy machine.
    'trainer_vs_bare_step_median': float(
      np.median(bare_step_medians) / np.median(step_medians)
    ),
    'jax': jax.__version__,
  }
  print(json.dumps(result))


if __name__ == '__main__':
  main()
