"""The 'distill' method (kdjax/methods/distill.py) and configs/distill.py.

Each term's value is recomputed here from the pure losses and the method's own
modules; DKD's warm-up follows the step; the frozen teacher gets no gradient;
one tiny training run with every term goes through the trainer
(tests/integration/test_distill_run.py).
"""

import copy

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax import methods
from kdjax.errors import ConfigError
from kdjax.methods import distill
from kdjax.methods import distill_terms
from helpers import ALL_DISTILL_TERMS, distill_tiny_config, load_config_module

CONFIGS = load_config_module('distill')
IMAGE_SHAPE = (16, 16, 1)
NUM_CLASSES = 5


@pytest.fixture(scope='module')
def built():
  """(method, params, batch_stats, frozen, batch) with every term."""
  config = distill_tiny_config()
  method = methods.build_method(
    config,
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    steps_per_epoch=3,
  )
  keys = jax.random.split(jax.random.key(0), 4)
  images = jax.random.normal(keys[0], (6,) + IMAGE_SHAPE)
  labels = jnp.arange(6) % NUM_CLASSES
  params, stats = method.init(keys[1], images)
  t_vars = method.teacher.init(keys[2], images, train=False)
  t_vars = {'params': t_vars['params'], 'batch_stats': t_vars['batch_stats']}
  frozen = method.prepare_frozen([t_vars], images)
  return method, params, stats, frozen, {'image': images, 'label': labels}


def _expected_terms(method, params, stats, frozen, batch):
  """Each term recomputed from the pure losses and the modules, by hand."""
  images, labels = batch['image'], batch['label']
  s_logits, s_feats = method.student.apply(
    {
      'params': params['student']['model'],
      'batch_stats': stats['student']['model'],
    },
    images,
    train=True,
    mutable=['batch_stats'],
  )[0]
  t_logits, t_feats = method.teacher.apply(frozen['teachers'][0], images)
  s_stage = [jax.nn.relu(s['preact']) for s in s_feats['stages']]
  t_stage = [jax.nn.relu(s['preact']) for s in t_feats['stages']]
  s_pool, t_pool = s_feats['pooled'], t_feats['pooled']
  o = method.options
  p = params['student']
  embed = method.modules['cc']
  vid = []
  for i, (regressor, x, t) in enumerate(
    zip(method.modules['vid'], s_stage, t_stage)
  ):
    mu, log_scale = regressor.apply({'params': p['vid'][f'stage{i}']}, x)
    vid.append(losses.vid_loss(mu, log_scale, t))
  fused = method.modules['review_kd'].apply(
    {'params': p['review_kd'], 'batch_stats': stats['student']['review_kd']},
    tuple(s_stage) + (s_pool[:, None, None, :],),
    train=True,
    mutable=['batch_stats'],
  )[0]
  teacher_review = [s['preact'] for s in t_feats['stages']]
  teacher_review.append(t_pool[:, None, None, :])
  expected = {
    'ce': losses.cross_entropy(s_logits, labels),
    'kd': losses.kd_loss(s_logits, t_logits, 4.0),
    'dkd': losses.dkd_loss(s_logits, t_logits, labels),
    'dist': losses.dist_loss(s_logits, t_logits, temperature=4.0),
    'logit_std': losses.logit_std_kd_loss(s_logits, t_logits),
    'sp': losses.sp_loss(s_stage[-1], t_stage[-1]),
    'cc': losses.cc_loss(
      embed.apply({'params': p['cc']['student_embed']}, s_pool),
      embed.apply({'params': p['cc']['teacher_embed']}, t_pool),
    ),
    'rkd': losses.rkd_loss(s_pool, t_pool),
    'pkt': losses.pkt_loss(s_pool, t_pool),
    'nst': sum(losses.nst_loss(s, t) for s, t in zip(s_stage, t_stage)),
    'fsp': losses.fsp_loss(s_stage, t_stage),
    'vid': sum(vid),
    'review_kd': losses.review_kd_hcl_loss(fused, teacher_review),
  }
  assert o['dkd']['beta'] == 8.0 and o['dist']['beta'] == 1.0
  return expected


STEP = 4  # Epoch 2 of 3-step epochs: DKD's warm-up 2/4, ReviewKD's 2/3.


@pytest.fixture(scope='module')
def loss_and_grads(built):
  """((total, (new_stats, metrics)), (d/d params, d/d frozen)) in one compile."""
  method, params, stats, frozen, batch = built

  def loss(params, frozen):
    return method.loss(
      jnp.asarray(STEP), params, stats, frozen, batch, jax.random.key(1)
    )

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
    params, frozen
  )


def test_each_term_is_the_pure_loss_it_wraps_and_the_total_their_sum(
  built, loss_and_grads
):
  method, params, stats, frozen, batch = built
  (total, (new_stats, metrics)), _ = loss_and_grads
  # Jitted: eagerly, each primitive of the reference compiles on its own
  # (3x slower).
  expected = jax.jit(functools.partial(_expected_terms, method))(
    params, stats, frozen, batch
  )
  want = 0.7 * expected['ce']
  for i, name in enumerate(ALL_DISTILL_TERMS):
    np.testing.assert_allclose(
      metrics[f'loss/{name}'],
      expected[name],
      rtol=1e-4,
      atol=1e-7,
      err_msg=name,
    )
    factor = {'dkd': 2 / 4, 'review_kd': 2 / 3}.get(name, 1.0)
    want = want + (0.5 + 0.25 * i) * factor * expected[name]
  np.testing.assert_allclose(metrics['distill/dkd_warmup'], 0.5)
  np.testing.assert_allclose(total, want, rtol=1e-4)
  assert set(new_stats['student']) == {'model', 'review_kd'}


def test_dkd_warmup_follows_the_step():
  # mdistiller: min(epoch / warmup, 1), epoch 1-based; 5 steps an epoch.
  for step, want in [(0, 1 / 20), (4, 1 / 20), (5, 2 / 20), (97, 20 / 20)]:
    got = distill_terms.warmup_factor(jnp.asarray(step), 5, 20)
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=str(step))
  np.testing.assert_allclose(distill_terms.warmup_factor(10**6, 5, 20), 1.0)
  np.testing.assert_allclose(distill_terms.warmup_factor(0, 5, 0), 1.0)


def test_the_frozen_teacher_gets_no_gradient_and_the_modules_do(
  loss_and_grads,
):
  _, (g_params, g_frozen) = loss_and_grads
  for leaf in jax.tree.leaves(g_frozen):
    assert not np.any(np.asarray(leaf))
  student = g_params['student']
  for name in ('model', 'cc', 'vid', 'review_kd'):
    norm = sum(
      float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(student[name])
    )
    assert norm > 0, name
  # CC's teacher-side embedding learns too (RepDistiller trains both).
  teacher_embed = student['cc']['teacher_embed']
  assert float(jnp.sum(jnp.abs(teacher_embed['linear']['kernel']))) > 0


def test_check_config_names_the_bad_setting():
  config = distill_tiny_config(('kd',))
  bad = copy.deepcopy(config)
  bad.distill.terms = ('kd', 'crd_typo')
  with pytest.raises(ConfigError, match='unknown.*crd_typo'):
    distill.Distill.check_config(bad)
  bad = copy.deepcopy(config)
  bad.distill.kd.weight = -1.0
  with pytest.raises(ConfigError, match='kd.weight'):
    distill.Distill.check_config(bad)
  bad = copy.deepcopy(config)
  bad.distill.kd.tau = 3.0
  with pytest.raises(ConfigError, match=r"unknown option.*'tau'"):
    distill.Distill.check_config(bad)


def test_presets_come_from_the_tables():
  assert 'demo' in CONFIGS.PRESETS
  for method in CONFIGS.METHODS:
    config = CONFIGS.get_config(f'demo_{method}')
    assert config.method == 'distill' and config.dataset.name == 'mnist5k'
    assert tuple(config.distill.terms) == tuple(CONFIGS.METHODS[method][1])
    distill.Distill.check_config(config)
  resnet = CONFIGS.get_config('cifar100_resnet32x4_resnet8x4_pkt')
  assert resnet.dataset.name == 'cifar100' and resnet.batch_size == 64
  assert (
    resnet.teacher.name == 'resnet32x4' and resnet.model.name == 'resnet8x4'
  )
  # RepDistiller's weights (scripts/run_cifar_distill.sh, -b).
  weights = dict(
    sp=3000, cc=0.02, vid=1, rkd=1, pkt=30000, nst=50, fsp=50, kd=0.9
  )
  for method, weight in weights.items():
    config = CONFIGS.get_config(f'cifar100_wrn40_2_wrn16_2_{method}')
    assert config.distill[method].weight == weight, method
  assert (
    CONFIGS.get_config('cifar100_wrn40_2_wrn16_2_dkd').distill.dkd.beta == 6
  )
  # Every quoted number is in the module docstring.
  assert set(CONFIGS.REFERENCE) == set(CONFIGS.METHODS)
  for method, numbers in CONFIGS.REFERENCE.items():
    quoted = ' / '.join('-' if n is None else f'{n:.2f}' for n in numbers)
    assert f'{method} {quoted}' in ' '.join(CONFIGS.__doc__.split()), method
