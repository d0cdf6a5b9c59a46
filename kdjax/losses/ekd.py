"""Ensemble knowledge distillation (Asif, Tang, Harrer, ECAI 2020), docs/ekd.md.

Branch k of a K-branch student learns from teacher k mod T through soft
labels and pooled penultimate features; the prediction is the branch mean.
The paper gives no equation for the objective and no code exists, so
``ekd_loss`` is our design. The adapters P_k are
``kdjax.models.connectors.BranchAdapters``, applied by the caller.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses.classification import (
  DEFAULT_TEMPERATURE,
  cross_entropy,
  kd_loss,
)

Array = jax.Array
Features = Union[Array, Sequence[Array]]

# Our defaults: the paper does not report its weights.
DEFAULT_LAMBDA_FEAT = 1.0
DEFAULT_LAMBDA_KD = 1.0


def branch_teacher_pairing(
  num_branches: int, num_teachers: int
) -> Tuple[int, ...]:
  """Teacher index of every branch: branch k learns from teacher k mod T (docs/ekd.md)."""
  if num_branches < 1 or num_teachers < 1:
    raise ValueError(
      f'branch_teacher_pairing: need at least one branch and one teacher, got '
      f'{num_branches} and {num_teachers}'
    )
  return tuple(k % num_teachers for k in range(num_branches))


def ensemble_logits(branch_logits: Array) -> Array:
  """z_ens = (1/K) sum_k z_k: (K, B, C) branch logits -> (B, C) float32 (docs/ekd.md)."""
  return jnp.mean(branch_logits.astype(jnp.float32), axis=0)


def _per_branch(features: Features, count: int, name: str) -> Tuple[Array, ...]:
  """Splits a stacked (N, B, D) array or checks a length-N sequence of (B, D_n) arrays."""
  if len(features) != count:
    raise ValueError(f'ekd_loss: expected {count} {name}, got {len(features)}')
  return tuple(features[n] for n in range(count))


def ekd_loss(
  branch_logits: Array,
  labels: Array,
  branch_feats: Features,
  teacher_logits: Array,
  teacher_feats: Features,
  temperature: float = DEFAULT_TEMPERATURE,
  lambda_feat: float = DEFAULT_LAMBDA_FEAT,
  lambda_kd: float = DEFAULT_LAMBDA_KD,
  label_smoothing: float = 0.0,
) -> Tuple[Array, Dict[str, Array]]:
  """EKD student objective (Asif et al., ECAI 2020; our design, docs/ekd.md).

      L = CE(y, z_ens) + sum_k [ CE(y, z_k)
                                 + lambda_feat * mean_{b,d} (P_k(h_k) - sg(h^T_{k mod T}))^2
                                 + lambda_kd * T^2 KL(softmax(z^T_{k mod T}/T) || softmax(z_k/T)) ]

  Every CE and KL is a batch mean. Teacher logits and features are under
  ``stop_gradient``. K and T come from the static shapes.

  Args:
    branch_logits: (K, B, C) logits of the K branches.
    labels: (B,) integer labels.
    branch_feats: the adapted branch features P_k(h_k): a (K, B, D) array, or
      a length-K sequence of (B, D_{k mod T}) arrays when teachers differ in width.
    teacher_logits: (T, B, C).
    teacher_feats: a (T, B, D) array or a length-T sequence of (B, D_t) arrays.
    temperature, lambda_feat, lambda_kd: T and the weights above (ours: 1, 1).
    label_smoothing: applied to every CE term.

  Returns:
    (total, terms): the float32 scalar objective and a dict of unweighted terms:
    'ce_ensemble'; 'ce', 'feat', 'kd' summed over branches; per-branch
    'ce/k', 'feat/k', 'kd/k'; and 'total'.
  """
  if branch_logits.ndim != 3 or teacher_logits.ndim != 3:
    raise ValueError(
      f'ekd_loss: branch logits {branch_logits.shape} and teacher logits '
      f'{teacher_logits.shape} must be (K, B, C) and (T, B, C)'
    )
  num_branches, num_teachers = branch_logits.shape[0], teacher_logits.shape[0]
  # From static shapes: the pairing is a trace-time constant.
  pairing = np.asarray(branch_teacher_pairing(num_branches, num_teachers))
  branch_feats = _per_branch(branch_feats, num_branches, 'branch features')
  teacher_feats = _per_branch(teacher_feats, num_teachers, 'teacher features')

  ce_ensemble = cross_entropy(
    ensemble_logits(branch_logits), labels, label_smoothing
  )
  ce = jax.vmap(cross_entropy, in_axes=(0, None, None))(
    branch_logits, labels, label_smoothing
  )
  kd = jax.vmap(kd_loss, in_axes=(0, 0, None))(
    branch_logits, teacher_logits[pairing], temperature
  )

  feat = []
  for k, student_feat in enumerate(branch_feats):
    teacher_feat = teacher_feats[pairing[k]]
    if student_feat.shape != teacher_feat.shape:
      raise ValueError(
        f'ekd_loss: adapted features of branch {k} {student_feat.shape} must match '
        f'teacher {pairing[k]} features {teacher_feat.shape}'
      )
    teacher_feat = jax.lax.stop_gradient(teacher_feat).astype(jnp.float32)
    feat.append(
      jnp.mean(jnp.square(student_feat.astype(jnp.float32) - teacher_feat))
    )
  feat = jnp.stack(feat)

  total = ce_ensemble + jnp.sum(ce + lambda_feat * feat + lambda_kd * kd)
  terms = {
    'ce_ensemble': ce_ensemble,
    'ce': jnp.sum(ce),
    'feat': jnp.sum(feat),
    'kd': jnp.sum(kd),
    'total': total,
  }
  for k in range(num_branches):
    terms.update({f'ce/{k}': ce[k], f'feat/{k}': feat[k], f'kd/{k}': kd[k]})
  return total, terms
