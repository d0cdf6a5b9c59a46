"""The one entry point of config validation: ``validate(config)``.

It runs once per command, before any data, model or TensorFlow is loaded, so
a bad value fails in about a second with one paragraph. It checks sizes,
the optimizer settings, the non-finite policy and the data loader, then calls
the method's own ``check_config``. Every failure is a ConfigError.
Checks that need the data or the devices (batch divisible by the mesh, a
schedule that stays finite over the run's length) run in kdjax.train.setup.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from kdjax import data as kd_data
from kdjax import methods
from kdjax.errors import ConfigError


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a config that cannot train; returns None otherwise."""
  _check_sizes_and_optimizers(config)
  _check_data_loader(config)
  methods.method_class(config).check_config(config)


def _positive_int(config, key: str, *, zero_ok: bool = False) -> None:
  value = config.get(key)
  ok = isinstance(value, int) and (value >= 0 if zero_ok else value > 0)
  if not ok:
    want = 'a non-negative' if zero_ok else 'a positive'
    raise ConfigError(f'--config.{key}={value!r}: must be {want} integer.')


def _check_sizes_and_optimizers(config: ml_collections.ConfigDict) -> None:
  """Rejects sizes and optimizer settings that cannot train, before any work."""
  _positive_int(config, 'batch_size')
  _positive_int(config, 'eval_batch_size', zero_ok=True)
  num_epochs = config.get('num_epochs')
  if not (isinstance(num_epochs, (int, float)) and num_epochs > 0):
    raise ConfigError(
      f'--config.num_epochs={num_epochs!r}: must be a positive number.'
    )
  if config.get('nonfinite', 'raise') not in ('raise', 'skip'):
    raise ConfigError(
      f"--config.nonfinite={config.nonfinite!r}: use 'raise' or 'skip'."
    )
  fraction = config.get('nonfinite_max_skipped_fraction', 0.1)
  if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
    raise ConfigError(
      f'--config.nonfinite_max_skipped_fraction={fraction!r}: must be in '
      '[0, 1].'
    )
  groups = ['optimizer'] + [
    f'optimizers.{g}' for g in (config.get('optimizers') or {})
  ]
  for group in groups:
    opt = (
      config.optimizer
      if group == 'optimizer'
      else config.optimizers[group.split('.', 1)[1]]
    )
    if not opt:
      continue
    lr, wd = opt.get('learning_rate'), opt.get('weight_decay', 0.0) or 0.0
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
      raise ConfigError(
        f'--config.{group}.learning_rate={lr!r}: the learning rate must be a '
        'finite positive number.'
      )
    if not (isinstance(wd, (int, float)) and np.isfinite(wd) and wd >= 0):
      raise ConfigError(
        f'--config.{group}.weight_decay={wd!r}: the weight decay must be a '
        'finite number >= 0.'
      )


def _check_data_loader(config: ml_collections.ConfigDict) -> None:
  """Fails fast on a dataset or loader the run cannot read, reading nothing."""
  try:
    kd_data.check_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
