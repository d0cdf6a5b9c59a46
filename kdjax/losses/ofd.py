"""Overhaul of feature distillation (Heo et al., ICCV 2019), docs/ofd.md.

The margin, the partial L2 distance and the stage-weighted objective follow
the paper's Sec. 3 and the official code (clovaai/overhaul-distillation,
CIFAR-100/distiller.py), which is the reference where the two differ. The
connector r_i is ``kdjax.models.connectors.FeatureConnector``. Features are
NHWC; a margin of shape (C,) broadcasts over the last axis.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from kdjax.losses.classification import cross_entropy

Array = jax.Array

DEFAULT_ALPHA_CIFAR = 1e-3
DEFAULT_ALPHA_IMAGENET = 1e-4  # Smaller still for very different networks.
# Official code: when less than 0.1% of the mass is negative, the truncated
# mean is unreliable and the margin falls back to -3 |gamma|.
MARGIN_CDF_THRESHOLD = 1e-3
FALLBACK_STDS = 3.0
# |gamma| is floored here so that beta / |gamma| stays finite for gamma = 0,
# where the formula then tends to the right limit (beta for beta < 0, else 0).
_MIN_SCALE = 1e-12


def ofd_margin(bn_scale: Array, bn_bias: Array) -> Array:
  """Margin of the margin ReLU (Heo et al., ICCV 2019, Sec. 3; code ``get_margin_from_BN``).

  The teacher's pre-ReLU response of a channel is modelled as N(beta, gamma^2),
  gamma and beta the scale and bias of the BN that produces it; the margin is
  the mean of its negative part:

      m = E[x | x < 0] = beta - |gamma| * phi(beta / |gamma|) / Phi(-beta / |gamma|)
      m = -3 |gamma|                             where Phi(-beta / |gamma|) <= 0.001

  phi, Phi: standard normal pdf and cdf. ``bn_scale`` gamma (C,), any sign;
  ``bn_bias`` beta, same shape. Returns (C,) float32, elementwise; no
  ``stop_gradient`` here (``ofd_distance`` applies it).
  """
  gamma = jnp.asarray(bn_scale, jnp.float32)
  beta = jnp.asarray(bn_bias, jnp.float32)
  std = jnp.abs(gamma)
  z = beta / jnp.maximum(std, _MIN_SCALE)
  use_truncated_mean = norm.cdf(-z) > MARGIN_CDF_THRESHOLD
  # The unused branch is evaluated at z = 0 so that neither it nor its
  # gradient can produce NaN through jnp.where.
  safe_z = jnp.where(use_truncated_mean, z, 0.0)
  truncated_mean = beta - std * norm.pdf(safe_z) / norm.cdf(-safe_z)
  return jnp.where(use_truncated_mean, truncated_mean, -FALLBACK_STDS * std)


def ofd_distance(
  student_feat: Array, teacher_feat: Array, margin: Array
) -> Array:
  """Partial L2 distance to the margin-ReLU'd teacher (Heo et al. 2019, Sec. 3).

  Official code: ``distillation_loss``.

      t_m  = max(sg(t), sg(m))                         (margin ReLU, m per channel)
      loss = (1 / B) * sum_{b,h,w,c} [s > t_m  or  t_m > 0] * (s - t_m)^2

  ``student_feat`` s (B, ..., C): the connector output r(F_s), pre-ReLU;
  ``teacher_feat`` t: the teacher's pre-ReLU feature, same shape; ``margin``
  (C,), broadcast over the channel axis. Returns a float32 scalar: the sum over
  all elements divided by the batch size B.
  """
  if student_feat.shape != teacher_feat.shape:
    raise ValueError(
      f'ofd_distance: connector output {student_feat.shape} and teacher feature '
      f'{teacher_feat.shape} must have the same shape'
    )
  margin = jnp.asarray(margin)
  if margin.shape not in ((teacher_feat.shape[-1],), ()):
    raise ValueError(
      f'ofd_distance: margin {margin.shape} must be per channel, '
      f'({teacher_feat.shape[-1]},)'
    )
  student = student_feat.astype(jnp.float32)
  teacher = jax.lax.stop_gradient(teacher_feat).astype(jnp.float32)
  margin = jax.lax.stop_gradient(margin).astype(jnp.float32)
  target = jnp.maximum(teacher, margin)
  # Where the teacher is "off" (t_m <= 0) and the student already below it,
  # there is neither loss nor gradient.
  mask = (student > target) | (target > 0)
  sq_err = jnp.where(mask, jnp.square(student - target), 0.0)
  return jnp.sum(sq_err) / student_feat.shape[0]


def ofd_stage_weights(num_stages: int) -> Tuple[float, ...]:
  """1 / 2^(N - i - 1) for stage i = 0..N-1 (official distiller.py)."""
  return tuple(1.0 / 2 ** (num_stages - i - 1) for i in range(num_stages))


def ofd_feature_loss(
  student_feats: Sequence[Array],
  teacher_feats: Sequence[Array],
  margins: Sequence[Array],
) -> Array:
  """Stage-weighted OFD distance (official distiller.py).

      loss = sum_{i=0}^{N-1} ofd_distance(r_i(F_s^i), F_t^i, m_i) / 2^(N - i - 1)

  Stages are ordered shallow to deep. Returns a float32 scalar.
  """
  if not len(student_feats) == len(teacher_feats) == len(margins):
    raise ValueError(
      f'ofd_feature_loss: got {len(student_feats)} student, {len(teacher_feats)} '
      f'teacher features and {len(margins)} margins'
    )
  weights = ofd_stage_weights(len(student_feats))
  return sum(
    (
      w * ofd_distance(s, t, m)
      for w, s, t, m in zip(weights, student_feats, teacher_feats, margins)
    ),
    jnp.zeros((), jnp.float32),
  )


def ofd_total(
  student_logits: Array,
  labels: Array,
  student_feats: Sequence[Array],
  teacher_feats: Sequence[Array],
  margins: Sequence[Array],
  alpha: float = DEFAULT_ALPHA_CIFAR,
  label_smoothing: float = 0.0,
) -> Tuple[Array, Dict[str, Array]]:
  """OFD student objective (Heo et al., ICCV 2019, Sec. 3; docs/ofd.md).

      L = CE(y, z_s) + alpha * sum_i d_p(sigma_m(F_t^i), r_i(F_s^i)) / 2^(N - i - 1) / B

  alpha = 1e-3 on CIFAR (default), 1e-4 on ImageNet. The 1 / B is inside
  ``ofd_distance``.

  Returns:
    (total, terms): float32 scalar and a dict with 'ce', 'ofd' (the weighted
    stage sum before alpha), the unweighted per-stage 'ofd/0', ..., and 'total'.
  """
  if not len(student_feats) == len(teacher_feats) == len(margins):
    raise ValueError(
      f'ofd_total: got {len(student_feats)} student, {len(teacher_feats)} '
      f'teacher features and {len(margins)} margins'
    )
  weights = ofd_stage_weights(len(student_feats))
  terms = {
    f'ofd/{i}': ofd_distance(s, t, m)
    for i, (s, t, m) in enumerate(zip(student_feats, teacher_feats, margins))
  }
  feature_loss = sum(
    (w * d for w, d in zip(weights, terms.values())), jnp.zeros((), jnp.float32)
  )
  ce = cross_entropy(student_logits, labels, label_smoothing)
  total = ce + alpha * feature_loss
  terms.update(ce=ce, ofd=feature_loss, total=total)
  return total, terms
