"""Properties every loss shares (jit + grad, bfloat16, vmap, no retracing).

Also the connector modules of kdjax.models.connectors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdjax import losses
from kdjax.models import connectors


def _normal(rng, *shape, scale=1.0):
  return (rng.normal(size=shape) * scale).astype(np.float32)


def _conv(x, f):
  return np.asarray(
    lax.conv_general_dilated(
      x, f, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
  )


def _pkkd_kernels(adder_out, x, f, conv_out):
  g = losses.laplace_kernel_from_adder(adder_out)
  h = losses.gaussian_kernel_from_conv(x, f, conv_out)
  return jnp.mean(g) + jnp.mean(h)


# name -> (loss returning a scalar, argument builder, argnums differentiated).
CASES = {
  'cross_entropy': (
    losses.cross_entropy,
    lambda r: [_normal(r, 4, 10, scale=3), r.integers(0, 10, 4)],
    (0,),
  ),
  'kd_loss': (
    lambda s, t: losses.kd_loss(s, t, 4.0),
    lambda r: [_normal(r, 4, 10, scale=3), _normal(r, 4, 10, scale=3)],
    (0, 1),
  ),
  'hinton_kd_total': (
    lambda s, t, y: losses.hinton_kd_total(s, t, y)[0],
    lambda r: [_normal(r, 4, 10), _normal(r, 4, 10), r.integers(0, 10, 4)],
    (0, 1),
  ),
  'fitnet_loss': (
    losses.fitnet_loss,
    lambda r: [_normal(r, 2, 4, 4, 8), _normal(r, 2, 4, 4, 8)],
    (0, 1),
  ),
  'attention_transfer_loss': (
    losses.attention_transfer_loss,
    lambda r: [_normal(r, 2, 4, 4, 4), _normal(r, 2, 4, 4, 8)],
    (0, 1),
  ),
  'attention_transfer_total': (
    lambda s, t: losses.attention_transfer_total(s, t)[0],
    lambda r: [
      [_normal(r, 2, 4, 4, 4), _normal(r, 2, 2, 2, 8)],
      [_normal(r, 2, 4, 4, 8), _normal(r, 2, 2, 2, 16)],
    ],
    (0, 1),
  ),
  'ofd_distance': (
    losses.ofd_distance,
    lambda r: [
      _normal(r, 2, 3, 3, 4),
      _normal(r, 2, 3, 3, 4),
      -np.abs(_normal(r, 4)),
    ],
    (0, 1, 2),
  ),
  'ofd_margin': (
    lambda g, b: jnp.sum(losses.ofd_margin(g, b)),
    lambda r: [_normal(r, 8), _normal(r, 8, scale=3)],
    (0, 1),
  ),
  'ofd_total': (
    lambda z, y, s, t, m: losses.ofd_total(z, y, s, t, m)[0],
    lambda r: [
      _normal(r, 2, 5),
      r.integers(0, 5, 2),
      [_normal(r, 2, 4, 4, 4), _normal(r, 2, 2, 2, 8)],
      [_normal(r, 2, 4, 4, 4), _normal(r, 2, 2, 2, 8)],
      [-np.abs(_normal(r, 4)), -np.abs(_normal(r, 8))],
    ],
    (0, 2, 3),
  ),
  'pkkd_kernels': (
    _pkkd_kernels,
    lambda r: (
      [-np.abs(_normal(r, 2, 4, 4, 6, scale=5))]
      + (lambda x, f: [x, f, _conv(x, f)])(
        _normal(r, 2, 4, 4, 3), _normal(r, 3, 3, 3, 6)
      )
    ),
    (0, 1, 2, 3),
  ),
  'pkkd_total': (
    lambda zs, zt, y, g, h: losses.pkkd_total(zs, zt, y, g, h)[0],
    lambda r: [
      _normal(r, 3, 5),
      _normal(r, 3, 5),
      r.integers(0, 5, 3),
      [r.uniform(size=(3, 2, 2, 4)).astype(np.float32)],
      [r.uniform(size=(3, 2, 2, 4)).astype(np.float32)],
    ],
    (0, 1, 3, 4),
  ),
  'ekd_loss': (
    lambda z, y, h, zt, ht: losses.ekd_loss(z, y, h, zt, ht)[0],
    lambda r: [
      _normal(r, 3, 4, 5),
      r.integers(0, 5, 4),
      _normal(r, 3, 4, 6),
      _normal(r, 2, 4, 5),
      _normal(r, 2, 4, 6),
    ],
    (0, 2, 3, 4),
  ),
}


def _to(dtype, args):
  cast = lambda a: (
    a.astype(dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a
  )
  return jax.tree.map(lambda a: jnp.asarray(cast(np.asarray(a))), args)


@functools.lru_cache(maxsize=None)
def _jitted_loss(name):
  """One compiled float32 loss per case, shared by the reference computations."""
  return jax.jit(CASES[name][0])


@pytest.mark.parametrize('name', sorted(CASES))
def test_jit_grad_finite_without_retracing(name):
  loss_fn, build, argnums = CASES[name]
  traces = []

  def counted(*args):
    traces.append(1)
    return loss_fn(*args)

  grad_fn = jax.jit(jax.grad(counted, argnums=argnums))
  for seed in (0, 1):
    grads = grad_fn(*build(np.random.default_rng(seed)))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), name
  assert len(traces) == 1


@pytest.mark.parametrize('name', sorted(CASES))
def test_bfloat16_inputs_computed_in_float32(name):
  loss_fn, build, argnums = CASES[name]
  bf16_args = _to(jnp.bfloat16, build(np.random.default_rng(2)))
  value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=argnums))(
    *bf16_args
  )
  # Same values, rounded to bfloat16 once, then given as float32.
  rounded = jax.tree.map(
    lambda a: a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a, bf16_args
  )
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(
    value, _jitted_loss(name)(*rounded), rtol=1e-5, atol=1e-6
  )
  for g in jax.tree.leaves(grads):
    assert g.dtype == jnp.bfloat16 and np.all(
      np.isfinite(np.asarray(g, np.float32))
    )


@pytest.mark.parametrize('name', sorted(CASES))
def test_vmap_over_extra_leading_axis(name):
  _, build, _ = CASES[name]
  first, second = (
    _to(jnp.float32, build(np.random.default_rng(3))),
    _to(jnp.float32, build(np.random.default_rng(4))),
  )
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)
  got = jax.jit(jax.vmap(CASES[name][0]))(*stacked)
  expected = [_jitted_loss(name)(*first), _jitted_loss(name)(*second)]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_temperature_can_be_traced_without_retracing():
  traces = []

  def kd(s, t, temperature):
    traces.append(1)
    return losses.kd_loss(s, t, temperature)

  jitted = jax.jit(kd)
  s, t = jnp.ones((2, 3)), jnp.arange(6.0).reshape(2, 3)
  values = [float(jitted(s, t, temperature)) for temperature in (1.0, 4.0)]
  assert len(traces) == 1 and values[0] != values[1]


def _init(module, *args, **kwargs):
  """Compiled init: one XLA program instead of one dispatch per op."""
  return jax.jit(functools.partial(module.init, **kwargs))(
    jax.random.key(0), *args
  )


def test_feature_connector_shapes_and_parameters():
  connector = connectors.FeatureConnector(features=32)
  x = jnp.ones((2, 4, 4, 16))
  variables = _init(connector, x, train=False)
  assert set(variables['params']['conv']) == {'kernel'}  # no conv bias
  assert variables['params']['conv']['kernel'].shape == (1, 1, 16, 32)
  np.testing.assert_array_equal(variables['params']['bn']['scale'], 1.0)
  np.testing.assert_array_equal(variables['params']['bn']['bias'], 0.0)
  apply = jax.jit(
    functools.partial(connector.apply, train=True, mutable=['batch_stats'])
  )
  y, updates = apply(variables, x)
  assert y.shape == (2, 4, 4, 32) and 'bn' in updates['batch_stats']


def test_feature_connector_init_is_he_normal_fan_out():
  connector = connectors.FeatureConnector(features=512)
  variables = _init(connector, jnp.ones((1, 2, 2, 256)), train=False)
  kernel = np.asarray(variables['params']['conv']['kernel'], np.float64).ravel()
  target_var = (
    2.0 / 512
  )  # fan-out of a 1x1 kernel = C_out; fan-in would give 2 / 256
  assert abs(kernel.var() / target_var - 1) < 0.03
  assert abs(kernel.mean()) < 5 * np.sqrt(target_var / kernel.size)
  # Untruncated: with 131072 draws some exceed 3.5 std (a truncated normal stops at 2).
  assert np.abs(kernel).max() / np.sqrt(target_var) > 3.5


def test_kernel_transform_starts_as_identity():
  g = jax.random.uniform(jax.random.key(2), (2, 3, 3, 6))
  rho = connectors.KernelTransform(features=6)
  np.testing.assert_allclose(jax.jit(rho.apply)(_init(rho, g), g), g, rtol=1e-6)
  widen = connectors.KernelTransform(features=8)
  kernel = _init(widen, g)['params']['conv']['kernel']
  np.testing.assert_array_equal(kernel[0, 0], np.eye(6, 8))


def test_branch_adapters_map_each_branch_to_its_teacher_width():
  adapters = connectors.BranchAdapters(teacher_features=(4, 6))
  branch_feats = jnp.ones((3, 5, 8))
  params = _init(adapters, branch_feats)
  assert set(params['params']) == {'adapter_0', 'adapter_1', 'adapter_2'}

  @jax.jit
  def adapt_and_distil(params, branch_feats):
    outputs = adapters.apply(params, branch_feats)
    teacher_feats = [jnp.zeros((5, 4)), jnp.zeros((5, 6))]
    total, _ = losses.ekd_loss(
      jnp.zeros((3, 5, 10)),
      jnp.zeros((5,), jnp.int32),
      outputs,
      jnp.zeros((2, 5, 10)),
      teacher_feats,
    )
    return outputs, total

  outputs, total = adapt_and_distil(params, branch_feats)
  assert [o.shape for o in outputs] == [(5, 4), (5, 6), (5, 4)]
  assert np.isfinite(total)
