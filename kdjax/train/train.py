"""train_and_evaluate and evaluate: mesh, data, init, restore, loop.

The same code runs on one CPU, 8 fake CPU devices, a GPU and a multi-host TPU
pod: a 1-D 'data' mesh over every device, parameters replicated, batches split
along the batch axis. Under plain ``jax.jit`` the compiler inserts the
collectives, so BN statistics and gradients are over the global batch.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import data as kd_data
from kdjax import opcount
from kdjax import optim
from kdjax.models.layers import BN_MOMENTUM
from kdjax.train import checkpointing, reporting
from kdjax.train.methods import build_method
from kdjax.train.state import TrainState

DATA_AXIS = 'data'


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or Inf."""


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


def data_loader(config: ml_collections.ConfigDict) -> str:
  return config.get('data', {}).get('loader', 'tfds')


def check_data_loader(config: ml_collections.ConfigDict) -> None:
  """Fails fast on a loader that cannot read the dataset, before any teacher trains."""
  kd_data.check_loader(data_loader(config), config.dataset.name)


def build_inputs(config: ml_collections.ConfigDict):
  ds = config.dataset
  common = dict(
    seed=config.seed,
    data_dir=ds.get('data_dir'),
    image_size=ds.get('image_size'),
    loader=data_loader(config),
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


def train_step(
  method, optimizers, skip_nonfinite: bool, state: TrainState, frozen, batch
):
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
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in loss_terms.values()]))
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
  return new_state, metrics


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


# ---------------------------------------------------------------- loop


class _Preemption:
  """Turns SIGTERM into a request to checkpoint at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() > 1:
      # jax.distributed's preemption service owns SIGTERM (a Python handler
      # would replace it) and agrees on one step for every process to save.
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption saves.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _build(config, workdir):
  """Everything both train and eval need."""
  del workdir
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
  return mesh, train_source, eval_source, method, frozen, sample


def frozen_teacher_configs(config: ml_collections.ConfigDict):
  """The model entries of the teachers this run restores rather than trains."""
  if config.method in ('kd', 'ofd'):
    return [config.teacher]
  if config.method == 'pkkd' and config.pkkd.teacher_mode == 'frozen':
    return [config.teacher]
  if config.method == 'ekd':
    return list(config.teachers)
  return []


def pretrained_teachers(config: ml_collections.ConfigDict):
  """(index, entry) of the frozen teachers trained in-process (no checkpoint_dir)."""
  return [
    (i, teacher)
    for i, teacher in enumerate(frozen_teacher_configs(config))
    if not teacher.get('checkpoint_dir') and teacher.get('pretrain_epochs', 0)
  ]


def pretrained_teacher_dir(workdir: str, index: int, teacher) -> str:
  return os.path.join(workdir, 'teachers', f'{index}_{teacher.name}')


def pretrain_teachers(
  config: ml_collections.ConfigDict, workdir: str
) -> Optional[Dict[str, Any]]:
  """Trains, in-process, each frozen teacher that has no checkpoint_dir but pretrain_epochs.

  Each teacher is an ordinary supervised run in ``workdir/teachers/<i>_<name>``
  (so it resumes too); its workdir becomes the teacher's checkpoint_dir.

  Returns:
    The summary of a teacher run that was preempted (SIGTERM), or None.
  """
  for i, teacher in pretrained_teachers(config):
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.method = 'supervised'
    sub.model = ml_collections.ConfigDict(teacher.to_dict())
    sub.num_epochs = teacher.pretrain_epochs
    sub.max_steps = -1
    teacher_dir = pretrained_teacher_dir(workdir, i, teacher)
    logging.info(
      'Pre-training teacher %d (%s) in %s', i, teacher.name, teacher_dir
    )
    summary = train_and_evaluate(sub, teacher_dir)
    if summary['preempted']:
      return summary
    teacher.checkpoint_dir = teacher_dir
  return None


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> Dict[str, Any]:
  """Trains ``config.method`` and returns the summary also written to summary.json."""
  started = time.time()
  check_data_loader(config)
  preempted_teacher = pretrain_teachers(config, workdir)
  if (
    preempted_teacher is not None
  ):  # Preempted while pre-training: the rerun resumes it.
    return preempted_teacher
  # -- Mesh, data --------------------------------------------------------
  mesh, train_source, eval_source, method, frozen, sample = _build(
    config, workdir
  )
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  steps_per_epoch = train_source.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch
  if config.get('max_steps', -1) and config.get('max_steps', -1) > 0:
    total_steps = min(total_steps, config.max_steps)

  with jax.set_mesh(mesh):
    # -- Init --------------------------------------------------------------
    abstract_params = jax.eval_shape(
      lambda: method.init(jax.random.key(0), sample)[0]
    )
    optimizers = build_optimizers(
      config, method, abstract_params, steps_per_epoch
    )
    state = jax.jit(
      functools.partial(init_state, config, method, optimizers),
      out_shardings=replicated,
    )(sample)
    frozen = jax.device_put(frozen, replicated)

    # -- Restore -------------------------------------------------------------
    ckpt = checkpointing.RunCheckpointer(
      workdir, max_to_keep=config.get('keep_checkpoints', 3)
    )
    abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
    )
    restored, meta = ckpt.restore_latest(abstract_state)
    if restored is not None:
      state = restored
      logging.info(
        'Resumed from step %d in %s', int(state.step), ckpt.directory
      )

    # -- Loop --------------------------------------------------------------
    step_fn = jax.jit(
      functools.partial(
        train_step,
        method,
        optimizers,
        config.get('nonfinite', 'raise') == 'skip',
      ),
      donate_argnums=0,
    )
    eval_fn = jax.jit(functools.partial(eval_step, method))
    estimate_fn = jax.jit(functools.partial(batch_stat_estimates, method))
    reporter = reporting.Reporter(workdir)
    schedule = optim.build_schedule(
      optimizer_config(config, 'student'), steps_per_epoch
    )
    model_meta = {
      'name': config.model.name,
      'conv_type': config.model.get('conv_type', 'conv'),
    }
    ops = opcount.count_ops(
      method.student, (1,) + tuple(train_source.image_shape)
    )
    reporter.console(
      f'{config.method}: student {model_meta["name"]}/{model_meta["conv_type"]} '
      f'mults={ops["multiplications"]:,} adds={ops["additions"]:,}; '
      f'{steps_per_epoch} steps/epoch, {total_steps} steps, '
      f'{mesh.size} devices, {jax.process_count()} processes'
    )

    def save(step, force=False):
      epoch, step_in_epoch = divmod(step, steps_per_epoch)
      ckpt.save(
        step,
        state,
        {
          'step': step,
          'epoch': epoch,
          'step_in_epoch': step_in_epoch,
          'method': config.method,
          'model': model_meta,
          'num_classes': train_source.num_classes,
          'image_shape': list(train_source.image_shape),
        },
        force=force,
      )

    step = int(state.step)
    progress = reporting.ProgressBar(total_steps, step)
    # A resumed run keeps the evals it already made; a finished one its result.
    previous = reporting.read_summary(workdir) if restored is not None else {}
    history = [h for h in previous.get('history', []) if h['step'] <= step]
    eval_results = (
      previous.get('eval_accuracy', {}) if step >= total_steps else {}
    )
    skipped = previous.get('skipped_nonfinite_batches', 0)
    window_start, window_images = time.time(), 0
    checkpoint_every = (
      config.get('checkpoint_every_steps', 0) or steps_per_epoch
    )
    preempted = False
    with _Preemption() as preemption:
      while step < total_steps and not preempted:
        epoch, start = divmod(step, steps_per_epoch)
        for batch in train_source.epoch(epoch, start_step=start):
          state, metrics = step_fn(
            state, frozen, to_global(batch, batch_sharding)
          )
          if not bool(metrics['finite']):
            bad = {
              k: float(v)
              for k, v in jax.device_get(metrics).items()
              if k.startswith('loss/') and not np.isfinite(v)
            }
            if config.get('nonfinite', 'raise') != 'skip':
              ckpt.wait()  # The last good checkpoint may still be being written.
              raise NonFiniteLossError(
                f'Non-finite loss at step {step} (epoch {epoch}): {bad}. The state was not '
                f'updated; the last good checkpoint in {ckpt.directory} is kept. Set '
                '--config.nonfinite=skip to skip such batches instead.'
              )
            skipped += 1
            logging.warning(
              'Skipped the batch of step %d: non-finite %s', step, bad
            )
          step += 1
          window_images += config.batch_size
          progress.update(step, f'loss {float(metrics["loss/total"]):.3f}')
          if (
            step % config.get('log_every_steps', 50) == 0 or step == total_steps
          ):
            now = time.time()
            scalars = {
              k: v for k, v in jax.device_get(metrics).items() if k != 'finite'
            }
            scalars['learning_rate'] = float(schedule(step - 1))
            scalars['images_per_second'] = window_images / max(
              now - window_start, 1e-9
            )
            window_start, window_images = now, 0
            reporter.scalars(step, scalars)
            if not progress.enabled:
              reporter.console(
                f'step {step}: loss {scalars["loss/total"]:.4f}, lr '
                f'{scalars["learning_rate"]:.4g}, '
                f'{scalars["images_per_second"]:.0f} images/s'
              )
          if step % checkpoint_every == 0:
            save(step)
          if preemption.reached(step):
            save(step, force=True)
            preempted = True
            reporter.console(
              f'Preemption requested: saved step {step}, exiting.'
            )
            break
          if step >= total_steps:
            break
        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        if epoch_done and not preempted:
          eval_state = state
          if config.get('eval_bn_recalibration_batches', 0):
            eval_state = recalibrate_batch_stats(
              estimate_fn,
              state,
              frozen,
              train_source,
              batch_sharding,
              config.eval_bn_recalibration_batches,
            )
          eval_results = evaluate_heads(
            eval_fn, eval_state, frozen, eval_source, batch_sharding
          )
          reporter.scalars(
            step, {f'eval_accuracy/{k}': v for k, v in eval_results.items()}
          )
          history.append(
            {'step': step, 'epoch': step / steps_per_epoch, **eval_results}
          )
          progress.close()
          reporter.console(
            f'epoch {step / steps_per_epoch:.2f} step {step}: '
            + ', '.join(f'{k} {100 * v:.2f}%' for k, v in eval_results.items())
          )
    if not preempted and ckpt.latest_step() != step:
      save(step, force=True)
    ckpt.close()
    reporter.close()

  summary = {
    'method': config.method,
    'preempted': preempted,
    'steps': step,
    'epochs': step / steps_per_epoch,
    'eval_accuracy': eval_results,
    'history': history,
    'skipped_nonfinite_batches': skipped,
    'wall_seconds': time.time() - started,
    'student_ops': ops,
    'devices': mesh.size,
    'processes': jax.process_count(),
    'config': config.to_dict(),
  }
  reporting.write_summary(workdir, summary)
  return summary


def evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> Dict[str, float]:
  """Restores the latest checkpoint of ``workdir`` and reports eval accuracy per head.

  Evaluates as training did: teachers pre-trained in-process are read from
  ``workdir/teachers``, and precise-BN recalibration runs when configured.
  """
  check_data_loader(config)
  for i, teacher in pretrained_teachers(config):
    teacher.checkpoint_dir = pretrained_teacher_dir(workdir, i, teacher)
  mesh, train_source, eval_source, method, frozen, sample = _build(
    config, workdir
  )
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  with jax.set_mesh(mesh):
    abstract_params = jax.eval_shape(
      lambda: method.init(jax.random.key(0), sample)[0]
    )
    optimizers = build_optimizers(
      config, method, abstract_params, train_source.steps_per_epoch
    )
    abstract = jax.eval_shape(
      functools.partial(init_state, config, method, optimizers), sample
    )
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      abstract,
    )
    ckpt = checkpointing.RunCheckpointer(workdir)
    state, meta = ckpt.restore_latest(abstract)
    ckpt.close()
    if state is None:
      raise checkpointing.CheckpointError(
        f'No checkpoint to evaluate in {ckpt.directory}.'
      )
    frozen = jax.device_put(frozen, replicated)
    if config.get('eval_bn_recalibration_batches', 0):
      state = recalibrate_batch_stats(
        jax.jit(functools.partial(batch_stat_estimates, method)),
        state,
        frozen,
        train_source,
        batch_sharding,
        config.eval_bn_recalibration_batches,
      )
    results = evaluate_heads(
      jax.jit(functools.partial(eval_step, method)),
      state,
      frozen,
      eval_source,
      batch_sharding,
    )
  return {'step': meta.get('step'), 'eval_accuracy': results}
