"""TAKD through the trainer: teacher, assistant and student, one command."""

import json
import os

from helpers import load_config_module
from kdjax.train import train


def test_takd_chain_trains_every_link_and_resumes_as_finished(tmp_path):
  config = load_config_module('takd').get_config('demo')
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.train_examples = 16
  config.dataset.synthetic.eval_examples = 8
  for entry in (config.model, config.teacher, config.teacher.distill_from):
    entry.kwargs.stage_widths = (4, 4, 4)
  config.teacher.pretrain_epochs = 1
  config.teacher.distill_from.pretrain_epochs = 1
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 2 and set(summary['eval_accuracy']) == {
    'student',
    'teacher',
  }
  assistant = os.path.join(workdir, 'teachers', '0_resnet14')
  teacher = os.path.join(assistant, 'teachers', '0_resnet20')
  for run, method in ((assistant, 'kd'), (teacher, 'supervised')):
    with open(os.path.join(run, 'summary.json')) as f:
      assert json.load(f)['method'] == method
  # The student scored its teacher, the assistant, as the assistant scored
  # itself.
  with open(os.path.join(assistant, 'summary.json')) as f:
    recorded = json.load(f)['eval_accuracy']['student']
  assert summary['eval_accuracy']['teacher'] == recorded
  again = train.train_and_evaluate(config, workdir)
  assert again['already_finished']
