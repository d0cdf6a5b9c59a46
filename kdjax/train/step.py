"""The jitted functions of a run: train step, guarded step, eval, BN estimates.

Each is a pure function of the method, the state and a batch; the loop
(loop.py) dispatches them and reads their results only at boundaries.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp

from kdjax.models.layers import BN_MOMENTUM
from kdjax.train.state import TrainState

# The names flax's BatchNorm gives its running statistics: the only
# batch_stats leaves that precise-BN re-estimates.
BN_STATISTICS = ('mean', 'var')


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(method, optimizers, state: TrainState, frozen, batch):
  """One update of every parameter group; a non-finite step changes nothing.

  Returns (new_state, metrics): the loss terms ('loss/...'), the method's other
  metrics, 'finite' (every loss term, gradient, parameter, optimizer state and
  BN statistic of the update is finite), and 'nonfinite/grads' and
  'nonfinite/update' (True where that part was not).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    return method.loss(
      state.step, params, state.batch_stats, frozen, batch, rng
    )

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.params)
  params, opt_state = {}, {}
  for group, tx in optimizers.items():
    updates, opt_state[group] = tx.update(
      grads[group], state.opt_state[group], state.params[group]
    )
    params[group] = jax.tree.map(
      lambda p, u: p + u, state.params[group], updates
    )
  loss_terms = {k: v for k, v in metrics.items() if k.startswith('loss/')}
  loss_terms['loss/total'] = loss
  # A finite loss can still give a NaN update (a NaN learning rate, an
  # overflowing gradient), so the gradients and the new state are checked too.
  grads_finite = _all_finite(grads)
  update_finite = _all_finite((params, opt_state, batch_stats))
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in loss_terms.values()]))
  finite = finite & grads_finite & update_finite
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  # A non-finite step leaves the state as it was: 'skip' moves on to the next
  # batch, 'raise' stops with the last good state intact.
  keep = lambda new, old: jnp.where(finite, new, old)
  new_state = new_state.replace(
    params=jax.tree.map(keep, new_state.params, state.params),
    batch_stats=jax.tree.map(keep, new_state.batch_stats, state.batch_stats),
    opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
  )
  metrics = dict(metrics, **loss_terms)
  metrics['finite'] = finite
  metrics['nonfinite/grads'] = ~grads_finite
  metrics['nonfinite/update'] = ~update_finite
  return new_state, metrics


def init_guard(metrics_shapes) -> Dict[str, Any]:
  """The device-side record of non-finite steps, carried from step to step.

  'skipped': steps whose update was dropped; 'first_bad_step': the state step
  of the first of them (-1: none); 'first_bad': that step's metrics.
  """
  return {
    'skipped': jnp.zeros((), jnp.int32),
    'first_bad_step': jnp.full((), -1, jnp.int32),
    'first_bad': jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), metrics_shapes
    ),
  }


def guarded_step(train, skip_nonfinite: bool, state, guard, frozen, batch):
  """`train(state, frozen, batch)` (train_step) plus the guard bookkeeping.

  The host need not look at every step: in 'raise' mode the first non-finite
  step freezes the state, every later step leaves it as it was, so the host,
  which looks only at log, checkpoint and eval boundaries, still finds the
  last good state and the first bad step's metrics there.
  """
  new_state, metrics = train(state, frozen, batch)
  frozen_by_earlier = (guard['first_bad_step'] >= 0) & (not skip_nonfinite)
  bad = ~metrics['finite']
  first = bad & (guard['first_bad_step'] < 0)
  keep = lambda new, old: jnp.where(frozen_by_earlier, old, new)
  new_state = jax.tree.map(keep, new_state, state)
  guard = {
    'skipped': guard['skipped'] + (bad & ~frozen_by_earlier).astype(jnp.int32),
    'first_bad_step': jnp.where(first, state.step, guard['first_bad_step']),
    'first_bad': jax.tree.map(
      lambda new, old: jnp.where(first, new, old), metrics, guard['first_bad']
    ),
  }
  return new_state, guard, metrics


def eval_step(method, state: TrainState, frozen, batch):
  heads = method.predict(
    state.params, state.batch_stats, frozen, batch['image']
  )
  mask = batch['mask']
  correct = {
    name: jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
    for name, logits in heads.items()
  }
  return correct, jnp.sum(mask)


def batch_stat_estimates(method, state: TrainState, frozen, batch):
  """This batch's BN mean/var for every trainable BN, from one train-mode forward.

  Every BN in kdjax updates running = m * running + (1 - m) * batch with
  m = BN_MOMENTUM, so the batch statistics are recovered exactly from the
  update the loss returns. Only BatchNorm 'mean' and 'var' leaves are
  re-estimated; any other leaf of batch_stats is returned as it was.
  """
  rng = jax.random.wrap_key_data(state.rng)
  _, (new_stats, _) = method.loss(
    state.step, state.params, state.batch_stats, frozen, batch, rng
  )
  m = BN_MOMENTUM

  def estimate(path, new, old):
    if getattr(path[-1], 'key', None) not in BN_STATISTICS:
      return old
    return (new - m * old) / (1 - m)

  return jax.tree.map_with_path(estimate, new_stats, state.batch_stats)


@dataclasses.dataclass(frozen=True)
class RunFunctions:
  """The jitted functions of one run: train step, eval step, BN estimates.

  `train` is train_step alone: `jax.eval_shape(train, ...)` gives the metric
  structure the guard needs, and since `step` calls the same jitted function,
  tracing `step` reuses that trace instead of tracing the model again.
  """

  train: Any
  step: Any
  eval: Any
  estimate: Any


def compile_functions(config, method, optimizers) -> RunFunctions:
  """Jits the run's functions (compiled on first call) for `method`."""
  skip_nonfinite = config.get('nonfinite', 'raise') == 'skip'
  train = jax.jit(functools.partial(train_step, method, optimizers))
  return RunFunctions(
    train=train,
    step=jax.jit(
      functools.partial(guarded_step, train, skip_nonfinite),
      donate_argnums=(0, 1),
    ),
    eval=jax.jit(functools.partial(eval_step, method)),
    estimate=jax.jit(functools.partial(batch_stat_estimates, method)),
  )
