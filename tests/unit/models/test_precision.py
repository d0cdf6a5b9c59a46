"""Numerical precision: BN after adder layers, and bfloat16 compute.

References are float64 NumPy (BN) and the same model in float32 (bfloat16).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdjax import models
from kdjax.errors import ConfigError
from kdjax.models import layers
from kdjax.methods import base


def _bn_reference(x):
  x64 = np.asarray(x, np.float64)
  mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  return (x64 - mean) / np.sqrt(var + layers.BN_EPSILON), var


def _adder_like(seed=0):
  # Adder outputs: a large negative mean, a small spread.
  rng = np.random.default_rng(seed)
  return (-3000.0 + 0.5 * rng.standard_normal((64, 4, 4, 8))).astype(np.float32)


def test_bn_after_adder_matches_float64_in_train_mode():
  x = _adder_like()
  ref, var = _bn_reference(x)
  bn = layers.batch_norm(True, after_adder=True)
  variables = bn.init(jax.random.key(0), x)
  y, updates = bn.apply(variables, x, mutable=['batch_stats'])
  # float32 rounding of x itself (ulp(3000) = 2.4e-4, over std 0.5) bounds
  # the normalised error at about 1e-3.
  np.testing.assert_allclose(np.asarray(y, np.float64), ref, atol=2e-3)
  running = updates['batch_stats']['var']
  expected = layers.BN_MOMENTUM + (1 - layers.BN_MOMENTUM) * var
  np.testing.assert_allclose(running, expected, rtol=1e-5)


def test_one_pass_variance_would_fail_there():
  # The same data through flax's default one-pass variance: the error the
  # two-pass BN avoids (E[x^2] - E[x]^2 loses all digits at mean 3000).
  x = _adder_like()
  ref, _ = _bn_reference(x)
  bn = layers.batch_norm(True, after_adder=False)
  variables = bn.init(jax.random.key(0), x)
  y, _ = bn.apply(variables, x, mutable=['batch_stats'])
  assert np.abs(np.asarray(y, np.float64) - ref).max() > 1.0


@pytest.mark.parametrize(
  'name, kwargs',
  [
    ('resnet8', {}),
    ('wrn16_1', {}),
    ('resnet18', {}),
    ('mobilenet_v1', {'width_multiplier': 0.25}),
  ],
)
def test_every_bn_after_an_adder_layer_is_two_pass(name, kwargs):
  size = 32 if name in ('resnet8', 'wrn16_1') else 64
  images = jnp.zeros((2, size, size, 3))
  seen = {}

  def record(next_fun, args, kw, context):
    if isinstance(context.module, nn.BatchNorm):
      seen[context.module.name] = context.module.use_fast_variance
    return next_fun(*args, **kw)

  for conv_type in ('adder', 'conv'):
    seen.clear()
    model = models.build_model(
      name, conv_type=conv_type, num_classes=10, **kwargs
    )
    with nn.intercept_methods(record):
      jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    # Only the BNs after the multiplicative stem and classifier keep the
    # one-pass variance in adder models; CNNs keep flax's default everywhere.
    fast = sorted(k for k, v in seen.items() if v)
    if conv_type == 'adder':
      assert set(fast) <= {'stem_bn', 'logit_bn'}, fast
      assert len(seen) > len(fast)
    else:
      assert len(fast) == len(seen)


def _model_config(dtype):
  config = ml_collections.ConfigDict()
  config.name, config.conv_type, config.kwargs = 'resnet8', 'adder', {}
  config.dtype = dtype
  return config


def test_bfloat16_step_is_close_to_float32():
  images = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
  labels = jnp.arange(16) % 10
  f32 = base.build_zoo_model(_model_config('float32'), 10, (32, 32, 3))
  bf16 = base.build_zoo_model(_model_config('bfloat16'), 10, (32, 32, 3))
  # Jitted: eager init would compile and run every primitive one by one.
  params, stats = jax.jit(lambda k, x: base.init_model(f32, k, x))(
    jax.random.key(0), images
  )

  def loss_and_grads(model):
    def loss(p):
      logits, _, new_stats = base.run_model(model, p, stats, images, True)
      ce = -jnp.mean(
        jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
      )
      return ce, (logits, new_stats)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (l32, (z32, s32)), g32 = loss_and_grads(f32)
  (l16, (z16, s16)), g16 = loss_and_grads(bf16)
  # Losses, logits and statistics come back in float32 either way.
  assert z16.dtype == jnp.float32 and l16.dtype == jnp.float32
  for leaf in jax.tree.leaves((params, s16)):
    assert leaf.dtype == jnp.float32
  # bfloat16 keeps 8 mantissa bits: every adder layer sees inputs and
  # filters rounded by up to 2^-9 relative, K = 9*C terms add that noise up
  # (about sqrt(K) * 2^-9 of a term), and 8 such layers each pass it on after
  # BN. Measured here: 3.2 % of the logits' norm, 5.2 % at the worst logit. A
  # wrong model (a missing BN, another op) is off by O(100 %).
  rel = float(jnp.linalg.norm(z16 - z32) / jnp.linalg.norm(z32))
  scale = float(jnp.max(jnp.abs(z32)))
  assert rel < 6e-2, rel
  assert float(jnp.max(jnp.abs(z16 - z32))) < 0.1 * scale
  assert abs(float(l16) - float(l32)) < 5e-2 * abs(float(l32))
  # The gradients point the same way (cosine > 0.98 over all parameters).
  flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g32)])
  flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g16)])
  cosine = jnp.dot(flat32, flat16) / (
    jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16)
  )
  assert float(cosine) > 0.98, float(cosine)
  # And bfloat16 did run: the results are not bit-identical to float32.
  assert float(jnp.max(jnp.abs(z16 - z32))) > 0


def test_unknown_dtype_is_a_config_error():
  with pytest.raises(ConfigError, match="dtype='float16'"):
    base.build_zoo_model(_model_config('float16'), 10, (32, 32, 3))
