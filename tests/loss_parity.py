"""Value and gradient parity of a JAX loss with a PyTorch reference.

Shared by the baseline-loss tests: float64 torch references, the student's
gradient compared, the teacher's gradient checked to be exactly zero.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

RTOL = 1e-5


def normal(rng, *shape, scale=1.0):
  return (rng.normal(size=shape) * scale).astype(np.float32)


def map_lists(rng, shapes):
  """A student and a teacher list of N(0, 1) maps of the given shapes."""
  return [[normal(rng, *s) for s in shapes] for _ in range(2)]


def to_torch(x, grad=False):
  """NHWC numpy -> NCHW float64 tensor (other ranks unchanged)."""
  t = torch.tensor(np.asarray(x, np.float64))
  if t.ndim == 4:
    t = t.permute(0, 3, 1, 2).contiguous()
  return t.requires_grad_(grad)


def from_torch_grad(t):
  g = t.grad.numpy()
  return g.transpose(0, 2, 3, 1) if g.ndim == 4 else g


def tree_torch(x, grad=False):
  if isinstance(x, (list, tuple)):
    return [to_torch(a, grad) for a in x]
  return to_torch(x, grad)


def tree_grads(t):
  if isinstance(t, list):
    return [from_torch_grad(a) for a in t]
  return from_torch_grad(t)


def assert_close(got, want, rtol=RTOL):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape
    # Entries far below the largest are compared at the largest's scale.
    atol = rtol * max(np.max(np.abs(w)), 1e-30) * 0.1
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@functools.lru_cache(maxsize=None)
def value_and_grads(loss_fn):
  """Compiled value and gradients with respect to (student, teacher)."""
  return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))


def check_parity(loss_fn, torch_fn, student, teacher, *rest, rtol=RTOL):
  """Value and student gradient vs torch; teacher gradient exactly zero."""
  value, (g_student, g_teacher) = value_and_grads(loss_fn)(
    student, teacher, *rest
  )
  assert value.dtype == jnp.float32 and value.shape == ()
  for g in jax.tree.leaves(g_teacher):
    np.testing.assert_array_equal(g, 0.0)
  ts = tree_torch(student, grad=True)
  ref = torch_fn(ts, tree_torch(teacher), *rest)
  ref.sum().backward()
  assert_close(value, ref.detach().numpy().reshape(()), rtol)
  assert_close(g_student, tree_grads(ts), rtol)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_student))
  return float(value)


# ---------------------------------------------------------------- logits
