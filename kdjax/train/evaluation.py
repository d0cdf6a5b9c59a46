"""Evaluation: precise-BN recalibration, accuracy per head, and --mode=eval.

With ``eval_bn_recalibration_batches`` the running BN statistics are replaced
by their mean over that many train batches with the current weights
("precise BN") before the accuracies are measured.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.train import checkpointing, plan
from kdjax.train import setup as run_setup
from kdjax.train import step as run_step
from kdjax.train import mesh as kd_mesh


def recalibrate_batch_stats(
  estimate_fn, state, frozen, train_source, sharding, num_batches
):
  """Replaces running BN statistics by their mean over ``num_batches`` train batches.

  "Precise BN": with the current weights, instead of an average over weights
  that kept changing. It matters for short runs of adder nets, whose BN inputs
  move fast; the training state itself is left untouched. Leaves other than
  BN statistics (CRD's memory bank) are kept bit for bit.
  """
  total, count = None, 0
  for batch in train_source.epoch(0):
    stats = estimate_fn(state, frozen, kd_mesh.to_global(batch, sharding))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
    if count == num_batches:
      break

  def mean(path, summed, old):
    if getattr(path[-1], 'key', None) in run_step.BN_STATISTICS:
      return summed / count
    return old

  return state.replace(
    batch_stats=jax.tree.map_with_path(mean, total, state.batch_stats)
  )


def evaluate_heads(
  eval_fn, state, frozen, eval_source, sharding
) -> Dict[str, float]:
  totals, count = None, 0.0
  for batch in eval_source.epoch(0):
    correct, n = eval_fn(state, frozen, kd_mesh.to_global(batch, sharding))
    correct = jax.device_get(correct)
    totals = (
      correct if totals is None else {k: totals[k] + correct[k] for k in totals}
    )
    count += float(n)
  return {name: float(v) / max(count, 1.0) for name, v in totals.items()}


def evaluate_state(
  config,
  run: run_setup.RunSetup,
  fns: run_step.RunFunctions,
  state,
  frozen,
  recalibrate=True,
):
  """Eval accuracy per head, after precise-BN recalibration when configured.

  Returns (eval_state, batch_stats_source, accuracies): eval_state is `state`
  with the BN statistics the accuracies were measured with.
  """
  num_batches = config.get('eval_bn_recalibration_batches', 0)
  stats_source = 'running'
  if num_batches and recalibrate:
    state = recalibrate_batch_stats(
      fns.estimate,
      state,
      frozen,
      run.train_source,
      run.batch_sharding,
      num_batches,
    )
    stats_source = f'precise_bn({num_batches} batches)'
  results = evaluate_heads(
    fns.eval, state, frozen, run.eval_source, run.batch_sharding
  )
  return state, stats_source, results


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Restores the latest checkpoint of ``workdir`` and reports eval accuracy per head.

  ``config`` must have passed kdjax.validation.validate (train.evaluate does
  that first).

  Evaluates as training did: teachers pre-trained in-process are read from
  ``workdir/teachers``, and precise-BN recalibration runs when configured and
  the checkpoint does not already hold precise-BN statistics. Writes nothing.
  """
  latest_step, _ = checkpointing.read_latest_meta(workdir)
  if latest_step is None:
    raise checkpointing.CheckpointError(
      f'No checkpoint to evaluate in {workdir}: train first with the same '
      f'--config and --workdir={workdir} (without --mode=eval).'
    )
  config = plan.build(config, workdir)[-1].config  # Teachers' dirs filled.
  run = run_setup.setup(config)
  with jax.set_mesh(run.mesh):
    state, meta = checkpointing.restore_run_read_only(
      workdir, run.abstract_state
    )
    frozen = jax.device_put(run.frozen, run.replicated)
    recorded = meta.get('batch_stats_source', 'running')
    # A final checkpoint already holds the precise-BN statistics it reported.
    _, stats_source, results = evaluate_state(
      config,
      run,
      run_step.compile_functions(config, run.method, run.optimizers),
      state,
      frozen,
      recalibrate=not str(recorded).startswith('precise_bn'),
    )
    if stats_source == 'running':
      stats_source = recorded
  return {
    'step': meta.get('step'),
    'eval_accuracy': results,
    'batch_stats': stats_source,
  }
