"""kdjax.convert for the benchmark zoo: RepDistiller's VGGs, MobileNetV2,
ShuffleNets and ResNet50 (--format=repdistiller), OFD's PyramidNets and
ImageNet MobileNet (--format=ofd), against the PyTorch references of
tests/torch_reference_zoo.py.

Independent expectations: eval logits within 1e-4 (relative) of PyTorch, and
each stage's 'preact', 'bn_scale' and 'bn_bias' equal to the features and BNs
the sources name (RepDistiller's preact features and get_bn_before_relu,
OFD's extract_feature(preReLU=True)); every key and shape of the references'
state dicts named by a layout; to_torch loads strictly and round-trips.
"""

import jax
import numpy as np
import pytest
import torch

import torch_reference_models as ref
from torch_reference_models import assert_close_relative, random_images
import torch_reference_zoo as zoo
from kdjax import convert, models
from kdjax.convert import convert as convert_lib
from kdjax.convert import layouts
from kdjax.models import registry

NUM_CLASSES = 7


@pytest.fixture(autouse=True, scope='module')
def _one_torch_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture
def shallow(monkeypatch):
  """Registers a zoo name with other defaults for one test (a shallow net)."""

  def register(name, **defaults):
    spec = registry.model_spec(name)
    monkeypatch.setitem(
      registry._MODELS,
      name,
      spec._replace(defaults=dict(spec.defaults, **defaults)),
    )
    convert_lib._abstract_variables.cache_clear()

  yield register
  convert_lib._abstract_variables.cache_clear()


# (format, kdjax model, PyTorch reference, input size, shallow defaults).
# vgg8 at 64 pixels: the reference pools before block 4 only there. The
# PyramidNets run shallow (the layout follows the variables tree; the full
# nets are checked key by key below), pyramidnet110_84 at 14 pixels so that
# its last stage downsamples an odd map (ceil-mode pooling).
FAMILIES = {
  'vgg8': ('repdistiller', lambda: zoo.RepVGG(8, NUM_CLASSES), 64, {}),
  'vgg13': ('repdistiller', lambda: zoo.RepVGG(13, NUM_CLASSES), 8, {}),
  'mobilenet_v2': ('repdistiller', lambda: zoo.MobileHalf(NUM_CLASSES), 32, {}),
  'shufflenet_v1': ('repdistiller', lambda: zoo.ShuffleV1(NUM_CLASSES), 16, {}),
  'shufflenet_v2': ('repdistiller', lambda: zoo.ShuffleV2(NUM_CLASSES), 16, {}),
  'resnet50_cifar': (
    'repdistiller',
    lambda: zoo.RepResNet50(NUM_CLASSES),
    8,
    {},
  ),
  'mobilenet_v1': ('ofd', lambda: zoo.OFDMobileNet(NUM_CLASSES), 32, {}),
  'pyramidnet200_240': (
    'ofd',
    lambda: zoo.PyramidNet(20, 48, NUM_CLASSES, True),
    8,
    dict(depth=20, alpha=48),
  ),
  'pyramidnet110_84': (
    'ofd',
    lambda: zoo.PyramidNet(14, 24, NUM_CLASSES, False),
    14,
    dict(depth=14, alpha=24),
  ),
}


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_eval_logits_and_features_match_pytorch(name, shallow):
  fmt, build, size, defaults = FAMILIES[name]
  if defaults:
    shallow(name, **defaults)
  images = random_images((2, 3, size, size))
  net = ref.randomize(build(), images)
  with torch.no_grad():
    expected = net(images).numpy()
  notes = []
  variables = convert.from_torch(
    net.state_dict(),
    format=fmt,
    model=name,
    num_classes=NUM_CLASSES,
    report=notes.append,
  )
  model = models.build_model(name, num_classes=NUM_CLASSES)
  logits, features = jax.jit(lambda v, x: model.apply(v, x, train=False))(
    variables, images.permute(0, 2, 3, 1).numpy()
  )
  assert_close_relative(logits, expected)
  stages = features['stages']
  assert len(stages) == len(net.preact)
  for stage, preact in zip(stages, net.preact):
    assert_close_relative(
      np.asarray(stage['preact']).transpose(0, 3, 1, 2), preact.numpy()
    )
  if name == 'shufflenet_v2':  # No BN in the source: the placeholders.
    half = stages[0]['bn_scale'].shape[0] // 2
    bns = [getattr(net, f'layer{i}')[-1].bn3 for i in (1, 2, 3)]
    for stage, bn in zip(stages, bns):
      np.testing.assert_array_equal(stage['bn_scale'][:half], 1.0)
      np.testing.assert_array_equal(stage['bn_bias'][:half], 0.0)
      np.testing.assert_array_equal(
        stage['bn_scale'][half:], bn.weight.detach().numpy()
      )
      half *= 2
  else:
    for stage, bn in zip(stages, net.bn_before_relu(), strict=True):
      np.testing.assert_array_equal(stage['bn_scale'], bn.weight.detach())
      np.testing.assert_array_equal(stage['bn_bias'], bn.bias.detach())
  if name.startswith('vgg'):
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert any(f'folded the biases of {convs} convs (' in n for n in notes)


def random_variables(name, conv_type, num_classes, seed=0):
  abstract = convert_lib._abstract_variables(name, conv_type, num_classes)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = rng.standard_normal(leaf.shape).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['var']"):
      value = np.abs(value) + 0.5
    return value

  return jax.tree_util.tree_map_with_path(
    draw, {k: abstract[k] for k in ('params', 'batch_stats')}
  )


@pytest.mark.parametrize(
  'fmt,name,reference',
  [
    ('repdistiller', 'vgg11', lambda: zoo.RepVGG(11, 10)),
    ('repdistiller', 'mobilenet_v2', lambda: zoo.MobileHalf(10)),
    ('repdistiller', 'shufflenet_v1', lambda: zoo.ShuffleV1(10)),
    ('repdistiller', 'shufflenet_v2', lambda: zoo.ShuffleV2(10)),
    ('repdistiller', 'resnet50_cifar', lambda: zoo.RepResNet50(10)),
    ('ofd', 'pyramidnet110_84', lambda: zoo.PyramidNet(110, 84, 10, False)),
    ('ofd', 'mobilenet_v1', lambda: zoo.OFDMobileNet(10)),
    ('ofd', 'resnet18', lambda: ref.torchvision_resnet(18, 10)),
  ],
)
def test_to_torch_loads_strictly_and_round_trips_exactly(fmt, name, reference):
  variables = random_variables(name, convert.CONV_TYPE[fmt], 10)
  state = convert.to_torch(variables, format=fmt, model=name)
  with torch.device('meta'):
    net = reference()
  net.load_state_dict(state, strict=True, assign=True)
  assert set(net.state_dict()) == set(state)
  if name == 'vgg11':  # Exported conv biases are zero (folded on import).
    assert not state['block0.0.bias'].any()
  back = convert.from_torch(
    state, format=fmt, model=name, num_classes=10, report=None
  )
  flat_back = dict(jax.tree_util.tree_leaves_with_path(back))
  flat_in = jax.tree_util.tree_leaves_with_path(variables)
  assert len(flat_in) == len(flat_back)
  for path, value in flat_in:
    np.testing.assert_array_equal(flat_back[path], value)


# Every new model of every format, as the public definitions name them
# (the published teachers included: vgg13, ResNet50, PyramidNet-200).
REFERENCES = {
  'repdistiller': {
    **{
      f'vgg{d}': (lambda n, d=d: zoo.RepVGG(d, n)) for d in (8, 11, 13, 16, 19)
    },
    'mobilenet_v2': zoo.MobileHalf,
    'shufflenet_v1': zoo.ShuffleV1,
    'shufflenet_v2': zoo.ShuffleV2,
    'resnet50_cifar': zoo.RepResNet50,
  },
  'ofd': {
    'pyramidnet200_240': lambda n: zoo.PyramidNet(200, 240, n, True),
    'pyramidnet110_84': lambda n: zoo.PyramidNet(110, 84, n, False),
    'mobilenet_v1': zoo.OFDMobileNet,
    'resnet50': lambda n: ref.torchvision_resnet(50, n),
    'resnet152': lambda n: ref.torchvision_resnet(152, n),
  },
}


@pytest.mark.parametrize(
  'fmt,name', [(f, m) for f in REFERENCES for m in REFERENCES[f]]
)
def test_layout_names_every_reference_tensor(fmt, name):
  classes = 1000 if name in ('mobilenet_v1', 'resnet50', 'resnet152') else 100
  with torch.device('meta'):
    reference = REFERENCES[fmt][name](classes).state_dict()
  expected = {k: tuple(v.shape) for k, v in reference.items()}
  abstract = convert_lib._abstract_variables(
    name, convert.CONV_TYPE[fmt], classes
  )
  required, optional = convert_lib.expected_tensors(
    layouts.layout(fmt, name, abstract['params']), abstract
  )
  assert required.items() <= expected.items()
  assert set(expected) - set(required) <= set(optional)
  assert all(optional[k] == v for k, v in expected.items() if k in optional)


def test_repdistiller_and_ofd_teacher_lists_are_supported():
  # RepDistiller scripts/fetch_pretrained_teachers.sh and models/__init__.py.
  for spelling in (
    'wrn_40_2',
    'resnet56',
    'resnet110',
    'resnet32x4',
    'vgg13',
    'ResNet50',
    'vgg8',
    'MobileNetV2',
    'ShuffleV1',
    'ShuffleV2',
  ):
    layouts.check_supported('repdistiller', spelling)
  # OFD CIFAR-100 load_settings.py and ImageNet train_with_distillation.py.
  for name in (
    'wrn28_4',
    'pyramidnet200_240',
    'pyramidnet110_84',
    'resnet56',
    'resnet152',
    'resnet50',
    'mobilenet_v1',
  ):
    layouts.check_supported('ofd', name)
  assert layouts.training_normalization('ofd', 'mobilenet_v1') == (
    (0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225),
  )
  assert layouts.training_normalization('ofd', 'pyramidnet200_240')[1] == (
    63.0 / 255,
    62.1 / 255,
    66.7 / 255,
  )


def test_mismatches_name_the_zoo_heads_and_models():
  with torch.device('meta'):
    state = zoo.ShuffleV1(10).state_dict()
  state = {k: np.zeros(v.shape, np.float32) for k, v in state.items()}
  with pytest.raises(convert.ConversionError) as e:
    convert.from_torch(
      state, format='repdistiller', model='ShuffleV1', num_classes=100
    )
  assert 'linear.weight has shape (10, 960)' in str(e.value)
  assert '--num-classes=10' in str(e.value)
  with torch.device('meta'):
    state = zoo.RepVGG(13, 10).state_dict()
  state = {k: np.zeros(v.shape, np.float32) for k, v in state.items()}
  with pytest.raises(convert.ConversionError) as e:
    convert.from_torch(
      state, format='repdistiller', model='vgg11', num_classes=10
    )
  assert '--format=repdistiller --model=vgg13 --num-classes=10' in str(e.value)
