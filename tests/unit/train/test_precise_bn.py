"""Precise-BN recalibration recovers the batch statistics exactly."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kdjax import config_defaults
from kdjax.methods import build_method
from kdjax.train import setup as run_setup
from kdjax.train import step as run_step


def test_batch_stat_estimates_equal_the_stem_bn_inputs_statistics():
  config = config_defaults.base_config('supervised')
  config.model = config_defaults.model('resnet8', 'conv')
  config.optimizer.epochs = 1
  method = build_method(config, num_classes=10, image_shape=(12, 12, 1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(6, 12, 12, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=6), jnp.int32)
  optimizers = run_setup.build_optimizers(
    config,
    method,
    jax.eval_shape(lambda: method.init(jax.random.key(0), images)[0]),
    1,
  )
  state = run_setup.init_state(config, method, optimizers, {}, images)
  # Running stats that are far from the truth, to see them replaced, not averaged.
  state = state.replace(
    batch_stats=jax.tree.map(lambda s: s + 7.0, state.batch_stats)
  )

  estimates = run_step.batch_stat_estimates(
    method, state, {}, {'image': images, 'label': labels}
  )

  kernel = np.asarray(state.params['student']['model']['stem']['kernel'])
  stem_out = np.asarray(
    lax.conv_general_dilated(
      images,
      kernel,
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST,
    )
  )
  stem_bn = estimates['student']['model']['stem_bn']
  np.testing.assert_allclose(
    stem_bn['mean'], stem_out.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4
  )
  np.testing.assert_allclose(
    stem_bn['var'], stem_out.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4
  )
