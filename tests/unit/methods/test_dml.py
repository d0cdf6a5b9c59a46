"""DML: each network's gradient is that of its own loss, written out here.

L_i = CE(y, p_i) + w / (N - 1) * sum_{j != i} T^2 KL(p_j^T || p_i^T), with
the peers' predictions constants for network i.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config_module
from kdjax.errors import ConfigError
from kdjax.methods import base, build_method


def _config(num_peers=1, temperature=2.0, kd_weight=0.7, peer_type='conv'):
  config = load_config_module('dml').get_config('demo')
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  tiny = dict(stem_width=4, stage_widths=(4, 4, 8))
  config.model = config_defaults.model('resnet8', 'conv', **tiny)
  config.peers = [
    config_defaults.model('resnet8', peer_type, **tiny)
    for _ in range(num_peers)
  ]
  config.dml.update(temperature=temperature, kd_weight=kd_weight)
  return config


def _reference_loss(own, others, labels, temperature, kd_weight):
  log_p = jax.nn.log_softmax(own)
  ce = -jnp.mean(log_p[jnp.arange(own.shape[0]), labels])
  log_q = jax.nn.log_softmax(own / temperature)
  kl = 0.0
  for other in others:
    log_t = jax.nn.log_softmax(jax.lax.stop_gradient(other) / temperature)
    kl += jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_q), -1))
  return ce + kd_weight * temperature**2 * kl / len(others)


def test_each_network_gets_the_gradient_of_its_own_loss():
  temperature, kd_weight = 2.0, 0.7
  method = build_method(
    _config(1, temperature, kd_weight),
    num_classes=10,
    image_shape=(8, 8, 1),
  )
  assert method.groups == ('student', 'peer1')
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
    'label': jnp.asarray([0, 1, 2, 3], jnp.int32),
  }
  params, stats = jax.jit(method.init)(jax.random.key(0), batch['image'])
  grads = jax.jit(
    jax.grad(
      lambda p: method.loss(0, p, stats, {}, batch, jax.random.key(1))[0]
    )
  )(params)
  networks = (method.student,) + method.peers

  def logits(group, model, p):
    return base.run_model(
      model, p, stats[group]['model'], batch['image'], True
    )[0]

  all_logits = [
    logits(g, m, params[g]['model']) for g, m in zip(method.groups, networks)
  ]
  for i, (group, model) in enumerate(zip(method.groups, networks)):
    others = [z for j, z in enumerate(all_logits) if j != i]
    expected = jax.jit(
      jax.grad(
        lambda p, group=group, model=model, others=others: _reference_loss(
          logits(group, model, p),
          others,
          batch['label'],
          temperature,
          kd_weight,
        )
      )
    )(params[group]['model'])
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
      grads[group]['model'],
      expected,
    )


def test_an_adder_peer_gets_the_adder_lr_scaling_the_cnn_none():
  method = build_method(
    _config(peer_type='adder'), num_classes=10, image_shape=(8, 8, 1)
  )
  params = jax.eval_shape(
    lambda: method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))[0]
  )
  masks = method.adder_masks(params)
  assert any(jax.tree.leaves(masks['peer1']))
  assert not any(jax.tree.leaves(masks['student']))


def test_predict_reports_every_network_and_their_ensemble():
  method = build_method(_config(1), num_classes=10, image_shape=(8, 8, 1))
  images = jnp.ones((2, 8, 8, 1))
  params, stats = jax.jit(method.init)(jax.random.key(0), images)
  heads = method.predict(params, stats, {}, images)
  assert set(heads) == {'student', 'peer1', 'ensemble'}
  np.testing.assert_allclose(
    heads['ensemble'], (heads['student'] + heads['peer1']) / 2, rtol=1e-6
  )


def test_a_config_without_peers_is_refused():
  config = _config(1)
  config.peers = []
  with pytest.raises(ConfigError, match='config.peers'):
    build_method(config, num_classes=10, image_shape=(8, 8, 1))
