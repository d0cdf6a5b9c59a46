"""KD from several frozen teachers: the two ways they combine, written out.

mean_targets: T^2 KL(mean_t softmax(z_t / T) || softmax(z_s / T));
sum_losses:   T^2 sum_t KL(softmax(z_t / T) || softmax(z_s / T)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import load_config_module
from kdjax import config_defaults
from kdjax.errors import ConfigError
from kdjax.methods import base, build_method

TINY = dict(stem_width=4, stage_widths=(4, 4, 8))


def _method(mode, num_teachers=2):
  config = load_config_module('kd').get_config('demo')
  config.model = config_defaults.model('resnet8', 'conv', **TINY)
  widths = [(4, 4, 8), (8, 8, 8)]
  config.teachers = [
    config_defaults.model('resnet8', 'conv', stem_width=4, stage_widths=w)
    for w in widths[:num_teachers]
  ]
  config.kd.multi_teacher = mode
  config.kd.temperature = 3.0
  return build_method(config, num_classes=10, image_shape=(8, 8, 1))


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('mode', ['mean_targets', 'sum_losses'])
def test_several_teachers_combine_as_configured(mode):
  method = _method(mode)
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
    'label': jnp.asarray([0, 1, 2, 3], jnp.int32),
  }
  weights = [
    model.init(jax.random.key(i + 5), batch['image'], train=False)
    for i, (model, _) in enumerate(method.frozen_teachers())
  ]
  frozen = method.prepare_frozen(weights, batch['image'])
  params, stats = method.init(jax.random.key(0), batch['image'])
  _, (_, metrics) = method.loss(
    0, params, stats, frozen, batch, jax.random.key(1)
  )
  temperature = 3.0
  student = np.asarray(
    base.run_model(
      method.student,
      params['student']['model'],
      stats['student']['model'],
      batch['image'],
      True,
    )[0],
    np.float64,
  )
  teachers = [
    np.asarray(model.apply(w, batch['image'], train=False)[0], np.float64)
    for (model, _), w in zip(method.frozen_teachers(), weights)
  ]
  log_q = np.log(_np_softmax(student / temperature))

  def kl(p):
    return np.mean(np.sum(p * (np.log(p) - log_q), -1))

  probs = [_np_softmax(z / temperature) for z in teachers]
  if mode == 'mean_targets':
    expected = temperature**2 * kl(np.mean(probs, 0))
  else:
    expected = temperature**2 * sum(kl(p) for p in probs)
  np.testing.assert_allclose(metrics['loss/kd'], expected, rtol=1e-4)
  heads = method.predict(params, stats, frozen, batch['image'])
  assert set(heads) == {'student', 'teacher0', 'teacher1'}


def test_an_unknown_combination_is_refused():
  with pytest.raises(ConfigError, match='multi_teacher'):
    _method('vote')


def test_one_teacher_is_one_frozen_teacher():
  config = load_config_module('kd').get_config('demo')
  method = build_method(config, num_classes=10, image_shape=(28, 28, 1))
  assert len(method.frozen_teachers()) == 1
