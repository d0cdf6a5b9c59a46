"""Teachers as distilled: the final checkpoint holds the statistics it
reported, a restored teacher scores what its run printed, and a damaged
teacher falls back to an older step."""

import copy
import os
import shutil
import jax
import numpy as np
import pytest

from kdjax import config_defaults
from kdjax.train import checkpointing
from kdjax.train import train
from helpers import (
  FINISHED_RUN_STEPS,
  REPO,
  copy_run,
  restore_state,
)

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# Teachers as distilled.


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
  workdir = copy_run(run, tmp_path)
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
