"""Losses on logits: cross-entropy and Hinton knowledge distillation.

Pure functions: logits (..., C) and labels (...), float32 or bfloat16, in; a
float32 scalar, the mean over every leading axis, out. ``jax.vmap`` over an
extra leading axis evaluates several models at once.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Hinton et al. 2015 and the RepDistiller / mdistiller CIFAR recipe.
DEFAULT_TEMPERATURE = 4.0
DEFAULT_KD_WEIGHT = 0.9


def _check_logits_pair(
  student_logits: Array, teacher_logits: Array, name: str
) -> None:
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
      f'{name}: student logits {student_logits.shape} and teacher logits '
      f'{teacher_logits.shape} must have the same shape'
    )


def cross_entropy(
  logits: Array, labels: Array, label_smoothing: float = 0.0
) -> Array:
  """Softmax cross-entropy with integer labels, mean over the batch.

      q_c  = (1 - eps) * [c == y] + eps / C          (label smoothing, Szegedy et al. CVPR 2016)
      loss = mean_b  - sum_c q_c * log softmax(z_b)_c

  ``logits`` (..., C), float32 or bfloat16; ``labels`` (...), integer class ids
  in [0, C); ``label_smoothing`` eps (0: the plain cross-entropy). Returns a
  float32 scalar, the mean over all leading axes.
  """
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f'cross_entropy: labels {labels.shape} must match logits {logits.shape} '
      'without the class axis'
    )
  # float32: softmax over low-precision logits loses most of the mass of the
  # non-argmax classes, which is what distillation transfers.
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


def kd_loss(
  student_logits: Array,
  teacher_logits: Array,
  temperature: float = DEFAULT_TEMPERATURE,
) -> Array:
  """Hinton knowledge distillation (Hinton, Vinyals, Dean 2015; docs/baselines.md).

      p^t  = softmax(sg(z_t) / T),   p^s = softmax(z_s / T)
      loss = mean_b  T^2 * KL(p^t || p^s) = mean_b T^2 * sum_c p^t_c (log p^t_c - log p^s_c)

  p = softmax(z / T) is their Eq. 1, T^2 their Sec. 2, so that
  d loss / d z_s = T * (p^s - p^t) / B. ``student_logits`` and
  ``teacher_logits``: (..., C), same shape; ``temperature`` T > 0 (Python float
  or traced scalar). Returns a float32 scalar: sum over classes, mean over all
  leading axes.
  """
  _check_logits_pair(student_logits, teacher_logits, 'kd_loss')
  temperature = jnp.asarray(temperature, jnp.float32)
  teacher_logits = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  student_log_probs = jax.nn.log_softmax(
    student_logits.astype(jnp.float32) / temperature, -1
  )
  # Both sides from log_softmax: logits of order 1e4 stay finite, and a
  # teacher probability that underflows to 0 adds 0 (its log is finite).
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  teacher_probs = jnp.exp(teacher_log_probs)
  # The KL gradient is (1/T)(p^s - p^t) (their Eq. 2); T^2 keeps the gradient
  # magnitude independent of T.
  kl = jnp.sum(teacher_probs * (teacher_log_probs - student_log_probs), axis=-1)
  return temperature**2 * jnp.mean(kl)


def hinton_kd_total(
  student_logits: Array,
  teacher_logits: Array,
  labels: Array,
  temperature: float = DEFAULT_TEMPERATURE,
  kd_weight: float = DEFAULT_KD_WEIGHT,
  label_smoothing: float = 0.0,
) -> Tuple[Array, Dict[str, Array]]:
  """Hinton KD student objective (docs/baselines.md).

      loss = (1 - lambda) * CE(y, z_s) + lambda * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))

  Defaults T = 4, lambda = 0.9 (the RepDistiller / mdistiller CIFAR-100 recipe).

  Returns:
    (total, terms): the float32 scalar objective and a dict with the unweighted
    'ce' and 'kd' terms (both batch means) and 'total', for logging.
  """
  ce = cross_entropy(student_logits, labels, label_smoothing)
  kd = kd_loss(student_logits, teacher_logits, temperature)
  total = (1.0 - kd_weight) * ce + kd_weight * kd
  return total, {'ce': ce, 'kd': kd, 'total': total}
