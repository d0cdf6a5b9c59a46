"""A DML run through the trainer: every network trains, each is evaluated."""

from helpers import load_config_module
from kdjax.train import train


def test_dml_demo_trains_both_networks_and_their_ensemble(tmp_path):
  config = load_config_module('dml').get_config('demo')
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.train_examples = 16
  config.dataset.synthetic.eval_examples = 8
  for entry in [config.model, *config.peers]:
    entry.kwargs.stage_widths = (4, 4, 4)
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 2
  assert set(summary['eval_accuracy']) == {'student', 'peer1', 'ensemble'}
