"""The 'crd' method through the trainer: its memory bank is checkpointed state.

A tiny CRD run is stopped mid-epoch and resumed; the state it ends with,
memory bank included, is bit for bit that of an uninterrupted run.
"""

import copy
import glob
import os

import numpy as np

from helpers import assert_trees_equal, crd_tiny_config, restore_state
from kdjax.train import train

STEPS = 4  # 2 epochs of 2 steps; the interrupted run stops after step 3.


def _config():
  config = crd_tiny_config(num_negatives=4, feat_dim=8)
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.update(
    train_examples=16, eval_examples=8, image_size=16, num_classes=5
  )
  config.teacher.pretrain_epochs = 1
  config.batch_size, config.num_devices, config.num_epochs = 8, 2, 2
  config.eval_bn_recalibration_batches = 0
  config.crd.kd_weight = 0.5  # The KD term's path too.
  return config


def test_a_resumed_run_ends_with_the_same_memory_bank(tmp_path):
  config = _config()
  whole = str(tmp_path / 'whole')
  summary = train.train_and_evaluate(config, whole)
  assert summary['steps'] == STEPS
  assert set(summary['eval_accuracy']) == {'student', 'teacher'}
  # The same pre-trained teacher for the second run.
  (teacher_dir,) = glob.glob(os.path.join(whole, 'teachers', '*'))
  resumed_config = copy.deepcopy(config)
  resumed_config.teacher.checkpoint_dir = teacher_dir
  resumed = str(tmp_path / 'resumed')
  resumed_config.max_steps = STEPS - 1
  assert train.train_and_evaluate(resumed_config, resumed)['steps'] == 3
  resumed_config.max_steps = -1
  assert train.train_and_evaluate(resumed_config, resumed)['steps'] == STEPS

  _, expected = restore_state(whole, STEPS)
  _, actual = restore_state(resumed, STEPS)
  _, before = restore_state(resumed, STEPS - 1)
  bank = expected['batch_stats']['student']['crd_memory']
  assert bank['student'].shape == (16, 8)
  assert float(bank['z_student']) > 0 and float(bank['z_teacher']) > 0
  # Step 4 moved the rows of its 8 examples, and only those.
  old = before['batch_stats']['student']['crd_memory']
  moved = np.any(bank['student'] != old['student'], axis=1)
  assert moved.sum() == 8
  assert_trees_equal(expected, actual)
