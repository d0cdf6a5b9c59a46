"""The adder op's NumPy reference and the cases both kernel families test.

Shared by tests/unit/ops' adder tests: a test module imports these from here,
never from another test module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.ops import adder as adder_lib
from kdjax.ops import adder_conv


def reference_pads(in_hw, kernel_hw, strides, padding):
  """XLA's rule for 'SAME': out = ceil(in / s), extra pixel on the high side."""
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  if padding == 'SAME':
    pads = []
    for size, k, s in zip(in_hw, kernel_hw, strides):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    return tuple(pads)
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return tuple(tuple(p) for p in padding)


def reference_adder(x, f, g, strides, padding):
  """Returns (y, dL/dx, dL/dF) for L = sum(y * g), in float64."""
  x, f, g = (np.asarray(a, np.float64) for a in (x, f, g))
  sh, sw = (strides, strides) if isinstance(strides, int) else strides
  kh, kw, _, out_c = f.shape
  pads = reference_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  y = np.zeros((x.shape[0], ho, wo, out_c))
  df = np.zeros_like(f)
  dxp = np.zeros_like(xp)
  for h in range(ho):
    for w in range(wo):
      patch = xp[
        :, h * sh : h * sh + kh, w * sw : w * sw + kw, :
      ]  # (N, kh, kw, C)
      diff = patch[..., None] - f[None]  # (N, kh, kw, C, O)
      y[:, h, w, :] = -np.abs(diff).sum(axis=(1, 2, 3))
      g_hw = g[:, h, w, :][:, None, None, None, :]
      df += (g_hw * diff).sum(axis=0)
      dxp[:, h * sh : h * sh + kh, w * sw : w * sw + kw, :] += (
        g_hw * np.clip(-diff, -1.0, 1.0)
      ).sum(axis=-1)
  (top, _), (left, _) = pads
  dx = dxp[:, top : top + x.shape[1], left : left + x.shape[2], :]
  return y, dx, df


# Eager calls dispatch op by op (one per kernel tap); jit keeps the file fast.
adder_jit = jax.jit(adder_conv, static_argnums=(2, 3))


def make_inputs(n, h, w, c, kh, kw, o, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(n, h, w, c)) * scale).astype(np.float32)
  f = rng.normal(size=(kh, kw, c, o)).astype(np.float32)
  return x, f


def make_cotangent(y_shape, seed=1):
  return np.random.default_rng(seed).normal(size=y_shape).astype(np.float32)


def value_and_grads_eager(
  x,
  f,
  g,
  strides,
  padding,
  memory_budget_bytes=adder_lib.DEFAULT_MEMORY_BUDGET_BYTES,
  method='auto',
):
  def loss(x, f):
    y = adder_conv(
      x,
      f,
      strides,
      padding,
      memory_budget_bytes=memory_budget_bytes,
      method=method,
    )
    return jnp.sum(y * g), y

  (_, y), (dx, df) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    x, f
  )
  return y, dx, df


_value_and_grads = jax.jit(
  value_and_grads_eager,
  static_argnames=('strides', 'padding', 'memory_budget_bytes', 'method'),
)


def assert_matches_reference(
  x,
  f,
  strides,
  padding,
  memory_budget_bytes=None,
  seed=1,
  method='auto',
  value_and_grads=_value_and_grads,
):
  y_shape = jax.eval_shape(lambda: adder_conv(x, f, strides, padding)).shape
  g = make_cotangent(y_shape, seed)
  want_y, want_dx, want_df = reference_adder(x, f, g, strides, padding)
  kwargs = (
    {}
    if memory_budget_bytes is None
    else dict(memory_budget_bytes=memory_budget_bytes)
  )
  y, dx, df = value_and_grads(
    x, f, g, strides, padding, method=method, **kwargs
  )
  assert y.shape == want_y.shape
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(df, want_df, rtol=1e-5, atol=1e-4)
  assert float(jnp.max(y)) <= 0.0


# (input N, H, W, C), (kh, kw, C_out), strides, padding
REFERENCE_CASES = {
  '3x3_s1_same': ((2, 5, 5, 3), (3, 3, 4), 1, 'SAME'),
  '3x3_s2_same_even': ((2, 6, 6, 3), (3, 3, 4), 2, 'SAME'),
  '3x3_s2_same_odd_nonsquare': ((1, 7, 5, 2), (3, 3, 3), 2, 'SAME'),
  '3x3_s1_valid_nonsquare': ((2, 6, 7, 2), (3, 3, 3), 1, 'VALID'),
  '3x3_s2_valid_odd': ((1, 7, 7, 2), (3, 3, 2), 2, 'VALID'),
  '1x1_s1_valid': ((2, 4, 3, 3), (1, 1, 5), 1, 'VALID'),
  '1x1_s2_same_shortcut': ((2, 6, 6, 3), (1, 1, 4), 2, 'SAME'),
  '7x7_s2_int_pad3': ((1, 9, 9, 2), (7, 7, 3), 2, 3),
  '7x7_s1_same': ((1, 7, 8, 1), (7, 7, 2), 1, 'SAME'),
  '3x3_s1_explicit_asym': ((2, 5, 4, 2), (3, 3, 3), 1, ((1, 0), (2, 1))),
  '3x3_s12_int_pad1': ((1, 5, 6, 2), (3, 3, 2), (1, 2), 1),
  '3x1_s21_same': ((1, 7, 4, 2), (3, 1, 3), (2, 1), 'SAME'),
}


def sharded_step(conv, x, f, r):
  """grad of sum(conv(x, f) * r), jitted over an 8-device batch mesh.

  Returns (compiled step, y, dL/dx, dL/dF); x and r are split over the batch.
  """
  if jax.device_count() < 8:
    pytest.skip(
      f'needs 8 devices (tests/conftest.py sets XLA_FLAGS); have {jax.device_count()}'
    )
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = jax.make_mesh(
    (8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  batch, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())

  def loss(x, f, r):
    y = conv(x, f)
    return jnp.sum(y * r), y

  step = jax.jit(
    jax.grad(loss, argnums=(0, 1), has_aux=True),
    in_shardings=(batch, replicated, batch),
  )
  with jax.set_mesh(mesh):
    args = (
      jax.device_put(x, batch),
      jax.device_put(f, replicated),
      jax.device_put(r, batch),
    )
    compiled = step.lower(*args).compile()
    (dx, df), y = compiled(*args)
  assert dx.sharding.spec[0] == 'data'
  return compiled, y, dx, df
