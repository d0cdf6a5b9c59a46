"""kdjax.ops.adder_conv against an independent NumPy loop reference (docs/adder.md).

The reference walks output positions one by one and writes the three formulas
out literally, so it shares no code (and no padding logic) with the op:
  forward  Y[n,h,w,o]  = -sum_{i,j,c} |Xp[n, h*sh+i, w*sw+j, c] - F[i,j,c,o]|
  weight   dF[i,j,c,o] =  sum_{n,h,w} g[n,h,w,o] * (Xp[...] - F[i,j,c,o])
  input    dXp[...]   +=  sum_o g[n,h,w,o] * clip(F[i,j,c,o] - Xp[...], -1, 1)
with Xp the zero-padded input and dX = dXp with the padded border dropped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.ops import adder_conv
from kdjax.ops import adder as adder_lib

from adder_reference import (
  REFERENCE_CASES,
  adder_jit,
  assert_matches_reference,
  make_cotangent,
  make_inputs,
  reference_adder,
  sharded_step,
  value_and_grads_eager,
)


@pytest.mark.parametrize('method', ['loop', 'fused'])
@pytest.mark.parametrize('case', sorted(REFERENCE_CASES))
def test_matches_numpy_reference(case, method):
  (n, h, w, c), (kh, kw, o), strides, padding = REFERENCE_CASES[case]
  x, f = make_inputs(n, h, w, c, kh, kw, o)
  assert_matches_reference(x, f, strides, padding, method=method)


def _fresh_value_and_grads():
  # A new jit, so that module constants patched by a test are read when tracing.
  return jax.jit(
    value_and_grads_eager,
    static_argnames=('strides', 'padding', 'memory_budget_bytes', 'method'),
  )


@pytest.mark.parametrize(
  'max_channels', [0, 10**9], ids=['pairs', 'by_channel']
)
@pytest.mark.parametrize(
  'case',
  [
    '3x3_s1_same',
    '3x3_s2_same_odd_nonsquare',
    '7x7_s2_int_pad3',
    '3x3_s1_explicit_asym',
    '3x1_s21_same',
  ],
)
def test_both_loop_input_gradients(case, max_channels, monkeypatch):
  # The loop method picks its input-gradient layout by channel count; run each on every case.
  monkeypatch.setattr(adder_lib, 'TAPS_FUSED_MAX_CHANNELS', max_channels)
  (n, h, w, c), (kh, kw, o), strides, padding = REFERENCE_CASES[case]
  x, f = make_inputs(n, h, w, c, kh, kw, o, seed=4)
  assert_matches_reference(
    x,
    f,
    strides,
    padding,
    method='loop',
    value_and_grads=_fresh_value_and_grads(),
  )


def test_unknown_method_is_a_clear_error():
  with pytest.raises(ValueError, match='method must be one of'):
    adder_conv(np.zeros((1, 4, 4, 1)), np.zeros((3, 3, 1, 1)), method='im2col')


def test_large_differences_hit_the_clip():
  # Inputs far from the filters put most of clip(F - X) at +-1; the rest stays linear.
  x, f = make_inputs(2, 5, 5, 2, 3, 3, 3, scale=3.0)
  assert_matches_reference(x, f, 1, 'SAME')


def test_xla_same_pads_high_side_at_stride_2():
  assert adder_lib.normalize_padding('SAME', (6, 6), (3, 3), (2, 2)) == (
    (0, 1),
    (0, 1),
  )
  assert adder_lib.normalize_padding('SAME', (7, 7), (3, 3), (2, 2)) == (
    (1, 1),
    (1, 1),
  )
  assert adder_lib.normalize_padding('SAME', (6, 6), (1, 1), (2, 2)) == (
    (0, 0),
    (0, 0),
  )


def test_zero_padding_takes_part():
  # With x = 0 everywhere, every cell (padded or not) contributes |0 - F|, so the
  # SAME output equals the VALID one, -sum|F|, at every position.
  f = np.arange(1.0, 19.0, dtype=np.float32).reshape(3, 3, 2, 1) / 10
  y = adder_conv(jnp.zeros((1, 4, 4, 2)), f, 1, 'SAME')
  np.testing.assert_allclose(
    y, np.full((1, 4, 4, 1), -np.abs(f).sum()), rtol=1e-6
  )


def _budget_for_chunk(monkeypatch, x, f, strides, padding, target):
  """Smallest memory budget for which adder_conv picks ``target`` output channels per chunk.

  Reads the chunk the op itself computes (a spy on output_channel_chunk, under
  eval_shape so nothing runs), so the test does not restate the op's formula.
  """
  seen = []
  real = adder_lib.output_channel_chunk

  def spy(*args, **kwargs):
    seen.append(real(*args, **kwargs))
    return seen[-1]

  monkeypatch.setattr(adder_lib, 'output_channel_chunk', spy)

  def chunk_for(budget):
    jax.eval_shape(
      lambda: adder_conv(x, f, strides, padding, memory_budget_bytes=budget)
    )
    return seen[-1]

  lo, hi = 1, 1
  while chunk_for(hi) < target:
    lo, hi = hi, hi * 2
  while lo < hi:  # chunk is non-decreasing in the budget
    mid = (lo + hi) // 2
    lo, hi = (mid + 1, hi) if chunk_for(mid) < target else (lo, mid)
  assert chunk_for(lo) == target
  monkeypatch.setattr(adder_lib, 'output_channel_chunk', real)
  return lo


@pytest.mark.parametrize('chunk', [1, 3])
def test_chunked_output_channels(chunk, monkeypatch):
  # 7 output channels in chunks of 3 leaves a last chunk of 1 (3 does not divide 7).
  # Chunks are used by the pair-per-step input gradient, forced here.
  monkeypatch.setattr(adder_lib, 'TAPS_FUSED_MAX_CHANNELS', 0)
  value_and_grads = _fresh_value_and_grads()
  n, h, w, c, o = 2, 6, 5, 2, 7
  x, f = make_inputs(n, h, w, c, 3, 3, o, seed=3)
  budget = _budget_for_chunk(monkeypatch, x, f, 2, 'SAME', chunk)
  assert_matches_reference(
    x,
    f,
    2,
    'SAME',
    memory_budget_bytes=budget,
    method='loop',
    value_and_grads=value_and_grads,
  )
  g = make_cotangent((n, 3, 3, o))
  unchunked = value_and_grads(x, f, g, 2, 'SAME', method='loop')
  chunked = value_and_grads(
    x, f, g, 2, 'SAME', memory_budget_bytes=budget, method='loop'
  )
  for a, b in zip(chunked, unchunked):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_eager_equals_jit():
  x, f = make_inputs(2, 5, 5, 3, 3, 3, 4)
  eager = adder_conv(x, f, 2, 'SAME')
  jitted = adder_jit(x, f, 2, 'SAME')
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_grad_is_adder_backward_not_true_derivative():
  # The true dY/dF of -|X - F| is sign(X - F); the AdderNet weight gradient is X - F.
  x = np.full((1, 1, 1, 1), 3.0, np.float32)
  f = np.full((1, 1, 1, 1), 0.5, np.float32)
  dx, df = jax.grad(
    lambda x, f: jnp.sum(adder_conv(x, f, 1, 'VALID')), argnums=(0, 1)
  )(x, f)
  np.testing.assert_allclose(df, [[[[2.5]]]])  # X - F
  np.testing.assert_allclose(dx, [[[[-1.0]]]])  # clip(F - X, -1, 1)


def test_vmap_matches_loop():
  b = 3
  rng = np.random.default_rng(5)
  xs = rng.normal(size=(b, 2, 5, 4, 2)).astype(np.float32)
  fs = rng.normal(size=(b, 3, 3, 2, 3)).astype(np.float32)
  conv = lambda x, f: adder_conv(x, f, 2, 'SAME')
  shared_kernel = jax.vmap(conv, in_axes=(0, None))(xs, fs[0])
  both = jax.vmap(conv)(xs, fs)
  for i in range(b):
    np.testing.assert_allclose(shared_kernel[i], conv(xs[i], fs[0]), rtol=1e-6)
    np.testing.assert_allclose(both[i], conv(xs[i], fs[i]), rtol=1e-6)

  g = rng.normal(size=both.shape).astype(np.float32)
  grad_fn = jax.grad(lambda x, f, g: jnp.sum(conv(x, f) * g), argnums=(0, 1))
  dxs, dfs = jax.jit(jax.vmap(grad_fn))(xs, fs, g)
  for i in range(b):
    _, want_dx, want_df = reference_adder(xs[i], fs[i], g[i], 2, 'SAME')
    np.testing.assert_allclose(dxs[i], want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dfs[i], want_df, rtol=1e-5, atol=1e-4)


def test_bfloat16make_inputs():
  x, f = make_inputs(2, 6, 6, 4, 3, 3, 5, seed=7)
  xb, fb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(f, jnp.bfloat16)
  y = adder_jit(xb, fb, 1, 'SAME')
  assert y.dtype == jnp.bfloat16
  # Same bf16-rounded inputs in float32: only the output rounding differs.
  want = adder_jit(xb.astype(jnp.float32), fb.astype(jnp.float32), 1, 'SAME')
  np.testing.assert_allclose(y.astype(np.float32), want, rtol=1e-2, atol=1e-2)
  # Against the unrounded float32 inputs too, at bf16 tolerance.
  np.testing.assert_allclose(
    y.astype(np.float32), adder_jit(x, f, 1, 'SAME'), rtol=2e-2, atol=0.1
  )
  assert float(jnp.max(y.astype(jnp.float32))) <= 0.0
  dx, df = jax.jit(
    jax.grad(
      lambda x, f: jnp.sum(adder_conv(x, f, 1, 'SAME')).astype(jnp.float32),
      argnums=(0, 1),
    )
  )(xb, fb)
  assert dx.dtype == jnp.bfloat16 and df.dtype == jnp.bfloat16
  _, want_dx, want_df = reference_adder(
    xb.astype(np.float32),
    fb.astype(np.float32),
    np.ones((2, 6, 6, 5), np.float32),
    1,
    'SAME',
  )
  np.testing.assert_allclose(
    dx.astype(np.float32), want_dx, rtol=2e-2, atol=5e-2
  )
  np.testing.assert_allclose(
    df.astype(np.float32), want_df, rtol=2e-2, atol=0.5
  )


def test_output_never_positive():
  rng = np.random.default_rng(11)
  x = (rng.normal(size=(2, 6, 6, 3)) * 100).astype(np.float32)
  f = (rng.normal(size=(3, 3, 3, 4)) * 100).astype(np.float32)
  assert float(jnp.max(adder_jit(x, f, 1, 'SAME'))) <= 0.0
  # Exact match of input and filter gives exactly 0, the maximum.
  patch = rng.normal(size=(1, 3, 3, 2)).astype(np.float32)
  y = adder_jit(patch, patch[0][..., None], 1, 'VALID')
  assert float(y[0, 0, 0, 0]) == 0.0


def test_errors():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match='channels'):
    adder_conv(x, jnp.zeros((3, 3, 2, 4)))
  with pytest.raises(ValueError, match='does not fit the padded input'):
    adder_conv(x, jnp.zeros((5, 5, 3, 4)), 1, 'VALID')
  with pytest.raises(ValueError, match='does not fit the padded input'):
    adder_conv(
      jnp.zeros((1, 2, 6, 3)), jnp.zeros((3, 3, 3, 4)), 1, ((0, 0), (1, 1))
    )
  with pytest.raises(ValueError, match='padding'):
    adder_conv(x, jnp.zeros((3, 3, 3, 4)), 1, 'FULL')
  with pytest.raises(ValueError, match='padding'):
    adder_conv(x, jnp.zeros((3, 3, 3, 4)), 1, 'CIRCULAR')
  with pytest.raises(ValueError, match='strides'):
    adder_conv(x, jnp.zeros((3, 3, 3, 4)), 0)
  with pytest.raises(ValueError, match='NHWC'):
    adder_conv(jnp.zeros((4, 4, 3)), jnp.zeros((3, 3, 3, 4)))


def test_numpy_integer_strides_and_padding():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  f = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
  g = np.zeros((1, 3, 3, 3), np.float32)
  expected, _, _ = reference_adder(x, f, g, 2, 1)
  y = adder_conv(x, f, np.int64(2), np.int32(1))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  'padding', [-1, ((2, -1), (0, 0)), True, (1.5, 1), 'SAME2']
)
def test_bad_padding_is_a_clear_error(padding):
  with pytest.raises(ValueError, match='adder_conv: .*padding'):
    adder_conv(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 3)), 1, padding)


def test_inside_a_sharded_step_matches_one_device():
  """jit over an 8-device batch mesh gives the single-device values and gradients."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(8, 6, 6, 3)).astype(np.float32)
  f = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  r = rng.normal(size=(8, 3, 3, 4)).astype(np.float32)
  expected_y, expected_dx, expected_df = reference_adder(x, f, r, 2, 1)
  _, y, dx, df = sharded_step(lambda x, f: adder_conv(x, f, 2, 1), x, f, r)
  np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dx), expected_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(df), expected_df, rtol=1e-5, atol=1e-3)
