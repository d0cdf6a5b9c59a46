"""Logit baselines: DKD, DIST and logit-standardised KD (docs/losses.md).

Pure functions of logits (B, C) in any float dtype; float32 inside, the
teacher under ``stop_gradient``, a float32 scalar out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# mdistiller's CIFAR-100 DKD recipe (configs/cifar100/dkd/*.yaml).
DEFAULT_DKD_ALPHA = 1.0
DEFAULT_DKD_BETA = 8.0
DEFAULT_DKD_TEMPERATURE = 4.0
# mdistiller subtracts 1000 from the target logit (after dividing by T) to
# drop it from the non-target softmax.
_DKD_MASK_SHIFT = 1000.0
# torch.nn.functional.cosine_similarity's default in torchdistill's DISTLoss.
_DIST_EPS = 1e-8
# torchdistill LogitStdKDLoss: added to the (unbiased) standard deviation.
_LOGIT_STD_EPS = 1e-7


def _check_logits(student_logits: Array, teacher_logits: Array, name: str):
  if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f'{name}: student logits {student_logits.shape} and teacher logits '
      f'{teacher_logits.shape} must be the same (B, C) shape'
    )


def _xlogy_kl(p: Array, log_p: Array, log_q: Array) -> Array:
  """sum p (log p - log q) with 0 log 0 = 0 (torch's kl_div), last axis."""
  return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def _binary_log_probs(log_probs: Array, gt_mask: Array) -> Array:
  """log [p_gt, 1 - p_gt] from log-probabilities over classes, (B, 2)."""
  log_gt = jnp.sum(jnp.where(gt_mask, log_probs, 0.0), axis=-1)
  log_other = jax.nn.logsumexp(jnp.where(gt_mask, -jnp.inf, log_probs), -1)
  return jnp.stack([log_gt, log_other], axis=-1)


def dkd_loss(
  student_logits: Array,
  teacher_logits: Array,
  labels: Array,
  *,
  alpha: float = DEFAULT_DKD_ALPHA,
  beta: float = DEFAULT_DKD_BETA,
  temperature: float = DEFAULT_DKD_TEMPERATURE,
) -> Array:
  """Decoupled KD (Zhao et al., CVPR 2022), mdistiller ``dkd_loss``.

      p = softmax(z / T),  b = [p_y, 1 - p_y]             (target vs the rest)
      TCKD = T^2 / B * sum_b KL(b^t || b^s)
      p~ = softmax(z / T - 1000 [c == y])                 (non-target classes)
      NCKD = T^2 / B * sum_b KL(p~^t || p~^s)
      loss = alpha * TCKD + beta * NCKD

  Source: megvii-research/mdistiller, mdistiller/distillers/DKD.py
  ``dkd_loss``; its warm-up factor min(epoch / 20, 1) lives in the method,
  not here. ``student_logits``, ``teacher_logits`` (B, C); ``labels`` (B,)
  integer. Reduction: KL summed over classes, mean over the batch. Defaults
  are mdistiller's CIFAR-100 ones (the paper tunes beta per teacher).
  """
  _check_logits(student_logits, teacher_logits, 'dkd_loss')
  temperature = jnp.asarray(temperature, jnp.float32)
  zs = student_logits.astype(jnp.float32) / temperature
  zt = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature
  gt_mask = jax.nn.one_hot(labels, zs.shape[-1], dtype=jnp.bool_)
  # Target vs non-target masses, in log space (the reference takes the log of
  # the summed probabilities; the same value, without underflow).
  log_bs = _binary_log_probs(jax.nn.log_softmax(zs, -1), gt_mask)
  log_bt = _binary_log_probs(jax.nn.log_softmax(zt, -1), gt_mask)
  tckd = jnp.mean(_xlogy_kl(jnp.exp(log_bt), log_bt, log_bs))
  shift = _DKD_MASK_SHIFT * gt_mask.astype(jnp.float32)
  log_ps = jax.nn.log_softmax(zs - shift, -1)
  log_pt = jax.nn.log_softmax(zt - shift, -1)
  nckd = jnp.mean(_xlogy_kl(jnp.exp(log_pt), log_pt, log_ps))
  return temperature**2 * (alpha * tckd + beta * nckd)


def _pearson_rows(a: Array, b: Array) -> Array:
  """Per-row cosine of the centred rows, torch's cosine_similarity eps."""
  a = a - jnp.mean(a, axis=-1, keepdims=True)
  b = b - jnp.mean(b, axis=-1, keepdims=True)
  # Each norm clamped at eps, the squared norm clamped at eps^2 so that the
  # gradient of a constant row stays finite.
  inv_a = jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, -1), _DIST_EPS**2))
  inv_b = jax.lax.rsqrt(jnp.maximum(jnp.sum(b * b, -1), _DIST_EPS**2))
  return jnp.sum(a * b, axis=-1) * inv_a * inv_b


def dist_loss(
  student_logits: Array,
  teacher_logits: Array,
  *,
  beta: float = 1.0,
  gamma: float = 1.0,
  temperature: float = 1.0,
) -> Array:
  """DIST (Huang et al., NeurIPS 2022), torchdistill ``DISTLoss``.

      Y = softmax(z / tau) over classes                           (B, C)
      rho(u, v) = cos(u - mean u, v - mean v)                     (Pearson)
      inter = 1 - mean_b rho(Y^s_b, Y^t_b)                        (rows)
      intra = 1 - mean_c rho(Y^s_{:, c}, Y^t_{:, c})              (columns)
      loss = tau^2 * (beta * inter + gamma * intra)

  Source: yoshitomo-matsubara/torchdistill, torchdistill/losses/mid_level.py
  ``DISTLoss`` (after hunto/image_classification_sota dist_kd.py); cosine with
  each norm clamped at 1e-8. ``student_logits``, ``teacher_logits`` (B, C).
  Reduction: means over rows and over columns. Defaults: torchdistill's.
  """
  _check_logits(student_logits, teacher_logits, 'dist_loss')
  temperature = jnp.asarray(temperature, jnp.float32)
  ys = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, -1)
  yt = jax.nn.softmax(
    jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, -1
  )
  inter = 1.0 - jnp.mean(_pearson_rows(ys, yt))
  intra = 1.0 - jnp.mean(_pearson_rows(ys.T, yt.T))
  return temperature**2 * (beta * inter + gamma * intra)


def _standardize(logits: Array) -> Array:
  mean = jnp.mean(logits, axis=-1, keepdims=True)
  # torch's Tensor.std: unbiased (C - 1), plus eps after the square root.
  var = jnp.sum(jnp.square(logits - mean), -1, keepdims=True) / (
    logits.shape[-1] - 1
  )
  # sqrt at 0 (constant logits) has an infinite derivative; the where keeps
  # the gradient finite and the value (0) unchanged.
  std = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)
  return (logits - mean) / (_LOGIT_STD_EPS + std)


def logit_std_kd_loss(
  student_logits: Array,
  teacher_logits: Array,
  *,
  temperature: float = 2.0,
) -> Array:
  """KD on standardised logits (Sun et al., CVPR 2024), torchdistill.

      Z(z) = (z - mean_c z) / (1e-7 + std_c z)        (std unbiased, C - 1)
      loss = T^2 * mean_b KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))

  Source: yoshitomo-matsubara/torchdistill, torchdistill/losses/mid_level.py
  ``LogitStdKDLoss`` (its soft term; the cross-entropy it can add is the
  caller's). torchdistill has no default temperature and multiplies by T^2
  only when it adds the hard loss; here T^2 is always applied and T = 2 is
  kdjax's default.
  ``student_logits``, ``teacher_logits`` (B, C). Reduction: KL summed over
  classes, mean over the batch ('batchmean').
  """
  _check_logits(student_logits, teacher_logits, 'logit_std_kd_loss')
  temperature = jnp.asarray(temperature, jnp.float32)
  zs = _standardize(student_logits.astype(jnp.float32)) / temperature
  zt = (
    _standardize(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32))
    / temperature
  )
  log_ps = jax.nn.log_softmax(zs, -1)
  log_pt = jax.nn.log_softmax(zt, -1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature**2 * jnp.mean(kl)
