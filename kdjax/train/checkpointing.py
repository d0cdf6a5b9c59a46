"""Orbax checkpoints: the run's own state, and teachers restored from other runs.

A run directory holds ``checkpoints/<step>/{state,meta}``: ``state`` is the
TrainState (restored against an abstract target so shardings survive), and
``meta`` a small JSON with the data position and what was trained (model name,
conv type, classes), which is what teacher restores check first.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import EXIT_FAILED, KdjaxError, WorkdirError

PyTree = Any

CHECKPOINT_SUBDIR = 'checkpoints'
# Orbax writes a step into <step><this suffix>... and renames it when complete.
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointError(KdjaxError, RuntimeError):
  """A checkpoint that is missing, unreadable, or of another architecture."""


class CheckpointSaveError(KdjaxError, OSError):
  """Writing a checkpoint failed (a full disk, lost permissions)."""

  exit_code = EXIT_FAILED


class _DropReadOnlyNotice(py_logging.Filter):
  """Orbax warns that a directory is read only whenever one is opened so.

  kdjax opens teachers and eval runs read-only on purpose; the notice says
  nothing to the user. Every other orbax warning passes.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.msg != 'Given directory is read only=%s'


py_logging.getLogger('absl').addFilter(_DropReadOnlyNotice())

LOCK_FILE = '.kdjax.lock'


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on a local workdir for the duration of a run.

  A second run on the same workdir fails at once. The lock is an flock on
  ``<workdir>/.kdjax.lock``, which the kernel drops when the holder exits,
  however it exits, so a crashed run never leaves it stuck. Only process 0
  locks (all processes of one job share the workdir); gs:// workdirs are not
  locked. A run that fails before writing anything leaves no debris: the
  lock file goes, and so does the workdir if this lock created it.
  """
  if '://' in workdir or jax.process_index() != 0:
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top

  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  handle = open(path, 'a+')
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'unknown'
      raise WorkdirError(
        f'Another kdjax run is using {workdir} (process {holder}). Wait for '
        'it to finish, stop it, or use another --workdir.'
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'{os.getpid()}\n')
    handle.flush()
    try:
      yield
    except BaseException:
      if os.listdir(workdir) == [LOCK_FILE]:  # Nothing but the lock.
        os.remove(path)
        if created:
          os.rmdir(workdir)
      raise
  finally:
    handle.close()  # Closing drops the lock.


def read_latest_meta(workdir: str) -> Tuple[Optional[int], Dict[str, Any]]:
  """(step, meta) of the newest checkpoint whose metadata reads; (None, {}).

  Reads only the small JSON part and creates nothing.
  """
  directory = epath.Path(workdir) / CHECKPOINT_SUBDIR
  if not directory.is_dir():
    return None, {}
  manager = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False
    ),
    item_handlers={'meta': ocp.JsonCheckpointHandler()},
  )
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
      except Exception:  # pylint: disable=broad-except
        continue  # restore_latest reports and skips it.
      return step, dict(restored['meta'])
    return None, {}
  finally:
    manager.close()


def checkpoint_dir(path: str) -> epath.Path:
  """Accepts a run's workdir or its checkpoints/ directory (local or gs://)."""
  path = epath.Path(path)
  sub = path / CHECKPOINT_SUBDIR
  return sub if sub.is_dir() else path


class RunCheckpointer:
  """Saves and restores one run's TrainState plus its JSON metadata."""

  def __init__(
    self,
    workdir: str,
    *,
    max_to_keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
    every_steps: int = 1,
    every_minutes: float = 0.0,
  ):
    """A run's checkpoints in ``workdir/checkpoints``.

    ``save`` writes a step that is a multiple of ``every_steps`` or, with
    ``every_minutes``, one at least that long after the previous checkpoint
    (orbax's FixedIntervalPolicy and ContinuousCheckpointingPolicy); a forced
    save (preemption, the final step) always writes.
    """
    workdir = epath.Path(workdir)
    if '://' not in os.fspath(workdir):
      workdir = workdir.absolute()
    self.directory = workdir / CHECKPOINT_SUBDIR
    self.read_only = read_only
    # What restore_latest passed over, for the caller to report.
    self.skipped: List[str] = []
    if read_only:
      options = ocp.CheckpointManagerOptions(
        read_only=True, save_interval_steps=0, create=False
      )
    else:
      policies = [ocp.checkpoint_managers.FixedIntervalPolicy(every_steps)]
      if every_minutes:
        policies.append(
          ocp.checkpoint_managers.ContinuousCheckpointingPolicy(
            minimum_interval_secs=max(1, round(60 * every_minutes))
          )
        )
      options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
      )
    self.every_minutes = every_minutes
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._requested: List[int] = []  # Steps handed to orbax to save.

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def _failed(self, step, error: Exception) -> CheckpointSaveError:
    # With asynchronous saves an error can surface at a later save or wait:
    # name the oldest requested step that never reached the disk.
    on_disk = {
      int(p.name) for p in self.directory.iterdir() if p.name.isdigit()
    }
    lost = sorted(s for s in self._requested + [step] if s not in on_disk)
    step = lost[0] if lost else step
    kept = max((s for s in on_disk if s < step), default=None)
    previous = (
      f'the previous checkpoint (step {kept}) is intact'
      if kept is not None
      else 'no earlier checkpoint exists'
    )
    text = str(error)
    full = 'No space left' in text or 'RESOURCE_EXHAUSTED' in text
    reason = 'the disk is full' if full else type(error).__name__
    return CheckpointSaveError(
      f'Saving the checkpoint of step {step} to {self.directory} failed '
      f'({reason}: {text[:300]}); {previous}. Free disk space or fix the '
      'permissions, then rerun the same command to resume.'
    )

  def save(
    self, step: int, state: PyTree, meta: Dict[str, Any], *, force: bool = False
  ) -> bool:
    try:
      saved = self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
        force=force,
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, e) from e
    if saved:
      self._requested.append(step)
    return saved

  def delete(self, step: int) -> None:
    self.manager.wait_until_finished()
    self.manager.delete(step)

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(
        self._requested[-1] if self._requested else -1, e
      ) from e

  def close(self) -> None:
    self.wait()
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
      self.skipped = skipped
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
    if self.read_only:  # Evaluating: leave the run's files as they are.
      return [(step, f'{step} (left in place)') for step in steps]
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


def restore_run_read_only(
  workdir: str, abstract_state: PyTree
) -> Tuple[PyTree, Dict[str, Any]]:
  """The newest checkpoint of a run that restores, changing nothing on disk."""
  ckpt = RunCheckpointer(workdir, read_only=True)
  try:
    state, meta = ckpt.restore_latest(abstract_state)
  finally:
    ckpt.manager.close()
  if state is None:
    raise CheckpointError(f'No checkpoint to evaluate in {ckpt.directory}.')
  return state, meta


class RestoredTeacher(NamedTuple):
  params: PyTree
  batch_stats: PyTree
  step: int
  directory: str
  meta: Dict[str, Any]


def _student_subtree(tree, part: str = 'model'):
  # A part without BN statistics (FT's paraphraser) has no batch_stats entry.
  stats = (tree.get('batch_stats') or {}).get('student') or {}
  return {
    'params': tree['params']['student'][part],
    'batch_stats': stats.get(part, {}),
  }


def restore_teacher_checkpoint(
  path: str,
  expected: Dict[str, Any],
  abstract_params: PyTree,
  abstract_batch_stats: PyTree,
  *,
  name: str = 'teacher',
  part: str = 'model',
) -> RestoredTeacher:
  """Restores the student of an earlier run to serve as a frozen teacher.

  ``part`` picks another subtree of that run's params['student'] (an
  initialization run's connectors or paraphraser; Method.warm_start_parts).

  Args:
    path: the earlier run's workdir (or its checkpoints/ directory).
    expected: {'model': name, 'conv_type': ..., 'num_classes': ...} the config
      asks for; compared with what the checkpoint's run trained.
    abstract_params / abstract_batch_stats: shapes of the teacher model built
      from the config; every leaf must match.
    name: how errors name this teacher (e.g. 'teacher 1 (wrn16_2)').

  Returns:
    The host arrays, the step, the directory and the checkpoint's metadata
    (with 'eval_accuracy' where the run recorded one). A damaged newest step
    falls back to the one before it, with a warning.

  Raises:
    CheckpointError: no checkpoint there, one of another architecture, or no
      step that restores.
  """
  directory = checkpoint_dir(path)
  if not directory.is_dir():
    raise CheckpointError(
      f'The {name} checkpoint directory {path!r} does not exist. Train the '
      'teacher first, e.g. python -m kdjax.main '
      f'--config=configs/supervised.py:<preset> --workdir={path}'
    )
  # Without registered handlers orbax's item_metadata() gives None for every
  # item. save_interval_steps=0 and create=False are what read_only implies;
  # saying so spares two orbax warnings per teacher.
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
  asked = {
    'name': expected['model'],
    'conv_type': expected['conv_type'],
    'num_classes': expected['num_classes'],
  }
  want = {'params': abstract_params, 'batch_stats': abstract_batch_stats}
  item = {'params': {'student': {part: abstract_params}}}
  if jax.tree.leaves(abstract_batch_stats):
    item['batch_stats'] = {'student': {part: abstract_batch_stats}}
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  try:
    for step in steps:
      try:
        meta = dict(
          manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
          )['meta']
        )
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f'step {step}: metadata unreadable ({e!s:.200})')
        continue
      trained = {k: meta.get('model', {}).get(k) for k in ('name', 'conv_type')}
      trained['num_classes'] = meta.get('num_classes')
      if trained != asked:  # A wrong run, not a damaged one: no fallback.
        raise CheckpointError(
          f'The {name} checkpoint {str(directory)!r} (step {step}) was trained '
          f'as {trained}, but the config asks for a teacher {asked}. Point the '
          'config at the matching run, or change the teacher model settings.'
        )
      try:
        tree = manager.item_metadata(step)['state'].tree
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f'step {step}: state metadata unreadable ({e!s:.200})')
        continue
      try:
        saved = _student_subtree(tree, part)
      except (KeyError, TypeError) as e:
        raise CheckpointError(
          f'The {name} checkpoint {str(directory)!r} has no student model to '
          f'use as a teacher (missing {e}).'
        ) from e
      have_shapes, want_shapes = _describe(saved), _describe(want)
      if have_shapes != want_shapes:
        diffs = sorted(set(have_shapes.items()) ^ set(want_shapes.items()))[:6]
        raise CheckpointError(
          f'The {name} checkpoint {str(directory)!r} does not match the '
          f'teacher architecture of the config ({asked}); first differences '
          f'(path, shape): {diffs}'
        )
      try:
        restored = manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
              item=item,
              restore_args=jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item
              ),
              partial_restore=True,
            )
          ),
        )['state']
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f'step {step}: {type(e).__name__}: {e!s:.200}')
        logging.warning(
          'The %s checkpoint at step %d in %s does not restore (%s); trying '
          'an older step.',
          name,
          step,
          directory,
          e,
        )
        continue
      restored = _student_subtree(restored, part)
      return RestoredTeacher(
        restored['params'],
        restored['batch_stats'],
        step,
        str(directory),
        meta,
      )
  finally:
    manager.close()
  if not steps:
    raise CheckpointError(
      f'The {name} checkpoint directory {str(directory)!r} holds no checkpoint.'
    )
  raise CheckpointError(
    f'No checkpoint of the {name} in {str(directory)!r} restores: '
    f'{"; ".join(failures)}. Re-train the teacher or point the config at '
    'another run.'
  )
