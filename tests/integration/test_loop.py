"""The trainer's accelerator-facing core: no host sync between boundaries,
synthetic data, steady-state throughput, and the co-trained teacher's gradient.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdjax import config_defaults
from kdjax.data import synthetic
from kdjax import methods
from kdjax.methods import base
from kdjax.train import train
from kdjax.methods import build_method
from helpers import tiny_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def _load(name):
  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{name}.py')
  )


@pytest.fixture
def strict_transfer_guard(monkeypatch):
  """Makes the device-to-host guard bite on CPU too.

  On a CPU backend arrays already live in host memory, so JAX's transfer
  guard lets reads through; on GPU and TPU it raises. Here every read of an
  array's value (float(), bool(), np.asarray, jax.device_get all go through
  ArrayImpl._value) raises while the guard is set, as on an accelerator.
  """
  from jax._src import array as jax_array  # pylint: disable=g-import-not-at-top
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top

  original = jax_array.ArrayImpl._value

  def guarded(self):
    if jax_config.transfer_guard_device_to_host.value in (
      'disallow',
      'disallow_explicit',
    ):
      raise RuntimeError('Disallowed device-to-host read of a jax.Array')
    return original.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(guarded))


def test_the_host_sync_guard_catches_a_read(strict_transfer_guard):
  # The check can fail: a read inside the guard raises, outside it does not.
  x = jnp.arange(3.0) + 1
  with jax.transfer_guard_device_to_host('disallow_explicit'):
    with pytest.raises(RuntimeError, match='Disallowed'):
      float(x[0])
    with pytest.raises(RuntimeError, match='Disallowed'):
      jax.device_get(x)
  assert float(x[0]) == 1.0


def test_loop_reads_nothing_between_boundaries_and_reports_throughput(
  mnist_dir, tmp_path, strict_transfer_guard
):
  # 9 steps, logs every 3: steps 1-2, 4-5 and 7-8 run under the guard.
  config = tiny_config(
    mnist_dir,
    9,
    log_every_steps=3,
    checkpoint_every_steps=100,
    debug_disallow_host_sync=True,
  )
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 9
  throughput = summary['throughput']
  # Windows 4-6 and 7-9 (the first one compiles and is left out).
  assert throughput['windows'] == 2 and throughput['steps_measured'] == 6
  assert throughput['train_images_per_second'] > 0
  assert throughput['step_seconds_median'] > 0


def test_synthetic_source_shapes_masks_and_processes():
  ds = ml_collections.ConfigDict(
    {
      'name': 'synthetic',
      'image_size': None,
      'synthetic': {
        'like': 'cifar100',
        'image_size': None,
        'channels': None,
        'num_classes': None,
        'train_examples': 40,
        'eval_examples': 10,
      },
    }
  )
  sources = [
    synthetic.build_inputs(
      ds,
      global_batch_size=8,
      eval_batch_size=8,
      seed=0,
      process_index=p,
      process_count=2,
    )
    for p in range(2)
  ]
  train_source, eval_source = sources[0]
  assert train_source.image_shape == (32, 32, 3)
  assert train_source.num_classes == 100
  assert train_source.steps_per_epoch == 5  # 40 // 8: full batches only.
  assert eval_source.steps_per_epoch == 2  # ceil(10 / 8), the last padded.
  batches = list(train_source.epoch(0))
  assert len(batches) == 5 and batches[0]['image'].shape == (4, 32, 32, 3)
  assert batches[0]['label'].max() < 100
  # Eval masks: global examples 0-9 of 16 slots; process 0 holds slots
  # 0-3 and 8-11, process 1 slots 4-7 and 12-15.
  masks = [np.concatenate([b['mask'] for b in s[1].epoch(0)]) for s in sources]
  np.testing.assert_array_equal(masks[0], [1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(masks[1], [1, 1, 1, 1, 0, 0, 0, 0])
  # Processes read different examples; an epoch restarts where asked.
  other = next(sources[1][0].epoch(0))
  assert not np.array_equal(other['image'], batches[0]['image'])
  resumed = list(train_source.epoch(0, start_step=3))
  np.testing.assert_array_equal(resumed[0]['image'], batches[3]['image'])


def test_synthetic_data_on_a_preset(tmp_path):
  config = _load('supervised').get_config('demo')
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.train_examples = 16
  config.dataset.synthetic.eval_examples = 8
  config.model.kwargs.stage_widths = (4, 4, 4)
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 2 and 'student' in summary['eval_accuracy']


def _pkkd_ramp_config(ramp_steps):
  """configs/pkkd.py:demo on 4-step epochs of synthetic digits, precise-BN on."""
  config = _load('pkkd').get_config('demo')
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.train_examples = 32
  config.dataset.synthetic.eval_examples = 8
  for entry in (config.model, config.teacher):
    entry.kwargs.stage_widths = (4, 4, 4)
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 2
  config.eval_bn_recalibration_batches = 2  # Precise-BN at every eval.
  config.log_every_steps = 1
  config.pkkd.ramp_steps = ramp_steps
  config.pkkd.ramp_fraction = 0.0  # The preset's share of the run, replaced.
  return config


def test_pkkd_ramp_follows_the_step_across_evals_resume_and_final_save(
  tmp_path,
):
  """The ramp is min(1, t / ramp_steps) at every step t, whatever happened.

  8 steps in two epochs (an eval with precise-BN after each), the run
  stopped at step 5 with a final checkpoint and resumed to step 8. A ramp
  counted inside batch_stats came out of each precise-BN pass 10 steps ahead.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  ramp_steps, workdir = 6, str(tmp_path)
  first = _pkkd_ramp_config(ramp_steps)
  first.max_steps = 5  # Result-neutral: the rerun without it continues.
  assert train.train_and_evaluate(first, workdir)['steps'] == 5
  summary = train.train_and_evaluate(_pkkd_ramp_config(ramp_steps), workdir)
  assert summary['steps'] == 8 and not summary.get('already_finished')
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  ramp = {e.step: e.value for e in events.Scalars('pkkd/ramp')}
  # The value logged after step s is that of the update from state step s-1.
  assert sorted(ramp) == list(range(1, 9))
  for logged, value in ramp.items():
    np.testing.assert_allclose(
      value, min(1.0, (logged - 1) / ramp_steps), rtol=1e-6
    )
  # The final checkpoint's batch_stats hold BN statistics only.
  leaf_names = {
    getattr(path[-1], 'key', None)
    for path, _ in jax.tree_util.tree_leaves_with_path(
      restore_batch_stats(workdir)
    )
  }
  assert leaf_names == {'mean', 'var'}


def restore_batch_stats(workdir):
  """The batch_stats of the newest checkpoint in `workdir`, as NumPy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from kdjax.train import checkpointing  # pylint: disable=g-import-not-at-top

  manager = ocp.CheckpointManager(
    os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR),
    item_handlers={'state': ocp.PyTreeCheckpointHandler()},
  )
  try:
    state = manager.restore(
      manager.latest_step(),
      args=ocp.args.Composite(state=ocp.args.PyTreeRestore()),
    )['state']
  finally:
    manager.close()
  return state['batch_stats']


def test_cotrained_teacher_gradient_is_that_of_its_ce_alone():
  """PKKD's student terms must not reach the teacher (stop-gradient)."""
  config = _load('pkkd').get_config('demo')
  for entry in (config.model, config.teacher):
    entry.kwargs.stage_widths = (4, 8, 8)
  method = build_method(config, num_classes=10, image_shape=(28, 28, 1))
  images = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  batch = {'image': images, 'label': labels, 'mask': jnp.ones((8,))}
  params, stats = jax.jit(method.init)(jax.random.key(1), images)
  rng = jax.random.key(2)

  # Under jit: one compile instead of one per primitive of the two models.
  grads = jax.jit(
    jax.grad(lambda p: method.loss(0, p, stats, {}, batch, rng)[0])
  )(params)

  def teacher_ce(teacher_params):
    logits, _, _ = base.run_model(
      method.teacher, teacher_params, stats['teacher'], images, True
    )
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], 1))

  expected = jax.jit(jax.grad(teacher_ce))(params['teacher'])
  for got, want in zip(
    jax.tree.leaves(grads['teacher']), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # And the student does get more than its CE: the distillation terms.
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_trainer_throughput_benchmark_quick():
  done = subprocess.run(
    [
      sys.executable,
      'benchmarks/trainer_throughput.py',
      '--quick',
      '--rounds=1',
      '--config=configs/supervised.py:demo',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  speeds = result['images_per_second']
  assert len(speeds['bare']) == 2 and len(speeds['trainer']) == 1
  assert all(v > 0 for v in speeds['bare'] + speeds['trainer'])
  want = speeds['trainer'][0] / np.median(speeds['bare'])
  np.testing.assert_allclose(result['trainer_vs_bare'], want, rtol=1e-6)
  steps = result['step_seconds_median']
  assert len(steps['bare']) == 2 and len(steps['trainer']) == 1
  assert all(v > 0 for v in steps['bare'] + steps['trainer'])
  want = np.median(steps['bare']) / steps['trainer'][0]
  np.testing.assert_allclose(
    result['trainer_vs_bare_step_median'], want, rtol=1e-6
  )


def test_methods_are_immutable_once_built():
  for name in ('supervised', 'kd', 'ofd', 'pkkd', 'ekd'):
    config = _load(name).get_config('demo')
    method = build_method(config, num_classes=10, image_shape=(28, 28, 1))
    with pytest.raises(AttributeError, match='immutable once built'):
      method.connectors = None
    # Every submodule exists before init: nothing is added by tracing.
    images = jnp.zeros((2, 28, 28, 1))
    before = dict(vars(method))
    jax.eval_shape(lambda: method.init(jax.random.key(0), images))
    assert vars(method) == before
  # Frozen teachers are declared by the methods, not known to the trainer.
  assert methods.frozen_teacher_configs(_load('kd').get_config('demo')) == [
    _load('kd').get_config('demo').teacher
  ]
  assert methods.frozen_teacher_configs(_load('pkkd').get_config('demo')) == []
  assert (
    len(methods.frozen_teacher_configs(_load('ekd').get_config('demo'))) == 3
  )
