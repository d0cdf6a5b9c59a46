"""Frozen teachers restored from the checkpoints of earlier supervised runs."""

from typing import Any, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.train import checkpointing, reporting
from kdjax.train.methods import base


def restore_frozen_teacher(
  teacher_config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: Tuple[int, ...],
) -> Tuple[Any, Any, Any]:
  """Builds the teacher model of the config and loads its weights.

  Returns:
    (model, params, batch_stats).
  """
  model = base.build_zoo_model(teacher_config, num_classes, image_shape)
  params, batch_stats = restore_frozen_weights(
    model, teacher_config, num_classes, image_shape
  )
  return model, params, batch_stats


def restore_frozen_weights(
  model: Any,
  teacher_config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: Tuple[int, ...],
) -> Tuple[Any, Any]:
  """(params, batch_stats) of `model` (built from `teacher_config`) from its run."""
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)), train=False
    )
  )
  if not teacher_config.get('checkpoint_dir'):
    raise checkpointing.CheckpointError(
      f'The teacher {teacher_config.name} needs checkpoint_dir: the workdir of a finished '
      'supervised run (python -m kdjax.main --config=configs/supervised.py:<preset> '
      '--workdir=DIR), set with --config.teacher.checkpoint_dir=DIR'
    )
  conv_type = teacher_config.get('conv_type', 'conv')
  restored = checkpointing.restore_teacher_checkpoint(
    teacher_config.checkpoint_dir,
    {
      'model': teacher_config.name,
      'conv_type': conv_type,
      'num_classes': num_classes,
    },
    abstract['params'],
    abstract.get('batch_stats', {}),
    name=f'teacher {teacher_config.name}/{conv_type}',
  )
  recorded = restored.meta.get('eval_accuracy') or {}
  if not recorded:
    accuracy = 'no accuracy recorded'
  elif set(recorded) == {'student'}:  # Its run's only head: the model itself.
    accuracy = f'{100 * recorded["student"]:.2f}%'
  else:
    accuracy = ', '.join(f'{k} {100 * v:.2f}%' for k, v in recorded.items())
  reporting.console(
    f'Restored teacher {teacher_config.name}/{conv_type} from '
    f'{restored.directory} (step {restored.step}; its eval accuracy as '
    f'recorded: {accuracy}; BN statistics: '
    f'{restored.meta.get("batch_stats_source", "running")})'
  )
  return restored.params, restored.batch_stats
