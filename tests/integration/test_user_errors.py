"""User errors: bad records, sizes and teachers fail before the first step,
and every user error through the command line is one paragraph on stderr,
exit code 2, no traceback."""

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import jax
import numpy as np
import pytest
import tensorflow as tf
import re

from kdjax import config_defaults
from kdjax.data import pipeline
import tfds_mocks as data_testing
import suite_env
from kdjax.train import checkpointing
from kdjax.train import train
from kdjax import errors
from helpers import (
  FINISHED_RUN_STEPS,
  REFERENCE_STEPS,
  REPO,
  checkpoint_steps,
  cli_env,
  load_config_module,
  restore_state,
  run_cli,
  tiny_config,
)

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# Bad input: clear errors before the first step.


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
    cli_env(compile_cache, XLA_FLAGS=suite_env.with_devices(1)),
  )
  assert process.returncode == 0, process.stderr[-3000:]
  _, state = restore_state(reference, REFERENCE_STEPS)
  with np.load(out) as loaded:
    restored = [loaded[f'arr_{i}'] for i in range(len(loaded.files))]
  expected = jax.tree.leaves(state['params']['student']['model'])
  assert len(restored) == len(expected)
  for a, b in zip(expected, restored):
    np.testing.assert_array_equal(b, a)


# ----------------------------------------------------------------------------
# User errors through the command line.

_DEMO = ['-m', 'kdjax.main', '--config=configs/supervised.py:demo']


def _cli(args, tmp_path, compile_cache, **env):
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    env=cli_env(compile_cache, **env),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _user_error_cases(tmp_path, mnist_dir):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  data = f'--config.dataset.data_dir={mnist_dir}'
  work = f'--workdir={tmp_path / "w"}'
  return {
    'key typo': (
      [*_DEMO, work, '--config.num_epoch=3'],
      r"Unknown config key 'num_epoch'[.;] [Dd]id you mean 'num_epochs'\?",
    ),
    'bad value type': (
      [*_DEMO, work, '--config.batch_size=abc'],
      r'--config\.batch_size=abc',
    ),
    'unknown preset': (
      ['-m', 'kdjax.main', '--config=configs/pkkd.py:nodemo', work],
      r"Unknown pkkd preset 'nodemo'",
    ),
    'missing config file': (
      ['-m', 'kdjax.main', '--config=configs/nope.py', work],
      r'configs/nope\.py: No such file',
    ),
    'missing workdir flag': ([*_DEMO], r'--workdir is required'),
    'batch size 0': (
      [*_DEMO, work, data, '--config.batch_size=0'],
      r'--config\.batch_size=0: must be a positive integer',
    ),
    'unknown model': (
      [*_DEMO, work, data, '--config.model.name=resnet9'],
      r"unknown model 'resnet9'",
    ),
    'unknown dataset': (
      [*_DEMO, work, '--config.dataset.name=cifar11'],
      r"Unknown dataset 'cifar11'",
    ),
    'missing data': (
      [
        *_DEMO,
        work,
        '--config.dataset.name=cifar10',
        f'--config.dataset.data_dir={tmp_path / "no_data"}',
      ],
      r"Dataset 'cifar10' .*is not prepared in data_dir",
    ),
    'workdir is a file': (
      [*_DEMO, f'--workdir={a_file}'],
      r'is a file, not a directory',
    ),
    'workdir not writable': (
      [*_DEMO, '--workdir=/proc/kdjax-workdir'],
      r'is not writable',
    ),
    'eval on an empty workdir': (
      [*_DEMO, f'--workdir={tmp_path / "empty"}', data, '--mode=eval'],
      r'No checkpoint to evaluate',
    ),
    'missing teacher': (
      [
        '-m',
        'kdjax.main',
        '--config=configs/kd.py:demo',
        work,
        data,
        '--config.teacher.pretrain_epochs=0',
        f'--config.teacher.checkpoint_dir={tmp_path / "no_teacher"}',
      ],
      r'teacher .*checkpoint directory .*no_teacher.* does not exist',
    ),
  }


def _cli_cases(cases, tmp_path, compile_cache):
  """Runs each argument list through kdjax.main's flags and main, in one process."""
  done = subprocess.run(
    [sys.executable, os.path.join('tests', 'cli_in_one_process.py')],
    input=json.dumps([args[2:] for args in cases]),  # Without '-m kdjax.main'.
    cwd=REPO,
    env=cli_env(compile_cache),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _one_paragraph_failure(name, returncode, err, pattern):
  ok = (
    returncode == errors.EXIT_USER_ERROR
    and 'Traceback' not in err
    and re.search(pattern, err)
    # The message starts a line and runs to the end (it may wrap, as the
    # missing-data one lists the commands that prepare the data).
    and re.search(r'^kdjax: ', err, re.M)
    and 'Traceback' not in err[err.index('kdjax: ') :]
  )
  return None if ok else f'{name}: rc={returncode}\n{err[-1500:]}'


def test_user_errors_are_one_paragraph_with_exit_code_2(
  tmp_path, mnist_dir, compile_cache
):
  cases = _user_error_cases(tmp_path, mnist_dir)
  assert all(args[:2] == ['-m', 'kdjax.main'] for args, _ in cases.values())
  results = _cli_cases([a for a, _ in cases.values()], tmp_path, compile_cache)
  failures = [
    _one_paragraph_failure(name, r['returncode'], r['stderr'], pattern)
    for (name, (_, pattern)), r in zip(cases.items(), results)
  ]
  failures = [f for f in failures if f]
  assert not failures, '\n\n'.join(failures)
  assert not os.path.exists(tmp_path / 'empty')  # Eval created nothing.


def test_user_errors_through_the_real_entry_point(
  tmp_path, mnist_dir, compile_cache
):
  """Two of the cases above, each in its own `python -m kdjax.main`."""
  cases = _user_error_cases(tmp_path, mnist_dir)
  for name in ('key typo', 'unknown model'):
    args, pattern = cases[name]
    done = _cli(args, tmp_path, compile_cache)
    failure = _one_paragraph_failure(
      name, done.returncode, done.stderr, pattern
    )
    assert failure is None, failure


def test_traceback_flag_shows_the_trace(tmp_path, compile_cache):
  done = _cli(
    [*_DEMO, f'--workdir={tmp_path}', '--config.batch_size=0', '--traceback'],
    tmp_path,
    compile_cache,
  )
  assert done.returncode != 0 and 'Traceback' in done.stderr
  assert 'ConfigError' in done.stderr


def test_locked_workdir_through_the_cli(tmp_path, mnist_dir, compile_cache):
  workdir = str(tmp_path / 'w')
  with checkpointing.workdir_lock(workdir):
    done = _cli(
      [
        *_DEMO,
        f'--workdir={workdir}',
        f'--config.dataset.data_dir={mnist_dir}',
      ],
      tmp_path,
      compile_cache,
    )
  assert done.returncode == errors.EXIT_USER_ERROR, done.stderr[-1500:]
  assert 'Another kdjax run is using' in done.stderr
  assert 'Traceback' not in done.stderr
