"""What a run tells its user: TensorBoard scalars, console lines, a progress bar, summary.json.

Scalars go to TensorBoard through clu's metric writers, which need tensorflow.
Where clu or tensorflow cannot be imported (a host running the numpy data
loader), they go to ``<workdir>/metrics.jsonl`` instead, one JSON object per
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
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
except (
  ImportError
):  # clu itself, or the tensorflow its writers import, is missing.
  metric_writers = None

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

  def update(self, step: int, note: str = '') -> None:
    if not self.enabled:
      return
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


class JsonlWriter:
  """The scalar writer without clu: JSON lines in ``<workdir>/metrics.jsonl``, and the log.

  Has the methods of clu's writers that Reporter calls.
  """

  def __init__(self, workdir: str, just_logging: bool):
    self.path = None if just_logging else epath.Path(workdir) / METRICS_JSONL

  def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
    logging.info(
      '[%d] %s',
      step,
      ', '.join(f'{k}={v:.6g}' for k, v in sorted(values.items())),
    )
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
    if metric_writers is not None:
      self.writer = metric_writers.create_default_writer(
        workdir, just_logging=not self.is_lead, asynchronous=False
      )
    else:
      if self.is_lead:
        logging.warning(
          'clu/tensorflow not importable: no TensorBoard event files (they need '
          'tensorflow and clu); scalars go to %s',
          epath.Path(workdir) / METRICS_JSONL,
        )
      self.writer = JsonlWriter(workdir, just_logging=not self.is_lead)

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    values = {k: float(np.asarray(v)) for k, v in values.items()}
    self.writer.write_scalars(step, values)

  def console(self, message: str) -> None:
    if self.is_lead:
      logging.info('%s', message)
      print(message, flush=True)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


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
