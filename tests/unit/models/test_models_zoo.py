"""The benchmark zoo models (VGG, VGG-small, MobileNetV2, ShuffleNets, CIFAR
ResNet-50, PyramidNets): shapes, adder forms, parameter counts against the
PyTorch references (tests/torch_reference_zoo.py) and the sources' published
counts, RepDistiller's spellings.

Logits and feature values against PyTorch: tests/test_convert_zoo.py; the
other models: tests/unit/models/test_models.py.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_reference_models as ref
import torch_reference_zoo as zoo
from kdjax import models
from kdjax.convert import convert as convert_lib
from kdjax.models import pyramidnet, shufflenet, vgg

VGG_STAGES = [(128, 16), (256, 8), (512, 4), (512, 4)]

# (channels, spatial size) per stage at a 32x32 input, and the pooled width,
# from the sources (RepDistiller's feature lists, OFD's extract_feature).
EXPECTED = {
  'vgg8': (VGG_STAGES, 512),
  'vgg11': (VGG_STAGES, 512),
  'vgg13': (VGG_STAGES, 512),
  'vgg16': (VGG_STAGES, 512),
  'vgg19': (VGG_STAGES, 512),
  'vgg_small': ([(128, 16), (256, 8), (512, 4)], 4 * 4 * 512),
  'mobilenet_v2': ([(12, 16), (16, 8), (48, 4), (160, 2)], 1280),
  'shufflenet_v1': ([(240, 16), (480, 8), (960, 4)], 960),
  'shufflenet_v2': ([(116, 16), (232, 8), (464, 4)], 1024),
  'resnet50_cifar': ([(256, 32), (512, 16), (1024, 8), (2048, 4)], 2048),
  # At a reduced depth (the full nets: parameter counts below): n = 3.
  # Bottleneck alpha 240: widths 16 + 26.67 k; stage features are the next
  # stage's first conv1 width (123, 203) and the final 256 x 4.
  'pyramidnet200_240': ([(123, 32), (203, 16), (1024, 8)], 1024),
  'pyramidnet110_84': ([(44, 32), (72, 16), (100, 8)], 100),
}
SMALL = {
  'pyramidnet200_240': dict(depth=29),
  'pyramidnet110_84': dict(depth=20),
}


@pytest.fixture(autouse=True, scope='module')
def _one_torch_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


NEW_FAMILIES = (
  models.VGG,
  models.VGGSmall,
  models.MobileNetV2,
  models.ShuffleNetV1,
  models.ShuffleNetV2,
  models.PyramidNet,
)


def test_every_zoo_model_has_expected_shapes():
  # The other models' shapes: tests/unit/models/test_models.py.
  new = {
    n
    for n in models.available_models()
    if models.model_spec(n).constructor in NEW_FAMILIES
    or models.model_spec(n).defaults.get('cifar_stem')
  }
  assert new == set(EXPECTED)


@pytest.mark.parametrize('conv_type', ['conv', 'adder'])
@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_shapes_and_adder_form(name, conv_type):
  model = models.build_model(
    name, conv_type=conv_type, num_classes=7, **SMALL.get(name, {})
  )
  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and isinstance(
      module, (models.ConvOrAdder, nn.Dense, nn.BatchNorm)
    ):
      kind = getattr(module, 'conv_type', type(module).__name__)
      calls.append(('/'.join(module.path), kind))
    return next_fun(*args, **kwargs)

  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  with nn.intercept_methods(record):
    (logits, features), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False),
      images,
    )
  assert logits.shape == (2, 7)
  assert set(features) == {'stages', 'pooled'}
  stages, pooled = EXPECTED[name]
  assert features['pooled'].shape == (2, pooled)
  assert len(features['stages']) == len(stages)
  for stage, (channels, size) in zip(features['stages'], stages):
    assert stage['preact'].shape == (2, size, size, channels)
    assert stage['bn_scale'].shape == stage['bn_bias'].shape == (channels,)
    raw = stage['raw'].shape
    assert stage['filter_sq_norm'].shape == raw[-1:]
    assert stage['patch_energy'].shape[:3] == raw[:3]
    assert stage['patch_energy'].shape[-1] in (1, raw[-1])

  kinds = dict(calls)
  assert kinds['stem'] == 'conv' and kinds['classifier'] == 'Dense'
  params = variables['params']
  assert ('logit_bn' in params) == (conv_type == 'adder')
  assert ('bias' in params['classifier']) == (conv_type == 'conv')
  convs = [p for p, k in calls if k in ('conv', 'adder') and p != 'stem']
  assert convs and all(kinds[p] == conv_type for p in convs)
  # Every adder's output goes through a BN next (a pool may sit between).
  for (path, kind), (_, after) in zip(calls, calls[1:]):
    if kind == 'adder':
      assert after == 'BatchNorm', path


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _torch_count(net):
  return sum(p.numel() for p in net.parameters())


def _conv_biases(net):
  """Biases of convs followed by a BN: kdjax folds them into the BN."""
  return sum(
    m.bias.numel()
    for m in net.modules()
    if isinstance(m, torch.nn.Conv2d) and m.bias is not None
  )


# Model -> (PyTorch reference for 100 classes, count the source publishes).
PARAMETER_COUNTS = {
  'vgg8': (lambda: zoo.RepVGG(8, 100), None),
  'vgg11': (lambda: zoo.RepVGG(11, 100), None),
  'vgg13': (lambda: zoo.RepVGG(13, 100), None),
  'vgg16': (lambda: zoo.RepVGG(16, 100), None),
  'vgg19': (lambda: zoo.RepVGG(19, 100), None),
  'vgg_small': (lambda: zoo.VGGSmall(100), None),
  'mobilenet_v2': (lambda: zoo.MobileHalf(100), None),
  'shufflenet_v1': (lambda: zoo.ShuffleV1(100), None),
  'shufflenet_v2': (lambda: zoo.ShuffleV2(100), None),
  'resnet50_cifar': (lambda: zoo.RepResNet50(100), None),
  # OFD CIFAR-100/README.md: "Pyramid-200 26.84M", "Pyramid-110 3.91M".
  'pyramidnet200_240': (lambda: zoo.PyramidNet(200, 240, 100, True), 26.84e6),
  'pyramidnet110_84': (lambda: zoo.PyramidNet(110, 84, 100, False), 3.91e6),
  # OFD ImageNet/README.md: "MobileNet 4.23M" (1000 classes).
  'mobilenet_v1': (lambda: zoo.OFDMobileNet(1000), 4.23e6),
  # The WRN student OFD distils PyramidNet-200 into: "WRN 28-4 5.87M".
  'wrn28_4': (lambda: ref.WideResNet(28, 4, 100), 5.87e6),
}


@pytest.mark.parametrize('name', sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_the_sources(name):
  build, published = PARAMETER_COUNTS[name]
  with torch.device('meta'):  # Shapes only.
    net = build()
  classes = 1000 if name == 'mobilenet_v1' else 100
  # Cached: tests/test_convert_zoo.py's layout checks use the same trees.
  abstract = convert_lib._abstract_variables(name, 'conv', classes)
  count = _count(abstract['params'])
  assert count == _torch_count(net) - _conv_biases(net)
  if published is not None:
    assert round(_torch_count(net) / 1e6, 2) == published / 1e6


def test_repdistiller_spellings():
  cifar = models.build_model('ResNet50', num_classes=100)
  assert cifar.cifar_stem and cifar.total_stride == 8
  assert not models.build_model('resnet50', num_classes=100).cifar_stem
  spellings = {
    'vgg8': 'vgg8',
    'vgg13': 'vgg13',
    'vgg13_bn': 'vgg13',
    'MobileNetV2': 'mobilenet_v2',
    'mobile_half': 'mobilenet_v2',
    'ShuffleV1': 'shufflenet_v1',
    'ShuffleV2': 'shufflenet_v2',
    'ResNet50': 'resnet50_cifar',
    'wrn_40_2': 'wrn40_2',
  }
  for spelling, name in spellings.items():
    assert models.registry.canonical_name(spelling) == name
    assert isinstance(
      models.build_model(spelling, num_classes=5),
      models.model_spec(name).constructor,
    )
  assert (
    models.build_model('MobileNetV2', num_classes=5).width_multiplier == 0.5
  )
  sizes = {
    'vgg8': 8,
    'vgg_small': 8,
    'mobilenet_v2': 16,
    'shufflenet_v1': 8,
    'resnet50_cifar': 8,
    'pyramidnet200_240': 4,
  }
  for name, size in sizes.items():
    assert models.min_image_size(name) == size


def test_architecture_errors():
  with pytest.raises(ValueError, match='9n \\+ 2'):
    pyramidnet.block_widths(201, 240, True)
  with pytest.raises(ValueError, match='6n \\+ 2'):
    models.build_model('pyramidnet110_84', num_classes=3, depth=111).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3))
    )
  with pytest.raises(ValueError, match='VGG depth must be one of'):
    models.build_model('vgg8', num_classes=3, depth=10).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3))
    )


def test_pyramid_widths_follow_the_reference():
  with torch.device('meta'):
    net = zoo.PyramidNet(200, 240, 100, True)
  widths = [
    u.conv1.out_channels for s in (1, 2, 3) for u in getattr(net, f'layer{s}')
  ]
  assert pyramidnet.block_widths(200, 240, True) == widths
  assert widths[0] == 20 and widths[-1] == 256


@pytest.mark.parametrize('size', [7, 8])
def test_pools_and_shuffle_match_pytorch(size):
  x = np.random.default_rng(size).standard_normal((2, 6, size, size))
  x = x.astype(np.float32)
  nhwc = x.transpose(0, 2, 3, 1)
  expected = torch.nn.functional.avg_pool2d(
    torch.from_numpy(x), 2, 2, ceil_mode=True
  )
  np.testing.assert_allclose(
    np.asarray(pyramidnet.avg_pool_ceil(jnp.asarray(nhwc))),
    expected.numpy().transpose(0, 2, 3, 1),
    rtol=1e-6,
  )
  for groups in (2, 3):
    np.testing.assert_array_equal(
      np.asarray(shufflenet.channel_shuffle(jnp.asarray(nhwc), groups)),
      zoo._shuffle(torch.from_numpy(x), groups).numpy().transpose(0, 2, 3, 1),
    )


def _repo_root():
  path = os.path.dirname(os.path.abspath(__file__))
  while not os.path.exists(os.path.join(path, 'pyproject.toml')):
    path = os.path.dirname(path)
  return path


def test_docs_models_page_lists_every_model_with_its_count():
  with open(os.path.join(_repo_root(), 'docs', 'models.md')) as f:
    rows = re.findall(
      r'^\| `(\w+)` \|[^|]*\| ([\d.]+) \|\s*([\d.]*)\s*\|', f.read(), re.M
    )
  assert sorted(r[0] for r in rows) == models.available_models()
  for name, listed, published in rows:
    spec = models.model_spec(name)
    abstract = convert_lib._abstract_variables(
      name, 'conv', spec.default_num_classes
    )
    count = _count(abstract['params'])
    if spec.constructor is models.VGG:  # The source's conv biases.
      count += sum(map(sum, vgg.VGG_BLOCKS[spec.defaults['depth']]))
    assert float(listed) == round(count / 1e6, 2), name
    if published:  # Rounded, or cut as OFD's README writes WRN-28-2's.
      assert float(published) in (round(count / 1e6, 2), count // 10**4 / 100)
