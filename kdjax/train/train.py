"""train_and_evaluate and evaluate: what ``python -m kdjax.main`` runs.

A config becomes a plan of runs (plan.py: each teacher it pre-trains, then
the student), validated once, and each run trains in turn (loop.py). The
package docstring (kdjax/train/__init__.py) lists every module in order.
"""

from __future__ import annotations

from typing import Any, Dict

import ml_collections

from kdjax import validation
from kdjax.train import checkpointing, evaluation, loop, plan, run_config
from kdjax.train.guard import NonFiniteLossError

__all__ = ['NonFiniteLossError', 'evaluate', 'run_plan', 'train_and_evaluate']


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
) -> Dict[str, Any]:
  """Validates ``config``, then trains its plan; returns the student's summary.

  Each teacher the config pre-trains runs first, in its own workdir under
  ``workdir/teachers``; every run resumes from its newest checkpoint. A
  preempted run stops the plan and its summary is returned. Raises
  ConfigError for a bad config and ConfigChangedError when a checkpoint was
  trained with a config that differs in a key that changes the result,
  unless ``allow_config_change``; both before any run starts.
  """
  validation.validate(config)
  return run_plan(
    plan.build(config, workdir), allow_config_change=allow_config_change
  )


def run_plan(runs, *, allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains each run of a validated plan in order; returns the last summary."""
  for planned in runs:  # A changed config fails before any run trains.
    _, meta = checkpointing.read_latest_meta(planned.workdir)
    run_config.check_resume(
      meta, planned.record, planned.workdir, allow_config_change
    )
  summary = {}
  for planned in runs:
    summary = loop.train_run(planned, allow_config_change=allow_config_change)
    if summary['preempted']:
      break
  return summary


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Validates ``config`` and reports the eval accuracy of ``workdir``'s newest checkpoint."""
  validation.validate(config)
  return evaluation.evaluate(config, workdir)
