"""The 'crd' method (kdjax/methods/crd.py) and configs/crd.py.

The loss of two consecutive steps is recomputed here in NumPy as
RepDistiller's CRDLoss.forward (crd/criterion.py, crd/memory.py): Embed
(linear + L2 norm), ContrastMemory's scores exp(<m, e> / T) / Z with Z set
to mean * N on the first call and then fixed, ContrastLoss's NCE for both
anchors, and the no-grad momentum update of the batch's bank rows. Only the
networks' forward passes come from flax. The negatives are the method's
documented draw, jax.random.randint(rng, (B, K), 0, N) after each example's
own index (kdjax.losses.crd_sample_indices).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import methods
from kdjax.errors import ConfigError
from kdjax.methods import crd
from helpers import crd_tiny_config, load_config_module

CONFIGS = load_config_module('crd')
IMAGE_SHAPE = (16, 16, 1)
NUM_CLASSES, N, K, D, B = 5, 12, 5, 8, 4
INDEX = np.array([7, 2, 11, 4], np.int32)


@pytest.fixture(scope='module')
def built():
  """(method, params, stats, frozen, batch) of a tiny CRD."""
  method = methods.build_method(
    crd_tiny_config(num_negatives=K, feat_dim=D),
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    num_train_examples=N,
  )
  keys = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(keys[0], (B,) + IMAGE_SHAPE)
  params, stats = method.init(keys[1], images)
  t_vars = method.teacher.init(keys[2], images, train=False)
  frozen = method.prepare_frozen(
    [{'params': t_vars['params'], 'batch_stats': t_vars['batch_stats']}],
    images,
  )
  batch = {
    'image': images,
    'label': jnp.arange(B) % NUM_CLASSES,
    'index': jnp.asarray(INDEX),
  }
  return method, params, stats, frozen, batch


@pytest.fixture(scope='module')
def two_steps(built):
  """[(stats in, rng, (total, (stats out, metrics)), (d params, d frozen))] x 2.

  The second step starts from the first's bank (Z set, rows updated); both
  run the same compiled function.
  """
  method, params, stats, frozen, batch = built

  def loss(params, stats, frozen, rng):
    return method.loss(jnp.asarray(0), params, stats, frozen, batch, rng)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
  steps = []
  for seed in (1, 2):
    rng = jax.random.key(seed)
    out, grads = grad(params, stats, frozen, rng)
    steps.append((stats, rng, out, grads))
    stats = out[1][0]
  return steps


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _repdistiller_step(method, params, stats, frozen, batch, rng):
  """RepDistiller's CE + 0.8 CRDLoss and bank update, in float64 NumPy."""
  s_vars = {
    'params': params['student']['model'],
    'batch_stats': stats['student']['model'],
  }
  (s_logits, s_feats), _ = method.student.apply(
    s_vars, batch['image'], train=True, mutable=['batch_stats']
  )
  _, t_feats = method.teacher.apply(frozen['teachers'][0], batch['image'])
  heads = _np(params['student']['crd'])

  def embed(head, x):  # Embed: Linear, then Normalize(2).
    x = np.asarray(x, np.float64) @ head['linear']['kernel']
    x = x + head['linear']['bias']
    return x / np.sqrt((x**2).sum(1, keepdims=True))

  v1 = embed(heads['student_embed'], s_feats['pooled'])
  v2 = embed(heads['teacher_embed'], t_feats['pooled'])
  memory = _np(stats['student']['crd_memory'])
  y = np.asarray(batch['index'])
  draws = np.asarray(jax.random.randint(rng, (B, K), 0, N))
  idx = np.concatenate([y[:, None], draws], 1)
  # ContrastMemory.forward: out_v1 student-anchored on memory_v2 (teacher).
  out_v2 = np.exp(np.einsum('bkd,bd->bk', memory['student'][idx], v2) / 0.07)
  out_v1 = np.exp(np.einsum('bkd,bd->bk', memory['teacher'][idx], v1) / 0.07)
  z_v1, z_v2 = memory['z_student'], memory['z_teacher']
  z_v1 = out_v1.mean() * N if z_v1 < 0 else z_v1
  z_v2 = out_v2.mean() * N if z_v2 < 0 else z_v2

  def contrast_loss(x):  # ContrastLoss, Eq. 18.
    pn, eps = 1.0 / N, 1e-7
    log_d1 = np.log(x[:, 0] / (x[:, 0] + K * pn + eps))
    log_d0 = np.log(K * pn / (x[:, 1:] + K * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / B

  loss_crd = contrast_loss(out_v1 / z_v1) + contrast_loss(out_v2 / z_v2)
  logits = np.asarray(s_logits, np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
  ce = -log_p[np.arange(B), np.asarray(batch['label'])].mean()

  def update(table, v):  # The torch.no_grad() block.
    rows = table[y] * 0.5 + v * 0.5
    table = table.copy()
    table[y] = rows / np.sqrt((rows**2).sum(1, keepdims=True))
    return table

  bank = dict(
    student=update(memory['student'], v1),
    teacher=update(memory['teacher'], v2),
    z_student=z_v1,
    z_teacher=z_v2,
  )
  return ce + 0.8 * loss_crd, ce, loss_crd, bank


def test_the_loss_is_repdistillers_ce_plus_crd_and_the_bank_moves(
  built, two_steps
):
  method, params, _, frozen, batch = built
  for i, (stats, rng, (total, (new_stats, metrics)), _) in enumerate(two_steps):
    want, ce, loss_crd, bank = _repdistiller_step(
      method, params, stats, frozen, batch, rng
    )
    np.testing.assert_allclose(metrics['loss/ce'], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss/crd'], loss_crd, rtol=1e-4)
    np.testing.assert_allclose(total, want, rtol=1e-4)
    assert 'loss/kd' not in metrics  # kd_weight 0: RepDistiller's -a 0.
    old = stats['student']['crd_memory']
    new = new_stats['student']['crd_memory']
    assert set(new) == {'student', 'teacher', 'z_student', 'z_teacher'}
    for key in ('z_student', 'z_teacher'):
      np.testing.assert_allclose(new[key], bank[key], rtol=1e-4, err_msg=key)
      if i:  # Set by the first step, then fixed.
        assert np.asarray(new[key]) == np.asarray(old[key])
    others = np.setdiff1d(np.arange(N), INDEX)
    for key in ('student', 'teacher'):
      np.testing.assert_allclose(
        new[key][INDEX], bank[key][INDEX], rtol=1e-5, atol=1e-6, err_msg=key
      )
      np.testing.assert_array_equal(new[key][others], old[key][others])
      assert not np.any(np.asarray(new[key][INDEX] == old[key][INDEX]))
  # The BN statistics update as in any train-mode step.
  assert set(two_steps[0][2][1][0]['student']) == {'model', 'crd_memory'}


def test_the_teacher_gets_no_gradient_and_both_heads_do(two_steps):
  _, _, _, (g_params, g_frozen) = two_steps[0]
  for leaf in jax.tree.leaves(g_frozen):
    assert not np.any(np.asarray(leaf))
  student = g_params['student']
  for part in (
    student['model'],
    student['crd']['student_embed'],
    student['crd']['teacher_embed'],  # Trained by CRD, as in RepDistiller.
  ):
    assert sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(part)) > 0


def test_the_bank_is_state_and_precise_bn_keeps_it(built):
  from kdjax.train import step as run_step  # pylint: disable=g-import-not-at-top

  method, params, stats, _, _ = built
  memory = stats['student']['crd_memory']
  assert memory['student'].shape == memory['teacher'].shape == (N, D)
  norms = np.abs(np.asarray(memory['student'])).max()
  assert 0 < norms <= 1 / np.sqrt(D / 3)  # ContrastMemory's uniform init.
  assert float(memory['z_student']) == float(memory['z_teacher']) == -1.0
  paths = jax.tree_util.tree_leaves_with_path(memory)
  assert not {p[-1].key for p, _ in paths} & set(run_step.BN_STATISTICS)
  assert set(params['student']['crd']) == {'student_embed', 'teacher_embed'}


def test_precise_bn_averages_bn_statistics_and_keeps_the_bank_bit_for_bit():
  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P

  from kdjax.train import evaluation
  from kdjax.train.state import TrainState

  bank = np.random.default_rng(0).uniform(-1, 1, (50, 8)).astype(np.float32)
  stats = {
    'student': {
      'model': {'bn': {'mean': np.zeros(2, np.float32)}},
      'crd_memory': {'student': bank},
    }
  }
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params={},
    batch_stats=jax.tree.map(jnp.asarray, stats),
    opt_state={},
    rng=jax.random.key_data(jax.random.key(0)),
  )
  means = iter([1.0, 2.0, 4.0])

  def estimate(state, frozen, batch):  # As step.batch_stat_estimates.
    del frozen, batch
    new = {'bn': {'mean': jnp.full(2, next(means))}}
    return {'student': dict(state.batch_stats['student'], model=new)}

  class Source:
    def epoch(self, epoch_index):
      del epoch_index
      while True:
        yield {'index': np.arange(2, dtype=np.int32)}

  mesh = jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])
  out = evaluation.recalibrate_batch_stats(
    estimate, state, None, Source(), NamedSharding(mesh, P('data')), 3
  )
  student = out.batch_stats['student']
  np.testing.assert_allclose(student['model']['bn']['mean'], 7 / 3)
  np.testing.assert_array_equal(student['crd_memory']['student'], bank)


def test_crd_needs_the_number_of_examples_and_fewer_negatives():
  config = crd_tiny_config()
  kwargs = dict(num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE)
  with pytest.raises(ConfigError, match='num_train_examples'):
    methods.build_method(config, **kwargs)
  with pytest.raises(ConfigError, match='num_negatives=5 must be below the 5'):
    methods.build_method(config, num_train_examples=5, **kwargs)


@pytest.mark.parametrize(
  'key, value, message',
  [
    ('weight', -1.0, 'crd.weight'),
    ('num_negatives', 0, 'positive integer'),
    ('temperature', 0.0, r'> 0'),
    ('momentum', 1.0, r'\[0, 1\)'),
    ('nce_k', 4, r"unknown option.*'nce_k'"),
  ],
)
def test_check_config_names_the_bad_setting(key, value, message):
  config = crd_tiny_config()
  config.crd[key] = value
  with pytest.raises(ConfigError, match=message):
    crd.CRD.check_config(config)
  del config.teacher
  with pytest.raises(ConfigError, match='config.teacher'):
    crd.CRD.check_config(config)


def test_presets_are_repdistillers_setting():
  assert CONFIGS.PRESETS[0] == 'demo'
  demo = CONFIGS.get_config()
  assert demo.method == 'crd' and demo.dataset.name == 'mnist5k'
  assert demo.teacher.pretrain_epochs > 0
  assert demo.crd.num_negatives < 4000  # mnist5k's train split.
  crd.CRD.check_config(demo)
  for preset, (teacher, student) in CONFIGS.PAIRS.items():
    config = CONFIGS.get_config(preset)
    crd.CRD.check_config(config)
    assert (config.teacher.name, config.model.name) == (teacher, student)
    assert config.dataset.name == 'cifar100' and config.batch_size == 64
    assert config.num_epochs == 240 and config.optimizer.learning_rate == 0.05
    # train_student.py --distill crd -r 1 -a 0 -b 0.8 and its defaults.
    assert (
      dict(config.crd)
      == dict(
        ce_weight=1.0,
        kd_weight=0.0,
        kd_temperature=4.0,
        weight=0.8,
        feat_dim=128,
        num_negatives=16384,
        temperature=0.07,
        momentum=0.5,
        multi_teacher='mean_targets',  # kdjax's: how several teachers' KD combines.
      )
    )
    number = f'{preset} {CONFIGS.REFERENCE[preset]:.2f}'
    assert number in ' '.join(CONFIGS.__doc__.split())
  with pytest.raises(ValueError, match='Unknown crd preset'):
    CONFIGS.get_config('nope')
  assert copy.deepcopy(demo) == demo


@pytest.mark.parametrize('mode', ['mean_targets', 'sum_losses'])
def test_several_teachers_each_have_their_heads_and_bank(mode):
  """One CRD term per teacher, summed, each with its own heads and bank; the
  KD term combines the teachers as crd.multi_teacher says."""
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top
  from kdjax import losses  # pylint: disable=g-import-not-at-top
  from kdjax.methods import base  # pylint: disable=g-import-not-at-top

  config = crd_tiny_config(num_negatives=K, feat_dim=D)
  config.teachers = [
    config_defaults.model('resnet8', 'conv', stage_widths=w)
    for w in ((4, 4, 4), (8, 8, 8))
  ]
  config.crd.update(kd_weight=0.5, multi_teacher=mode)
  method = methods.build_method(
    config,
    num_classes=NUM_CLASSES,
    image_shape=IMAGE_SHAPE,
    num_train_examples=N,
  )
  keys = jax.random.split(jax.random.key(4), 4)
  images = jax.random.normal(keys[0], (B,) + IMAGE_SHAPE)
  params, stats = method.init(keys[1], images)
  assert set(params['student']) == {'model', 'crd_teacher0', 'crd_teacher1'}
  assert set(stats['student']) == {
    'model',
    'crd_memory_teacher0',
    'crd_memory_teacher1',
  }
  weights = [
    dict(model.init(k, images, train=False))
    for (model, _), k in zip(method.frozen_teachers(), keys[2:])
  ]
  frozen = method.prepare_frozen(weights, images)
  batch = {
    'image': images,
    'label': jnp.arange(B) % NUM_CLASSES,
    'index': jnp.asarray(INDEX),
  }
  rng = jax.random.key(9)
  _, (new_stats, metrics) = method.loss(0, params, stats, frozen, batch, rng)
  s_logits, s_feats, _ = base.run_model(
    method.student,
    params['student']['model'],
    stats['student']['model'],
    images,
    True,
  )
  contrast = losses.crd_sample_indices(rng, batch['index'], N, K)
  want_crd, t_logits = 0.0, []
  for i, ((model, _), w) in enumerate(zip(method.frozen_teachers(), weights)):
    z, t_feats = model.apply(w, images, train=False)
    t_logits.append(z)
    heads = params['student'][f'crd_teacher{i}']
    value, memory = losses.crd_loss(
      method.embed.apply({'params': heads['student_embed']}, s_feats['pooled']),
      method.embed.apply({'params': heads['teacher_embed']}, t_feats['pooled']),
      losses.CRDMemory(**stats['student'][f'crd_memory_teacher{i}']),
      batch['index'],
      contrast,
    )
    want_crd += value
    for got, want in zip(
      jax.tree.leaves(new_stats['student'][f'crd_memory_teacher{i}']),
      jax.tree.leaves(memory._asdict()),
    ):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss/crd'], want_crd, rtol=1e-5)
  # KD at T 4, written out: mean of the softened predictions, or a sum.
  log_q = jax.nn.log_softmax(s_logits / 4.0)
  probs = [jax.nn.softmax(z / 4.0) for z in t_logits]
  kl = lambda p: 16.0 * jnp.mean(jnp.sum(p * (jnp.log(p) - log_q), -1))
  want_kd = (
    kl(sum(probs) / 2) if mode == 'mean_targets' else sum(map(kl, probs))
  )
  np.testing.assert_allclose(metrics['loss/kd'], want_kd, rtol=1e-4)
  assert set(method.predict(params, stats, frozen, images)) == {
    'student',
    'teacher0',
    'teacher1',
  }
