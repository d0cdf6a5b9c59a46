"""SIGTERM and Ctrl-C (SIGINT) as requests to checkpoint and stop.

`python -m kdjax.main` calls `install()` first thing, so a SIGTERM or Ctrl-C
during imports, data setup or compilation is remembered instead of killing
the process; the trainer checks `requested` at setup's end and saves at the
next step boundary. A second Ctrl-C aborts at once (KeyboardInterrupt), for a
user who does not want to wait for the save. Multi-process runs leave SIGTERM
to jax.distributed's preemption service, which agrees on one step for every
process to save.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Optional

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = {'requested': False, 'installed': False, 'signal': None}


def _handle(signum, frame):
  del frame
  if signum == signal.SIGINT and _state['signal'] == signal.SIGINT:
    raise KeyboardInterrupt('a second Ctrl-C')  # Abort, do not wait.
  _state['requested'] = True
  _state['signal'] = signal.Signals(signum)


def install() -> None:
  """Installs the SIGTERM and SIGINT handlers (main thread only; idempotent)."""
  if (
    _state['installed']
    or threading.current_thread() is not threading.main_thread()
  ):
    return
  for signum in _SIGNALS:
    signal.signal(signum, _handle)
  _state['installed'] = True


def stop_signal() -> Optional[signal.Signals]:
  """The signal that asked this process to stop (SIGTERM, SIGINT), or None."""
  return _state['signal']


def describe_stop() -> str:
  """How a console line names the stop request."""
  return (
    'Ctrl-C' if _state['signal'] == signal.SIGINT else 'Preemption requested'
  )


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
  """Handles SIGTERM and Ctrl-C for the duration of a run (single process).

  Where `install()` did not run (a library caller), the handlers are set for
  the run and the previous ones restored after it.
  """
  import jax  # pylint: disable=g-import-not-at-top

  previous, installed_here = {}, False
  if (
    jax.process_count() == 1
    and not _state['installed']
    and threading.current_thread() is threading.main_thread()
  ):
    previous = {s: signal.signal(s, _handle) for s in _SIGNALS}
    installed_here = True
  try:
    yield _Guard()
  finally:
    if installed_here:
      for signum, handler in previous.items():
        signal.signal(signum, handler)
      # A request seen by this run ends with it; the next run starts clean.
      _state['requested'] = False
      _state['signal'] = None
