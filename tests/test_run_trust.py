"""Runs that never mislead: what the trainer does on resume, on a non-finite
update, with teachers, and how the command line reports user errors.

Independent expectations used below:
  * a checkpoint trained with one config never silently continues under
    another: the error lists every result-changing key (old -> new);
  * no NaN or Inf ever reaches a saved state, whatever produced it;
  * a teacher restored from a run scores what that run printed for it;
  * each user error is one paragraph on stderr, exit code 2, no traceback.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import config_defaults
from kdjax import errors
from kdjax.train import checkpointing
from kdjax.train import run_config
from kdjax.train import setup as run_setup
from kdjax.train import step as run_step
from kdjax.train import train
from helpers import (
  FINISHED_RUN_STEPS,
  checkpoint_steps,
  cli_command,
  cli_env,
  restore_state,
  tiny_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def _copy(run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(run, workdir)
  return workdir


# ----------------------------------------------------------------------------
# 1. A changed config on a workdir.


def test_config_diff_lists_result_keys_and_ignores_neutral_ones():
  old = {
    'num_epochs': 1,
    'log_every_steps': 50,
    'optimizer': {'learning_rate': 0.1},
    'teachers': [{'name': 'a'}, {'name': 'b'}],
  }
  new = {
    'num_epochs': 2,
    'log_every_steps': 5,
    'optimizer': {'learning_rate': 0.1},
    'teachers': [{'name': 'a'}, {'name': 'c'}],
    'extra': True,
  }
  assert run_config.diff(old, new) == {
    'extra': ['<absent>', True],
    'num_epochs': [1, 2],
    'teachers.1.name': ['b', 'c'],
  }
  assert 'log_every_steps' in run_config.RESULT_NEUTRAL_KEYS


def test_a_changed_config_stops_before_any_work(finished_run, tmp_path):
  run, config, summary = finished_run
  workdir = _copy(run, tmp_path)
  before = sorted(os.listdir(workdir))
  changed = copy.deepcopy(config)
  changed.optimizer.learning_rate = 0.05
  changed.seed = 7
  with pytest.raises(errors.ConfigChangedError) as e:
    train.train_and_evaluate(changed, workdir)
  message = str(e.value)
  assert 'optimizer.learning_rate: 0.1 -> 0.05' in message
  assert 'seed: 0 -> 7' in message or 'seed: ' in message
  assert '--allow_config_change' in message and 'new --workdir' in message
  assert sorted(os.listdir(workdir)) == before  # Nothing written.
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['config']['optimizer']['learning_rate'] == 0.1


def test_neutral_keys_resume_and_a_finished_run_writes_nothing(
  finished_run, tmp_path, capsys
):
  run, config, summary = finished_run
  workdir = _copy(run, tmp_path)
  files = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs
  )
  same = copy.deepcopy(config)
  same.log_every_steps = 1
  same.keep_checkpoints = 2
  capsys.readouterr()
  again = train.train_and_evaluate(same, workdir)
  out = capsys.readouterr().out
  assert again['already_finished'] and again['steps'] == STEPS
  assert again['eval_accuracy'] == summary['eval_accuracy']
  assert f'already finished at step {STEPS}' in out and 'new --workdir' in out
  after = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs
  )
  assert after == files  # No event file, checkpoint or summary written.


def test_allowed_config_change_is_recorded(finished_run, tmp_path, capsys):
  run, config, _ = finished_run
  workdir = _copy(run, tmp_path)
  longer = copy.deepcopy(config)
  longer.max_steps = STEPS + 2  # Neutral: the schedule does not see it...
  longer.optimizer.learning_rate = 0.05  # ...but this changes the result.
  capsys.readouterr()
  summary = train.train_and_evaluate(longer, workdir, allow_config_change=True)
  assert f'Config changed at step {STEPS}' in capsys.readouterr().out
  assert summary['steps'] == STEPS + 2
  assert summary['config_changes'] == [
    {'step': STEPS, 'changes': {'optimizer.learning_rate': [0.1, 0.05]}}
  ]
  assert summary['config']['optimizer']['learning_rate'] == 0.05
  meta, _ = restore_state(workdir, STEPS + 2)
  assert meta['config']['optimizer']['learning_rate'] == 0.05
  assert meta['config_changes'] == summary['config_changes']


# ----------------------------------------------------------------------------
# 2. The guard on the update.


def _nan_update_at(monkeypatch, steps):
  """The update of the steps with these state steps is scaled by NaN.

  The loss and the gradients stay finite: what is tested is the guard on the
  update. (The optimizer's own count would not do: a skipped step keeps it.)
  """
  original = run_step.train_step
  bad = jnp.asarray(sorted(steps), jnp.int32)

  def poisoned_step(method, optimizers, state, frozen, batch):
    scale = jnp.where(jnp.any(state.step == bad), jnp.nan, 1.0)

    def poison(tx):
      def update(updates, opt_state, params=None):
        updates, opt_state = tx.update(updates, opt_state, params)
        return jax.tree.map(lambda u: u * scale, updates), opt_state

      return optax.GradientTransformation(tx.init, update)

    poisoned = {g: poison(tx) for g, tx in optimizers.items()}
    return original(method, poisoned, state, frozen, batch)

  monkeypatch.setattr(run_step, 'train_step', poisoned_step)


def test_nan_update_with_finite_loss_is_caught(
  mnist_dir, tmp_path, monkeypatch
):
  _nan_update_at(monkeypatch, [3])
  workdir = str(tmp_path)
  config = tiny_config(mnist_dir, 6, checkpoint_every_steps=2)
  with pytest.raises(
    train.NonFiniteLossError,
    match=r'Non-finite update at step 3 \(epoch 0\).*last good checkpoint '
    r'\(step 2\).*is kept',
  ):
    train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == ['2']
  assert _all_finite(restore_state(workdir, 2)[1])


def test_nan_update_at_the_first_step_names_no_checkpoint(
  mnist_dir, tmp_path, monkeypatch
):
  _nan_update_at(monkeypatch, [0])
  config = tiny_config(mnist_dir, 4, checkpoint_every_steps=2)
  with pytest.raises(
    train.NonFiniteLossError, match=r'step 0 .*no checkpoint was saved'
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == []


def test_nan_gradient_with_finite_loss_is_caught(
  mnist_dir, tmp_path, monkeypatch
):
  original = run_step.train_step

  def nan_grad_step(method, optimizers, state, frozen, batch):
    proxy = copy.copy(method)

    def loss(step, params, *args):
      total, aux = method.loss(step, params, *args)
      leaf = jax.tree.leaves(params)[0]
      # At step 1: value sqrt(0) = 0, gradient 0 * d sqrt(x)/dx at 0 = NaN.
      # Elsewhere sqrt(1) - 1 = 0 with a finite gradient.
      at = state.step == 1
      x = jnp.where(at, jnp.abs(jnp.sum(leaf)) * 0.0, 1.0)
      return total + jnp.sqrt(x) - jnp.where(at, 0.0, 1.0), aux

    proxy.loss = loss
    return original(proxy, optimizers, state, frozen, batch)

  monkeypatch.setattr(run_step, 'train_step', nan_grad_step)
  config = tiny_config(mnist_dir, 3, checkpoint_every_steps=1)
  with pytest.raises(
    train.NonFiniteLossError, match=r'Non-finite gradients at step 1'
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(str(tmp_path)) == ['1']


def test_skip_mode_counts_and_stops_a_diverging_run(
  mnist_dir, tmp_path, monkeypatch
):
  # 32 steps per epoch: 10 % is 3.2 batches, so the 4th skip stops the run.
  _nan_update_at(monkeypatch, range(1, 100))
  config = tiny_config(
    mnist_dir, 10, nonfinite='skip', log_every_steps=1, checkpoint_every_steps=2
  )
  with pytest.raises(
    train.NonFiniteLossError, match=r'4 of the 5 batches before step 5'
  ):
    train.train_and_evaluate(config, str(tmp_path))
  for step in checkpoint_steps(str(tmp_path)):
    assert _all_finite(restore_state(str(tmp_path), step)[1])


def test_skip_mode_within_the_limit_finishes_with_the_count(
  mnist_dir, tmp_path, monkeypatch
):
  _nan_update_at(monkeypatch, [1, 3])
  config = tiny_config(mnist_dir, 5, nonfinite='skip')
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['skipped_nonfinite_batches'] == 2 and summary['steps'] == 5
  assert _all_finite(restore_state(str(tmp_path), 5)[1])


@pytest.mark.parametrize(
  'key, value, needle',
  [
    ('optimizer.learning_rate', float('nan'), 'learning_rate=nan'),
    ('optimizer.learning_rate', 0.0, 'finite positive'),
    ('optimizer.weight_decay', -1e-4, 'weight_decay=-0.0001'),
    ('optimizer.decay_factor', float('inf'), 'schedule'),
    ('batch_size', 0, 'batch_size=0'),
  ],
)
def test_bad_optimizer_and_size_settings_fail_at_start(
  mnist_dir, tmp_path, key, value, needle
):
  config = tiny_config(mnist_dir, 2, **{key: value})
  if key == 'optimizer.decay_factor':
    config.optimizer.schedule = 'step'
    config.optimizer.decay_epochs = (0.01,)
  with pytest.raises(errors.ConfigError, match=needle.replace('.', r'\.')):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints'))


# ----------------------------------------------------------------------------
# 3. Teachers as distilled.


def test_final_checkpoint_holds_the_reported_statistics(finished_run):
  run, config, summary = finished_run
  meta, _ = restore_state(run, STEPS)
  assert meta['finished'] and meta['batch_stats_source'].startswith(
    'precise_bn'
  )
  assert meta['eval_accuracy'] == summary['eval_accuracy']
  # Evaluating the stored statistics as they are (no recalibration) gives the
  # reported accuracy: the checkpoint holds what was measured.
  as_stored = copy.deepcopy(config)
  as_stored.eval_bn_recalibration_batches = 0
  result = train.evaluate(as_stored, run)
  assert result['eval_accuracy'] == summary['eval_accuracy']
  # And --mode=eval with the run's own config reports the same.
  assert (
    train.evaluate(copy.deepcopy(config), run)['eval_accuracy']
    == summary['eval_accuracy']
  )


def test_restored_teacher_reports_and_scores_its_recorded_accuracy(
  finished_run, mnist_dir, tmp_path, capsys
):
  run, config, summary = finished_run
  kd = copy.deepcopy(config)
  kd.method = 'kd'
  kd.kd = (
    config_defaults.load_config_module(os.path.join(REPO, 'configs', 'kd.py'))
    .get_config('demo')
    .kd
  )
  kd.teacher = copy.deepcopy(config.model)
  kd.teacher.checkpoint_dir = run
  kd.max_steps = 1
  capsys.readouterr()
  result = train.train_and_evaluate(kd, str(tmp_path))
  out = capsys.readouterr().out
  recorded = 100 * summary['eval_accuracy']['student']
  assert f'Restored teacher resnet8/conv from {run}' in out
  assert f'its eval accuracy as recorded: {recorded:.2f}%' in out
  assert (
    result['eval_accuracy']['teacher'] == summary['eval_accuracy']['student']
  )


def test_damaged_teacher_falls_back_to_an_older_step(finished_run, tmp_path):
  run, config, _ = finished_run
  workdir = _copy(run, tmp_path)
  for newer in (4, STEPS):  # Every step after 2 damaged.
    state_dir = os.path.join(workdir, 'checkpoints', str(newer), 'state')
    for root, _, files in os.walk(state_dir):
      for name in files:
        if name != '_METADATA' and not name.startswith('_'):
          with open(os.path.join(root, name), 'r+b') as f:
            f.truncate(8)
  _, saved = restore_state(run, 2)
  params = saved['params']['student']['model']
  stats = saved['batch_stats']['student']['model']
  abstract = lambda t: jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), t
  )
  expected = {'model': 'resnet8', 'conv_type': 'conv', 'num_classes': 10}
  restored = checkpointing.restore_teacher_checkpoint(
    workdir, expected, abstract(params), abstract(stats), name='teacher T'
  )
  assert restored.step == 2
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # With every step damaged, the error names the teacher and the directory.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2', 'state'))
  os.makedirs(os.path.join(workdir, 'checkpoints', '2', 'state'))
  with pytest.raises(checkpointing.CheckpointError, match=r'teacher T in .*'):
    checkpointing.restore_teacher_checkpoint(
      workdir, expected, abstract(params), abstract(stats), name='teacher T'
    )


# ----------------------------------------------------------------------------
# 4. Faults: SIGTERM in setup, a second run, a full disk.


def test_sigterm_during_setup_returns_preempted_without_saving(
  mnist_dir, tmp_path, monkeypatch
):
  original = run_setup.setup

  def setup_then_sigterm(config):
    run = original(config)
    os.kill(os.getpid(), signal.SIGTERM)
    return run

  monkeypatch.setattr(run_setup, 'setup', setup_then_sigterm)
  handler = signal.getsignal(signal.SIGTERM)
  summary = train.train_and_evaluate(tiny_config(mnist_dir, 2), str(tmp_path))
  assert summary['preempted'] and summary['steps'] == 0
  assert checkpoint_steps(str(tmp_path)) == []
  assert signal.getsignal(signal.SIGTERM) is handler


def test_sigterm_before_the_first_step_exits_75_via_the_cli(
  mnist_dir, compile_cache, tmp_path
):
  workdir, go = str(tmp_path / 'run'), str(tmp_path / 'go')
  env = cli_env(compile_cache, KDJAX_FAULT_PAUSE_AT='0', KDJAX_FAULT_GO_FILE=go)
  process = subprocess.Popen(
    cli_command(workdir, mnist_dir, 3, faults=True),
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    # The pause at batch 0 comes after setup; the signal lands there.
    deadline = time.time() + 120
    while not checkpoint_steps(workdir) and time.time() < deadline:
      if os.path.exists(os.path.join(workdir, checkpointing.LOCK_FILE)):
        break
      time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    open(go, 'w').close()
    out, err = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == errors.EXIT_PREEMPTED, err[-2000:]
  assert 'Traceback' not in err
  assert 'rerun the same command to resume' in err.lower() + out.lower()
  assert json.loads(out[out.index('\n{') :])['preempted'] is True


def test_a_second_run_on_a_workdir_fails_at_once(tmp_path):
  workdir = str(tmp_path)
  with checkpointing.workdir_lock(workdir):
    with pytest.raises(errors.WorkdirError, match='Another kdjax run'):
      with checkpointing.workdir_lock(workdir):
        pass
  # A holder that dies (SIGKILL) leaves no stuck lock.
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import fcntl, sys, time; f = open(sys.argv[1], "a+"); '
      'fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); '
      'time.sleep(60)',
      os.path.join(workdir, checkpointing.LOCK_FILE),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(errors.WorkdirError):
    with checkpointing.workdir_lock(workdir):
      pass
  holder.kill()
  holder.wait()
  with checkpointing.workdir_lock(workdir):
    pass


@pytest.fixture
def small_tmpfs(tmp_path):
  """A tmpfs mount of a given size; skips where mounting is not allowed."""
  mounts = []

  def mount(size_bytes):
    target = tmp_path / f'tmpfs{len(mounts)}'
    target.mkdir()
    done = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size_bytes}', 'tmpfs', target],
      capture_output=True,
      text=True,
    )
    if done.returncode:
      pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    mounts.append(target)
    return str(target)

  yield mount
  for target in mounts:
    subprocess.run(['umount', '-l', target], capture_output=True)


def test_a_full_disk_keeps_the_previous_checkpoint(
  finished_run, mnist_dir, small_tmpfs
):
  run, _, _ = finished_run
  one = sum(
    os.path.getsize(os.path.join(d, f))
    for d, _, fs in os.walk(os.path.join(run, 'checkpoints', '2'))
    for f in fs
  )
  workdir = small_tmpfs(int(one * 1.6) + 64 * 1024)
  config = tiny_config(
    mnist_dir, 6, checkpoint_every_steps=2, keep_checkpoints=10
  )
  with pytest.raises(
    checkpointing.CheckpointSaveError,
    match=r'Saving the checkpoint of step 4 .*failed \(the disk is full.*'
    r'previous checkpoint \(step 2\) is intact',
  ):
    train.train_and_evaluate(config, workdir)
  meta, state = restore_state(workdir, 2)
  assert meta['step'] == 2 and _all_finite(state)


# ----------------------------------------------------------------------------
# 5. User errors through the command line.

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
