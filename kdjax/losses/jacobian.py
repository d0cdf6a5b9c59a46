"""Jacobian matching (Srinivas & Fleuret, ICML 2018; docs/losses.md).

No official code. The loss compares the input-gradients of one chosen logit
per example (the label's, or the teacher's top class), each L2-normalised;
training on it differentiates through ``jax.grad`` (double backprop, torch's
``create_graph=True``), which JAX does without any flag.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from kdjax.losses.relational import _normalize

Array = jax.Array


def logit_input_gradients(
  logits_fn: Callable[[Array], Array], inputs: Array, classes: Array
) -> Array:
  """d z_{b, y_b} / d x_b for every example b, shaped like ``inputs``.

  ``logits_fn`` maps inputs (B, ...) to logits (B, C) with examples that do
  not interact (no batch statistics: apply batch norm in inference mode, or
  the gradient mixes examples); ``classes`` (B,) integer, the logit chosen
  per example. Computed as grad_x sum_b z_{b, y_b}, which equals the
  per-example gradients when examples are independent. Differentiable:
  calling it inside a loss that ``jax.grad`` differentiates with respect to
  the parameters closed over by ``logits_fn`` gives the double-backprop
  gradient.
  """

  def chosen(x):
    logits = logits_fn(x).astype(jnp.float32)
    return jnp.sum(jnp.take_along_axis(logits, classes[:, None], axis=-1))

  return jax.grad(chosen)(inputs)


def jacobian_matching_loss(
  student_input_grads: Array, teacher_input_grads: Array
) -> Array:
  """Jacobian matching (Srinivas & Fleuret 2018, Sec. 3-4), normalised form.

      n(g) = vec(g) / max(||vec(g)||_2, 1e-12)        (per example)
      loss = mean_b ||n(J^s_b) - n(J^t_b)||_2^2

  ``student_input_grads``, ``teacher_input_grads``: (B, ...) input-gradients
  of the chosen logit (``logit_input_gradients``), same shape. The paper
  matches the L2-normalised Jacobians with a squared L2 distance, added to
  the classification (or KD) loss with a weight; there is no official code.
  Reduction: sum over input elements, mean over the batch.
  """
  if student_input_grads.shape != teacher_input_grads.shape:
    raise ValueError(
      f'jacobian_matching_loss: student {student_input_grads.shape} and '
      f'teacher {teacher_input_grads.shape} gradients must have the same shape'
    )
  b = student_input_grads.shape[0]
  gs = student_input_grads.astype(jnp.float32).reshape(b, -1)
  gt = jax.lax.stop_gradient(teacher_input_grads).astype(jnp.float32)
  gt = gt.reshape(b, -1)
  return jnp.mean(jnp.sum(jnp.square(_normalize(gs) - _normalize(gt)), -1))
