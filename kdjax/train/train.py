"""train_and_evaluate and evaluate: mesh, data, init, restore, loop.

The same code runs on one CPU, 8 fake CPU devices, a GPU and a multi-host TPU
pod: a 1-D 'data' mesh over every device, parameters replicated, batches split
along the batch axis. Under plain ``jax.jit`` the compiler inserts the
collectives, so BN statistics and gradients are over the global batch.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax.data import synthetic
from kdjax import opcount
from kdjax import optim
from kdjax.errors import EXIT_FAILED, ConfigError, KdjaxError
from kdjax.models.layers import BN_MOMENTUM
from kdjax.train import checkpointing, preemption, reporting, run_config
from kdjax.train import methods
from kdjax.train.methods import build_method
from kdjax.train.state import TrainState

DATA_AXIS = 'data'


class NonFiniteLossError(KdjaxError, FloatingPointError):
  """A loss term, gradient or update became NaN or Inf."""

  exit_code = EXIT_FAILED


# ---------------------------------------------------------------- mesh


def mesh_devices(config: ml_collections.ConfigDict):
  """All devices, or the first ``config.num_devices`` (single-process runs only)."""
  devices = jax.devices()
  wanted = config.get('num_devices', 0) or len(devices)
  if wanted > len(devices) or (
    wanted != len(devices) and jax.process_count() > 1
  ):
    raise ValueError(
      f'config.num_devices={wanted}, but {len(devices)} devices are visible '
      f'to {jax.process_count()} process(es); use 0 for all of them.'
    )
  return devices[:wanted]


def make_mesh(devices) -> jax.sharding.Mesh:
  return jax.make_mesh(
    (len(devices),),
    (DATA_AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices,
  )


def check_batch_size(
  global_batch: int, devices: int, what: str = 'batch_size'
) -> None:
  processes = jax.process_count()
  if global_batch % devices:
    raise ValueError(
      f'config.{what}={global_batch} is not divisible by the {devices} devices '
      f'of the mesh; use a multiple of {devices}.'
    )
  if global_batch % processes:
    raise ValueError(
      f'config.{what}={global_batch} is not divisible by the {processes} '
      'processes.'
    )


# ---------------------------------------------------------------- data


def check_data_loader(config: ml_collections.ConfigDict) -> None:
  """Fails fast on a loader that cannot read the dataset, before any teacher trains."""
  if config.dataset.name == synthetic.NAME:  # Any loader: nothing is read.
    return
  kd_data.check_loader(kd_data.config_loader(config), config.dataset.name)


def run_length(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """The steps a run of `config` takes: `num_epochs` epochs, cut at `max_steps`."""
  total = int(round(config.num_epochs * steps_per_epoch))
  if config.get('max_steps', -1) and config.get('max_steps', -1) > 0:
    total = min(total, config.max_steps)
  return total


def build_inputs(config: ml_collections.ConfigDict):
  ds = config.dataset
  if ds.name == synthetic.NAME:
    return synthetic.build_inputs(
      ds,
      global_batch_size=config.batch_size,
      eval_batch_size=config.get('eval_batch_size') or config.batch_size,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
  common = dict(
    seed=config.seed,
    data_dir=ds.get('data_dir'),
    image_size=ds.get('image_size'),
    loader=kd_data.config_loader(config),
  )
  train = kd_data.build_input(
    ds.name,
    ds.train_split,
    global_batch_size=config.batch_size,
    train=True,
    train_fraction=ds.get('train_fraction', 1.0),
    augment=ds.get('augment', 'default'),
    **common,
  )
  evaluation = kd_data.build_input(
    ds.name,
    ds.eval_split,
    global_batch_size=config.get('eval_batch_size') or config.batch_size,
    train=False,
    **common,
  )
  return train, evaluation


def to_global(
  batch: Dict[str, np.ndarray], sharding: NamedSharding
) -> Dict[str, jax.Array]:
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in batch.items()
  }


# ---------------------------------------------------------------- init


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
  return opt


def build_optimizers(config, method, params, steps_per_epoch):
  masks = method.adder_masks(params)
  return {
    g: optim.build_optimizer(
      optimizer_config(config, g),
      params[g],
      steps_per_epoch=steps_per_epoch,
      adder_mask=masks[g],
    )
    for g in method.groups
  }


def init_state(config, method, optimizers, sample_images) -> TrainState:
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  params, batch_stats = method.init(init_rng, sample_images)
  opt_state = {g: optimizers[g].init(params[g]) for g in method.groups}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    rng=jax.random.key_data(step_rng),
  )


# ---------------------------------------------------------------- step


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(
  method, optimizers, skip_nonfinite: bool, state: TrainState, frozen, batch
):
  """One update of every parameter group; a non-finite step changes nothing.

  Returns (new_state, metrics): the loss terms ('loss/...'), the method's other
  metrics, 'finite' (every loss term, gradient, parameter, optimizer state and
  BN statistic of the update is finite), and 'nonfinite/grads' and
  'nonfinite/update' (True where that part was not).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    return method.loss(params, state.batch_stats, frozen, batch, rng)

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
  del skip_nonfinite  # The host decides; the device side is the same.
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
  update the loss returns.
  """
  rng = jax.random.wrap_key_data(state.rng)
  _, (new_stats, _) = method.loss(
    state.params, state.batch_stats, frozen, batch, rng
  )
  m = BN_MOMENTUM
  return jax.tree.map(
    lambda new, old: (new - m * old) / (1 - m), new_stats, state.batch_stats
  )


def recalibrate_batch_stats(
  estimate_fn, state, frozen, train_source, sharding, num_batches
):
  """Replaces running BN statistics by their mean over ``num_batches`` train batches.

  "Precise BN": with the current weights, instead of an average over weights
  that kept changing. It matters for short runs of adder nets, whose BN inputs
  move fast; the training state itself is left untouched.
  """
  total, count = None, 0
  for batch in train_source.epoch(0):
    stats = estimate_fn(state, frozen, to_global(batch, sharding))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
    if count == num_batches:
      break
  return state.replace(batch_stats=jax.tree.map(lambda t: t / count, total))


def evaluate_heads(
  eval_fn, state, frozen, eval_source, sharding
) -> Dict[str, float]:
  totals, count = None, 0.0
  for batch in eval_source.epoch(0):
    correct, n = eval_fn(state, frozen, to_global(batch, sharding))
    correct = jax.device_get(correct)
    totals = (
      correct if totals is None else {k: totals[k] + correct[k] for k in totals}
    )
    count += float(n)
  return {name: float(v) / max(count, 1.0) for name, v in totals.items()}


# ---------------------------------------------------------------- checks


def _positive_int(config, key: str, *, zero_ok: bool = False) -> None:
  value = config.get(key)
  ok = isinstance(value, int) and (value >= 0 if zero_ok else value > 0)
  if not ok:
    want = 'a non-negative' if zero_ok else 'a positive'
    raise ConfigError(f'--config.{key}={value!r}: must be {want} integer.')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects sizes and optimizer settings that cannot train, before any work."""
  _positive_int(config, 'batch_size')
  _positive_int(config, 'eval_batch_size', zero_ok=True)
  num_epochs = config.get('num_epochs')
  if not (isinstance(num_epochs, (int, float)) and num_epochs > 0):
    raise ConfigError(
      f'--config.num_epochs={num_epochs!r}: must be a positive number.'
    )
  if config.get('nonfinite', 'raise') not in ('raise', 'skip'):
    raise ConfigError(
      f"--config.nonfinite={config.nonfinite!r}: use 'raise' or 'skip'."
    )
  fraction = config.get('nonfinite_max_skipped_fraction', 0.1)
  if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
    raise ConfigError(
      f'--config.nonfinite_max_skipped_fraction={fraction!r}: must be in '
      '[0, 1].'
    )
  groups = ['optimizer'] + [
    f'optimizers.{g}' for g in (config.get('optimizers') or {})
  ]
  for group in groups:
    opt = (
      config.optimizer
      if group == 'optimizer'
      else config.optimizers[group.split('.', 1)[1]]
    )
    if not opt:
      continue
    lr, wd = opt.get('learning_rate'), opt.get('weight_decay', 0.0) or 0.0
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
      raise ConfigError(
        f'--config.{group}.learning_rate={lr!r}: the learning rate must be a '
        'finite positive number.'
      )
    if not (isinstance(wd, (int, float)) and np.isfinite(wd) and wd >= 0):
      raise ConfigError(
        f'--config.{group}.weight_decay={wd!r}: the weight decay must be a '
        'finite number >= 0.'
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


# ---------------------------------------------------------------- loop


def _nonfinite_error(
  first_step, metrics, steps_per_epoch, ckpt
) -> NonFiniteLossError:
  metrics = jax.device_get(metrics)
  terms = {
    k: float(v)
    for k, v in metrics.items()
    if k.startswith('loss/') and not np.isfinite(v)
  }
  if terms:
    what = f'Non-finite loss at step {first_step}'
    detail = f': {terms}'
  elif metrics.get('nonfinite/grads'):
    what, detail = f'Non-finite gradients at step {first_step}', ''
  else:
    what = f'Non-finite update at step {first_step}'
    detail = ' (the loss and gradients were finite; the new parameters, '
    detail += 'optimizer state or BN statistics were not)'
  ckpt.wait()  # The last good checkpoint may still be being written.
  last = ckpt.latest_step()
  kept = (
    f'the last good checkpoint (step {last}) in {ckpt.directory} is kept'
    if last is not None
    else f'no checkpoint was saved before it ({ckpt.directory} is empty)'
  )
  return NonFiniteLossError(
    f'{what} (epoch {first_step // steps_per_epoch}){detail}. The state was '
    f'not updated; {kept}. Set --config.nonfinite=skip to skip such batches '
    'instead.'
  )


class _GuardMonitor:
  """Reads the device-side guard at boundaries and enforces 'raise'/'skip'."""

  def __init__(self, config, steps_per_epoch, ckpt, skipped_before, step):
    self.skip = config.get('nonfinite', 'raise') == 'skip'
    self.max_fraction = config.get('nonfinite_max_skipped_fraction', 0.1)
    self.steps_per_epoch = steps_per_epoch
    self.ckpt = ckpt
    self.skipped_before = skipped_before  # From earlier parts of the run.
    self.records = [(step, 0)]  # (step, skipped in this part) at boundaries.
    self.skipped = 0

  def check(self, guard, step: int) -> None:
    if guard is None:
      return
    first = int(guard['first_bad_step'])  # The one sync of this boundary.
    self.skipped = int(guard['skipped'])
    if first < 0:
      return
    if not self.skip:
      raise _nonfinite_error(
        first, guard['first_bad'], self.steps_per_epoch, self.ckpt
      )
    # The window is the last epoch's worth of steps, read at boundaries.
    base_step, base_skipped = self.records[0]
    for rec_step, rec_skipped in self.records:
      if rec_step <= step - self.steps_per_epoch:
        base_step, base_skipped = rec_step, rec_skipped
    self.records.append((step, self.skipped))
    in_window = self.skipped - base_skipped
    if in_window > self.max_fraction * self.steps_per_epoch:
      self.ckpt.wait()  # Leave the checkpoints committed, as 'raise' does.
      raise NonFiniteLossError(
        f'{in_window} of the {step - base_step} batches before step {step} '
        f'were skipped as non-finite (the first at step {first}), more than '
        f'nonfinite_max_skipped_fraction={self.max_fraction} of an epoch '
        f'({self.steps_per_epoch} steps): training is diverging, not hitting '
        'a rare bad batch. Lower the learning rate, or resume from an earlier '
        f'checkpoint in {self.ckpt.directory}.'
      )

  @property
  def total_skipped(self) -> int:
    return self.skipped_before + self.skipped


def prefetch_to_devices(batches, sharding, size: int = 1):
  """Yields global batches; while the caller's step runs, the next are copied.

  Up to `size` batches are put on the devices after the caller has dispatched
  its step (dispatch is asynchronous), so reading and transferring the next
  input overlaps the current step's compute, and a stop requested during the
  step is seen before any batch after it is fed.
  """
  iterator = iter(batches)
  queue = collections.deque()
  first = next(iterator, None)
  if first is not None:
    queue.append(to_global(first, sharding))
  while queue:
    yield queue.popleft()
    while len(queue) < size:
      batch = next(iterator, None)
      if batch is None:
        break
      queue.append(to_global(batch, sharding))


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
    return NamedSharding(self.mesh, P(DATA_AXIS))


def setup(config: ml_collections.ConfigDict) -> RunSetup:
  """Mesh, data, method (with its frozen teachers), optimizers, state shapes."""
  devices = mesh_devices(config)
  check_batch_size(config.batch_size, len(devices))
  check_batch_size(
    config.get('eval_batch_size') or config.batch_size,
    len(devices),
    'eval_batch_size',
  )
  mesh = make_mesh(devices)
  train_source, eval_source = build_inputs(config)
  method = build_method(
    config,
    num_classes=train_source.num_classes,
    image_shape=train_source.image_shape,
  )
  sample = jnp.zeros((2,) + tuple(train_source.image_shape), jnp.float32)
  frozen = method.load_frozen(sample)
  steps_per_epoch = train_source.steps_per_epoch
  total_steps = run_length(config, steps_per_epoch)
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
        functools.partial(init_state, config, method, optimizers), sample
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


def frozen_teacher_configs(config: ml_collections.ConfigDict):
  """The model entries of the teachers this run restores rather than trains."""
  return methods.frozen_teacher_configs(config)


def pretrained_teachers(config: ml_collections.ConfigDict):
  """(index, entry) of the frozen teachers trained in-process (no checkpoint_dir)."""
  return [
    (i, teacher)
    for i, teacher in enumerate(frozen_teacher_configs(config))
    if not teacher.get('checkpoint_dir') and teacher.get('pretrain_epochs', 0)
  ]


def pretrained_teacher_dir(workdir: str, index: int, teacher) -> str:
  return os.path.join(workdir, 'teachers', f'{index}_{teacher.name}')


def teacher_run_config(config, teacher) -> ml_collections.ConfigDict:
  """The supervised run that pre-trains `teacher` for `config`."""
  sub = ml_collections.ConfigDict(config.to_dict())
  # Only what the teacher's own training reads, so that changing a setting of
  # the distillation does not count as a change of the teacher run.
  for key in ('teacher', 'teachers', config.method):
    if key in sub:
      del sub[key]
  sub.method = 'supervised'
  sub.model = ml_collections.ConfigDict(teacher.to_dict())
  sub.num_epochs = teacher.pretrain_epochs
  sub.max_steps = -1
  return sub


def pretrain_teachers(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
) -> Optional[Dict[str, Any]]:
  """Trains, in-process, each frozen teacher that has no checkpoint_dir but pretrain_epochs.

  Each teacher is an ordinary supervised run in ``workdir/teachers/<i>_<name>``
  (so it resumes too); its workdir becomes the teacher's checkpoint_dir.

  Returns:
    The summary of a teacher run that was preempted (SIGTERM), or None.
  """
  for i, teacher in pretrained_teachers(config):
    teacher_dir = pretrained_teacher_dir(workdir, i, teacher)
    summary = train_and_evaluate(
      teacher_run_config(config, teacher),
      teacher_dir,
      allow_config_change=allow_config_change,
      role=f'teacher {i}',
    )
    if summary['preempted']:
      return summary
    teacher.checkpoint_dir = teacher_dir
  return None


def _preempted_summary(config, step, steps_per_epoch, started):
  return {
    'method': config.method,
    'preempted': True,
    'steps': step,
    'epochs': step / steps_per_epoch if steps_per_epoch else 0.0,
    'eval_accuracy': {},
    'wall_seconds': time.time() - started,
  }


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


def compile_functions(config, run: RunSetup) -> RunFunctions:
  skip_nonfinite = config.get('nonfinite', 'raise') == 'skip'
  train = jax.jit(
    functools.partial(train_step, run.method, run.optimizers, skip_nonfinite)
  )
  return RunFunctions(
    train=train,
    step=jax.jit(
      functools.partial(guarded_step, train, skip_nonfinite),
      donate_argnums=(0, 1),
    ),
    eval=jax.jit(functools.partial(eval_step, run.method)),
    estimate=jax.jit(functools.partial(batch_stat_estimates, run.method)),
  )


def evaluate_state(
  config, run: RunSetup, fns: RunFunctions, state, frozen, recalibrate=True
):
  """Eval accuracy per head, after precise-BN recalibration when configured.

  Returns (eval_state, batch_stats_source, accuracies): eval_state is `state`
  with the BN statistics the accuracies were measured with.
  """
  num_batches = config.get('eval_bn_recalibration_batches', 0)
  stats_source = 'running'
  if num_batches and recalibrate:
    state = recalibrate_batch_stats(
      fns.estimate,
      state,
      frozen,
      run.train_source,
      run.batch_sharding,
      num_batches,
    )
    stats_source = f'precise_bn({num_batches} batches)'
  results = evaluate_heads(
    fns.eval, state, frozen, run.eval_source, run.batch_sharding
  )
  return state, stats_source, results


def restore_or_init(
  config,
  run: RunSetup,
  ckpt,
  record,
  latest_step,
  changes,
  *,
  workdir,
  allow_config_change,
  role,
):
  """The state to train from: the newest good checkpoint, or a fresh init.

  Returns (state, meta, changes, restored). `changes` is re-checked when the
  restore fell back to an older checkpoint than `latest_step`.
  """
  restored, meta = ckpt.restore_latest(run.abstract_state)
  if restored is None:
    state = jax.jit(
      functools.partial(init_state, config, run.method, run.optimizers),
      out_shardings=run.replicated,
    )(run.sample)
    return state, meta, changes, False
  if int(meta.get('step', -1)) != latest_step:  # It fell back a step.
    changes = run_config.check_resume(
      meta, record, workdir, allow_config_change
    )
  reporting.console(
    f'Resumed {role} run from step {int(restored.step)} of '
    f'{run.total_steps} in {ckpt.directory}'
    + (f' (skipped: {"; ".join(ckpt.skipped)})' if ckpt.skipped else '')
  )
  return restored, meta, changes, True


class TrainLoop:
  """The host side of one run's training: steps, logs, checkpoints, evals.

  The host reads device values only at log, checkpoint, eval and preemption
  boundaries; between them it only dispatches steps.
  """

  def __init__(
    self, config, run, fns, frozen, workdir, ckpt, preempt, meta, step
  ):
    self.config, self.run, self.fns, self.frozen = config, run, fns, frozen
    self.ckpt, self.preempt = ckpt, preempt
    self.reporter = reporting.Reporter(workdir)
    self.schedule = optim.build_schedule(
      optimizer_config(config, 'student'), run.steps_per_epoch
    )
    self.monitor = _GuardMonitor(
      config,
      run.steps_per_epoch,
      ckpt,
      int(meta.get('skipped_nonfinite_batches', 0)),
      step,
    )
    self.checkpoint_every = (
      config.get('checkpoint_every_steps', 0) or run.steps_per_epoch
    )
    self.log_every = config.get('log_every_steps', 50)
    self.no_host_sync = (
      functools.partial(jax.transfer_guard_device_to_host, 'disallow_explicit')
      if config.get('debug_disallow_host_sync', False)
      else contextlib.nullcontext
    )
    self.guard = None  # Device-side; it needs the step's metric structure.
    # Log windows after the first (compilation), without eval or saves:
    # (steps, seconds) for the steady-state throughput in summary.json.
    self.windows, self.steady_window = [], False
    self.window_start, self.window_images, self.window_steps = time.time(), 0, 0
    self.progress = reporting.ProgressBar(run.total_steps, step)
    self.checkpoint_meta = {}  # Filled by the caller: model, config, ...

  def save(self, step, state, force=False, **extra):
    epoch, step_in_epoch = divmod(step, self.run.steps_per_epoch)
    self.ckpt.save(
      step,
      state,
      {
        'step': step,
        'epoch': epoch,
        'step_in_epoch': step_in_epoch,
        'total_steps': self.run.total_steps,
        'steps_per_epoch': self.run.steps_per_epoch,
        'skipped_nonfinite_batches': self.monitor.total_skipped,
        **self.checkpoint_meta,
        **extra,
      },
      force=force,
    )

  def _log(self, step, metrics):
    now = time.time()
    scalars = {
      k: v
      for k, v in jax.device_get(metrics).items()
      if k != 'finite' and not k.startswith('nonfinite/')
    }
    scalars['learning_rate'] = float(self.schedule(step - 1))
    scalars['images_per_second'] = self.window_images / max(
      now - self.window_start, 1e-9
    )
    if self.steady_window:  # Not the window that compiled the step.
      self.windows.append((self.window_steps, now - self.window_start))
    self.window_start, self.window_images, self.window_steps = now, 0, 0
    self.steady_window = True
    self.reporter.scalars(step, scalars)
    self.progress.note(f'loss {scalars["loss/total"]:.3f}')
    if not self.progress.enabled:
      self.reporter.console(
        f'step {step}: loss {scalars["loss/total"]:.4f}, lr '
        f'{scalars["learning_rate"]:.4g}, '
        f'{scalars["images_per_second"]:.0f} images/s'
      )

  def train_epoch(self, state, step):
    """Trains from `step` to the end of its epoch (or of the run, or a preemption).

    Returns (state, step, preempted).
    """
    config, run = self.config, self.run
    epoch, start = divmod(step, run.steps_per_epoch)
    batches = prefetch_to_devices(
      run.train_source.epoch(epoch, start_step=start), run.batch_sharding
    )
    for batch in batches:
      # Between boundaries nothing may read a device value: a read here
      # would make the host wait for every step.
      with self.no_host_sync():
        if self.guard is None:
          metrics_shapes = jax.eval_shape(
            self.fns.train, state, self.frozen, batch
          )[1]
          self.guard = jax.device_put(
            init_guard(metrics_shapes), run.replicated
          )
        state, self.guard, metrics = self.fns.step(
          state, self.guard, self.frozen, batch
        )
        step += 1
        self.window_images += config.batch_size
        self.window_steps += 1
        self.progress.update(step)
        at_log = step % self.log_every == 0 or step == run.total_steps
        at_checkpoint = (
          step % self.checkpoint_every == 0 and step < run.total_steps
        )
        at_preemption = self.preempt.reached(step)
      if at_log or at_checkpoint or at_preemption:
        self.monitor.check(self.guard, step)
      if at_log:
        self._log(step, metrics)
      if at_checkpoint:
        self.save(step, state)
        self.steady_window = False
      if at_preemption:
        self.save(step, state, force=True)
        self.reporter.console(
          f'Preemption requested: saved step {step}, exiting. Rerun the '
          f'same command to resume ({step} of {run.total_steps} steps done; '
          f'checkpoints in {self.ckpt.directory}).'
        )
        return state, step, True
      if step >= run.total_steps:
        break
    return state, step, False

  def evaluate(self, state, step):
    """Evaluates at an epoch boundary, logs it; returns evaluate_state's triple."""
    self.monitor.check(self.guard, step)
    result = evaluate_state(self.config, self.run, self.fns, state, self.frozen)
    _, stats_source, accuracies = result
    self.steady_window = False
    self.reporter.scalars(
      step, {f'eval_accuracy/{k}': v for k, v in accuracies.items()}
    )
    self.progress.close()
    self.reporter.console(
      f'epoch {step / self.run.steps_per_epoch:.2f} step {step}: '
      + ', '.join(f'{k} {100 * v:.2f}%' for k, v in accuracies.items())
      + ('' if stats_source == 'running' else f' (BN: {stats_source})')
    )
    return result


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  role: str = 'student',
) -> Dict[str, Any]:
  """Trains ``config.method`` and returns the summary also written to summary.json.

  Resumes from the newest checkpoint in ``workdir``. Raises ConfigChangedError
  when that checkpoint was trained with a config that differs in a key that
  changes the result, unless ``allow_config_change`` (then the change is
  recorded in summary.json and the checkpoints). A finished run returns its
  recorded summary and writes nothing.
  """
  started = time.time()
  validate_config(config)
  check_data_loader(config)
  record = run_config.record(config)  # Before teachers fill in their dirs.
  with checkpointing.workdir_lock(workdir), preemption.guard() as preempt:
    # -- Resume check (before any work) --------------------------------------
    latest_step, latest_meta = checkpointing.read_latest_meta(workdir)
    changes = run_config.check_resume(
      latest_meta, record, workdir, allow_config_change
    )
    preempted_teacher = pretrain_teachers(
      config, workdir, allow_config_change=allow_config_change
    )
    if preempted_teacher is not None:
      return preempted_teacher

    # -- Mesh, data, method --------------------------------------------------
    run = setup(config)
    steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
    if preempt.requested:  # SIGTERM during setup: nothing new to save.
      reporting.console(
        f'Preempted during setup of {workdir} (nothing to save); rerun the '
        'same command to start.'
      )
      return _preempted_summary(
        config, latest_step or 0, steps_per_epoch, started
      )

    with jax.set_mesh(run.mesh):
      # -- Init and restore ----------------------------------------------------
      frozen = jax.device_put(run.frozen, run.replicated)
      ckpt = checkpointing.RunCheckpointer(
        workdir, max_to_keep=config.get('keep_checkpoints', 3)
      )
      state, meta, changes, restored = restore_or_init(
        config,
        run,
        ckpt,
        record,
        latest_step,
        changes,
        workdir=workdir,
        allow_config_change=allow_config_change,
        role=role,
      )
      if restored and not changes:
        restored_step = int(meta.get('step', -1))
        if _finished(config, restored_step, meta):  # Nothing is written.
          ckpt.manager.close()
          return _already_finished(workdir, restored_step, meta, role)
      config_changes = list(meta.get('config_changes', []))
      if changes:
        config_changes.append({'step': int(state.step), 'changes': changes})
        reporting.console(
          f'Config changed at step {int(state.step)} (allowed by '
          f'--allow_config_change): {run_config.describe(changes)}'
        )

      # -- Loop ----------------------------------------------------------------
      step = int(state.step)
      fns = compile_functions(config, run)
      loop = TrainLoop(
        config, run, fns, frozen, workdir, ckpt, preempt, meta, step
      )
      model_meta = {
        'name': config.model.name,
        'conv_type': config.model.get('conv_type', 'conv'),
      }
      loop.checkpoint_meta = {
        'method': config.method,
        'model': model_meta,
        'num_classes': run.train_source.num_classes,
        'image_shape': list(run.train_source.image_shape),
        'config': record,
        'config_changes': config_changes,
      }
      ops = opcount.count_ops(
        run.method.student, (1,) + tuple(run.train_source.image_shape)
      )
      loop.reporter.console(
        f'{config.method} ({role}): {model_meta["name"]}/'
        f'{model_meta["conv_type"]} mults={ops["multiplications"]:,} '
        f'adds={ops["additions"]:,}; {steps_per_epoch} steps/epoch, '
        f'{total_steps} steps, {run.mesh.size} devices, '
        f'{jax.process_count()} processes; workdir {workdir}'
      )
      # A resumed run keeps the evals it already made.
      previous = reporting.read_summary(workdir) if restored else {}
      history = [h for h in previous.get('history', []) if h['step'] <= step]
      eval_results, final_state, final_extra = {}, None, {}
      preempted = False
      while step < total_steps and not preempted:
        state, step, preempted = loop.train_epoch(state, step)
        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        if epoch_done and not preempted:
          eval_state, stats_source, eval_results = loop.evaluate(state, step)
          history.append(
            {'step': step, 'epoch': step / steps_per_epoch, **eval_results}
          )
          if step >= total_steps:
            final_state = eval_state
      if not preempted:
        if final_state is None:  # Nothing left to train: evaluate as it is.
          final_state, stats_source, eval_results = evaluate_state(
            config, run, loop.fns, state, frozen
          )
        final_extra = {
          'finished': True,
          'eval_accuracy': eval_results,
          'batch_stats_source': stats_source,
        }
        # The final checkpoint holds the statistics its reported accuracy was
        # measured with, so a teacher restored from it is the one reported.
        if ckpt.latest_step() == step:  # Preempted right at the end before.
          ckpt.delete(step)
        loop.save(step, final_state, True, **final_extra)
      ckpt.close()
      loop.reporter.close()

  summary = {
    'method': config.method,
    'role': role,
    'preempted': preempted,
    'steps': step,
    'total_steps': total_steps,
    'epochs': step / steps_per_epoch,
    'eval_accuracy': {} if preempted else eval_results,  # Only when finished.
    'batch_stats': final_extra.get('batch_stats_source', 'running'),
    'history': history,
    'skipped_nonfinite_batches': loop.monitor.total_skipped,
    'wall_seconds': time.time() - started,
    'student_ops': ops,
    'throughput': _throughput(loop.windows, config.batch_size),
    'devices': run.mesh.size,
    'processes': jax.process_count(),
    'config': config.to_dict(),
    'config_changes': config_changes,
  }
  reporting.write_summary(workdir, summary)
  return summary


def _throughput(windows, batch_size) -> Dict[str, Any]:
  """Steady-state speed from log windows (steps, seconds) after compilation."""
  if not windows:
    return {
      'train_images_per_second': None,
      'step_seconds_median': None,
      'note': 'no steady-state log window: log more often than the run is '
      'long (log_every_steps), after the first window, which compiles',
    }
  steps = sum(n for n, _ in windows)
  seconds = sum(t for _, t in windows)
  return {
    'train_images_per_second': steps * batch_size / max(seconds, 1e-9),
    'step_seconds_median': float(np.median([t / n for n, t in windows])),
    'windows': len(windows),
    'steps_measured': steps,
  }


def _finished(config, step: Optional[int], meta: Dict[str, Any]) -> bool:
  """Whether the checkpoint at `step` ends the run that `config` asks for."""
  if (
    step is None or not meta.get('finished') or not meta.get('steps_per_epoch')
  ):
    return False
  return step >= run_length(config, meta['steps_per_epoch'])


def _already_finished(workdir, step, meta, role) -> Dict[str, Any]:
  """The recorded summary of a finished run; nothing is written."""
  summary = reporting.read_summary(workdir) or {}
  summary.setdefault('method', meta.get('method'))
  summary['eval_accuracy'] = meta.get(
    'eval_accuracy', summary.get('eval_accuracy', {})
  )
  summary.update(
    steps=step, preempted=False, already_finished=True, wall_seconds=0.0
  )
  accuracy = ', '.join(
    f'{k} {100 * v:.2f}%' for k, v in summary['eval_accuracy'].items()
  )
  reporting.console(
    f'The {role} run in {workdir} already finished at step {step} '
    f'({accuracy}); nothing to do. Use a new --workdir to train again.'
  )
  return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Restores the latest checkpoint of ``workdir`` and reports eval accuracy per head.

  Evaluates as training did: teachers pre-trained in-process are read from
  ``workdir/teachers``, and precise-BN recalibration runs when configured and
  the checkpoint does not already hold precise-BN statistics. Writes nothing.
  """
  validate_config(config)
  check_data_loader(config)
  latest_step, _ = checkpointing.read_latest_meta(workdir)
  if latest_step is None:
    raise checkpointing.CheckpointError(
      f'No checkpoint to evaluate in {workdir}: train first with the same '
      f'--config and --workdir={workdir} (without --mode=eval).'
    )
  for i, teacher in pretrained_teachers(config):
    teacher.checkpoint_dir = pretrained_teacher_dir(workdir, i, teacher)
  run = setup(config)
  with jax.set_mesh(run.mesh):
    state, meta = checkpointing.restore_run_read_only(
      workdir, run.abstract_state
    )
    frozen = jax.device_put(run.frozen, run.replicated)
    recorded = meta.get('batch_stats_source', 'running')
    # A final checkpoint already holds the precise-BN statistics it reported.
    _, stats_source, results = evaluate_state(
      config,
      run,
      compile_functions(config, run),
      state,
      frozen,
      recalibrate=not str(recorded).startswith('precise_bn'),
    )
    if stats_source == 'running':
      stats_source = recorded
  return {
    'step': meta.get('step'),
    'eval_accuracy': results,
    'batch_stats': stats_source,
  }
