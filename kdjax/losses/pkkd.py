"""Progressive kernel-based knowledge distillation (Xu et al., NeurIPS 2020).

Our reconstruction, every choice a knob (docs/pkkd.md): Gaussian kernel
features h of the CNN teacher's conv layers, Laplace kernel features g of the
ANN student's adder layers, each with a per-layer batch-mean bandwidth, a
feature loss sum_m mean((rho_m(g_m) - sg(h_m))^2) and the student objective
CE + alpha * KD + beta * feature loss (alpha = beta = 5 in the paper).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from kdjax.losses.classification import (
  DEFAULT_TEMPERATURE,
  cross_entropy,
  kd_loss,
)
from kdjax.ops import filter_sq_norms, patch_sq_norms

Array = jax.Array
PyTree = Any

DEFAULT_SIGMA_SCALE = 1.0
DEFAULT_ALPHA = 5.0
DEFAULT_BETA = 5.0
# Floor of the batch-mean distance: a layer whose patches all equal its
# filters would otherwise get sigma = 0 and 0 / 0 in the exponent.
_MIN_MEAN_DISTANCE = 1e-12


def gaussian_sq_distance(
  conv_out: Array, patch_energy: Array, filter_sq_norm: Array
) -> Array:
  """||x_p - f_o||^2 from a conv output (docs/pkkd.md), elementwise.

      d2 = max(||x_p||^2 + ||f_o||^2 - 2 x_p . f_o, 0)

  ``conv_out`` (B, H, W, O) is the raw conv output x_p . f_o (no bias, pre-BN),
  ``patch_energy`` (B, H, W, 1) from ``patch_sq_norms``, ``filter_sq_norm``
  (O,) from ``filter_sq_norms``. Returns (B, H, W, O) float32.
  """
  sq_dist = (
    patch_energy.astype(jnp.float32)
    + filter_sq_norm.astype(jnp.float32)
    - 2.0 * conv_out.astype(jnp.float32)
  )
  # The clamp removes the small negative values that cancellation leaves when
  # a patch is close to a filter.
  return jnp.maximum(sq_dist, 0.0)


def gaussian_kernel_sigma(
  sq_distance: Array, sigma_scale: float = DEFAULT_SIGMA_SCALE
) -> Array:
  """Per-layer Gaussian bandwidth (docs/pkkd.md): a float32 scalar.

      sigma_c = sqrt(s * sg(mean d2) / 2),   i.e.  2 sigma_c^2 = s * mean d2

  Mean over every element (batch, positions, channels); s = ``sigma_scale``.
  """
  # Distances grow with k*k*C_in (about 2 K for the squared L2 of N(0, 1)
  # data, K = 3*3*512 = 4608 in a ResNet-18 stage 4), so a fixed sigma would
  # send the kernel to 0. With sigma tied to the mean, the kernel is exp(-1/s)
  # at the mean distance, 1 at 0, and underflows float32 only beyond about
  # 87 s times the mean. sg: the network must not lower the loss by moving
  # the bandwidth.
  mean_sq_dist = jnp.mean(lax.stop_gradient(sq_distance).astype(jnp.float32))
  return jnp.sqrt(
    sigma_scale * jnp.maximum(mean_sq_dist, _MIN_MEAN_DISTANCE) / 2.0
  )


def gaussian_kernel_features(
  conv_out: Array, patch_energy: Array, filter_sq_norm: Array, sigma: Array
) -> Array:
  """Gaussian kernel features of a conv layer (our reconstruction, docs/pkkd.md).

      h = exp(-max(||x_p||^2 + ||f_o||^2 - 2 x_p . f_o, 0) / (2 sigma^2))

  Arguments as ``gaussian_sq_distance``; ``sigma`` a scalar or broadcastable to
  (B, H, W, O). Returns (B, H, W, O) float32 in (0, 1], elementwise; with
  ``gaussian_kernel_sigma`` it does not underflow.
  """
  sq_dist = gaussian_sq_distance(conv_out, patch_energy, filter_sq_norm)
  sigma = jnp.asarray(sigma, jnp.float32)
  return jnp.exp(-sq_dist / (2.0 * jnp.square(sigma)))


def laplace_kernel_sigma(
  adder_out: Array, sigma_scale: float = DEFAULT_SIGMA_SCALE
) -> Array:
  """Per-layer Laplace bandwidth (docs/pkkd.md): a float32 scalar.

      sigma_a = s * sg(mean ||x_p - f_o||_1) = s * sg(mean(-Y))

  Mean over every element of the adder output Y; s = ``sigma_scale``.
  """
  # As for the Gaussian: the kernel is exp(-1/s) at the mean L1 distance; sg
  # so that the bandwidth is no way to lower the loss.
  mean_l1_dist = jnp.mean(-lax.stop_gradient(adder_out).astype(jnp.float32))
  return sigma_scale * jnp.maximum(mean_l1_dist, _MIN_MEAN_DISTANCE)


def laplace_kernel_features(adder_out: Array, sigma: Array) -> Array:
  """Laplace kernel features of an adder layer (our reconstruction, docs/pkkd.md).

      g = exp(-||x_p - f_o||_1 / sigma) = exp(min(Y, 0) / sigma)

  ``adder_out`` Y (B, H, W, O) = -||x_p - f_o||_1 <= 0 is the raw adder output
  (pre-BN); ``sigma`` a scalar or broadcastable to it. Returns (B, H, W, O)
  float32 in (0, 1], elementwise.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  # The clamp only guards against inputs that are not raw adder outputs.
  return jnp.exp(jnp.minimum(adder_out.astype(jnp.float32), 0.0) / sigma)


def gaussian_kernel_from_conv(
  inputs: Array,
  kernel: Array,
  conv_out: Array,
  strides: Union[int, Sequence[int]] = 1,
  padding: Any = 'SAME',
  sigma_scale: float = DEFAULT_SIGMA_SCALE,
) -> Array:
  """Teacher-side features in one call (our reconstruction, docs/pkkd.md).

      h = exp(-d2 / (s * sg(mean d2))),   d2 = ||x_p - f_o||^2

  ``inputs`` (B, H, W, C) and HWIO ``kernel`` (kh, kw, C, O) of a conv whose raw
  output is ``conv_out`` (B, H_out, W_out, O); ``strides``, ``padding`` the
  conv's; s = ``sigma_scale``. Returns (B, H_out, W_out, O) float32 in (0, 1].
  """
  patch_energy = patch_sq_norms(inputs, kernel.shape[:2], strides, padding)
  return gaussian_kernel_from_norms(
    conv_out, patch_energy, filter_sq_norms(kernel), sigma_scale
  )


def gaussian_kernel_from_norms(
  conv_out: Array,
  patch_energy: Array,
  filter_sq_norm: Array,
  sigma_scale: float = DEFAULT_SIGMA_SCALE,
) -> Array:
  """Teacher-side features from the pieces a model returns (docs/pkkd.md).

      h = exp(-d2 / (s * sg(mean d2))),   d2 = max(E + ||f||^2 - 2 conv_out, 0)

  E and ||f||^2: the 'patch_energy' and 'filter_sq_norm' stage entries of
  ``ConvOrAdder(return_kernel_features=True)``. Returns (B, H, W, O) float32.
  """
  sigma = gaussian_kernel_sigma(
    gaussian_sq_distance(conv_out, patch_energy, filter_sq_norm), sigma_scale
  )
  return gaussian_kernel_features(conv_out, patch_energy, filter_sq_norm, sigma)


def laplace_kernel_from_adder(
  adder_out: Array, sigma_scale: float = DEFAULT_SIGMA_SCALE
) -> Array:
  """Student-side features in one call: g = exp(Y / (s * sg(mean(-Y)))).

  Our reconstruction (docs/pkkd.md). Returns (B, H, W, O) float32 in (0, 1].
  """
  return laplace_kernel_features(
    adder_out, laplace_kernel_sigma(adder_out, sigma_scale)
  )


def pkkd_feature_loss(student_feats: PyTree, teacher_feats: PyTree) -> Array:
  """PKKD kernel-feature loss (Xu et al., NeurIPS 2020; our reconstruction, docs/pkkd.md).

      loss = sum_m mean_{b, h, w, c} (rho_m(g_m) - sg(h_m))^2

  ``student_feats``: a pytree (list, tuple or dict) of per-layer rho_m(g_m),
  the ``KernelTransform`` outputs on the Laplace features; ``teacher_feats``:
  the Gaussian features h_m, same structure and shapes. Returns a float32
  scalar: per-layer mean over all elements, summed over layers.
  """
  student_leaves, student_def = jax.tree.flatten(student_feats)
  teacher_leaves, teacher_def = jax.tree.flatten(teacher_feats)
  if student_def != teacher_def:
    raise ValueError(
      f'pkkd_feature_loss: student layers {student_def} and teacher layers '
      f'{teacher_def} differ'
    )
  total = jnp.zeros((), jnp.float32)
  for student, teacher in zip(student_leaves, teacher_leaves):
    if student.shape != teacher.shape:
      raise ValueError(
        f'pkkd_feature_loss: student {student.shape} and teacher {teacher.shape} '
        'kernel features must have the same shape'
      )
    teacher = lax.stop_gradient(teacher).astype(jnp.float32)
    total = total + jnp.mean(jnp.square(student.astype(jnp.float32) - teacher))
  return total


def soft_label_loss(
  student_logits: Array,
  teacher_logits: Array,
  temperature: float = DEFAULT_TEMPERATURE,
  t_squared: bool = True,
) -> Array:
  """Hinton's soft-label term with or without its T^2 factor (docs/pkkd.md).

      t_squared=True:   T^2 KL(softmax(z_t/T) || softmax(z_s/T))   (= ``kd_loss``)
      t_squared=False:      KL(softmax(z_t/T) || softmax(z_s/T))

  ``teacher_logits`` are under stop_gradient. Returns a float32 scalar: sum
  over classes, mean over the batch.
  """
  kd = kd_loss(student_logits, teacher_logits, temperature)
  if t_squared:
    return kd
  return kd / jnp.square(jnp.asarray(temperature, jnp.float32))


def pkkd_total(
  student_logits: Array,
  teacher_logits: Array,
  labels: Array,
  student_feats: PyTree,
  teacher_feats: PyTree,
  alpha: float = DEFAULT_ALPHA,
  beta: float = DEFAULT_BETA,
  temperature: float = DEFAULT_TEMPERATURE,
  label_smoothing: float = 0.0,
  kd_t_squared: bool = True,
) -> Tuple[Array, Dict[str, Array]]:
  """PKKD student objective (Xu et al., NeurIPS 2020; our reconstruction, docs/pkkd.md).

      L = CE(y, z_s) + alpha * c_T KL(softmax(z_t/T) || softmax(z_s/T))
          + beta * sum_m mean((rho_m(g_m) - sg(h_m))^2)

  with c_T = T^2 (``kd_t_squared=True``) or 1. Teacher logits and features
  are under stop_gradient. Alpha and beta may be traced scalars (a ramp). The
  paper's alpha = beta = 5 leaves T and the T^2 open (docs/pkkd.md).

  Returns:
    (total, terms): float32 scalar and a dict with the unweighted 'ce', 'feat',
    'total' and 'kd' (the soft-label term with its c_T, before alpha).
  """
  ce = cross_entropy(student_logits, labels, label_smoothing)
  kd = soft_label_loss(
    student_logits, teacher_logits, temperature, kd_t_squared
  )
  feat = pkkd_feature_loss(student_feats, teacher_feats)
  total = ce + alpha * kd + beta * feat
  return total, {'ce': ce, 'kd': kd, 'feat': feat, 'total': total}
