"""What a run tells its user: TensorBoard scalars, console lines, a progress bar, summary.json.

Scalars go to TensorBoard event files as plain scalar summaries, which the
scalar dashboard and ``EventAccumulator(workdir).Reload().Scalars(tag)`` read;
writing them needs tensorboard and tensorflow (its file system also reaches
gs:// paths). Where those cannot be imported (a host running the numpy data
loader), scalars go to ``<workdir>/metrics.jsonl`` instead, one JSON object per
write: ``{"step": 20, "loss/total": 1.93, ...}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, Mapping

from absl import logging
from etils import epath
import jax
import numpy as np

try:
  # pylint: disable=g-import-not-at-top
  import tensorflow  # noqa: F401  # tensorboard's writer then uses tf.io.gfile.
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.summary.writer import event_file_writer
except ImportError:  # No tensorflow or tensorboard: metrics.jsonl instead.
  event_file_writer = None

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
    if not just_logging:
      # flush_secs: what TensorBoard shows lags the run by at most this.
      self._writer = event_file_writer.EventFileWriter(
        str(workdir), flush_secs=10
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
  """Writes scalars to TensorBoard (process 0 only) and concise console lines."""

  def __init__(self, workdir: str):
    self.is_lead = jax.process_index() == 0
    if event_file_writer is not None:
      self.writer = EventFileWriter(workdir, just_logging=not self.is_lead)
    else:
      if self.is_lead:
        logging.warning(
          'tensorflow/tensorboard not importable: no TensorBoard event files '
          '(they need tensorflow and tensorboard); scalars go to %s',
          epath.Path(workdir) / METRICS_JSONL,
        )
      self.writer = JsonlWriter(workdir, just_logging=not self.is_lead)

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
