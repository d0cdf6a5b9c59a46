"""A user's own run: Ctrl-C saves, restarts log no step twice, finished teachers.

Each behaviour is checked the way a user meets it: through the command line
where a signal or an exit code is involved, and by reading back what the run
wrote (checkpoints, TensorBoard events, summary.json).
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from tensorboard.backend.event_processing import event_accumulator

from helpers import (
  REPO,
  TIMEOUT,
  checkpoint_steps,
  cli_command,
  cli_env,
  load_config_module,
  run_cli,
  tiny_config,
  wait_for_line,
)
from kdjax import config_defaults, models
from kdjax.methods import ekd
from kdjax.train import checkpointing, loop, teachers, train
from kdjax.train import setup as run_setup

STEPS = 6


def _paused_run(tmp_path, mnist_dir, compile_cache, pause_at):
  """A CLI run that stops before feeding batch `pause_at` until `go` exists."""
  workdir, go = str(tmp_path / 'run'), str(tmp_path / 'go')
  env = cli_env(
    compile_cache,
    KDJAX_FAULT_MARKERS='1',
    KDJAX_FAULT_PAUSE_AT=str(pause_at),
    KDJAX_FAULT_GO_FILE=go,
  )
  command = cli_command(
    workdir, mnist_dir, STEPS, faults=True, checkpoint_every_steps=0
  )
  process = subprocess.Popen(
    command,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    # As a terminal's Ctrl-C finds it: SIGINT at its default, whatever the
    # test runner's parent shell did with it.
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  wait_for_line(process, f'KDJAX_FAULT batch {pause_at} ')
  return process, workdir, go


def test_ctrl_c_saves_exits_130_and_the_rerun_resumes(
  tmp_path, mnist_dir, compile_cache
):
  process, workdir, go = _paused_run(tmp_path, mnist_dir, compile_cache, 2)
  try:
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    open(go, 'w').close()
    out, err = process.communicate(timeout=TIMEOUT)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 130, err[-3000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
  assert 'Ctrl-C: saved step 3, exiting. Rerun the same command' in out
  assert 'Interrupted before the end' in err
  assert checkpoint_steps(workdir) == ['3']

  resumed = run_cli(
    cli_command(workdir, mnist_dir, STEPS, checkpoint_every_steps=0),
    cli_env(compile_cache),
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed student run from step 3 of {STEPS}' in resumed.stdout
  assert json.loads(resumed.stdout[resumed.stdout.index('{') :])['steps'] == 6


def test_a_second_ctrl_c_aborts_at_once(tmp_path, mnist_dir, compile_cache):
  process, workdir, go = _paused_run(tmp_path, mnist_dir, compile_cache, 1)
  try:
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # While the loop is still paused.
    out, err = process.communicate(timeout=TIMEOUT)
  finally:
    open(go, 'w').close()
    if process.poll() is None:
      process.kill()
  assert process.returncode == 130, err[-3000:]
  assert 'aborted by a second Ctrl-C' in err and 'Traceback' not in err
  assert 'saved step' not in out
  assert checkpoint_steps(workdir) == []


def _scalar_steps(workdir, tag):
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  return [e.step for e in events.Scalars(tag)]


def test_a_restart_from_an_earlier_step_logs_no_step_twice(tmp_path, mnist_dir):
  workdir = str(tmp_path)
  config = tiny_config(
    mnist_dir, 4, checkpoint_every_steps=2, log_every_steps=1
  )
  train.train_and_evaluate(config, workdir)
  assert _scalar_steps(workdir, 'loss/total') == [1, 2, 3, 4]
  # A kill after step 4 was logged but before it was saved: only step 2 is
  # on disk, and the rerun starts from there.
  shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR, '4'))
  os.remove(os.path.join(workdir, 'summary.json'))
  config.max_steps = 6
  assert train.train_and_evaluate(config, workdir)['steps'] == 6
  assert _scalar_steps(workdir, 'loss/total') == [1, 2, 3, 4, 5, 6]


def test_an_unfinished_teacher_is_refused_unless_allowed(
  tmp_path, mnist_dir, capsys
):
  workdir = str(tmp_path)
  train.train_and_evaluate(
    tiny_config(mnist_dir, 4, checkpoint_every_steps=2), workdir
  )
  # Its final checkpoint lost: the newest is step 2, of a 4-step run.
  shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR, '4'))
  entry = config_defaults.model('resnet8', 'conv', checkpoint_dir=workdir)
  model = models.build_model('resnet8', num_classes=10)
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r'did not finish: its newest checkpoint is step 2 of 4.*'
    r'allow_unfinished=True',
  ):
    teachers.restore_frozen_weights(model, entry, 10, (28, 28, 1))
  entry.allow_unfinished = True
  weights = teachers.restore_frozen_weights(model, entry, 10, (28, 28, 1))
  assert set(weights) == {'params', 'batch_stats'}
  assert 'UNFINISHED: step 2 of 4, accepted by allow_unfinished' in (
    capsys.readouterr().out
  )


def test_a_converted_teacher_counts_as_finished():
  from kdjax.convert import checkpoint as convert_checkpoint  # pylint: disable=g-import-not-at-top

  meta = convert_checkpoint.teacher_meta(
    model='resnet8', conv_type='conv', num_classes=10, source={}
  )
  assert meta['finished'] is True


def test_a_changed_batch_scales_the_recipe_learning_rate():
  config = load_config_module('kd').get_config('cifar100_resnet32x4_resnet8x4')
  assert config.optimizer.reference_batch_size == config.batch_size == 64
  assert run_setup.optimizer_config(config, 'student').learning_rate == 0.05
  assert run_setup.batch_note(config) == ''
  config.batch_size = 16
  scaled = run_setup.optimizer_config(config, 'student').learning_rate
  assert scaled == pytest.approx(0.05 * 16 / 64)
  assert "scaled from 0.05 at the recipe's batch 64" in run_setup.batch_note(
    config
  )
  config.optimizer.scale_lr_with_batch = False
  assert run_setup.optimizer_config(config, 'student').learning_rate == 0.05
  assert 'WARNING' in run_setup.batch_note(config)


def test_a_run_refused_in_setup_leaves_no_workdir(tmp_path, mnist_dir):
  workdir = str(tmp_path / 'never')
  config = tiny_config(mnist_dir, 2)
  config.model.name = 'resnet9000'  # Known only when the model is built.
  with pytest.raises(ValueError, match='unknown model'):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


def test_console_names_and_rates():
  assert loop._two_digits(0.4321) == '0.43'
  assert loop._two_digits(1234.5) == '1200'
  config = config_defaults.model('wrn16_2', 'conv', widen_factor=1)
  assert loop._kwargs_note(config) == ' (widen_factor=1)'
  assert loop._kwargs_note(config_defaults.model('resnet8')) == ''
  demo = load_config_module('ekd').get_config('demo')
  method = ekd.EKD(demo, num_classes=10, image_shape=(28, 28, 1))
  assert method.head_label('student') == 'ensemble'
  assert method.head_label('branch0') == 'branch0'


@pytest.mark.parametrize(
  'minutes, expected', [(0.0, ['6']), (0.001, ['1', '6'])]
)
def test_checkpoints_by_time_as_well_as_by_step(
  tmp_path, mnist_dir, minutes, expected
):
  """With checkpoint_every_minutes the first log boundary past the interval saves.

  No step interval falls inside the run (32 steps an epoch, 6 steps), so
  without the time policy only the final step is saved. With it, orbax's
  ContinuousCheckpointingPolicy saves at the first log boundary (there is
  no earlier checkpoint), then at any later one at least 1 s (0.001 minutes,
  raised to the policy's whole-second floor) after the previous save.
  """
  config = tiny_config(
    mnist_dir,
    6,
    log_every_steps=1,
    checkpoint_every_minutes=minutes,
    keep_checkpoints=10,
  )
  train.train_and_evaluate(config, str(tmp_path))
  saved = checkpoint_steps(str(tmp_path))
  assert saved[0] == expected[0] and saved[-1] == '6'
  if minutes == 0.0:
    assert saved == expected
