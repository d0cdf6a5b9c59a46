"""Fault tolerance of the trainer: preemption, torn checkpoints, NaNs, bad input.

Every run is tiny: supervised resnet8 on the first 256 embedded mnist5k digits,
batch 8 on 2 of the 8 fake CPU devices, a few steps, eval on 64 digits. Runs
through the command line go through tests/fault_injection.py, which is
`python -m kdjax.main` plus opt-in hooks (a per-batch marker line, a pause at a
chosen batch, a SIGKILL inside orbax's commit of a chosen step). They share a
persistent XLA compilation cache, so only the first one pays for compiling.

Expectations:
  * a run stopped by SIGTERM and resumed ends bit-identical to an uninterrupted
    run (same program, same devices: CPU XLA is deterministic);
  * a crash or corruption never leaves a workdir that cannot resume: the newest
    checkpoint that restores is used, and the log names the ones skipped;
  * a non-finite loss term stops the run naming step and term, with the last
    good checkpoint on disk ('skip' drops exactly that update instead);
  * bad records, sizes and teachers fail before the first training step.
"""

import copy
import functools
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from kdjax import config_defaults
from kdjax.data import pipeline
import tfds_mocks as data_testing
import xla_flags
from kdjax.train import checkpointing
from kdjax.train import mesh as kd_mesh
from kdjax.train import step as run_step
from kdjax.train import train
from helpers import (
  REFERENCE_STEPS,
  finished_run_config,
  REPO,
  TIMEOUT,
  assert_trees_equal,
  checkpoint_steps,
  cli_command,
  cli_env,
  load_config_module,
  restore_state,
  run_cli,
  tiny_config,
  trees_differ,
  wait_for_line,
)


@pytest.fixture
def reference(finished_run):
  """The shared finished run (conftest): checkpoints at 2, 4 and 6."""
  return finished_run[0]


# ----------------------------------------------------------------------------
# 1. Preemption.


def test_sigterm_saves_at_step_boundary_and_resume_is_bit_identical(
  reference, mnist_dir, compile_cache, tmp_path
):
  workdir = str(tmp_path / 'run')
  go = str(tmp_path / 'go')
  # The run stops before feeding batch 2 until the test has sent SIGTERM.
  env = cli_env(
    compile_cache,
    KDJAX_FAULT_MARKERS='1',
    KDJAX_FAULT_PAUSE_AT='2',
    KDJAX_FAULT_GO_FILE=go,
  )
  with open(tmp_path / 'stderr', 'w') as stderr:
    process = subprocess.Popen(
      cli_command(
        workdir,
        mnist_dir,
        REFERENCE_STEPS,
        faults=True,
        checkpoint_every_steps=0,
        eval_bn_recalibration_batches=2,  # As the shared reference run.
      ),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
    )
    try:
      wait_for_line(process, 'KDJAX_FAULT batch 2 ')
      process.send_signal(signal.SIGTERM)
      time.sleep(0.2)
      open(go, 'w').close()
      out, _ = process.communicate(timeout=TIMEOUT)
    finally:
      if process.poll() is None:
        process.kill()
  # A preempted run exits with EX_TEMPFAIL (75), so retry loops resume it.
  assert process.returncode == 75, (tmp_path / 'stderr').read_text()[-3000:]
  # Step 2 (the batch in flight) completed, then the run saved step 3 and left.
  assert 'Preemption requested: saved step 3, exiting.' in out
  printed = json.loads(out[out.index('\n{') :])
  assert printed['preempted'] is True and printed['steps'] == 3
  assert printed['eval_accuracy'] == {}  # No result for an unfinished run.
  assert 'KDJAX_FAULT batch 3 ' not in out
  assert checkpoint_steps(workdir) == ['3']
  meta, _ = restore_state(workdir, 3)
  assert (meta['step'], meta['epoch'], meta['step_in_epoch']) == (3, 0, 3)
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['preempted'] and summary['steps'] == 3

  # The same command again, without hooks, finishes the run.
  resumed = run_cli(
    cli_command(
      workdir,
      mnist_dir,
      REFERENCE_STEPS,
      checkpoint_every_steps=0,
      eval_bn_recalibration_batches=2,
    ),
    cli_env(compile_cache),
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert (
    json.loads(resumed.stdout[resumed.stdout.index('{') :])['steps']
    == REFERENCE_STEPS
  )
  assert checkpoint_steps(workdir) == ['3', '6']
  _, expected = restore_state(reference, REFERENCE_STEPS)
  _, actual = restore_state(workdir, REFERENCE_STEPS)
  assert_trees_equal(expected, actual)
  assert trees_differ(restore_state(workdir, 3)[1]['params'], actual['params'])


def test_sigterm_while_pretraining_a_teacher_stops_the_whole_run(
  mnist_dir, tmp_path, monkeypatch
):
  """The preempted teacher is not used half-trained, and the run exits instead of going on."""
  workdir = str(tmp_path)
  config = tiny_config(mnist_dir, 1)
  config.method = 'kd'
  config.kd = load_config_module('kd').get_config('demo').kd
  config.dataset.train_split = 'train[:32]'  # 4 steps per epoch.
  config.teacher = config_defaults.model(
    'resnet8', 'conv', pretrain_epochs=1, stage_widths=(4, 8, 8)
  )
  teacher_dir = os.path.join(workdir, 'teachers', '0_resnet8')
  original = kd_mesh.to_global
  calls = []

  def sigterm_at_batch_1(batch, sharding):
    calls.append(1)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # Handled by train's _Preemption.
    return original(batch, sharding)

  monkeypatch.setattr(kd_mesh, 'to_global', sigterm_at_batch_1)
  handler = signal.getsignal(signal.SIGTERM)
  first = train.train_and_evaluate(copy.deepcopy(config), workdir)
  assert first['preempted'] and first['steps'] == 2
  assert checkpoint_steps(teacher_dir) == ['2']
  assert checkpoint_steps(workdir) == []  # The student never started.
  assert signal.getsignal(signal.SIGTERM) is handler  # Restored after the loop.

  # Rerunning resumes the teacher from step 2, then trains the student (not
  # repeated here: resuming is what the test above checks).


# ----------------------------------------------------------------------------
# 2. Crashes during a save; corrupt checkpoints.


def test_sigkill_during_checkpoint_commit_resumes_from_last_complete(
  reference, mnist_dir, compile_cache, tmp_path
):
  workdir = str(tmp_path / 'run')
  command = cli_command(
    workdir, mnist_dir, 4, faults=True, checkpoint_every_steps=2
  )
  killed = run_cli(
    command, cli_env(compile_cache, KDJAX_FAULT_KILL_IN_SAVE='4')
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert 'KDJAX_FAULT SIGKILL while committing' in killed.stdout
  left = checkpoint_steps(workdir)
  assert (
    left[0] == '2'
    and len(left) == 2
    and left[1].startswith('4.orbax-checkpoint-tmp')
  ), left

  resumed = run_cli(
    cli_command(workdir, mnist_dir, 4, checkpoint_every_steps=2),
    cli_env(compile_cache),
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from checkpoint step 2' in resumed.stderr
  assert 'step 4 (save cut off before its commit' in resumed.stderr
  assert checkpoint_steps(workdir) == ['2', '4']
  assert_trees_equal(
    restore_state(reference, 4)[1], restore_state(workdir, 4)[1]
  )


def _truncate_arrays(step_dir):
  files = [
    f
    for f in glob.glob(
      os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True
    )
    if os.path.isfile(f)
  ]
  assert files
  for path in files:
    os.truncate(path, os.path.getsize(path) // 2)


def _garble_arrays(step_dir):
  files = [
    f
    for f in glob.glob(
      os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True
    )
    if os.path.isfile(f)
  ]
  for path in files:
    with open(path, 'r+b') as f:
      middle = os.path.getsize(path) // 2
      f.seek(middle)
      data = f.read(16)
      f.seek(middle)
      f.write(bytes(b ^ 0xFF for b in data))


def _drop_manifests(step_dir):
  for path in glob.glob(
    os.path.join(step_dir, 'state', '**', 'manifest.ocdbt'), recursive=True
  ):
    os.remove(path)


def _truncate_meta(step_dir):
  os.truncate(os.path.join(step_dir, 'meta', 'metadata'), 3)


def _empty_every_file(step_dir):
  for path in glob.glob(os.path.join(step_dir, '**'), recursive=True):
    if os.path.isfile(path):
      os.truncate(path, 0)


CORRUPTIONS = {
  'truncated arrays': _truncate_arrays,
  'garbled arrays': _garble_arrays,
  'no ocdbt manifest': _drop_manifests,
  'truncated meta json': _truncate_meta,
  'every file empty': _empty_every_file,
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_restore_latest_skips_a_corrupt_checkpoint(
  tmp_path, corruption, caplog
):
  """RunCheckpointer alone, on a small tree: the fallback, its message, and re-saving."""
  state = {'w': jnp.arange(1000.0), 'b': jnp.ones((3, 3))}
  checkpointer = checkpointing.RunCheckpointer(str(tmp_path))
  checkpointer.save(2, state, {'step': 2})
  checkpointer.save(4, jax.tree.map(lambda x: x + 1, state), {'step': 4})
  checkpointer.close()
  CORRUPTIONS[corruption](str(tmp_path / 'checkpoints' / '4'))

  checkpointer = checkpointing.RunCheckpointer(str(tmp_path))
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  with caplog.at_level(logging.WARNING):
    restored, meta = checkpointer.restore_latest(abstract)
  assert meta == {'step': 2}
  assert_trees_equal(state, restored)
  assert (
    'Checkpoint at step 4' in caplog.text
    and 'falling back to step 2' in caplog.text
  )
  assert 'Resuming from checkpoint step 2' in caplog.text
  # The bad step is kept for inspection under another name, so step 4 can be saved again.
  moved = [
    n
    for n in os.listdir(tmp_path / 'checkpoints')
    if n.startswith('4.unrestorable-')
  ]
  assert (
    len(moved) == 1
    and f'step 4 (does not restore; moved to {moved[0]})' in caplog.text
  )
  checkpointer.save(4, state, {'step': 4})
  checkpointer.close()
  assert sorted(checkpointer.manager.all_steps()) == [2, 4]


def test_no_restorable_checkpoint_is_a_clear_error(tmp_path):
  state = {'w': jnp.arange(10.0)}
  checkpointer = checkpointing.RunCheckpointer(str(tmp_path))
  checkpointer.save(1, state, {'step': 1})
  checkpointer.close()
  _truncate_meta(str(tmp_path / 'checkpoints' / '1'))
  checkpointer = checkpointing.RunCheckpointer(str(tmp_path))
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r'No checkpoint .* restores \(tried '
    r'steps \[1\]\)',
  ):
    checkpointer.restore_latest(abstract)
  checkpointer.close()
  assert checkpoint_steps(str(tmp_path)) == [
    '1'
  ]  # Nothing is moved when nothing restores.


def test_corrupt_newest_checkpoints_resume_from_the_last_good_one(
  reference, mnist_dir, tmp_path, caplog
):
  """The trainer end to end: steps 6 and 4 are damaged, the run redoes 3-6 from step 2."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  _truncate_arrays(os.path.join(workdir, 'checkpoints', '6'))
  _truncate_meta(os.path.join(workdir, 'checkpoints', '4'))
  os.makedirs(
    os.path.join(workdir, 'checkpoints', '8.orbax-checkpoint-tmp-1234', 'state')
  )
  config = finished_run_config(mnist_dir)  # The copied run's own config.
  with caplog.at_level(logging.WARNING):
    summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == REFERENCE_STEPS
  assert (
    'Checkpoint at step 6' in caplog.text
    and 'Checkpoint at step 4' in caplog.text
  )
  assert 'Resuming from checkpoint step 2' in caplog.text
  assert 'step 8 (save cut off before its commit' in caplog.text
  names = checkpoint_steps(workdir)
  assert [n for n in names if n.isdigit()] == ['2', '4', '6']
  assert any(n.startswith('6.unrestorable-') for n in names)
  assert any(n.startswith('4.unrestorable-') for n in names)
  assert_trees_equal(
    restore_state(reference, 6)[1], restore_state(workdir, 6)[1]
  )


# ----------------------------------------------------------------------------
# 3. Non-finite losses.


def _poison_loss(monkeypatch, *, at_step, term, value, total_too):
  """Makes metrics[term] (and maybe the total) `value` at one step, inside the jitted step.

  Only loss values change, never gradients: what is tested is the guard.
  """
  original = run_step.train_step

  def poisoned_train_step(method, optimizers, state, frozen, batch):
    proxy = copy.copy(method)

    def loss(*args):
      total, (batch_stats, metrics) = method.loss(*args)
      bad = jnp.where(state.step == at_step, value, 0.0)
      metrics = dict(metrics, **{term: metrics[term] + bad})
      return (total + bad if total_too else total), (batch_stats, metrics)

    proxy.loss = loss
    return original(proxy, optimizers, state, frozen, batch)

  monkeypatch.setattr(run_step, 'train_step', poisoned_train_step)


def test_nan_loss_term_stops_the_run_and_keeps_the_last_checkpoint(
  reference, mnist_dir, tmp_path, monkeypatch
):
  # Only the reported term is NaN, the total is finite: every term is checked.
  _poison_loss(
    monkeypatch, at_step=3, term='loss/ce', value=jnp.nan, total_too=False
  )
  config = tiny_config(mnist_dir, REFERENCE_STEPS, checkpoint_every_steps=2)
  workdir = str(tmp_path)
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"Non-finite loss at step 3 \(epoch 0\): \{'loss/ce': nan\}.*"
    r'last good checkpoint .* is kept.*nonfinite=skip',
  ):
    train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == ['2']  # Committed before the error left.
  assert_trees_equal(
    restore_state(reference, 2)[1], restore_state(workdir, 2)[1]
  )


def test_inf_loss_with_nonfinite_skip_drops_that_batch(
  reference, mnist_dir, tmp_path, monkeypatch
):
  # Step 3 (the 4th, from state 3 to state 4) has an infinite total loss.
  _poison_loss(
    monkeypatch, at_step=3, term='loss/ce', value=jnp.inf, total_too=True
  )
  config = tiny_config(
    mnist_dir,
    5,
    checkpoint_every_steps=1,
    keep_checkpoints=10,
    nonfinite='skip',
  )
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 5 and summary['skipped_nonfinite_batches'] == 1
  states = {s: restore_state(workdir, s)[1] for s in (2, 3, 4, 5)}
  assert_trees_equal(restore_state(reference, 2)[1], states[2])
  # Step 3 moved the data position and step counter on, nothing else.
  assert int(states[4]['step']) == 4
  for part in ('params', 'batch_stats', 'opt_state'):
    assert_trees_equal(states[3][part], states[4][part])
  assert trees_differ(states[2]['params'], states[3]['params'])
  assert trees_differ(states[4]['params'], states[5]['params'])
  assert all(
    np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(states[5]['params'])
  )


# ----------------------------------------------------------------------------
# 4. Bad input: clear errors before the first step.


@pytest.fixture
def damaged_mnist(mnist_dir, tmp_path):
  """damage(edit) -> data_dir: a copy of mnist5k whose train record 5 is edited."""

  def damage(edit):
    copy_dir = tmp_path / 'tfds'
    shutil.copytree(mnist_dir, copy_dir)
    (path,) = glob.glob(
      str(copy_dir / 'mnist5k' / '*' / 'mnist5k-train.tfrecord*')
    )
    edit(path)
    return str(copy_dir)

  return damage


def _rewrite_record(**features):
  def edit(path):
    data_testing.rewrite_record(
      path, 5, functools.partial(data_testing.edit_example, **features)
    )

  return edit


def _garble_bytes(path):
  with open(path, 'r+b') as f:  # The record's CRC no longer matches.
    f.seek(3000)
    data = f.read(64)
    f.seek(3000)
    f.write(bytes(b ^ 0xFF for b in data))


BAD_RECORDS = {
  'label out of range': (_rewrite_record(label=10), r'label >= num_classes 10'),
  'mis-shaped image': (
    _rewrite_record(
      image=tf.io.encode_png(tf.zeros([30, 28, 1], tf.uint8)).numpy()
    ),
    r'image shape differs',
  ),
  'undecodable image': (_rewrite_record(image=b'not a png'), r'mnist5k/train'),
  'corrupt record bytes': (_garble_bytes, r'mnist5k/train'),
}


@pytest.mark.parametrize('fault', sorted(BAD_RECORDS))
def test_bad_record_fails_before_the_first_step(damaged_mnist, tmp_path, fault):
  edit, message = BAD_RECORDS[fault]
  config = tiny_config(damaged_mnist(edit), 2)
  workdir = str(tmp_path / 'run')
  with pytest.raises(pipeline.InvalidRecordError, match=message):
    train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == []


@pytest.mark.parametrize('label', [10, -1])
def test_label_out_of_range_in_mock_cifar10(tmp_path, monkeypatch, label):
  """Record 5 of a mocked CIFAR-10 train split gets a label outside [0, 10)."""
  read = pipeline._read  # pylint: disable=protected-access

  def read_with_a_bad_label(builder, split, *args):
    return (
      read(builder, split, *args)
      .enumerate()
      .map(
        lambda i, ex: {
          **ex,
          'label': tf.where(
            i == 5, tf.constant(label, ex['label'].dtype), ex['label']
          ),
        }
      )
    )

  monkeypatch.setattr(pipeline, '_read', read_with_a_bad_label)
  config = tiny_config(None, 2)
  config_defaults.set_dataset(
    config, 'cifar10', train_split='train', eval_split='test'
  )
  message = 'label >= num_classes 10' if label >= 10 else 'negative label'
  with data_testing.mock_dataset('cifar10', {'train': 32, 'test': 8}):
    with pytest.raises(
      pipeline.InvalidRecordError, match=rf'cifar10/train: {message}'
    ):
      train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert checkpoint_steps(str(tmp_path / 'run')) == []


def test_image_size_too_small_for_the_model(mnist_dir, tmp_path):
  config = tiny_config(mnist_dir, 2)
  config.dataset.image_size = 2
  workdir = str(tmp_path / 'run')
  with pytest.raises(
    ValueError, match=r'resnet8 downsamples by 4: image size 2x2 is too small'
  ):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


@pytest.mark.parametrize(
  'teacher_kwargs,message',
  [
    (
      dict(name='resnet20'),
      r"trained as \{'name': 'resnet8'.*asks for a teacher "
      r"\{'name': 'resnet20'",
    ),
    (
      dict(name='resnet8', conv_type='adder'),
      r"'conv_type': 'conv'.*'conv_type': 'adder'",
    ),
    (
      dict(name='resnet8', stage_widths=(8, 16, 32)),
      r'does not match the teacher architecture.*stage1_block1',
    ),
  ],
  ids=['name', 'conv_type', 'widths'],
)
def test_teacher_of_another_architecture(
  reference, mnist_dir, tmp_path, teacher_kwargs, message
):
  config = tiny_config(mnist_dir, 2)
  config.method = 'kd'
  config.kd = load_config_module('kd').get_config('demo').kd
  kwargs = dict(teacher_kwargs)
  config.teacher = config_defaults.model(
    kwargs.pop('name'),
    kwargs.pop('conv_type', 'conv'),
    checkpoint_dir=reference,
    **kwargs,
  )
  with pytest.raises(checkpointing.CheckpointError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert checkpoint_steps(str(tmp_path / 'run')) == []


def test_teacher_with_another_number_of_classes(reference, tmp_path):
  config = tiny_config(None, 2)
  config_defaults.set_dataset(
    config, 'cifar100', train_split='train', eval_split='test'
  )
  config.method = 'kd'
  config.kd = load_config_module('kd').get_config('demo').kd
  config.teacher = config_defaults.model(
    'resnet8', 'conv', checkpoint_dir=reference
  )
  with data_testing.mock_dataset('cifar100', {'train': 32, 'test': 8}):
    with pytest.raises(
      checkpointing.CheckpointError,
      match=r"'num_classes': 10\}.*'num_classes': 100\}",
    ):
      train.train_and_evaluate(config, str(tmp_path / 'run'))


_RESTORE_TEACHER_ON_ONE_DEVICE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from kdjax import models
from kdjax.train import checkpointing
assert jax.device_count() == 1
model = models.build_model('resnet8', num_classes=10)
abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
params = checkpointing.restore_teacher_checkpoint(
    sys.argv[1], {'model': 'resnet8', 'conv_type': 'conv', 'num_classes': 10},
    abstract['params'], abstract['batch_stats']).params
np.savez(sys.argv[2], *jax.tree.leaves(params))
"""


def test_teacher_restores_on_another_device_count(
  reference, compile_cache, tmp_path
):
  """A teacher saved from 2 devices loads in a process that has 1."""
  out = str(tmp_path / 'params.npz')
  process = run_cli(
    [sys.executable, '-c', _RESTORE_TEACHER_ON_ONE_DEVICE, reference, out],
    cli_env(compile_cache, XLA_FLAGS=xla_flags.with_devices(1)),
  )
  assert process.returncode == 0, process.stderr[-3000:]
  _, state = restore_state(reference, REFERENCE_STEPS)
  with np.load(out) as loaded:
    restored = [loaded[f'arr_{i}'] for i in range(len(loaded.files))]
  expected = jax.tree.leaves(state['params']['student']['model'])
  assert len(restored) == len(expected)
  for a, b in zip(expected, restored):
    np.testing.assert_array_equal(b, a)
