"""The non-finite guard's host side: where training stops, and why.

The device side (``step.guarded_step``) records the first non-finite step and
counts skipped ones; the host reads that record only at log, checkpoint, eval
and preemption boundaries and enforces ``config.nonfinite`` ('raise' or
'skip').
"""

from __future__ import annotations

import jax
import numpy as np

from kdjax.errors import EXIT_FAILED, KdjaxError


class NonFiniteLossError(KdjaxError, FloatingPointError):
  """A loss term, gradient or update became NaN or Inf."""

  exit_code = EXIT_FAILED


def nonfinite_error(
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


class GuardMonitor:
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
      raise nonfinite_error(
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
