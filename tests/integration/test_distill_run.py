"""The 'distill' method through the trainer: every term in one tiny run."""

from helpers import distill_tiny_config
from kdjax.train import train


def test_every_term_trains_through_the_trainer(tmp_path):
  """One run of 2 steps with every term: the trainer compiles it once."""
  config = distill_tiny_config()
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.update(
    train_examples=16, eval_examples=8, image_size=16, num_classes=5
  )
  config.teacher.pretrain_epochs = 1
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 2
  assert set(summary['eval_accuracy']) == {'student', 'teacher'}
