"""Frozen teachers restored from the checkpoints of earlier supervised runs.

A method declares its frozen teachers (``Method.frozen_teachers``); the
trainer restores each one here and hands the weights to the method, which
does no I/O itself.
"""

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.train import checkpointing, reporting


def restore_frozen_weights(
  model: Any,
  teacher_config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: Tuple[int, ...],
) -> Dict[str, Any]:
  """{'params', 'batch_stats'} of `model` (built from `teacher_config`) from its run."""
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
  meta = restored.meta
  unfinished = 'total_steps' in meta and not meta.get('finished')
  if unfinished and not teacher_config.get('allow_unfinished', False):
    raise checkpointing.CheckpointError(
      f'The teacher {teacher_config.name}/{conv_type} in {restored.directory} '
      f'is from a run that did not finish: its newest checkpoint is step '
      f'{restored.step} of {meta["total_steps"]}. Finish that run first (rerun '
      'its command with the same --workdir), or accept it as it is with '
      '--config.teacher.allow_unfinished=True.'
    )
  recorded = meta.get('eval_accuracy') or {}
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
    f'{meta.get("batch_stats_source", "running")})'
    + (
      f'; UNFINISHED: step {restored.step} of {meta["total_steps"]}, '
      'accepted by allow_unfinished'
      if unfinished
      else ''
    )
  )
  return {'params': restored.params, 'batch_stats': restored.batch_stats}


def restore_init_phase(method, init_method, num_classes: int) -> Dict[str, Any]:
  """{'params', 'batch_stats'} of ``method.warm_start_parts()``, each keyed by
  part, from its finished initialization run (``method.warm_start_dir()``).

  ``init_method`` is that run's method (built from init_phase_config), whose
  abstract init gives the shapes to restore.
  """
  directory = method.warm_start_dir()
  if not directory:
    raise checkpointing.CheckpointError(
      'This run starts from an initialization phase, but its directory is '
      'not set (the plan sets distill.init_dir; set it to the workdir of a '
      'finished initialization run).'
    )
  sample = jnp.zeros((1,) + tuple(init_method.image_shape), jnp.float32)
  params, stats = jax.eval_shape(
    lambda: init_method.init(jax.random.key(0), sample)
  )
  entry = method.config.model
  out = {'params': {}, 'batch_stats': {}}
  for part in method.warm_start_parts():
    restored = checkpointing.restore_teacher_checkpoint(
      directory,
      {
        'model': entry.name,
        'conv_type': entry.get('conv_type', 'conv'),
        'num_classes': num_classes,
      },
      params['student'][part],
      stats['student'].get(part, {}),
      name=f'initialization phase ({part})',
      part=part,
    )
    meta = restored.meta
    if 'total_steps' in meta and not meta.get('finished'):
      raise checkpointing.CheckpointError(
        f'The initialization run in {restored.directory} did not finish: its '
        f'newest checkpoint is step {restored.step} of {meta["total_steps"]}. '
        'Rerun the same command: the plan finishes it first.'
      )
    out['params'][part] = restored.params
    out['batch_stats'][part] = restored.batch_stats
  reporting.console(
    f'Restored {", ".join(method.warm_start_parts())} from the '
    f'initialization run {directory}'
  )
  return out
