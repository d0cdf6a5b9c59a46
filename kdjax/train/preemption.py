"""SIGTERM as a request to checkpoint and stop (preemptible VMs, schedulers).

`python -m kdjax.main` calls `install()` first thing, so a SIGTERM during
imports, data setup or compilation is remembered instead of killing the
process; the trainer checks `requested` at setup's end and saves at the next
step boundary. Multi-process runs leave SIGTERM to jax.distributed's
preemption service, which agrees on one step for every process to save.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {'requested': False, 'installed': False}


def _handle(signum, frame):
  del signum, frame
  _state['requested'] = True


def install() -> None:
  """Installs the SIGTERM handler (main thread only; idempotent)."""
  if (
    _state['installed']
    or threading.current_thread() is not threading.main_thread()
  ):
    return
  signal.signal(signal.SIGTERM, _handle)
  _state['installed'] = True


class _Guard:
  """What the training loop asks: was a stop requested, and where to stop."""

  @property
  def requested(self) -> bool:
    return _state['requested']

  def reached(self, step: int) -> bool:
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      return multihost_utils.reached_preemption_sync_point(step)
    return _state['requested']


@contextlib.contextmanager
def guard():
  """Handles SIGTERM for the duration of a run (single process), then restores."""
  import jax  # pylint: disable=g-import-not-at-top

  previous, installed_here = None, False
  if (
    jax.process_count() == 1
    and not _state['installed']
    and threading.current_thread() is threading.main_thread()
  ):
    previous = signal.signal(signal.SIGTERM, _handle)
    installed_here = True
  try:
    yield _Guard()
  finally:
    if installed_here:
      signal.signal(signal.SIGTERM, previous)
      # A request seen by this run ends with it; the next run starts clean.
      _state['requested'] = False
