"""Paper optimizers from an ml_collections config (docs/recipes.md).

PyTorch ``torch.optim.SGD`` (dampening 0), with AdderNet's scaling in front:

    scale_by_adder_lr (adder kernels) -> add_decayed_weights -> momentum -> -lr_t

    d = g + wd * p;  buf = mu * buf + d (buf_0 = d);
    d = d + mu * buf if nesterov else buf;  p = p - lr_t * d

Config fields (all optional except ``learning_rate``; see ``default_config``):
  name: 'sgd'.
  learning_rate: peak learning rate.
  momentum, nesterov: as in torch.optim.SGD.
  weight_decay: coupled L2 coefficient, on all params.
  schedule: 'cosine' (to 0 at ``epochs``), 'step' (x ``decay_factor`` at each
    epoch of ``decay_epochs``), or 'constant'.
  epochs, decay_epochs, decay_factor, warmup_epochs: schedule shape, in epochs.
  lr_per_epoch: hold the learning rate constant within an epoch.
  adder_eta: AdderNet eta; None disables the adder scaling.
  reset_momentum_at_boundaries: zero the momentum buffer at each
    ``decay_epochs`` boundary ('step' schedule only).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kdjax.optim.adder_lr import DEFAULT_ADDER_ETA, scale_by_adder_lr

PyTree = Any

OPTIMIZERS = ('sgd',)
SCHEDULES = ('cosine', 'step', 'constant')


def default_config() -> ml_collections.ConfigDict:
  """The AdderNet CIFAR recipe (docs/recipes.md); override per experiment."""
  config = ml_collections.ConfigDict()
  config.name = 'sgd'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.schedule = 'cosine'
  config.epochs = 400
  config.decay_epochs = ()
  config.decay_factor = 0.1
  config.warmup_epochs = 0.0
  config.lr_per_epoch = False
  config.adder_eta = DEFAULT_ADDER_ETA
  config.reset_momentum_at_boundaries = False
  # The batch the recipe's learning rate was published for (0: none, the
  # rate is used as given). A run with another batch_size scales the rate
  # linearly (Goyal et al., 2017) when scale_lr_with_batch, else warns.
  config.reference_batch_size = 0
  config.scale_lr_with_batch = True
  return config


def _field(config: ml_collections.ConfigDict, name: str, default: Any) -> Any:
  return config.get(name, default)


def _check_steps_per_epoch(steps_per_epoch: int) -> int:
  if (
    isinstance(steps_per_epoch, bool)
    or int(steps_per_epoch) != steps_per_epoch
    or steps_per_epoch < 1
  ):
    raise ValueError(
      f'steps_per_epoch must be a positive integer, got {steps_per_epoch!r}'
    )
  return int(steps_per_epoch)


def decay_boundary_steps(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple:
  """Steps at which the 'step' schedule drops: each of ``decay_epochs`` x steps_per_epoch."""
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  epochs = tuple(_field(config, 'decay_epochs', ()) or ())
  if any(e <= 0 for e in epochs):
    raise ValueError(f'decay_epochs must be positive, got {epochs!r}')
  return tuple(sorted(int(round(e * steps_per_epoch)) for e in epochs))


def build_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Learning rate as a function of the 0-based update count.

  'cosine': ``lr * (1 + cos(pi * t / T)) / 2`` with t counted from the end of the
  warm-up and T = (epochs - warmup_epochs) * steps_per_epoch; 0 from step T on.
  'step': ``lr * decay_factor ** #{b in boundaries : t >= b}`` (PyTorch
  MultiStepLR; boundaries are absolute, warm-up included). 'constant': ``lr``.
  Warm-up: ``lr * (t + 1) / W`` for t < W = warmup_epochs * steps_per_epoch, so
  the first update already moves and step W - 1 reaches lr.
  With ``lr_per_epoch`` the schedule is read at the first step of t's epoch and
  the warm-up is ``lr * (e + 1) / warmup_epochs`` in epoch e.

  Raises:
    ValueError: unknown schedule name or inconsistent epochs.
  """
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  name = str(_field(config, 'schedule', 'cosine')).lower()
  if name not in SCHEDULES:
    raise ValueError(
      f'Unknown learning-rate schedule {name!r}; expected one of {SCHEDULES}'
    )
  peak_lr = float(config.learning_rate)
  warmup_steps = int(
    round(float(_field(config, 'warmup_epochs', 0) or 0) * steps_per_epoch)
  )
  if warmup_steps < 0:
    raise ValueError(
      f'warmup_epochs must be >= 0, got {_field(config, "warmup_epochs", 0)!r}'
    )

  if name == 'constant':

    def main(t):
      return jnp.full(jnp.shape(t), peak_lr, jnp.float32)
  elif name == 'cosine':
    epochs = _field(config, 'epochs', None)
    if epochs is None:
      raise ValueError("The 'cosine' schedule needs config.epochs")
    decay_steps = int(round(float(epochs) * steps_per_epoch)) - warmup_steps
    if decay_steps <= 0:
      raise ValueError(
        f'epochs ({epochs}) must exceed warmup_epochs '
        f"({_field(config, 'warmup_epochs', 0)}) for the 'cosine' schedule"
      )

    def main(t):
      progress = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
      return (0.5 * peak_lr * (1.0 + jnp.cos(jnp.pi * progress))).astype(
        jnp.float32
      )
  else:
    boundaries = np.asarray(
      decay_boundary_steps(config, steps_per_epoch), np.int32
    )
    factor = float(_field(config, 'decay_factor', 0.1))

    def main(t):
      drops = jnp.sum(jnp.asarray(t)[..., None] >= boundaries, axis=-1)
      return (peak_lr * jnp.power(factor, drops)).astype(jnp.float32)

  # The smallest step the schedule can see: per-epoch schedules ramp by whole
  # epochs. lr_per_epoch is how the official AdderNet/OFD/RepDistiller scripts
  # update the learning rate.
  per_epoch = bool(_field(config, 'lr_per_epoch', False))
  unit = steps_per_epoch if per_epoch else 1

  def schedule(count):
    t = jnp.asarray(count, jnp.int32)
    if per_epoch:
      t = (t // steps_per_epoch) * steps_per_epoch
    lr = main(t)
    if warmup_steps > 0:
      ramp = peak_lr * (t + unit).astype(jnp.float32) / warmup_steps
      lr = jnp.where(t < warmup_steps, ramp, lr)
    return lr

  return schedule


class SgdMomentumState(NamedTuple):
  count: jax.Array
  trace: PyTree


def sgd_momentum(
  momentum: float, nesterov: bool = False, reset_steps: Sequence[int] = ()
) -> optax.GradientTransformation:
  """PyTorch SGD momentum buffer, optionally zeroed at given update counts.

  ``buf = mu * buf + g``; output ``g + mu * buf`` (Nesterov) or ``buf``. At a
  count in ``reset_steps`` the old buffer is dropped first, as a freshly built
  torch optimizer would (its first step sets buf = g).
  """
  if nesterov and not momentum > 0:
    raise ValueError(
      'Nesterov momentum requires momentum > 0 (as in torch.optim.SGD)'
    )
  reset_steps = tuple(sorted(int(s) for s in reset_steps))

  def init_fn(params):
    return SgdMomentumState(
      count=jnp.zeros([], jnp.int32), trace=jax.tree.map(jnp.zeros_like, params)
    )

  def update_fn(updates, state, params=None):
    del params
    if reset_steps:
      reset = jnp.any(state.count == jnp.asarray(reset_steps, jnp.int32))
      old = jax.tree.map(
        lambda b: jnp.where(reset, jnp.zeros_like(b), b), state.trace
      )
    else:
      old = state.trace
    trace = jax.tree.map(
      lambda g, b: (g + momentum * b).astype(b.dtype), updates, old
    )
    if nesterov:
      updates = jax.tree.map(lambda g, b: g + momentum * b, updates, trace)
    else:
      updates = trace
    return updates, SgdMomentumState(
      count=optax.safe_increment(state.count), trace=trace
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _resolve_mask(
  adder_mask: Union[PyTree, Callable[[PyTree], PyTree]], params: PyTree
) -> PyTree:
  mask = adder_mask(params) if callable(adder_mask) else adder_mask
  try:
    # A mask is the params' structure or a prefix of it; anything else fails here,
    # at build time, rather than inside the first jitted update.
    jax.tree.map(lambda m, _: None, mask, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f'adder_mask does not match the params structure: {e}'
    ) from e
  return mask


def build_optimizer(
  config: ml_collections.ConfigDict,
  params: PyTree,
  *,
  steps_per_epoch: int,
  adder_mask: Optional[Union[PyTree, Callable[[PyTree], PyTree]]] = None,
) -> optax.GradientTransformation:
  """Builds the optimizer chain described in the module docstring.

  Args:
    config: optimizer ConfigDict (fields in the module docstring).
    params: the parameter pytree (or its abstract shapes); used to resolve and
      check ``adder_mask``.
    steps_per_epoch: optimizer updates per epoch, to turn epochs into steps.
    adder_mask: which leaves are adder kernels: a pytree of bools (the params'
      structure or a prefix), or a callable ``params -> mask``, e.g.
      ``functools.partial(adder_kernel_mask, adder_paths_predicate=...)``.
        None means the model has no adder kernels: nothing is rescaled.

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: unknown optimizer or schedule name, bad mask, inconsistent
      options.
  """
  name = str(_field(config, 'name', 'sgd')).lower()
  if name not in OPTIMIZERS:
    raise ValueError(
      f'Unknown optimizer {name!r}; expected one of {OPTIMIZERS}'
    )
  schedule = build_schedule(config, steps_per_epoch)

  chain = []
  # torch.optim.SGD, which every recipe in docs/recipes.md was tuned with.
  # The adder mask is not guessed from names: the zoo's ConvOrAdder class hosts
  # both convs and adders. The scaling comes first because AdderNet applies it
  # inside the layer's backward, so weight decay and momentum see the rescaled
  # gradient.
  adder_eta = _field(config, 'adder_eta', DEFAULT_ADDER_ETA)
  if adder_eta is not None and adder_mask is not None:
    mask = _resolve_mask(adder_mask, params)
    if any(jax.tree.leaves(mask)):
      chain.append(scale_by_adder_lr(float(adder_eta), mask))

  weight_decay = float(_field(config, 'weight_decay', 0.0) or 0.0)
  if weight_decay < 0:
    raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
  if weight_decay > 0:
    chain.append(optax.add_decayed_weights(weight_decay))

  momentum = float(_field(config, 'momentum', 0.0) or 0.0)
  nesterov = bool(_field(config, 'nesterov', False))
  reset_steps = ()
  if _field(config, 'reset_momentum_at_boundaries', False):
    if str(_field(config, 'schedule', 'cosine')).lower() != 'step':
      raise ValueError(
        "reset_momentum_at_boundaries needs the 'step' schedule "
        '(its decay_epochs are the boundaries)'
      )
    # OFD's official CIFAR script builds a new torch SGD at epochs 100 and 150,
    # which drops the buffer.
    reset_steps = decay_boundary_steps(config, steps_per_epoch)
  if momentum < 0:
    raise ValueError(f'momentum must be >= 0, got {momentum}')
  if momentum > 0 or nesterov:
    chain.append(sgd_momentum(momentum, nesterov, reset_steps))

  # The learning rate multiplies the update after the momentum buffer, as in
  # PyTorch, so a learning-rate drop does not rescale the buffer.
  chain.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*chain)
