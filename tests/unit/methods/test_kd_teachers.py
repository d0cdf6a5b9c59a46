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


def _distill_method(mode, terms):
  config = load_config_module('distill').get_config('demo_kd')
  config.model = config_defaults.model('resnet8', 'conv', **TINY)
  config.teachers = [
    config_defaults.model('resnet8', 'conv', stem_width=4, stage_widths=w)
    for w in [(4, 4, 8), (8, 8, 8)]
  ]
  config.distill.terms = terms
  config.distill.multi_teacher = mode
  config.distill.kd.temperature = 3.0
  return build_method(config, num_classes=10, image_shape=(8, 8, 1))


@pytest.mark.parametrize(
  'mode, terms',
  [('mean_targets', ('kd', 'dkd')), ('sum_losses', ('kd', 'pkt'))],
)
def test_distill_terms_take_several_teachers(mode, terms):
  from kdjax import losses  # pylint: disable=g-import-not-at-top

  method = _distill_method(mode, terms)
  rng = np.random.default_rng(1)
  batch = {
    'image': jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
    'label': jnp.asarray([0, 1, 2, 3], jnp.int32),
  }
  weights = [
    model.init(jax.random.key(i + 7), batch['image'], train=False)
    for i, (model, _) in enumerate(method.frozen_teachers())
  ]
  assert len(weights) == 2
  frozen = method.prepare_frozen(weights, batch['image'])
  params, stats = method.init(jax.random.key(0), batch['image'])
  _, (_, metrics) = method.loss(
    0, params, stats, frozen, batch, jax.random.key(1)
  )
  s_logits, s_feats, _ = base.run_model(
    method.student,
    params['student']['model'],
    stats['student']['model'],
    batch['image'],
    True,
  )
  outs = [
    model.apply(w, batch['image'], train=False)
    for (model, _), w in zip(method.frozen_teachers(), weights)
  ]
  temperature = 3.0
  log_q = np.log(_np_softmax(np.asarray(s_logits, np.float64) / temperature))
  probs = [
    _np_softmax(np.asarray(z, np.float64) / temperature) for z, _ in outs
  ]

  def kl(p):
    return np.mean(np.sum(p * (np.log(p) - log_q), -1))

  if mode == 'mean_targets':
    expected = temperature**2 * kl(np.mean(probs, 0))
    # DKD reads the teachers as the logits of their mean soft targets at its
    # own temperature (4).
    t4 = [jax.nn.softmax(z / 4.0) for z, _ in outs]
    mean_logits = 4.0 * jnp.log(jnp.mean(jnp.stack(t4), 0))
    np.testing.assert_allclose(
      metrics['loss/dkd'],
      losses.dkd_loss(s_logits, mean_logits, batch['label']),
      rtol=1e-4,
    )
  else:
    expected = temperature**2 * sum(kl(p) for p in probs)
    np.testing.assert_allclose(
      metrics['loss/pkt'],
      sum(losses.pkt_loss(s_feats['pooled'], f['pooled']) for _, f in outs),
      rtol=1e-4,
    )
  np.testing.assert_allclose(metrics['loss/kd'], expected, rtol=1e-4)
  heads = method.predict(params, stats, frozen, batch['image'])
  assert set(heads) == {'student', 'teacher0', 'teacher1'}


def test_distill_refuses_terms_its_teacher_mode_cannot_combine():
  with pytest.raises(ConfigError, match="'sp'.*mean_targets"):
    _distill_method('mean_targets', ('kd', 'sp'))
  with pytest.raises(ConfigError, match="'ab'.*mean_targets"):
    _distill_method('mean_targets', ('kd', 'ab'))
  with pytest.raises(ConfigError, match='multi_teacher'):
    _distill_method('vote', ('kd',))


def test_distill_module_terms_get_one_module_per_teacher():
  """sum_losses with CC and VID: each teacher has its own embeddings and
  regressors, and each term is the sum of its per-teacher losses."""
  from kdjax import losses  # pylint: disable=g-import-not-at-top

  method = _distill_method('sum_losses', ('cc', 'vid'))
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
  batch = {'image': images, 'label': jnp.asarray([0, 1, 2, 3], jnp.int32)}
  weights = [
    model.init(jax.random.key(i + 3), images, train=False)
    for i, (model, _) in enumerate(method.frozen_teachers())
  ]
  frozen = method.prepare_frozen(weights, images)
  params, stats = method.init(jax.random.key(0), images)
  keys = {'cc_teacher0', 'cc_teacher1', 'vid_teacher0', 'vid_teacher1'}
  assert set(params['student']) == {'model'} | keys
  # The second teacher's stages are 8 wide: its regressors map onto 8.
  assert params['student']['vid_teacher1']['stage0']['log_scale'].shape[-1] == 8
  _, (_, metrics) = method.loss(0, params, stats, frozen, batch, None)
  _, s_feats, _ = base.run_model(
    method.student,
    params['student']['model'],
    stats['student']['model'],
    images,
    True,
  )
  s_stages = [jax.nn.relu(x['preact']) for x in s_feats['stages']]
  cc, vid = 0.0, 0.0
  for i, ((model, _), w) in enumerate(zip(method.frozen_teachers(), weights)):
    _, t_feats = model.apply(w, images, train=False)
    p = params['student'][f'cc_teacher{i}']
    embed = method.modules[f'cc_teacher{i}']
    cc += losses.cc_loss(
      embed.apply({'params': p['student_embed']}, s_feats['pooled']),
      embed.apply({'params': p['teacher_embed']}, t_feats['pooled']),
      train_teacher_embedding=True,
    )
    for j, regressor in enumerate(method.modules[f'vid_teacher{i}']):
      mu, log_scale = regressor.apply(
        {'params': params['student'][f'vid_teacher{i}'][f'stage{j}']},
        s_stages[j],
      )
      vid += losses.vid_loss(
        mu, log_scale, jax.nn.relu(t_feats['stages'][j]['preact'])
      )
  np.testing.assert_allclose(metrics['loss/cc'], cc, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/vid'], vid, rtol=1e-5)
