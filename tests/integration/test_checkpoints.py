"""Crashes during a save and corrupt checkpoints: the newest checkpoint that
restores is used, and the log names the ones skipped."""

import glob
import logging
import os
import shutil
import signal
import jax
import jax.numpy as jnp
import pytest

from kdjax.train import checkpointing
from kdjax.train import train
from helpers import (
  FINISHED_RUN_STEPS,
  REFERENCE_STEPS,
  assert_trees_equal,
  checkpoint_steps,
  cli_command,
  cli_env,
  finished_run_config,
  restore_state,
  run_cli,
)

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# Crashes during a save; corrupt checkpoints.


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
