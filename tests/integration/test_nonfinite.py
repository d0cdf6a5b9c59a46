"""Non-finite training: every loss term, the gradients and the update are
checked on the device; nothing non-finite reaches a saved state; 'skip'
drops exactly the bad update and stops a diverging run."""

import copy
import os
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax

from kdjax.train import step as run_step
from kdjax.train import train
from kdjax import errors
from helpers import (
  FINISHED_RUN_STEPS,
  REFERENCE_STEPS,
  all_finite,
  assert_trees_equal,
  checkpoint_steps,
  restore_state,
  tiny_config,
  trees_differ,
)

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# Non-finite losses.


def _poison_loss(monkeypatch, *, at_step, term, value, total_too):
  """Makes metrics[term] (and maybe the total) `value` at one step, inside the jitted step.

  Only loss values change, never gradients: what is tested is the guard.
  """
  original = run_step.train_step

  def poisoned_train_step(method, optimizers, state, frozen, batch):
    proxy = copy.copy(method)

    def loss(*args):
      total, (batch_stats, metrics) = method.loss(*args)
      bad = jnp.where(state.step == at_step, value, 0.0)
      metrics = dict(metrics, **{term: metrics[term] + bad})
      return (total + bad if total_too else total), (batch_stats, metrics)

    proxy.loss = loss
    return original(proxy, optimizers, state, frozen, batch)

  monkeypatch.setattr(run_step, 'train_step', poisoned_train_step)


def test_nan_loss_term_stops_the_run_and_keeps_the_last_checkpoint(
  reference, mnist_dir, tmp_path, monkeypatch
):
  # Only the reported term is NaN, the total is finite: every term is checked.
  _poison_loss(
    monkeypatch, at_step=3, term='loss/ce', value=jnp.nan, total_too=False
  )
  config = tiny_config(mnist_dir, REFERENCE_STEPS, checkpoint_every_steps=2)
  workdir = str(tmp_path)
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"Non-finite loss at step 3 \(epoch 0\): \{'loss/ce': nan\}.*"
    r'last good checkpoint .* is kept.*nonfinite=skip',
  ):
    train.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == ['2']  # Committed before the error left.
  assert_trees_equal(
    restore_state(reference, 2)[1], restore_state(workdir, 2)[1]
  )


def test_inf_loss_with_nonfinite_skip_drops_that_batch(
  reference, mnist_dir, tmp_path, monkeypatch
):
  # Step 3 (the 4th, from state 3 to state 4) has an infinite total loss.
  _poison_loss(
    monkeypatch, at_step=3, term='loss/ce', value=jnp.inf, total_too=True
  )
  config = tiny_config(
    mnist_dir,
    5,
    checkpoint_every_steps=1,
    keep_checkpoints=10,
    nonfinite='skip',
  )
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 5 and summary['skipped_nonfinite_batches'] == 1
  states = {s: restore_state(workdir, s)[1] for s in (2, 3, 4, 5)}
  assert_trees_equal(restore_state(reference, 2)[1], states[2])
  # Step 3 moved the data position and step counter on, nothing else.
  assert int(states[4]['step']) == 4
  for part in ('params', 'batch_stats', 'opt_state'):
    assert_trees_equal(states[3][part], states[4][part])
  assert trees_differ(states[2]['params'], states[3]['params'])
  assert trees_differ(states[4]['params'], states[5]['params'])
  assert all(
    np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(states[5]['params'])
  )


# ----------------------------------------------------------------------------
# The guard on the update.


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
  assert all_finite(restore_state(workdir, 2)[1])


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
    assert all_finite(restore_state(str(tmp_path), step)[1])


def test_skip_mode_within_the_limit_finishes_with_the_count(
  mnist_dir, tmp_path, monkeypatch
):
  _nan_update_at(monkeypatch, [1, 3])
  config = tiny_config(mnist_dir, 5, nonfinite='skip')
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['skipped_nonfinite_batches'] == 2 and summary['steps'] == 5
  assert all_finite(restore_state(str(tmp_path), 5)[1])


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
