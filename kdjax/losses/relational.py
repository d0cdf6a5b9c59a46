"""Relational baselines: SP, CC, RKD and PKT (docs/losses.md).

Pure functions; float32 inside, the teacher under ``stop_gradient``, a float32
scalar out. Features are NHWC, embeddings (B, D); both are flattened per
example where the reference flattens them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# torch.nn.functional.normalize's default eps.
_NORMALIZE_EPS = 1e-12
# RepDistiller RKDLoss.pdist clamps the squared distance at this value.
_PDIST_EPS = 1e-12
# RepDistiller PKT.cosine_similarity_loss eps.
_PKT_EPS = 1e-7


def _flatten(x: Array) -> Array:
  return x.astype(jnp.float32).reshape(x.shape[0], -1)


def _normalize(x: Array, axis: int = -1) -> Array:
  """x / max(||x||_2, 1e-12) along ``axis``, finite gradient at x = 0.

  torch.nn.functional.normalize's value; the squared norm (not the norm) is
  clamped, so the gradient at x = 0 is finite where ||x||'s would be NaN.
  Shared by the feature and Jacobian losses.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORMALIZE_EPS**2))


def _check_batch(student: Array, teacher: Array, name: str) -> None:
  if student.shape[0] != teacher.shape[0]:
    raise ValueError(
      f'{name}: student {student.shape} and teacher {teacher.shape} must '
      'have the same batch size'
    )


def sp_loss(student_features: Array, teacher_features: Array) -> Array:
  """Similarity-preserving KD (Tung & Mori, ICCV 2019), one pair.

      G = normalize_rows(F F^T),  F = features flattened to (B, D)
      loss = sum_{i, j} (G^t_ij - G^s_ij)^2 / B^2

  Source: HobbitLong/RepDistiller, distiller_zoo/SP.py ``similarity_loss``
  (row normalisation by F.normalize, eps 1e-12). ``student_features`` and
  ``teacher_features``: (B, ...) each, any sizes past the batch. Reduction:
  the squared Frobenius norm divided by B^2.
  """
  _check_batch(student_features, teacher_features, 'sp_loss')
  fs = _flatten(student_features)
  ft = _flatten(jax.lax.stop_gradient(teacher_features))
  gs = _normalize(fs @ fs.T)
  gt = _normalize(ft @ ft.T)
  return jnp.sum(jnp.square(gt - gs)) / fs.shape[0] ** 2


def cc_loss(
  student_embedding: Array,
  teacher_embedding: Array,
  *,
  train_teacher_embedding: bool = False,
) -> Array:
  """Correlation congruence, RepDistiller's form (Peng et al., ICCV 2019).

      delta_b = |e^s_b - e^t_b|                            (B, D)
      loss = mean_{b < B-1} sum_d delta_{b, d} * delta_{b+1, d}

  Source: HobbitLong/RepDistiller, distiller_zoo/CC.py ``Correlation``. The
  paper's loss compares Gaussian-kernel correlation matrices of the batch;
  this is the code RepDistiller's results come from. Reduction: sum over
  features, mean over the B - 1 consecutive pairs. ``student_embedding``,
  ``teacher_embedding`` (B, D). In RepDistiller both sides are outputs of
  trainable linear embeddings and the teacher-side one learns from this loss;
  ``train_teacher_embedding=True`` lets the gradient reach
  ``teacher_embedding`` (the default stops it, as for every teacher input).
  """
  if student_embedding.shape != teacher_embedding.shape:
    raise ValueError(
      f'cc_loss: student {student_embedding.shape} and teacher '
      f'{teacher_embedding.shape} embeddings must have the same shape'
    )
  if not train_teacher_embedding:
    teacher_embedding = jax.lax.stop_gradient(teacher_embedding)
  delta = jnp.abs(_flatten(student_embedding) - _flatten(teacher_embedding))
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=-1))


def _smooth_l1(x: Array, y: Array) -> Array:
  """torch's smooth_l1_loss, beta = 1, mean over elements."""
  d = jnp.abs(x - y)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * jnp.square(x - y), d - 0.5))


def _pairwise_distances(e: Array) -> Array:
  """RKD pdist: sqrt(max(||e_i - e_j||^2, 1e-12)), 0 on the diagonal."""
  sq = jnp.sum(jnp.square(e[:, None, :] - e[None, :, :]), axis=-1)
  dist = jnp.sqrt(jnp.maximum(sq, _PDIST_EPS))
  return jnp.where(jnp.eye(e.shape[0], dtype=jnp.bool_), 0.0, dist)


def _normalized_distances(e: Array) -> Array:
  d = _pairwise_distances(e)
  positive = d > 0
  mean = jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive)
  return d / mean


def _angles(e: Array) -> Array:
  """cos of the angle at e_i between e_j and e_k, (B, B, B) flattened."""
  diff = _normalize(e[None, :, :] - e[:, None, :])  # diff[i, j] = e_j - e_i
  return jnp.einsum('ijd,ikd->ijk', diff, diff).reshape(-1)


def rkd_loss(
  student_embedding: Array,
  teacher_embedding: Array,
  *,
  distance_weight: float = 25.0,
  angle_weight: float = 50.0,
) -> Array:
  """Relational KD (Park et al., CVPR 2019): distance and angle terms.

      d_ij = ||e_i - e_j|| / mean_{d_kl > 0} d_kl          (d_ii = 0)
      a_ijk = <n(e_j - e_i), n(e_k - e_i)>,  n(x) = x / max(||x||, 1e-12)
      loss = w_d * smoothL1(d^s, d^t) + w_a * smoothL1(a^s, a^t)

  Source: HobbitLong/RepDistiller, distiller_zoo/RKD.py ``RKDLoss`` (squared
  distance clamped at 1e-12 before the square root). Reduction: smooth L1
  (beta 1) averaged over the B^2 distances and the B^3 angles. Defaults
  w_d = 25, w_a = 50: RepDistiller's (the paper's CIFAR-100 weights).
  ``student_embedding``, ``teacher_embedding``: (B, ...), flattened per
  example. The normalisation is guarded so that the zero differences on the
  diagonal (e_i - e_i) have finite gradients.
  """
  _check_batch(student_embedding, teacher_embedding, 'rkd_loss')
  es = _flatten(student_embedding)
  et = _flatten(jax.lax.stop_gradient(teacher_embedding))
  loss_d = _smooth_l1(_normalized_distances(es), _normalized_distances(et))
  loss_a = _smooth_l1(_angles(es), _angles(et))
  return distance_weight * loss_d + angle_weight * loss_a


def _pkt_probabilities(e: Array) -> Array:
  sq = jnp.sum(jnp.square(e), axis=-1, keepdims=True)
  # ||e||, with a finite gradient at a zero row (torch's is NaN there).
  norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
  e = e / (norm + _PKT_EPS)
  # The reference replaces NaN (an inf entry over an inf norm) by 0.
  e = jnp.where(jnp.isnan(e), 0.0, e)
  sim = (e @ e.T + 1.0) / 2.0
  return sim / jnp.sum(sim, axis=-1, keepdims=True)


def pkt_loss(student_embedding: Array, teacher_embedding: Array) -> Array:
  """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

      n_b = e_b / (||e_b|| + 1e-7)      (NaN entries set to 0)
      P_ij = (1 + <n_i, n_j>) / 2,  normalised over j
      loss = mean_{i, j} P^t_ij * log((P^t_ij + 1e-7) / (P^s_ij + 1e-7))

  Source: HobbitLong/RepDistiller, distiller_zoo/PKT.py
  ``cosine_similarity_loss`` (from passalis/probabilistic_kt). Reduction: a
  mean over all B^2 entries, i.e. the batch-mean KL divided by B.
  ``student_embedding``, ``teacher_embedding``: (B, ...), flattened per
  example.
  """
  _check_batch(student_embedding, teacher_embedding, 'pkt_loss')
  ps = _pkt_probabilities(_flatten(student_embedding))
  pt = _pkt_probabilities(_flatten(jax.lax.stop_gradient(teacher_embedding)))
  return jnp.mean(pt * (jnp.log(pt + _PKT_EPS) - jnp.log(ps + _PKT_EPS)))
