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


def test_ab_and_ft_train_their_initialization_phase_first(tmp_path):
  """Teacher, initialization phase, student: the student starts from the
  model the phase trained (AB), with its paraphraser frozen (FT), and a
  rerun finds every run finished."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from kdjax.train import checkpointing, plan  # pylint: disable=g-import-not-at-top
  from kdjax.train import setup as run_setup  # pylint: disable=g-import-not-at-top

  config = distill_tiny_config(('ab', 'ft'))
  config.dataset.name = 'synthetic'
  config.dataset.synthetic.update(
    train_examples=16, eval_examples=8, image_size=16, num_classes=5
  )
  config.teacher.pretrain_epochs = 1
  config.distill.init_epochs = 1
  config.batch_size, config.num_devices, config.num_epochs = 8, 1, 1
  config.eval_bn_recalibration_batches = 0
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 2
  init_dir = plan.init_phase_dir(workdir)
  assert checkpointing.read_latest_meta(init_dir)[1]['finished']
  student = plan.build(config, workdir)[-1].config
  run = run_setup.setup(student)
  # The init run's final model, as the student's run restored it.
  restored = run.frozen['init_phase']
  assert set(restored['params']) == {'model', 'paraphraser'}
  state = run_setup.init_state(
    student, run.method, run.optimizers, run.frozen, run.sample
  )
  for got, want in zip(
    jax.tree.leaves(state.params['student']['model']),
    jax.tree.leaves(restored['params']['model']),
  ):
    np.testing.assert_array_equal(got, want)
  assert 'paraphraser' not in state.params['student']  # Frozen, not trained.
  assert 'ft' in state.params['student']  # The translator trains.
  again = train.train_and_evaluate(config, workdir)
  assert again['steps'] == 2
  assert (
    checkpointing.read_latest_meta(init_dir)[1]['step']
    == (checkpointing.read_latest_meta(init_dir)[1]['total_steps'])
  )
