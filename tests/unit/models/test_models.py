"""Tests for kdjax.models: shapes, adder semantics and the feature contract."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import models

STAGE_KEYS = {
  'preact',
  'bn_scale',
  'bn_bias',
  'raw',
  'patch_energy',
  'filter_sq_norm',
}

# (channels, spatial size) per stage at a 32x32 input; independent of the code.
EXPECTED_STAGES = {
  'resnet8': [(16, 32), (32, 16), (64, 8)],
  'resnet14': [(16, 32), (32, 16), (64, 8)],
  'resnet20': [(16, 32), (32, 16), (64, 8)],
  'resnet32': [(16, 32), (32, 16), (64, 8)],
  'resnet44': [(16, 32), (32, 16), (64, 8)],
  'resnet56': [(16, 32), (32, 16), (64, 8)],
  'resnet110': [(16, 32), (32, 16), (64, 8)],
  'resnet8x4': [(64, 32), (128, 16), (256, 8)],
  'resnet32x4': [(64, 32), (128, 16), (256, 8)],
  'wrn16_1': [(16, 32), (32, 16), (64, 8)],
  'wrn16_2': [(32, 32), (64, 16), (128, 8)],
  'wrn16_4': [(64, 32), (128, 16), (256, 8)],
  'wrn28_2': [(32, 32), (64, 16), (128, 8)],
  'wrn28_4': [(64, 32), (128, 16), (256, 8)],
  'wrn40_1': [(16, 32), (32, 16), (64, 8)],
  'wrn40_2': [(32, 32), (64, 16), (128, 8)],
  'resnet18': [(64, 8), (128, 4), (256, 2), (512, 1)],
  'resnet34': [(64, 8), (128, 4), (256, 2), (512, 1)],
  'resnet50': [(256, 8), (512, 4), (1024, 2), (2048, 1)],
  'resnet101': [(256, 8), (512, 4), (1024, 2), (2048, 1)],
  'resnet152': [(256, 8), (512, 4), (1024, 2), (2048, 1)],
  'mobilenet_v1': [(128, 8), (256, 4), (512, 2), (1024, 1)],
  'ekd_student': [],
}
# The benchmark zoo's models; their shapes: tests/test_models_zoo.py.
ZOO_MODELS = {
  'vgg8',
  'vgg11',
  'vgg13',
  'vgg16',
  'vgg19',
  'vgg_small',
  'mobilenet_v2',
  'shufflenet_v1',
  'shufflenet_v2',
  'resnet50_cifar',
  'pyramidnet200_240',
  'pyramidnet110_84',
}
EXPECTED_POOLED = {
  'resnet8x4': 256,
  'resnet32x4': 256,
  'wrn16_4': 256,
  'wrn28_4': 256,
  'ekd_student': 7 * 64,
}


# ----------------------------------------------------------------------------
# NumPy references, written from the definitions with explicit patches.


def numpy_patches(x, kernel_hw, strides, pads):
  """(B, Ho, Wo, kh, kw, C) patches of zero-padded x."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], ho, wo, kh, kw, x.shape[3]), x.dtype)
  for i in range(ho):
    for j in range(wo):
      out[:, i, j] = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
  return out


def numpy_layer(x, kernel, strides, pads, groups, kind):
  """sum x*f ('conv') or -sum |x - f| ('adder') by a loop over output channels."""
  kh, kw, group_in, out_features = kernel.shape
  patches = numpy_patches(np.asarray(x, np.float64), (kh, kw), strides, pads)
  y = np.zeros(patches.shape[:3] + (out_features,))
  for o in range(out_features):
    g = o // (out_features // groups)
    p = patches[..., g * group_in : (g + 1) * group_in]
    f = np.asarray(kernel[..., o], np.float64)
    if kind == 'conv':
      y[..., o] = np.sum(p * f, axis=(3, 4, 5))
    else:
      y[..., o] = -np.sum(np.abs(p - f), axis=(3, 4, 5))
  return y


def random_variables(model, images_shape, seed=0, **call_kwargs):
  """Variables with random values, without compiling an init (slow on CPU).

  Kernels: N(0, 1/fan_in) for multiplicative layers, N(0, 1) for adders; BN
  scale and bias away from 1 and 0 so that mix-ups show. Tests run in train
  mode, where BN uses batch statistics and keeps adder activations in range.
  """
  variables = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, **call_kwargs),
    jax.ShapeDtypeStruct(images_shape, jnp.float32),
  )
  adder = getattr(model, 'conv_type', 'conv') == 'adder'
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    names = [k.key for k in path]
    if names[-1] == 'kernel':
      multiplicative = (
        not adder or len(names) < 2 or names[-2] in ('stem', 'classifier')
      )
      std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if multiplicative else 1.0
      return (std * rng.normal(size=leaf.shape)).astype(np.float32)
    if names[-1] in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, variables)


def random_images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def train_mode_bn(x, scale, bias, axes):
  """BatchNorm with batch statistics, as PyTorch/flax compute it (biased var)."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=axes)
  var = x.var(axis=axes)
  return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


# ----------------------------------------------------------------------------
# Shapes of every model in both modes (abstract evaluation only).


@pytest.mark.parametrize('conv_type', ['conv', 'adder'])
@pytest.mark.parametrize('name', sorted(EXPECTED_STAGES))
def test_output_and_feature_shapes(name, conv_type):
  assert set(EXPECTED_STAGES) | ZOO_MODELS == set(models.available_models())
  batch, num_classes = 2, 7
  model = models.build_model(name, conv_type=conv_type, num_classes=num_classes)
  images = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  (logits, features), variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False), images
  )
  assert logits.shape == (batch, num_classes)
  assert set(variables) == {'params', 'batch_stats'}
  expected_keys = {'stages', 'pooled'}
  if name == 'ekd_student':
    expected_keys |= {'branch_logits', 'branch_pooled'}
  assert set(features) == expected_keys
  assert isinstance(features['stages'], tuple)
  assert len(features['stages']) == len(EXPECTED_STAGES[name])
  for stage, (channels, size) in zip(features['stages'], EXPECTED_STAGES[name]):
    assert set(stage) == STAGE_KEYS
    assert stage['preact'].shape == (batch, size, size, channels)
    assert stage['raw'].shape == (batch, size, size, channels)
    assert stage['bn_scale'].shape == stage['bn_bias'].shape == (channels,)
    assert stage['patch_energy'].shape == (batch, size, size, 1)
    assert stage['filter_sq_norm'].shape == (channels,)
  default_pooled = (
    EXPECTED_STAGES[name][-1][0] if EXPECTED_STAGES[name] else None
  )
  assert features['pooled'].shape == (
    batch,
    EXPECTED_POOLED.get(name, default_pooled),
  )
  head = (
    variables['params']['branch1']
    if name == 'ekd_student'
    else variables['params']
  )
  assert ('logit_bn' in head) == (conv_type == 'adder')
  assert ('bias' in head['classifier']) == (conv_type == 'conv')


@pytest.mark.parametrize('name', ['resnet20', 'ekd_student'])
def test_mnist_sized_inputs(name):
  model = models.build_model(name, conv_type='adder', num_classes=10)
  models.check_input_size(name, 28)
  images = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  (logits, features), _ = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False), images
  )
  assert logits.shape == (3, 10)
  if features['stages']:
    assert [s['preact'].shape[1] for s in features['stages']] == [28, 14, 7]


def test_bfloat16_computation():
  model = models.build_model(
    'resnet8', conv_type='adder', num_classes=10, dtype=jnp.bfloat16
  )
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  (logits, features), variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False), images
  )
  assert logits.dtype == jnp.bfloat16
  assert features['stages'][0]['preact'].dtype == jnp.bfloat16
  assert features['stages'][0]['patch_energy'].dtype == jnp.float32
  assert variables['params']['stem']['kernel'].dtype == jnp.float32


def test_ekd_student_options_and_shapes():
  model = models.build_model(
    'ekd_student', num_classes=5, num_branches=3, width=8, shared_stages=1
  )
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  (logits, features), variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, train=False), images
  )
  assert logits.shape == (2, 5)
  assert features['branch_logits'].shape == (3, 2, 5)
  assert features['branch_pooled'].shape == (3, 2, 32)
  assert features['pooled'].shape == (2, 96)
  assert [s['preact'].shape for s in features['stages']] == [(2, 16, 16, 8)]
  assert {'branch1', 'branch2', 'branch3', 'trunk_stage1_block1'} <= set(
    variables['params']
  )
  assert 'stage1_block1' not in variables['params']['branch1']


# ----------------------------------------------------------------------------
# Numerics against NumPy.


@pytest.mark.parametrize('conv_type', ['conv', 'adder'])
@pytest.mark.parametrize(
  'kernel_size,strides,groups', [(3, 2, 1), (3, 1, 2), (1, 2, 1)]
)
def test_conv_or_adder_against_numpy(conv_type, kernel_size, strides, groups):
  layer = models.ConvOrAdder(
    4, kernel_size, strides, feature_group_count=groups, conv_type=conv_type
  )
  x = random_images((2, 7, 7, 2))
  variables = random_variables(layer, x.shape)
  kernel = np.asarray(variables['params']['kernel'])
  assert kernel.shape == (kernel_size, kernel_size, 2 // groups, 4)
  y, patch_energy, filter_sq_norm = layer.apply(
    variables, x, return_kernel_features=True
  )
  # PyTorch-style symmetric padding: 1 for 3x3 even at stride 2, 0 for 1x1.
  pad = (kernel_size - 1) // 2
  pads = ((pad, pad), (pad, pad))
  expected = numpy_layer(x, kernel, (strides, strides), pads, groups, conv_type)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)
  if conv_type == 'adder':
    assert np.all(np.asarray(y) <= 0)

  patches = numpy_patches(
    np.asarray(x, np.float64), (kernel_size,) * 2, (strides,) * 2, pads
  )
  group_in = 2 // groups
  expected_energy = np.stack(
    [
      np.sum(
        patches[..., g * group_in : (g + 1) * group_in] ** 2, axis=(3, 4, 5)
      )
      for g in range(groups)
    ],
    axis=-1,
  )
  np.testing.assert_allclose(
    patch_energy, expected_energy, rtol=1e-5, atol=1e-5
  )
  expected_norms = [
    np.sum(kernel[..., o].astype(np.float64) ** 2) for o in range(4)
  ]
  np.testing.assert_allclose(filter_sq_norm, expected_norms, rtol=1e-5)
  assert patch_energy.dtype == filter_sq_norm.dtype == jnp.float32


def test_kernel_initialisation():
  conv = models.ConvOrAdder(64, 3, conv_type='conv')
  adder = models.ConvOrAdder(64, 3, conv_type='adder')
  x = jnp.zeros((1, 4, 4, 32))
  conv_kernel = conv.init(jax.random.key(0), x)['params']['kernel']
  adder_kernel = adder.init(jax.random.key(0), x)['params']['kernel']
  # He normal, fan_out = 3 * 3 * 64; AdderNet N(0, 1).
  np.testing.assert_allclose(
    np.std(conv_kernel), np.sqrt(2.0 / (9 * 64)), rtol=0.05
  )
  np.testing.assert_allclose(np.std(adder_kernel), 1.0, rtol=0.05)
  assert abs(float(np.mean(adder_kernel))) < 0.03


def test_adder_mode_layer_kinds():
  """Projection shortcuts are adders; the stem and classifier are not."""
  model = models.build_model('resnet8x4', conv_type='adder', num_classes=10)
  kinds = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(
      context.module, (models.ConvOrAdder, nn.Dense)
    ):
      kinds['/'.join(context.module.path)] = getattr(
        context.module, 'conv_type', 'dense'
      )
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(
      lambda: model.init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False
      )
    )
  assert kinds['stem'] == 'conv'
  assert kinds['classifier'] == 'dense'
  shortcuts = [p for p in kinds if p.endswith('shortcut')]
  # resnet8x4: stem 32 -> stage widths 64/128/256, so every stage projects.
  assert sorted(shortcuts) == [
    'stage1_block1/shortcut',
    'stage2_block1/shortcut',
    'stage3_block1/shortcut',
  ]
  assert all(
    kinds[p] == 'adder' for p in kinds if p not in ('stem', 'classifier')
  )
  for path in kinds:
    if path.endswith('shortcut'):
      assert 'shortcut_bn' in variables['params'][path.split('/')[0]]

  mask = models.adder_kernel_mask(model, (1, 8, 8, 3))
  flat = {
    '/'.join(k.key for k in path): v
    for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  assert flat['stem/kernel'] is False and flat['classifier/kernel'] is False
  assert flat['stage1_block1/shortcut/kernel'] is True
  assert flat['stage3_block1/conv2/kernel'] is True
  assert flat['stage3_block1/bn2/scale'] is False


def test_adder_model_numerics():
  """The built network really adds: a shortcut, the stem and the classifier by hand."""
  model = models.build_model('resnet8', conv_type='adder', num_classes=5)
  images = random_images((2, 8, 8, 3))
  variables = random_variables(model, images.shape, train=False)
  is_layer = lambda m, _: isinstance(m, (models.ConvOrAdder, nn.Dense))
  # GPUs run float32 matmuls and convs in TF32 by default (measured on an H100:
  # logits off by 4e-4); this test checks the wiring, so it asks for full f32.
  with jax.default_matmul_precision('highest'):
    (logits, features), state = jax.jit(
      lambda v, x: model.apply(
        v,
        x,
        train=True,
        mutable=['batch_stats', 'intermediates'],
        capture_intermediates=is_layer,
      )
    )(variables, images)
  inter = state['intermediates']
  params = variables['params']

  # Stage-2 projection shortcut: 1x1 adder, stride 2, on relu(stage-1 preact).
  shortcut_in = np.maximum(np.asarray(features['stages'][0]['preact']), 0)
  expected = numpy_layer(
    shortcut_in,
    params['stage2_block1']['shortcut']['kernel'],
    (2, 2),
    ((0, 0), (0, 0)),
    1,
    'adder',
  )
  np.testing.assert_allclose(
    inter['stage2_block1']['shortcut']['__call__'][0],
    expected,
    rtol=1e-5,
    atol=1e-3,
  )
  expected_stem = numpy_layer(
    images, params['stem']['kernel'], (1, 1), ((1, 1), (1, 1)), 1, 'conv'
  )
  np.testing.assert_allclose(
    inter['stem']['__call__'][0], expected_stem, rtol=1e-5, atol=1e-4
  )
  pooled = np.asarray(features['pooled'], np.float64)
  expected_logits = pooled @ np.asarray(
    params['classifier']['kernel'], np.float64
  )
  np.testing.assert_allclose(
    inter['classifier']['__call__'][0], expected_logits, rtol=1e-5, atol=1e-4
  )
  # The classifier has no bias; a BN over the logits follows it.
  bn = params['logit_bn']
  np.testing.assert_allclose(
    logits,
    train_mode_bn(expected_logits, bn['scale'], bn['bias'], 0),
    rtol=1e-4,
    atol=1e-4,
  )


# ----------------------------------------------------------------------------
# The feature contract against the variables tree.

# Where each family's OFD BN lives, looked up by hand per stage.
BN_PATHS = {
  'resnet20': [
    ('stage1_block3', 'bn2'),
    ('stage2_block3', 'bn2'),
    ('stage3_block3', 'bn2'),
  ],
  'wrn16_2': [
    ('stage2_block1', 'bn1'),
    ('stage3_block1', 'bn1'),
    ('final_bn',),
  ],
  'resnet18': [
    ('stage1_block2', 'bn2'),
    ('stage2_block2', 'bn2'),
    ('stage3_block2', 'bn2'),
    ('stage4_block2', 'bn2'),
  ],
  'bottleneck': [
    ('stage1_block1', 'bn3'),
    ('stage2_block1', 'bn3'),
    ('stage3_block1', 'bn3'),
    ('stage4_block1', 'bn3'),
  ],
  'mobilenet_v1': [
    ('block3_pw_bn',),
    ('block5_pw_bn',),
    ('block11_pw_bn',),
    ('block13_pw_bn',),
  ],
}


def _small_model(name, conv_type):
  if name == 'bottleneck':
    return models.ImageNetResNet(
      stage_sizes=(1, 1, 1, 1),
      block='bottleneck',
      num_classes=6,
      conv_type=conv_type,
    )
  kwargs = {'width_multiplier': 0.25} if name == 'mobilenet_v1' else {}
  return models.build_model(name, conv_type=conv_type, num_classes=6, **kwargs)


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize(
  'name,conv_type',
  [
    ('resnet20', 'conv'),
    ('wrn16_2', 'adder'),
    ('resnet18', 'conv'),
    ('bottleneck', 'conv'),
    ('mobilenet_v1', 'conv'),
  ],
)
def test_bn_features_match_variables(name, conv_type):
  model = _small_model(name, conv_type)
  # MobileNet at 64: the last stage keeps 2x2 pixels, enough for batch statistics.
  size = {'resnet18': 32, 'bottleneck': 32, 'mobilenet_v1': 64}.get(name, 8)
  images = random_images((2, size, size, 3))
  variables = random_variables(model, images.shape, train=False)
  (logits, features), _ = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, images)
  assert np.all(np.isfinite(logits))
  for stage, path in zip(features['stages'], BN_PATHS[name], strict=True):
    bn = _lookup(variables['params'], path)
    np.testing.assert_array_equal(stage['bn_scale'], bn['scale'])
    np.testing.assert_array_equal(stage['bn_bias'], bn['bias'])
  # Every family's last stage feeds the pooled features through a ReLU.
  np.testing.assert_allclose(
    features['pooled'],
    np.mean(np.maximum(features['stages'][-1]['preact'], 0), axis=(1, 2)),
    rtol=1e-5,
    atol=1e-5,
  )
  if name == 'mobilenet_v1':
    # No shortcut: preact is exactly the BN of raw.
    for stage in features['stages']:
      expected = train_mode_bn(
        stage['raw'], stage['bn_scale'], stage['bn_bias'], (0, 1, 2)
      )
      np.testing.assert_allclose(
        stage['preact'], expected, rtol=1e-4, atol=1e-4
      )


def test_ekd_ensemble_is_branch_mean_and_train_mode():
  model = models.build_model(
    'ekd_student', conv_type='adder', num_classes=4, num_branches=3, width=4
  )
  images = random_images((2, 8, 8, 3))
  variables = random_variables(model, images.shape, train=False)
  (logits, features), updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, images)
  branch_logits = np.asarray(features['branch_logits'])
  assert branch_logits.shape == (3, 2, 4)
  expected = (branch_logits[0] + branch_logits[1] + branch_logits[2]) / 3.0
  np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)
  assert not np.allclose(branch_logits[0], branch_logits[1])
  np.testing.assert_allclose(
    features['pooled'], np.concatenate(list(features['branch_pooled']), axis=-1)
  )
  assert set(updates) == {'batch_stats'}
  old = variables['batch_stats']['branch1']['stage3_block1']['bn2']['mean']
  new = updates['batch_stats']['branch1']['stage3_block1']['bn2']['mean']
  assert not np.allclose(old, new)


# ----------------------------------------------------------------------------
# Errors.


def test_unknown_model_and_conv_type():
  with pytest.raises(ValueError, match='resnet20') as info:
    models.build_model('resnet21', num_classes=10)
  assert 'wrn40_2' in str(info.value) and 'mobilenet_v1' in str(info.value)
  with pytest.raises(ValueError, match=r"\['conv', 'adder'\]"):
    models.build_model('resnet20', conv_type='multiplier', num_classes=10)
  with pytest.raises(ValueError, match=r"\['conv', 'adder'\]"):
    models.ConvOrAdder(4, conv_type='add').init(
      jax.random.key(0), jnp.zeros((1, 4, 4, 1))
    )
  with pytest.raises(ValueError, match='stride_in_1x1'):
    models.build_model('resnet20', num_classes=10, stride_in_1x1=True)
  assert models.build_model('wrn_40_2', num_classes=10).depth == 40
  assert models.build_model(
    'resnet50', num_classes=10, stride_in_1x1=True
  ).stride_in_1x1


def test_input_size_checks():
  models.check_input_size('resnet20', 28)
  models.check_input_size('resnet50', (224, 160))
  assert models.min_image_size('resnet50') == 32
  assert models.min_image_size('resnet8') == 4
  with pytest.raises(ValueError, match='at least 32'):
    models.check_input_size('resnet50', 28)
  with pytest.raises(ValueError, match='at least 32'):
    models.check_input_size('mobilenet_v1', (224, 16))
  with pytest.raises(ValueError, match='positive'):
    models.check_input_size('resnet20', 0)
  with pytest.raises(ValueError, match='unknown model'):
    models.check_input_size('vgg', 32)
  model = models.build_model('resnet18', num_classes=10)
  with pytest.raises(ValueError, match='too small'):
    jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    )
