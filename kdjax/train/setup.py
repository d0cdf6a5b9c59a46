"""What a run builds before its first step: data, method, optimizers, state shapes.

``setup(config)`` returns a ``RunSetup`` that both training (loop.py) and
evaluation (evaluation.py) use. Frozen teachers are restored here, by the
trainer, and handed to the method as weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax import methods, optim
from kdjax.errors import ConfigError
from kdjax.methods import build_method
from kdjax.train import mesh as kd_mesh
from kdjax.train import teachers
from kdjax.train.state import TrainState


def run_length(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The steps a run of `config` takes: `num_epochs` epochs, cut at `max_steps`."""
  total = int(round(config.num_epochs * steps_per_epoch))
  if config.get('max_steps', -1) and config.get('max_steps', -1) > 0:
    total = min(total, config.max_steps)
  return total


def build_inputs(config: ml_collections.ConfigDict):
  """(train, eval) sources of `config` for this process (kdjax.data)."""
  return kd_data.build_inputs(
    config,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def optimizer_config(
  config: ml_collections.ConfigDict, group: str
) -> ml_collections.ConfigDict:
  """The optimizer of a parameter group; its schedule spans config.num_epochs."""
  source = (
    config.get('optimizers', {}).get(group)
    if config.get('optimizers')
    else None
  )
  opt = ml_collections.ConfigDict((source or config.optimizer).to_dict())
  opt.epochs = config.num_epochs
  reference = opt.get('reference_batch_size', 0)
  if reference and opt.get('scale_lr_with_batch', True):
    opt.learning_rate = opt.learning_rate * config.batch_size / reference
  return opt


def batch_note(config: ml_collections.ConfigDict) -> str:
  """The banner's note on the learning rate when the batch is not the recipe's."""
  opt = config.optimizer
  reference = opt.get('reference_batch_size', 0)
  if not reference or config.batch_size == reference:
    return ''
  if opt.get('scale_lr_with_batch', True):
    return (
      f" (scaled from {opt.learning_rate:g} at the recipe's batch "
      f'{reference} to batch {config.batch_size})'
    )
  return (
    f" (WARNING: the recipe's rate is for batch {reference}, this run uses "
    f'{config.batch_size}; --config.optimizer.scale_lr_with_batch=True '
    'scales it linearly)'
  )


def build_optimizers(config, method, params, steps_per_epoch):
  masks = method.adder_masks(params)
  trainable = method.trainable_mask(params) or {}
  optimizers = {}
  for g in method.groups:
    tx = optim.build_optimizer(
      optimizer_config(config, g),
      params[g],
      steps_per_epoch=steps_per_epoch,
      adder_mask=masks[g],
    )
    if trainable.get(g) is not None:
      # Leaves that do not train get no update at all (no weight decay).
      labels = jax.tree.map(lambda t: 'train' if t else 'frozen', trainable[g])
      tx = optax.multi_transform(
        {'train': tx, 'frozen': optax.set_to_zero()}, labels
      )
    optimizers[g] = tx
  return optimizers


def init_state(config, method, optimizers, frozen, sample_images) -> TrainState:
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  params, batch_stats = method.init(init_rng, sample_images)
  params, batch_stats = method.warm_start(params, batch_stats, frozen)
  opt_state = {g: optimizers[g].init(params[g]) for g in method.groups}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    rng=jax.random.key_data(step_rng),
  )


def check_schedules(config, method, steps_per_epoch: int, total_steps: int):
  """Every group's learning rate is finite and >= 0 at every step it runs."""
  steps = jnp.arange(max(total_steps, 1))
  for group in method.groups:
    schedule = optim.build_schedule(
      optimizer_config(config, group), steps_per_epoch
    )
    lrs = np.asarray(schedule(steps))
    if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
      bad = int(np.flatnonzero(~np.isfinite(lrs) | (lrs < 0))[0])
      raise ConfigError(
        f'The learning-rate schedule of the {group!r} parameters gives '
        f'{lrs[bad]} at step {bad}; check the optimizer settings '
        '(learning_rate, warmup_epochs, decay_epochs, decay_factor).'
      )


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """What both training and evaluation of one config build."""

  mesh: jax.sharding.Mesh
  train_source: Any
  eval_source: Any
  method: Any
  frozen: Any
  sample: jax.Array
  optimizers: Dict[str, Any]
  abstract_state: Any
  steps_per_epoch: int
  total_steps: int

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(kd_mesh.DATA_AXIS))


def setup(config: ml_collections.ConfigDict) -> RunSetup:
  """Mesh, data, method (with its frozen teachers), optimizers, state shapes."""
  devices = kd_mesh.mesh_devices(config)
  kd_mesh.check_batch_size(config.batch_size, len(devices))
  kd_mesh.check_batch_size(
    config.get('eval_batch_size') or config.batch_size,
    len(devices),
    'eval_batch_size',
  )
  mesh = kd_mesh.make_mesh(devices)
  train_source, eval_source = build_inputs(config)
  steps_per_epoch = train_source.steps_per_epoch
  total_steps = run_length(config, steps_per_epoch)
  method = build_method(
    config,
    num_classes=train_source.num_classes,
    image_shape=train_source.image_shape,
    steps_per_epoch=steps_per_epoch,
    num_train_examples=train_source.num_examples,
  )
  sample = jnp.zeros((2,) + tuple(train_source.image_shape), jnp.float32)
  teacher_weights = [
    teachers.restore_frozen_weights(
      model, entry, train_source.num_classes, train_source.image_shape
    )
    for model, entry in method.frozen_teachers()
  ]
  frozen = method.prepare_frozen(teacher_weights, sample)
  if method.warm_start_parts():
    init_config = methods.init_phase_config(config)
    init_method = build_method(
      init_config,
      num_classes=train_source.num_classes,
      image_shape=train_source.image_shape,
      steps_per_epoch=steps_per_epoch,
    )
    frozen = dict(
      frozen,
      init_phase=teachers.restore_init_phase(
        method, init_method, train_source.num_classes
      ),
    )
  with jax.set_mesh(mesh):
    abstract_params = jax.eval_shape(
      lambda: method.init(jax.random.key(0), sample)[0]
    )
    optimizers = build_optimizers(
      config, method, abstract_params, steps_per_epoch
    )
    check_schedules(config, method, steps_per_epoch, total_steps)
    replicated = NamedSharding(mesh, P())
    abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(
        functools.partial(init_state, config, method, optimizers, frozen),
        sample,
      ),
    )
  return RunSetup(
    mesh=mesh,
    train_source=train_source,
    eval_source=eval_source,
    method=method,
    frozen=frozen,
    sample=sample,
    optimizers=optimizers,
    abstract_state=abstract_state,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
  )
