"""FitNets and attention transfer (docs/baselines.md). NHWC, float32 inside."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Zagoruyko & Komodakis use beta = 1e3 and weight each position's loss by beta / 2
# (RepDistiller folds the 1/2 away and uses 1e3).
DEFAULT_AT_WEIGHT = 1000.0 / 2.0
DEFAULT_AT_POWER = 2.0
# F.normalize's default: a map that is exactly zero stays zero instead of NaN.
_NORM_EPS = 1e-12


def fitnet_loss(regressed_student_feat: Array, teacher_feat: Array) -> Array:
  """FitNets hint loss (Romero et al., ICLR 2015, Eq. 3; docs/baselines.md).

      loss = mean_{b, h, w, c} (r(F_s) - sg(F_t))^2

  ``regressed_student_feat`` (B, ..., C): the student's hint layer through the
  regressor r (a ``kdjax.models.connectors.FeatureConnector`` the caller
  applies); ``teacher_feat``: same shape. Returns a float32 scalar, the mean
  over every element.
  """
  if regressed_student_feat.shape != teacher_feat.shape:
    raise ValueError(
      f'fitnet_loss: regressed student feature {regressed_student_feat.shape} '
      f'and teacher feature {teacher_feat.shape} must have the same shape'
    )
  teacher_feat = jax.lax.stop_gradient(teacher_feat).astype(jnp.float32)
  diff = regressed_student_feat.astype(jnp.float32) - teacher_feat
  # A mean over every element (RepDistiller's nn.MSELoss), not the paper's
  # 1/2 ||.||^2 summed per example, so that the usual hint weight 100 carries
  # over.
  return jnp.mean(jnp.square(diff))


def attention_map(feat: Array, power: float = DEFAULT_AT_POWER) -> Array:
  """Spatial attention map (Zagoruyko & Komodakis, ICLR 2017, Sec. 3.1, Eq. 2).

      Q_b     = vec( mean_c |F_b[:, :, c]|^p )        shape (H * W,)
      at(F)_b = Q_b / max(||Q_b||_2, 1e-12)

  ``feat`` (B, H, W, C); ``power`` p, 2 as in the paper. Returns (B, H * W)
  float32, unit L2 norm per example.
  """
  if feat.ndim != 4:
    raise ValueError(
      f'attention_map: expects NHWC features, got shape {feat.shape}'
    )
  feat = feat.astype(jnp.float32)
  # |F|^2 is written as F * F so that its gradient is defined at F = 0.
  energy = jnp.square(feat) if power == 2 else jnp.abs(feat) ** power
  # The channel mean (RepDistiller) and the paper's channel sum differ by a
  # factor C that the L2 normalisation removes.
  q = jnp.mean(energy, axis=-1).reshape(feat.shape[0], -1)
  # Clamping the squared norm (not the norm) keeps the gradient finite for an all-zero map.
  sq_norm = jnp.sum(jnp.square(q), axis=-1, keepdims=True)
  return q * jax.lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def attention_transfer_loss(
  student_feat: Array, teacher_feat: Array, power: float = DEFAULT_AT_POWER
) -> Array:
  """Attention transfer loss at one position (Zagoruyko & Komodakis 2017, Eq. 2).

      loss = mean_{b, j} (at(F_s)_{b, j} - at(sg(F_t))_{b, j})^2
           = mean_b ||at_s - at_t||_2^2 / (H W)

  The official-code / RepDistiller form, not the paper's unsquared norm
  (docs/baselines.md); the beta / 2 weight is applied by
  ``attention_transfer_total``. ``student_feat`` (B, H, W, C_s) and
  ``teacher_feat`` (B, H, W, C_t): channel counts may differ, batch and spatial
  sizes must match (else ValueError). ``power``: p of the attention map.
  Returns a float32 scalar.
  """
  if student_feat.ndim != 4 or teacher_feat.ndim != 4:
    raise ValueError(
      f'attention_transfer_loss: expects NHWC features, got {student_feat.shape} '
      f'and {teacher_feat.shape}'
    )
  if student_feat.shape[:3] != teacher_feat.shape[:3]:
    raise ValueError(
      'attention_transfer_loss: batch and spatial sizes must match, got student '
      f'{student_feat.shape[:3]} and teacher {teacher_feat.shape[:3]} (B, H, W); '
      'pool the larger feature map first'
    )
  teacher_feat = jax.lax.stop_gradient(teacher_feat)
  diff = attention_map(student_feat, power) - attention_map(teacher_feat, power)
  return jnp.mean(jnp.square(diff))


def attention_transfer_total(
  student_feats: Sequence[Array],
  teacher_feats: Sequence[Array],
  weight: float = DEFAULT_AT_WEIGHT,
  power: float = DEFAULT_AT_POWER,
) -> Tuple[Array, Dict[str, Array]]:
  """Attention transfer summed over positions (Zagoruyko & Komodakis, Eq. 2).

      loss = sum_j (beta / 2) * attention_transfer_loss(F_s^j, F_t^j)

  Positions j are the distilled layers (e.g. every stage's output); the
  default beta / 2 = 500 is the paper's (RepDistiller uses 1000).

  Returns:
    (total, terms): the weighted float32 scalar and the unweighted per-position
    losses as 'at/0', 'at/1', ..., plus 'total'.
  """
  if len(student_feats) != len(teacher_feats):
    raise ValueError(
      f'attention_transfer_total: {len(student_feats)} student positions vs '
      f'{len(teacher_feats)} teacher positions'
    )
  terms = {
    f'at/{j}': attention_transfer_loss(s, t, power)
    for j, (s, t) in enumerate(zip(student_feats, teacher_feats))
  }
  total = weight * sum(terms.values(), jnp.zeros((), jnp.float32))
  terms['total'] = total
  return total, terms
