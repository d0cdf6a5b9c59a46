"""Converted weights as a kdjax teacher checkpoint (docs/interop.md).

The directory is what a supervised run leaves (``checkpoints/0/{state,meta}``,
written by ``RunCheckpointer.save``): a TrainState at step 0 whose student is
the converted model and whose optimizer state is the default supervised SGD's
(zero momentum). So ``--config.teacher.checkpoint_dir=DIR`` restores it with
the architecture checks of ``restore_teacher_checkpoint``, ``--mode=eval`` with
configs/supervised.py evaluates it, and training that workdir fine-tunes it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from kdjax import config_defaults
from kdjax.convert.convert import ConversionError
from kdjax.models import registry
from kdjax.train import checkpointing
from kdjax.train.state import TrainState

CONVERTED_STEP = 0


def image_shape(model: str) -> Tuple[int, int, int]:
  size = registry.model_spec(model).default_image_size
  return (size, size, 3)


def teacher_meta(
  *, model: str, conv_type: str, num_classes: int, source: Mapping[str, Any]
) -> Dict[str, Any]:
  """Every meta key a converted checkpoint holds (those of a supervised run).

  ``source`` says where the weights came from (format, file, folds); the
  trainer ignores it.
  """
  return {
    'step': CONVERTED_STEP,
    'epoch': 0,
    'step_in_epoch': 0,
    'method': 'supervised',
    'model': {'name': model, 'conv_type': conv_type},
    'num_classes': int(num_classes),
    'image_shape': list(image_shape(model)),
    'converted_from': dict(source),
    # Converted weights are a finished teacher by construction.
    'finished': True,
  }


def _train_state(variables, model, conv_type, num_classes) -> TrainState:
  """The TrainState of a fresh supervised run, with these weights."""
  # Imported here: the trainer pulls in the data pipeline.
  from kdjax.train import setup as trainer  # pylint: disable=g-import-not-at-top
  from kdjax.methods import build_method  # pylint: disable=g-import-not-at-top

  config = config_defaults.base_config('supervised')
  config.model = config_defaults.model(model, conv_type)
  method = build_method(
    config, num_classes=num_classes, image_shape=image_shape(model)
  )
  params = {
    'student': {'model': jax.tree.map(jnp.asarray, variables['params'])}
  }
  batch_stats = {
    'student': {'model': jax.tree.map(jnp.asarray, variables['batch_stats'])}
  }
  optimizers = trainer.build_optimizers(
    config, method, params, steps_per_epoch=1
  )
  return TrainState(
    step=jnp.asarray(CONVERTED_STEP, jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state={g: optimizers[g].init(params[g]) for g in method.groups},
    rng=jax.random.key_data(jax.random.key(config.seed)),
  )


def check_new_teacher_dir(out: str) -> None:
  """Raises ConversionError unless ``out`` can become a teacher directory."""
  if os.path.isfile(out):
    raise ConversionError(f'--out {out!r} is a file; give a directory')
  existing = os.path.join(out, checkpointing.CHECKPOINT_SUBDIR)
  if os.path.isdir(existing) and os.listdir(existing):
    raise ConversionError(
      f'--out {out!r} already holds checkpoints ({existing}); a teacher '
      'directory holds one model. Choose a new directory, or delete that one.'
    )


def write_teacher(
  out: str,
  variables: Mapping[str, Any],
  *,
  model: str,
  conv_type: str,
  num_classes: int,
  source: Mapping[str, Any],
) -> str:
  """Writes ``variables`` of a zoo model as a teacher checkpoint in ``out``.

  Returns:
    The checkpoints/ directory written.

  Raises:
    ConversionError: ``out`` already holds a checkpoint (it would hide or
      mix with this one), or is a file.
  """
  model = registry.canonical_name(model)
  check_new_teacher_dir(out)
  state = _train_state(variables, model, conv_type, int(num_classes))
  ckpt = checkpointing.RunCheckpointer(out, max_to_keep=1, async_save=False)
  ckpt.save(
    CONVERTED_STEP,
    state,
    teacher_meta(
      model=model,
      conv_type=conv_type,
      num_classes=num_classes,
      source=source,
    ),
    force=True,
  )
  ckpt.close()
  return str(ckpt.directory)
