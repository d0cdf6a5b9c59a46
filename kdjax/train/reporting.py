"""What a run tells its user: TensorBoard scalars, console lines, a progress bar, summary.json.

Scalars go to TensorBoard event files as plain scalar summaries, which the
scalar dashboard and ``EventAccumulator(workdir).Reload().Scalars(tag)`` read.
Writing them needs the tensorboard package; a workdir on a remote file system
(gs://...) also needs tensorflow, whose file system reaches it, while a local
one does not (importing tensorflow costs seconds of every run's start). Where
they cannot be written (no tensorboard, or a remote workdir without
tensorflow), scalars go to ``<workdir>/metrics.jsonl`` instead, one JSON
object per write: ``{"step": 20, "loss/total": 1.93, ...}``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import time
from typing import Any, Dict, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

try:
  # pylint: disable=g-import-not-at-top
  # Neither imports tensorflow: the protos and the record framing (with its
  # pure-Python CRC) are tensorboard's own.
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.summary.writer import record_writer
except ImportError:  # No tensorboard: metrics.jsonl instead.
  record_writer = None

METRICS_JSONL = 'metrics.jsonl'


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return (
    f'{hours:d}:{minutes:02d}:{secs:02d}'
    if hours
    else f'{minutes:d}:{secs:02d}'
  )


class ProgressBar:
  """A one-line bar with ETA, drawn only when stderr is a terminal."""

  def __init__(self, total_steps: int, first_step: int = 0, width: int = 30):
    self.total = max(total_steps, 1)
    self.first = first_step
    self.width = width
    self.start = time.time()
    self.enabled = sys.stderr.isatty() and jax.process_index() == 0
    self._note = ''

  def note(self, note: str) -> None:
    """Text shown after the bar from now on (e.g. the loss at the last log)."""
    self._note = note

  def update(self, step: int, note: str = '') -> None:
    if not self.enabled:
      return
    note = note or self._note
    done = step - self.first
    elapsed = time.time() - self.start
    eta = elapsed / done * (self.total - step) if done > 0 else 0.0
    filled = int(self.width * step / self.total)
    bar = '#' * filled + '.' * (self.width - filled)
    sys.stderr.write(
      f'\r[{bar}] {step}/{self.total} eta {_format_duration(eta)} {note}   '
    )
    sys.stderr.flush()

  def close(self) -> None:
    if self.enabled:
      sys.stderr.write('\n')
      sys.stderr.flush()


def _log_scalars(step: int, values: Mapping[str, float]) -> None:
  logging.info(
    '[%d] %s',
    step,
    ', '.join(f'{k}={v:.6g}' for k, v in sorted(values.items())),
  )


def is_local(workdir: str) -> bool:
  """Whether ``workdir`` is on this host's file system (no ``scheme://``)."""
  return '://' not in str(workdir)


def _remote_event_file_writer():
  """tensorboard's EventFileWriter on tensorflow's file system, or None."""
  try:
    # pylint: disable=g-import-not-at-top
    import tensorflow  # noqa: F401  # tensorboard then uses tf.io.gfile.
    from tensorboard.summary.writer import event_file_writer
  except ImportError:
    return None
  return event_file_writer.EventFileWriter


class LocalEventFile:
  """One ``events.out.tfevents.*`` file in a local directory, without tensorflow.

  The file TensorBoard's own EventFileWriter writes (the same name pattern,
  a first event with the file version, then one record per event), written
  with Python's file I/O and flushed at every event: the trainer writes only
  at log boundaries.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = 'events.out.tfevents.%010d.%s.%s.%s' % (
      time.time(),
      socket.gethostname(),
      os.getpid(),
      next(_EVENT_FILE_IDS),
    )
    self._records = record_writer.RecordWriter(
      open(os.path.join(logdir, name), 'wb')
    )
    self.add_event(
      event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2')
    )

  def add_event(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


_EVENT_FILE_IDS = itertools.count()


def tensorboard_writer_available(workdir: str) -> bool:
  """Whether this process can write TensorBoard event files to ``workdir``."""
  if record_writer is None:
    return False
  return is_local(workdir) or _remote_event_file_writer() is not None


class EventFileWriter:
  """Scalars in a TensorBoard event file of ``workdir``, and in the log.

  Each write is one event with a ``simple_value`` per tag, the format that
  TensorBoard's scalar dashboard and ``EventAccumulator.Scalars(tag)`` read
  (TF2 ``tf.summary.scalar`` stores tensors, which ``Scalars()`` does not
  list). Every writer makes its own ``events.out.tfevents.*`` file; a resumed
  run adds a file, and readers merge them by step. With ``just_logging``
  (processes other than 0) it only logs.
  """

  def __init__(self, workdir: str, just_logging: bool):
    self._writer = None
    if just_logging:
      return
    if is_local(workdir):
      self._writer = LocalEventFile(str(workdir))
    else:
      # flush_secs: what TensorBoard shows lags the run by at most this.
      self._writer = _remote_event_file_writer()(str(workdir), flush_secs=10)

  def restart(self, step: int) -> None:
    """Marks that the run (re)starts after `step`: later steps are new.

    A SessionLog.START event at step + 1 makes TensorBoard purge what an
    earlier, interrupted part of the run logged after `step` (orphaned by a
    kill or a crash after its last checkpoint), so no step shows twice or
    goes backwards.
    """
    if self._writer is None:
      return
    self._writer.add_event(
      event_pb2.Event(
        wall_time=time.time(),
        step=int(step) + 1,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
      )
    )

  def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
    _log_scalars(step, values)
    if self._writer is None:
      return
    summary = summary_pb2.Summary(
      value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in sorted(values.items())
      ]
    )
    self._writer.add_event(
      event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
    )

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class JsonlWriter:
  """The scalar writer without TensorBoard: ``<workdir>/metrics.jsonl`` and the log.

  Has the methods of EventFileWriter that Reporter calls.
  """

  def __init__(self, workdir: str, just_logging: bool):
    self.path = None if just_logging else epath.Path(workdir) / METRICS_JSONL

  def restart(self, step: int) -> None:
    """Drops the lines an earlier, interrupted part logged after `step`."""
    if self.path is None or not self.path.exists():
      return
    lines = self.path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)['step'] <= step]
    if len(kept) != len(lines):
      self.path.write_text(''.join(line + '\n' for line in kept))

  def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
    _log_scalars(step, values)
    if self.path is not None:
      # Appended: a resumed run adds to what the earlier part wrote, like event files.
      with self.path.open('a') as f:
        f.write(json.dumps({'step': int(step), **values}) + '\n')

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Reporter:
  """Writes scalars to TensorBoard (process 0 only) and concise console lines.

  `start_step` is the step the run starts or resumes from: what an earlier
  part logged after it is marked orphaned (see EventFileWriter.restart).
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.is_lead = jax.process_index() == 0
    if tensorboard_writer_available(workdir):
      self.writer = EventFileWriter(workdir, just_logging=not self.is_lead)
    else:
      if self.is_lead:
        logging.warning(
          'no TensorBoard event files: they need the tensorboard package '
          '(and tensorflow for a remote workdir such as gs://); scalars go '
          'to %s',
          epath.Path(workdir) / METRICS_JSONL,
        )
      self.writer = JsonlWriter(workdir, just_logging=not self.is_lead)
    self.writer.restart(start_step)

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    values = {k: float(np.asarray(v)) for k, v in values.items()}
    self.writer.write_scalars(step, values)

  def console(self, message: str) -> None:
    console(message)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


def console(message: str) -> None:
  """A line for the person running kdjax: stdout of process 0, and the log."""
  if jax.process_index() == 0:
    logging.info('%s', message)
    print(message, flush=True)


def summary_path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / 'summary.json'


def read_summary(workdir: str) -> Dict[str, Any]:
  """The summary.json of an earlier (part of the) run in ``workdir``, or {}."""
  path = summary_path(workdir)
  return json.loads(path.read_text()) if path.exists() else {}


def write_summary(workdir: str, summary: Dict[str, Any]) -> epath.Path:
  path = summary_path(workdir)
  if jax.process_index() == 0:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
  return path
