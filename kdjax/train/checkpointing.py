"""Orbax checkpoints: the run's own state, and teachers restored from other runs.

A run directory holds ``checkpoints/<step>/{state,meta}``: ``state`` is the
TrainState (restored against an abstract target so shardings survive), and
``meta`` a small JSON with the data position and what was trained (model name,
conv type, classes), which is what teacher restores check first.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

CHECKPOINT_SUBDIR = 'checkpoints'
# Orbax writes a step into <step><this suffix>... and renames it when complete.
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable, or of another architecture."""


def checkpoint_dir(path: str) -> epath.Path:
  """Accepts a run's workdir or its checkpoints/ directory (local or gs://)."""
  path = epath.Path(path)
  sub = path / CHECKPOINT_SUBDIR
  return sub if sub.is_dir() else path


class RunCheckpointer:
  """Saves and restores one run's TrainState plus its JSON metadata."""

  def __init__(
    self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True
  ):
    workdir = epath.Path(workdir)
    if '://' not in os.fspath(workdir):
      workdir = workdir.absolute()
    self.directory = workdir / CHECKPOINT_SUBDIR
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      enable_async_checkpointing=async_save,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(
    self, step: int, state: PyTree, meta: Dict[str, Any], *, force: bool = False
  ) -> bool:
    return self.manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
      ),
      force=force,
    )

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def restore_latest(
    self, abstract_state: PyTree
  ) -> Tuple[Optional[PyTree], Dict[str, Any]]:
    """Restores the newest checkpoint that reads back completely.

    A checkpoint that fails to restore (a corrupt or truncated file) is
    reported, renamed to ``<step>.unrestorable-<time>`` (which orbax ignores,
    so the resumed run can save that step again) and skipped in favour of the
    one before it. Saves cut off before their commit (a process killed
    mid-save leaves ``<step>.orbax-checkpoint-tmp*``) are never steps; they are
    reported too.

    Returns:
      (state, meta), or (None, {}) when the run has no checkpoint yet.
    """
    skipped = [
      f'step {name.partition(_TMP_SUFFIX)[0]} (save cut off before its commit: {name})'
      for name in self._unfinished_saves()
    ]
    steps = sorted(self.manager.all_steps(), reverse=True)
    bad = []
    for i, step in enumerate(steps):
      try:
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore(),
          ),
        )
      except Exception as e:  # pylint: disable=broad-except
        fallback = (
          f'falling back to step {steps[i + 1]}'
          if i + 1 < len(steps)
          else 'none left'
        )
        logging.warning(
          'Checkpoint at step %d in %s does not restore (%s: %s); %s.',
          step,
          self.directory,
          type(e).__name__,
          str(e)[:1000],
          fallback,
        )
        bad.append(step)
        continue
      skipped += [
        f'step {s} (does not restore; moved to {name})'
        for s, name in self._set_aside(bad)
      ]
      if skipped:
        logging.warning(
          'Resuming from checkpoint step %d in %s, the newest that restores; '
          'skipped: %s.',
          step,
          self.directory,
          '; '.join(skipped),
        )
      return restored['state'], dict(restored['meta'])
    if steps:
      raise CheckpointError(
        f'No checkpoint in {self.directory} restores (tried steps {steps}).'
      )
    return None, {}

  def _unfinished_saves(self):
    if not self.directory.is_dir():
      return []
    return sorted(
      p.name for p in self.directory.iterdir() if _TMP_SUFFIX in p.name
    )

  def _set_aside(self, steps):
    """Renames unrestorable step directories out of orbax's sight; [(step, new name)]."""
    moved = [
      (step, f'{step}.unrestorable-{int(time.time())}') for step in steps
    ]
    if jax.process_index() == 0:
      for step, name in moved:
        try:
          (self.directory / str(step)).rename(self.directory / name)
        except (
          OSError
        ) as e:  # A read-only directory (eval of another run): leave it.
          logging.warning(
            'Could not move the unrestorable checkpoint %s aside: %s',
            self.directory / str(step),
            e,
          )
    if moved:
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(
          'kdjax_set_aside_unrestorable_checkpoints'
        )
      self.manager.reload()
    return moved


def _describe(tree: PyTree) -> Dict[str, Tuple[int, ...]]:
  return {
    jax.tree_util.keystr(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def restore_teacher(
  path: str,
  expected: Dict[str, Any],
  abstract_params: PyTree,
  abstract_batch_stats: PyTree,
) -> Tuple[PyTree, PyTree]:
  """Restores the student of an earlier run to serve as a frozen teacher.

  Args:
    path: the earlier run's workdir (or its checkpoints/ directory).
    expected: {'model': name, 'conv_type': ..., 'num_classes': ...} the config
      asks for; compared with what the checkpoint's run trained.
    abstract_params / abstract_batch_stats: shapes of the teacher model built
      from the config; every leaf must match.

  Returns:
    (params, batch_stats) as host arrays.

  Raises:
    CheckpointError: no checkpoint there, or one of another architecture.
  """
  directory = checkpoint_dir(path)
  if not directory.is_dir():
    raise CheckpointError(
      f'Teacher checkpoint directory {path!r} does not exist. Train the teacher first, e.g. '
      f'python -m kdjax.main --config=configs/supervised.py:<preset> --workdir={path}'
    )
  # Without registered handlers orbax's item_metadata() gives None for every item.
  # save_interval_steps=0 and create=False are what read_only implies; saying so
  # spares two orbax warnings per teacher.
  manager = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False
    ),
    item_handlers={
      'state': ocp.PyTreeCheckpointHandler(),
      'meta': ocp.JsonCheckpointHandler(),
    },
  )
  step = manager.latest_step()
  if step is None:
    raise CheckpointError(
      f'Teacher checkpoint directory {str(directory)!r} holds no checkpoint.'
    )
  meta = dict(
    manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
      'meta'
    ]
  )
  trained = {k: meta.get('model', {}).get(k) for k in ('name', 'conv_type')}
  trained['num_classes'] = meta.get('num_classes')
  asked = {
    'name': expected['model'],
    'conv_type': expected['conv_type'],
    'num_classes': expected['num_classes'],
  }
  if trained != asked:
    raise CheckpointError(
      f'Teacher checkpoint {str(directory)!r} (step {step}) was trained as {trained}, but the config '
      f'asks for a teacher {asked}. Point the config at the matching run, or change '
      'the teacher model settings.'
    )

  item = manager.item_metadata(step)['state'].tree
  try:
    saved = {
      'params': item['params']['student']['model'],
      'batch_stats': item['batch_stats']['student']['model'],
    }
  except (KeyError, TypeError) as e:
    raise CheckpointError(
      f'Checkpoint {str(directory)!r} has no student model to use as a teacher '
      f'(missing {e}).'
    ) from e
  want = {'params': abstract_params, 'batch_stats': abstract_batch_stats}
  have_shapes, want_shapes = _describe(saved), _describe(want)
  if have_shapes != want_shapes:
    diffs = sorted(set(have_shapes.items()) ^ set(want_shapes.items()))[:6]
    raise CheckpointError(
      f'Teacher checkpoint {str(directory)!r} does not match the teacher architecture of the '
      f'config ({asked}); first differences (path, shape): {diffs}'
    )

  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item={
          'params': {'student': {'model': abstract_params}},
          'batch_stats': {'student': {'model': abstract_batch_stats}},
        },
        restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
          {
            'params': {'student': {'model': abstract_params}},
            'batch_stats': {'student': {'model': abstract_batch_stats}},
          },
        ),
        partial_restore=True,
      )
    ),
  )['state']
  manager.close()
  return (
    restored['params']['student']['model'],
    restored['batch_stats']['student']['model'],
  )
