"""The config a checkpoint was trained with, and what may change on resume.

Every checkpoint's metadata records the run's config. Resuming a workdir with
a config that differs in a key that changes the result is an error (listing
old -> new per key) unless the run opts in with `--allow_config_change`; the
change is then recorded in summary.json and in later checkpoints.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

import ml_collections

from kdjax.errors import ConfigChangedError

# Keys that never change what a run computes, so they may differ on resume:
# how often it logs and saves, how many checkpoints it keeps, the eval batch
# size (eval pads and masks), where the data files live, an early stop that
# the schedule does not see (max_steps), the device count (a resumed job may
# get another slice; results then agree to float rounding, not bit for bit),
# and the non-finite policy (the suggested way past a bad batch).
RESULT_NEUTRAL_KEYS = frozenset(
  {
    'log_every_steps',
    'checkpoint_every_steps',
    'checkpoint_every_minutes',
    'keep_checkpoints',
    'eval_batch_size',
    'max_steps',
    'num_devices',
    'nonfinite',
    'nonfinite_max_skipped_fraction',
    'dataset.data_dir',
  }
)


def record(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON data (tuples as lists), as checkpoints store it."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + '.'))
    elif (
      isinstance(value, list)
      and value
      and all(isinstance(v, Mapping) for v in value)
    ):  # e.g. EKD's list of teachers.
      for i, item in enumerate(value):
        flat.update(_flatten(item, f'{name}.{i}.'))
      flat[name + '.len'] = len(value)
    else:
      flat[name] = value
  return flat


def _neutral(key: str) -> bool:
  return key in RESULT_NEUTRAL_KEYS or (
    # A teacher's own data_dir, as for the run's dataset.
    key.endswith('.data_dir')
  )


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Dict[str, list]:
  """{dotted key: [old, new]} for every result-changing key that differs."""
  old_flat, new_flat = _flatten(old), _flatten(new)
  missing = object()
  changes = {}
  for key in sorted(set(old_flat) | set(new_flat)):
    a, b = old_flat.get(key, missing), new_flat.get(key, missing)
    if a is missing and b is None:  # A key added since, left unset.
      continue
    if a != b and not _neutral(key):
      changes[key] = [
        '<absent>' if a is missing else a,
        '<absent>' if b is missing else b,
      ]
  return changes


def describe(changes: Mapping[str, list]) -> str:
  return ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changes.items())


def check_resume(
  meta: Mapping[str, Any],
  new_record: Mapping[str, Any],
  workdir: str,
  allow_change: bool,
) -> Optional[Dict[str, list]]:
  """The result-changing differences from the checkpoint's config, or None.

  Raises:
    ConfigChangedError: there are such differences and `allow_change` is off.
  """
  if not meta:
    return None
  old = meta.get('config')
  if old is None:
    # Written by a kdjax that did not record configs: nothing to compare.
    return None
  changes = diff(old, new_record)
  if changes and not allow_change:
    raise ConfigChangedError(
      f'The checkpoint at step {meta.get("step")} in {workdir} was trained '
      f'with another config: {describe(changes)}. Resuming would pair the '
      'old training with the new settings. Use a new --workdir for the new '
      'config, or pass --allow_config_change to continue this run with it '
      '(the change is recorded in summary.json and later checkpoints).'
    )
  return changes or None
