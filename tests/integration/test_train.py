"""End-to-end tests of the trainer: every method, sharding, resume, eval, errors, CLI.

Runs are tiny (2-5 steps, batch 8, resnet8 or a 2-branch width-8 ekd_student)
on the mock tfds datasets of tests/tfds_mocks.py and on the embedded mnist5k
digits. XLA compilation dominates their cost, so runs that several tests read
(the supervised run that is also the frozen teacher and the reference of the
resume and sharding tests) happen once per session: `_shared_run` runs them in
a directory shared by the pytest-xdist workers, under a file lock.

Independent expectations used below:
  * an eval accuracy is k / n for the n examples of the eval split (padding of
    the last eval batch is masked out);
  * a frozen teacher restored from a supervised run scores, on the same eval
    split, exactly what that run reported for its student;
  * resuming gives the state of an uninterrupted run, and 8 devices the state of
    1 device (up to float reduction order);
  * a few dozen steps on the real mnist5k digits beat chance by far.
"""

import glob
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from kdjax import config_defaults
import tfds_mocks as data_testing
from helpers import get_config
from helpers import train_once
from kdjax.train import checkpointing
from kdjax.train import train

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# Split sizes of the mocked tfds datasets. The eval splits are not multiples of
# the eval batch (8), so the last eval batch is padded.
MOCK_SIZES = {
  'cifar10': {'train': 32, 'test': 12},
  'cifar100': {'train': 32, 'test': 12},
  'imagenet2012': {'train': 16, 'validation': 12},
}
MOCK_EVAL_EXAMPLES = 12
CIFAR_STEPS_PER_EPOCH = 32 // 8
MNIST_EVAL_EXAMPLES = 1000
MNIST_PKKD_EVAL_EXAMPLES = 100


# ----------------------------------------------------------------------------
# Helpers.


def tiny_config(name, dataset='cifar10', *, steps=2, devices=1, data_dir=None):
  """A demo preset shrunk to a few steps of batch 8 on `dataset`."""
  config = get_config(name)
  config_defaults.set_dataset(config, dataset)
  if dataset == 'imagenet2012':
    config.dataset.image_size = 32
  config.dataset.data_dir = data_dir
  config.batch_size = 8
  config.eval_batch_size = 8
  config.max_steps = steps
  config.num_devices = devices
  config.log_every_steps = 1000  # Scalars are still written at the last step.
  config.eval_bn_recalibration_batches = 0
  return config


def run(config, workdir):
  """train_and_evaluate, inside the tfds mock of the config's dataset if it has one."""
  name = config.dataset.name
  if name in MOCK_SIZES:
    with data_testing.mock_dataset(name, num_examples=MOCK_SIZES[name]):
      return train.train_and_evaluate(config, workdir)
  return train.train_and_evaluate(config, workdir)


def evaluate(config, workdir):
  name = config.dataset.name
  if name in MOCK_SIZES:
    with data_testing.mock_dataset(name, num_examples=MOCK_SIZES[name]):
      return train.evaluate(config, workdir)
  return train.evaluate(config, workdir)


def _shared_run(shared_tmp_root, name, config_fn):
  """(workdir, summary) of config_fn()'s run, trained once per session."""
  return train_once(
    shared_tmp_root, name, lambda workdir: run(config_fn(), workdir)
  )


def read_scalars(workdir):
  """{tag: {step: value}} from the TensorBoard event files of `workdir`."""
  scalars = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        number = (
          tf.make_ndarray(value.tensor)
          if value.HasField('tensor')
          else value.simple_value
        )
        scalars.setdefault(value.tag, {})[event.step] = float(number)
  return scalars


def restore_state(workdir, step=None):
  """(meta, state) of a run's checkpoint at `step` (default: the newest), as NumPy arrays."""
  manager = ocp.CheckpointManager(
    os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR),
    item_handlers={
      'state': ocp.PyTreeCheckpointHandler(),
      'meta': ocp.JsonCheckpointHandler(),
    },
    options=ocp.CheckpointManagerOptions(read_only=True),
  )
  step = manager.latest_step() if step is None else step
  tree = manager.item_metadata(step)['state'].tree
  restore_args = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
  )
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args),
      meta=ocp.args.JsonRestore(),
    ),
  )
  manager.close()
  return dict(restored['meta']), restored['state']


def max_abs_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def assert_states_close(expected, actual, *, rtol, atol_scale):
  """Leaf by leaf; atol is atol_scale times the leaf's largest magnitude."""
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  flat_actual = jax.tree_util.tree_leaves_with_path(actual)
  assert [p for p, _ in flat_expected] == [p for p, _ in flat_actual]
  for (path, a), (_, b) in zip(flat_expected, flat_actual):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    np.testing.assert_allclose(
      b,
      a,
      rtol=rtol,
      atol=atol_scale * scale,
      err_msg=jax.tree_util.keystr(path),
    )


def check_run(summary, workdir, *, steps, heads, eval_examples):
  """What every finished run must leave behind, checked against the expectations."""
  assert summary['steps'] == steps
  accuracy = summary['eval_accuracy']
  assert sorted(accuracy) == sorted(heads)
  for head, value in accuracy.items():
    assert math.isfinite(value) and 0.0 <= value <= 1.0, (head, value)
    # Each of the eval examples counted once: a whole number of them is right.
    assert value * eval_examples == pytest.approx(
      round(value * eval_examples), abs=1e-6
    ), (head, value)
  assert summary['history'] and summary['history'][-1]['step'] == steps

  with open(os.path.join(workdir, 'summary.json')) as f:
    written = json.load(f)
  assert written['steps'] == steps
  assert written['eval_accuracy'] == pytest.approx(accuracy)

  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  scalars = read_scalars(workdir)
  for head, value in accuracy.items():
    assert scalars[f'eval_accuracy/{head}'][steps] == pytest.approx(value)
  assert math.isfinite(scalars['loss/total'][steps])

  checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)
  assert os.path.isdir(checkpoints)
  assert str(steps) in os.listdir(checkpoints)


# ----------------------------------------------------------------------------
# Shared runs.


def _reference_config(devices=1):
  """Supervised resnet8, 5 steps on mock CIFAR-10: crosses the epoch boundary at 4.

  The learning rate is 0.01, not the demo's 0.1: at 0.1, batch 8 of random
  augmented images is so ill-conditioned that changing the learning rate by
  1e-6 (relative) changes the parameters after 5 steps by ~5e-3, so float
  reduction order alone (8 devices vs 1) would exceed any useful tolerance.
  """
  config = tiny_config('supervised', 'cifar10', steps=5, devices=devices)
  config.model = config_defaults.model('resnet8', 'conv')
  config.optimizer.learning_rate = 0.01
  return config


@pytest.fixture(scope='session')
def reference_run(shared_tmp_root):
  """(workdir, summary): an uninterrupted 1-device run, also the frozen teacher."""
  return _shared_run(
    shared_tmp_root, 'supervised_resnet8_1dev', _reference_config
  )


# ----------------------------------------------------------------------------
# 1. One short run per method.


def test_supervised_cifar10(reference_run):
  workdir, summary = reference_run
  check_run(
    summary,
    workdir,
    steps=5,
    heads=['student'],
    eval_examples=MOCK_EVAL_EXAMPLES,
  )
  assert summary['devices'] == 1
  # Epoch end (step 4) and the last step both evaluated.
  assert [h['step'] for h in summary['history']] == [4, 5]
  meta, _ = restore_state(workdir)
  assert meta['step'] == 5 and meta['model'] == {
    'name': 'resnet8',
    'conv_type': 'conv',
  }
  assert meta['num_classes'] == 10


def test_supervised_imagenet_resnet18(tmp_path):
  config = tiny_config('supervised', 'imagenet2012', steps=2)
  config.model = config_defaults.model('resnet18', 'conv')
  summary = run(config, str(tmp_path))
  check_run(
    summary,
    str(tmp_path),
    steps=2,
    heads=['student'],
    eval_examples=MOCK_EVAL_EXAMPLES,
  )
  meta, state = restore_state(str(tmp_path))
  assert meta['num_classes'] == 1000 and meta['image_shape'] == [32, 32, 3]
  # ResNet-18 pools 512 channels into the 1000-way classifier.
  assert state['params']['student']['model']['classifier']['kernel'].shape == (
    512,
    1000,
  )


def _mnist_supervised_config(mnist_dir):
  """The supervised demo (precise BN included) on the real digits, shortened."""
  config = get_config('supervised', 'demo')
  config.dataset.data_dir = mnist_dir
  config.model = config_defaults.model('resnet8', 'conv')
  config.batch_size = 32
  config.eval_batch_size = 256
  config.max_steps = 40
  config.num_devices = 1
  config.eval_bn_recalibration_batches = 4
  return config


@pytest.fixture(scope='session')
def mnist_supervised_run(shared_tmp_root, mnist_dir):
  workdir, summary = _shared_run(
    shared_tmp_root,
    'mnist_supervised',
    lambda: _mnist_supervised_config(mnist_dir),
  )
  return _mnist_supervised_config(mnist_dir), workdir, summary


def test_supervised_mnist5k_learns(mnist_supervised_run):
  _, workdir, summary = mnist_supervised_run
  check_run(
    summary,
    workdir,
    steps=40,
    heads=['student'],
    eval_examples=MNIST_EVAL_EXAMPLES,
  )
  # 40 steps of 32 real digits: far above the 10 % of chance.
  assert summary['eval_accuracy']['student'] > 0.25


def test_eval_mode_matches_final_eval(reference_run):
  workdir, summary = reference_run
  result = evaluate(_reference_config(), workdir)
  assert result['step'] == 5
  assert result['eval_accuracy'] == pytest.approx(
    summary['eval_accuracy'], abs=1e-9
  )


def test_eval_mode_matches_final_eval_with_precise_bn(mnist_supervised_run):
  config, workdir, summary = mnist_supervised_run
  result = train.evaluate(config, workdir)
  assert result['step'] == 40
  assert result['eval_accuracy'] == pytest.approx(
    summary['eval_accuracy'], abs=1e-9
  )


def test_pkkd_mnist5k(mnist_dir, tmp_path):
  workdir = str(tmp_path)
  config = tiny_config('pkkd', 'mnist5k', steps=3, data_dir=mnist_dir)
  # Adder nets are slow on CPU: evaluate on a slice of the test split.
  config.dataset.eval_split = f'test[:{MNIST_PKKD_EVAL_EXAMPLES}]'
  config.eval_batch_size = 64
  assert (config.model.name, config.model.conv_type) == ('resnet8', 'adder')
  assert (config.teacher.name, config.teacher.conv_type) == ('resnet8', 'conv')
  summary = train.train_and_evaluate(config, workdir)
  check_run(
    summary,
    workdir,
    steps=3,
    heads=['student', 'teacher'],
    eval_examples=MNIST_PKKD_EVAL_EXAMPLES,
  )
  scalars = read_scalars(workdir)
  for term in ('loss/ce', 'loss/kd', 'loss/feat', 'loss/teacher_ce'):
    assert math.isfinite(scalars[term][3]), term
  # Both networks are trained: each group has its own parameters and optimizer.
  _, state = restore_state(workdir)
  assert sorted(state['params']) == ['student', 'teacher']
  assert sorted(state['opt_state']) == ['student', 'teacher']


def _frozen_teacher(reference_workdir):
  return config_defaults.model(
    'resnet8', 'conv', checkpoint_dir=reference_workdir
  )


def _run_with_frozen_teacher(method, reference_run, workdir):
  """2 steps of `method` (resnet8 student) from the reference run as teacher; (config, summary)."""
  teacher_dir, teacher_summary = reference_run
  config = tiny_config(method, 'cifar10', steps=2)
  config.teacher = _frozen_teacher(teacher_dir)
  config.model = config_defaults.model('resnet8', 'conv')
  summary = run(config, workdir)
  check_run(
    summary,
    workdir,
    steps=2,
    heads=['student', 'teacher'],
    eval_examples=MOCK_EVAL_EXAMPLES,
  )
  # The restored teacher is the reference run's final student.
  assert (
    summary['eval_accuracy']['teacher']
    == teacher_summary['eval_accuracy']['student']
  )
  return config, summary


def test_kd_from_frozen_teacher(reference_run, tmp_path):
  config, summary = _run_with_frozen_teacher('kd', reference_run, str(tmp_path))
  # Only the student is trained; the teacher is not part of the state.
  _, state = restore_state(str(tmp_path))
  assert list(state['params']) == ['student']
  # --mode=eval restores the student and the frozen teacher alike.
  result = evaluate(config, str(tmp_path))
  assert result['eval_accuracy'] == pytest.approx(
    summary['eval_accuracy'], abs=1e-9
  )


def test_ofd_from_frozen_teacher(reference_run, tmp_path):
  _run_with_frozen_teacher('ofd', reference_run, str(tmp_path))
  assert math.isfinite(read_scalars(str(tmp_path))['loss/ofd'][2])
  # The connectors (one per stage) train with the student.
  _, state = restore_state(str(tmp_path))
  assert sorted(state['params']['student']['connectors']) == [
    'connector0',
    'connector1',
    'connector2',
  ]


def _ekd_config(reference_workdir):
  """2 branches of width 8; teacher 0 restored, teacher 1 pre-trained in-process."""
  config = tiny_config('ekd', 'cifar10', steps=2, devices=0)
  config.model = config_defaults.model(
    'ekd_student', 'conv', num_branches=2, width=8
  )
  config.teachers = [
    _frozen_teacher(reference_workdir),
    config_defaults.model('resnet8', 'conv', pretrain_epochs=1),
  ]
  return config


@pytest.fixture(scope='session')
def ekd_run(reference_run, shared_tmp_root):
  return _shared_run(
    shared_tmp_root, 'ekd', lambda: _ekd_config(reference_run[0])
  )


def test_ekd_with_restored_and_pretrained_teachers(reference_run, ekd_run):
  _, reference_summary = reference_run
  workdir, summary = ekd_run
  check_run(
    summary,
    workdir,
    steps=2,
    heads=['student', 'branch0', 'branch1', 'teacher0', 'teacher1'],
    eval_examples=MOCK_EVAL_EXAMPLES,
  )
  assert (
    summary['eval_accuracy']['teacher0']
    == reference_summary['eval_accuracy']['student']
  )

  # Teacher 1 was pre-trained first: one full epoch of a supervised run.
  teacher_dir = os.path.join(workdir, 'teachers', '1_resnet8')
  with open(os.path.join(teacher_dir, 'summary.json')) as f:
    teacher_summary = json.load(f)
  assert teacher_summary['method'] == 'supervised'
  assert teacher_summary['steps'] == CIFAR_STEPS_PER_EPOCH
  meta, _ = restore_state(teacher_dir)
  assert (
    meta['step'] == CIFAR_STEPS_PER_EPOCH and meta['model']['name'] == 'resnet8'
  )
  assert (
    summary['eval_accuracy']['teacher1']
    == teacher_summary['eval_accuracy']['student']
  )
  # Teacher 0 was restored, not trained again.
  assert not os.path.exists(os.path.join(workdir, 'teachers', '0_resnet8'))


def test_eval_mode_after_teacher_pretraining(reference_run, ekd_run):
  workdir, summary = ekd_run
  fresh = _ekd_config(
    reference_run[0]
  )  # What --mode=eval gets from the same flags.
  result = evaluate(fresh, workdir)
  assert result['eval_accuracy'] == pytest.approx(
    summary['eval_accuracy'], abs=1e-9
  )


# ----------------------------------------------------------------------------
# 2. 8 devices match 1 device; 3. resuming matches an uninterrupted run.


def _need_8_devices():
  if jax.device_count() < 8:
    pytest.skip(
      f'needs 8 devices (tests/conftest.py sets XLA_FLAGS); have {jax.device_count()}'
    )


def test_sharded_supervised_matches_one_device(reference_run, tmp_path):
  _need_8_devices()
  one_dir, one_summary = reference_run
  summary = run(_reference_config(devices=8), str(tmp_path))
  assert (one_summary['devices'], summary['devices']) == (1, 8)
  meta_1, state_1 = restore_state(one_dir)
  meta_8, state_8 = restore_state(str(tmp_path))
  assert meta_1['step'] == meta_8['step'] == 5
  # BN statistics and gradients are over the global batch either way.
  assert_states_close(state_1, state_8, rtol=1e-4, atol_scale=1e-5)
  # One step moves the parameters far beyond that tolerance (the test is not vacuous).
  _, state_at_4 = restore_state(one_dir, step=4)
  assert max_abs_difference(state_at_4['params'], state_1['params']) > 1e-3


def test_resume_matches_uninterrupted_run(reference_run, tmp_path):
  one_dir, _ = reference_run
  workdir = str(tmp_path)
  # Stop mid-epoch at step 3 (of 4 per epoch), then go on to 5 in the same workdir.
  config = _reference_config()
  config.max_steps = 3
  first = run(config, workdir)
  assert first['steps'] == 3
  _, state_3 = restore_state(workdir)
  second = run(_reference_config(), workdir)
  assert second['steps'] == 5
  # The history goes on from the first part's (evaluated at its last step, 3):
  # the resumed part evaluated at the epoch end (4) and the last step (5).
  assert [h['step'] for h in second['history']] == [3, 4, 5]

  _, expected = restore_state(one_dir)
  meta, resumed = restore_state(workdir)
  assert meta['step'] == 5
  assert_states_close(expected, resumed, rtol=1e-6, atol_scale=1e-7)
  # Steps 4 and 5 did change the parameters, far beyond that tolerance.
  assert max_abs_difference(state_3['params'], resumed['params']) > 1e-3

  # Running a finished run again trains nothing and reports its result again.
  third = run(_reference_config(), workdir)
  assert third['steps'] == 5
  assert third['eval_accuracy'] == second['eval_accuracy']
  assert [h['step'] for h in third['history']] == [3, 4, 5]
  assert sorted(
    int(s)
    for s in os.listdir(os.path.join(workdir, 'checkpoints'))
    if s.isdigit()
  ) == [3, 4, 5]


# ----------------------------------------------------------------------------
# 4. Clear, early errors (each raised before anything is compiled).


def test_unknown_method(tmp_path):
  config = tiny_config('supervised')
  config.method = 'nope'
  with pytest.raises(ValueError, match=r"Unknown method 'nope'.*'supervised'"):
    run(config, str(tmp_path))


def test_unknown_model(tmp_path):
  config = tiny_config('supervised')
  config.model.name = 'resnet9000'
  with pytest.raises(ValueError, match=r"unknown model 'resnet9000'.*resnet8"):
    run(config, str(tmp_path))


def test_unknown_dataset(tmp_path):
  config = tiny_config('supervised')
  config.dataset.name = 'nope'
  with pytest.raises(ValueError, match=r"Unknown dataset 'nope'.*cifar10"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_teacher_checkpoint(tmp_path):
  config = tiny_config('kd')
  missing = str(tmp_path / 'no_such_teacher')
  config.teacher = config_defaults.model(
    'resnet8', 'conv', checkpoint_dir=missing
  )
  with pytest.raises(
    checkpointing.CheckpointError, match=r'no_such_teacher.*does not exist'
  ):
    run(config, str(tmp_path / 'run'))
  assert not os.path.exists(missing)


def test_teacher_without_checkpoint_dir_or_pretraining(tmp_path):
  config = tiny_config('kd')
  config.teacher = config_defaults.model('resnet8', 'conv')
  with pytest.raises(
    checkpointing.CheckpointError, match=r'needs checkpoint_dir'
  ):
    run(config, str(tmp_path))


def test_wrong_teacher_architecture(reference_run, tmp_path):
  config = tiny_config('kd')
  config.teacher = config_defaults.model(
    'resnet20', 'conv', checkpoint_dir=reference_run[0]
  )
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r"trained as \{'name': 'resnet8'.*asks for a teacher "
    r"\{'name': 'resnet20'",
  ):
    run(config, str(tmp_path))


def test_wrong_teacher_classes(reference_run, tmp_path):
  config = tiny_config(
    'kd', 'cifar100'
  )  # The teacher learnt CIFAR-10's 10 classes.
  config.teacher = _frozen_teacher(reference_run[0])
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r"'num_classes': 10\}.*'num_classes': 100\}",
  ):
    run(config, str(tmp_path))


def test_batch_not_divisible_by_devices(tmp_path):
  _need_8_devices()
  config = tiny_config('supervised', devices=8)
  config.batch_size = 12
  with pytest.raises(
    ValueError, match=r'batch_size=12 is not divisible by the 8 devices'
  ):
    run(config, str(tmp_path))
  config.batch_size = 16
  config.eval_batch_size = 12
  with pytest.raises(ValueError, match=r'eval_batch_size=12 is not divisible'):
    run(config, str(tmp_path))


def test_more_devices_than_visible(tmp_path):
  config = tiny_config('supervised', devices=jax.device_count() + 1)
  with pytest.raises(
    ValueError, match=rf'num_devices={jax.device_count() + 1}'
  ):
    run(config, str(tmp_path))


# ----------------------------------------------------------------------------
# 6. The command line.


def test_cli_trains_and_prints_summary(mnist_dir, tmp_path):
  workdir = str(tmp_path / 'cli')
  env = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL='3',
    JAX_PLATFORMS='cpu',
  )
  command = [
    sys.executable,
    '-m',
    'kdjax.main',
    '--config=configs/supervised.py:demo',
    f'--workdir={workdir}',
    '--config.max_steps=2',
    '--config.batch_size=16',
    '--config.eval_batch_size=256',
    '--config.model.name=resnet8',
    f'--config.dataset.data_dir={mnist_dir}',
    '--config.eval_bn_recalibration_batches=0',
  ]
  process = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert process.returncode == 0, process.stderr[-3000:]
  # The JSON result is the last thing printed, after the console lines.
  lines = process.stdout.splitlines()
  result = json.loads('\n'.join(lines[lines.index('{') :]))
  assert result['method'] == 'supervised' and result['steps'] == 2
  accuracy = result['eval_accuracy']['student']
  assert 0.0 <= accuracy <= 1.0
  assert accuracy * MNIST_EVAL_EXAMPLES == pytest.approx(
    round(accuracy * MNIST_EVAL_EXAMPLES)
  )
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['eval_accuracy'] == pytest.approx(
      result['eval_accuracy']
    )
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert '2' in os.listdir(os.path.join(workdir, 'checkpoints'))
