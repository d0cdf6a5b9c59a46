"""Preemption and interruptions: SIGTERM saves at a step boundary and the rerun
resumes bit-identically; SIGTERM during setup or teacher pre-training; a
second run on a locked workdir; a full disk keeps the previous checkpoint."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
import pytest

from kdjax import config_defaults
from kdjax.train import checkpointing
from kdjax.train import mesh as kd_mesh
from kdjax.train import train
from kdjax import errors
from kdjax.train import setup as run_setup
from helpers import (
  FINISHED_RUN_STEPS,
  REFERENCE_STEPS,
  REPO,
  TIMEOUT,
  all_finite,
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

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# Preemption.


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
# Faults: SIGTERM in setup, a second run, a full disk.


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
  assert meta['step'] == 2 and all_finite(state)
