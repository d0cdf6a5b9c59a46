"""One run's training: resume or init, the step loop, evals, checkpoints.

The host reads device values only at log, checkpoint, eval and preemption
boundaries; between them it only dispatches steps.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from kdjax import opcount
from kdjax import optim
from kdjax.train import checkpointing, preemption, reporting, run_config
from kdjax.train import evaluation
from kdjax.train import guard as run_guard
from kdjax.train import plan
from kdjax.train import setup as run_setup
from kdjax.train import step as run_step
from kdjax.train.mesh import prefetch_to_devices


def _two_digits(value: float) -> str:
  """A rate to two significant digits, without exponent: 1234 -> '1200'."""
  return f'{float(f"{value:.2g}"):g}' if value < 1e5 else f'{value:.0f}'


def _kwargs_note(model_config) -> str:
  """The model's keyword overrides, e.g. ' (widen_factor=1)', or ''."""
  kwargs = dict(model_config.get('kwargs', None) or {})
  if not kwargs:
    return ''
  return ' (' + ', '.join(f'{k}={v}' for k, v in sorted(kwargs.items())) + ')'


def checkpoint_interval(config, steps_per_epoch: int) -> int:
  """Steps between checkpoints: checkpoint_every_steps, or one epoch."""
  return config.get('checkpoint_every_steps', 0) or steps_per_epoch


def _stop_signal_name():
  signum = preemption.stop_signal()
  return signum.name if signum is not None else None


def _preempted_summary(config, step, steps_per_epoch, started):
  return {
    'method': config.method,
    'preempted': True,
    'stop_signal': _stop_signal_name(),
    'steps': step,
    'epochs': step / steps_per_epoch if steps_per_epoch else 0.0,
    'eval_accuracy': {},
    'wall_seconds': time.time() - started,
  }


def restore_or_init(
  config,
  run: run_setup.RunSetup,
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
      functools.partial(
        run_setup.init_state, config, run.method, run.optimizers, run.frozen
      ),
      out_shardings=run.replicated,
    )(run.sample)
    return state, meta, changes, False
  if int(meta.get('step', -1)) != latest_step:  # It fell back a step.
    changes = run_config.check_resume(
      meta, record, workdir, allow_config_change
    )
  return restored, meta, changes, True


class TrainLoop:
  """The host side of one run's training: steps, logs, checkpoints, evals.

  The host reads device values only at log, checkpoint, eval and preemption
  boundaries; between them it only dispatches steps.
  """

  def __init__(
    self,
    config,
    run,
    fns,
    frozen,
    workdir,
    ckpt,
    preempt,
    meta,
    step,
    checkpoint_meta,
    role='student',
  ):
    """`meta`: the restored checkpoint's; `checkpoint_meta`: what every save records."""
    self.config, self.run, self.fns, self.frozen = config, run, fns, frozen
    self.checkpoint_meta = checkpoint_meta
    self.role = role
    self.ckpt, self.preempt = ckpt, preempt
    self.reporter = reporting.Reporter(workdir, start_step=step)
    self.schedule = optim.build_schedule(
      run_setup.optimizer_config(config, 'student'), run.steps_per_epoch
    )
    self.monitor = run_guard.GuardMonitor(
      config,
      run.steps_per_epoch,
      ckpt,
      int(meta.get('skipped_nonfinite_batches', 0)),
      step,
    )
    self.checkpoint_every = checkpoint_interval(config, run.steps_per_epoch)
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

  def save(self, step, state, force=False, **extra) -> bool:
    """Hands `step` to the checkpointer; whether its policy saves it."""
    epoch, step_in_epoch = divmod(step, self.run.steps_per_epoch)
    return self.ckpt.save(
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

  def head_label(self, head: str) -> str:
    """How the console names an eval head: a teacher's run names its model."""
    if head == 'student' and self.role != 'student':
      return self.role
    return self.run.method.head_label(head)

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
        f'{_two_digits(scalars["images_per_second"])} images/s'
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
            run_step.init_guard(metrics_shapes), run.replicated
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
        # A log boundary is also where the time policy may save.
        at_timed_checkpoint = (
          at_log and self.ckpt.every_minutes and step < run.total_steps
        )
        at_preemption = self.preempt.reached(step)
      if at_log or at_checkpoint or at_preemption:
        self.monitor.check(self.guard, step)
      if at_log:
        self._log(step, metrics)
      if (at_checkpoint or at_timed_checkpoint) and not at_preemption:
        if self.save(step, state):
          self.steady_window = False
      if at_preemption:
        self.save(step, state, force=True)
        self.reporter.console(
          f'{preemption.describe_stop()}: saved step {step}, exiting. Rerun '
          f'the same command to resume ({step} of {run.total_steps} steps '
          f'done; checkpoints in {self.ckpt.directory}).'
        )
        return state, step, True
      if step >= run.total_steps:
        break
    return state, step, False

  def evaluate(self, state, step):
    """Evaluates at an epoch boundary, logs it; returns evaluate_state's triple."""
    self.monitor.check(self.guard, step)
    result = evaluation.evaluate_state(
      self.config, self.run, self.fns, state, self.frozen
    )
    _, stats_source, accuracies = result
    self.steady_window = False
    self.reporter.scalars(
      step, {f'eval_accuracy/{k}': v for k, v in accuracies.items()}
    )
    self.progress.close()
    self.reporter.console(
      f'epoch {step / self.run.steps_per_epoch:.2f} step {step}: '
      + ', '.join(
        f'{self.head_label(k)} {100 * v:.2f}%' for k, v in accuracies.items()
      )
      + ('' if stats_source == 'running' else f' (BN: {stats_source})')
    )
    return result


def train_run(
  planned: plan.Run, *, allow_config_change: bool = False
) -> Dict[str, Any]:
  """Trains one run of a plan; returns the summary also written to summary.json.

  Resumes from the newest checkpoint in ``planned.workdir``. Raises
  ConfigChangedError when that checkpoint was trained with a config that
  differs in a key that changes the result, unless ``allow_config_change``
  (then the change is recorded in summary.json and the checkpoints). A
  finished run returns its recorded summary and writes nothing. The config
  must have passed kdjax.validation.validate.
  """
  started = time.time()
  config, workdir, record = planned.config, planned.workdir, planned.record
  role = planned.role
  with checkpointing.workdir_lock(workdir), preemption.guard() as preempt:
    # -- Resume check (before any work) --------------------------------------
    latest_step, latest_meta = checkpointing.read_latest_meta(workdir)
    changes = run_config.check_resume(
      latest_meta, record, workdir, allow_config_change
    )

    # -- Mesh, data, method --------------------------------------------------
    run = run_setup.setup(config)
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
        workdir,
        max_to_keep=config.get('keep_checkpoints', 3),
        every_steps=checkpoint_interval(config, run.steps_per_epoch),
        every_minutes=config.get('checkpoint_every_minutes', 0.0) or 0.0,
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
      if restored:
        reporting.console(
          f'Resumed {role} run from step {int(state.step)} of '
          f'{run.total_steps} in {ckpt.directory}'
          + (f' (skipped: {"; ".join(ckpt.skipped)})' if ckpt.skipped else '')
        )
      config_changes = list(meta.get('config_changes', []))
      if changes:
        config_changes.append({'step': int(state.step), 'changes': changes})
        reporting.console(
          f'Config changed at step {int(state.step)} (allowed by '
          f'--allow_config_change): {run_config.describe(changes)}'
        )

      # -- Loop ----------------------------------------------------------------
      step = int(state.step)
      fns = run_step.compile_functions(config, run.method, run.optimizers)
      model_meta = {
        'name': config.model.name,
        'conv_type': config.model.get('conv_type', 'conv'),
      }
      checkpoint_meta = {
        'method': config.method,
        'model': model_meta,
        'num_classes': run.train_source.num_classes,
        'image_shape': list(run.train_source.image_shape),
        'config': record,
        'config_changes': config_changes,
      }
      loop = TrainLoop(
        config,
        run,
        fns,
        frozen,
        workdir,
        ckpt,
        preempt,
        meta,
        step,
        checkpoint_meta,
        role,
      )
      ops = opcount.count_ops(
        run.method.student, (1,) + tuple(run.train_source.image_shape)
      )
      loop.reporter.console(
        f'{config.method} ({role}): {model_meta["name"]}/'
        f'{model_meta["conv_type"]}{_kwargs_note(config.model)} '
        f'mults={ops["multiplications"]:,} adds={ops["additions"]:,}; '
        f'{steps_per_epoch} steps/epoch, {total_steps} steps, batch '
        f'{config.batch_size}, lr '
        f'{run_setup.optimizer_config(config, "student").learning_rate:.4g}'
        f'{run_setup.batch_note(config)}, {run.mesh.size} devices, '
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
          final_state, stats_source, eval_results = evaluation.evaluate_state(
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
    # Read before the guard ends: it forgets the request with the run.
    stop_signal = _stop_signal_name() if preempted else None

  summary = {
    'method': config.method,
    'role': role,
    'preempted': preempted,
    'stop_signal': stop_signal,
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
    # The input normalization the run used (computed once per dataset when
    # the config gives none); synthetic data has none.
    'normalization': getattr(run.train_source, 'normalization', None),
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
  return step >= run_setup.run_length(config, meta['steps_per_epoch'])


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
