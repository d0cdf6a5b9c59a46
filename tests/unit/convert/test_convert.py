"""kdjax.convert against PyTorch reference networks (tests/torch_reference_models.py).

Independent expectations:
  * a converted model computes the PyTorch network's logits (eval mode with
    the imported running statistics; train mode with batch statistics), to
    float32 accuracy;
  * BN running statistics update as PyTorch's, except that PyTorch averages
    the unbiased batch variance, n / (n - 1) times flax's biased one;
  * ``to_torch`` gives state dicts that the reference AdderNet definitions load
    with strict=True and that compute the kdjax logits; to_torch -> from_torch
    is the identity, bit for bit;
  * (tests/integration/test_converted_teacher.py) a converted teacher
    scores, in a kdjax run, the accuracy the PyTorch network has on the same
    eval images.
"""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.torch
import torch

import torch_reference_models as ref
from torch_reference_models import assert_close_relative, random_images
from kdjax import convert, models
from kdjax.convert import __main__ as convert_cli
from kdjax.convert import convert as convert_lib
from kdjax.convert import layouts
from helpers import convert_repdistiller_resnet8

REPO = os.path.abspath(
  os.path.join(os.path.dirname(__file__), '..', '..', '..')
)
NUM_CLASSES = 7


@pytest.fixture(autouse=True, scope='module')
def _setup():
  """One torch thread (the CPUs are shared)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def nhwc(images):
  return images.permute(0, 2, 3, 1).numpy()


def kdjax_logits(variables, fmt, name, images, num_classes=NUM_CLASSES):
  model = models.build_model(
    name, conv_type=convert.CONV_TYPE[fmt], num_classes=num_classes
  )
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  return np.asarray(forward(variables, nhwc(images)))


# (format, kdjax model, PyTorch reference, input size), one per family and
# format. ImageNet nets run at 32x32 (their total stride), the AdderNet CIFAR
# net at 8x8 and with one block per stage (adders are slow on CPU; the layout
# of resnet20 is checked against the reference below).
FAMILIES = {
  'torchvision-resnet18': (
    'torchvision',
    'resnet18',
    lambda: ref.torchvision_resnet(18, NUM_CLASSES),
    32,
  ),
  'torchvision-resnet50': (
    'torchvision',
    'resnet50',
    lambda: ref.torchvision_resnet(50, NUM_CLASSES),
    32,
  ),
  'addernet-resnet8': (
    'addernet',
    'resnet8',
    lambda: ref.addernet_resnet20(NUM_CLASSES, blocks=1),
    8,
  ),
  'addernet-resnet50': (
    'addernet',
    'resnet50',
    lambda: ref.addernet_resnet50(NUM_CLASSES),
    32,
  ),
  'repdistiller-resnet8x4': (
    'repdistiller',
    'resnet8x4',
    lambda: ref.repdistiller_resnet(8, NUM_CLASSES, (32, 64, 128, 256)),
    32,
  ),
  'repdistiller-resnet14': (
    'repdistiller',
    'resnet14',
    lambda: ref.repdistiller_resnet(14, NUM_CLASSES),
    32,
  ),
  'repdistiller-wrn16_2': (
    'repdistiller',
    'wrn16_2',
    lambda: ref.WideResNet(16, 2, NUM_CLASSES),
    32,
  ),
  'ofd-wrn16_1': (
    'ofd',
    'wrn16_1',
    lambda: ref.WideResNet(16, 1, NUM_CLASSES),
    32,
  ),
}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_eval_logits_match_pytorch(family):
  fmt, name, build, size = FAMILIES[family]
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
  assert_close_relative(kdjax_logits(variables, fmt, name, images), expected)
  if family == 'addernet-resnet50':
    # Its classifier bias (random, nonzero) went into bn2's running mean.
    assert net.fc.bias.abs().min() > 0
    np.testing.assert_allclose(
      variables['batch_stats']['logit_bn']['mean'],
      (net.bn2.running_mean - net.fc.bias).detach().numpy(),
      rtol=1e-6,
    )
    assert any('folded fc.bias (7,) into bn2.running_mean' in n for n in notes)


def test_train_mode_logits_and_bn_updates_match_pytorch():
  images = random_images((4, 3, 32, 32), seed=1)
  net = ref.randomize(ref.repdistiller_resnet(8, NUM_CLASSES), images)
  variables = convert.from_torch(
    net.state_dict(),
    format='repdistiller',
    model='resnet8',
    num_classes=NUM_CLASSES,
    report=None,
  )
  net.train()
  with torch.no_grad():
    expected = net(images).numpy()
  model = models.build_model('resnet8', num_classes=NUM_CLASSES)
  (logits, _), updates = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, nhwc(images))
  assert_close_relative(logits, expected)
  # The running averages after one step: the same mean; the variance differs
  # only by PyTorch's unbiased batch variance, n / (n - 1) times flax's.
  n = 4 * 32 * 32  # examples x pixels the stem BN averages over
  old_var = variables['batch_stats']['stem_bn']['var']
  new_var = np.asarray(updates['batch_stats']['stem_bn']['var'])
  new_mean = np.asarray(updates['batch_stats']['stem_bn']['mean'])
  np.testing.assert_allclose(
    new_mean, net.bn1.running_mean.numpy(), rtol=1e-5, atol=1e-6
  )
  batch_var_flax = (new_var - 0.9 * old_var) / 0.1
  batch_var_torch = (net.bn1.running_var.numpy() - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(
    batch_var_torch, batch_var_flax * n / (n - 1), rtol=1e-4
  )


def test_stem_adapts_to_another_input_std_exactly():
  trained, fed = (0.27, 0.26, 0.28), (0.20, 0.2, 0.21)
  images = random_images((2, 3, 32, 32), seed=6)  # as the net was trained
  net = ref.randomize(ref.repdistiller_resnet(8, NUM_CLASSES), images)
  with torch.no_grad():
    expected = net(images).numpy()
  variables = convert.from_torch(
    net.state_dict(),
    format='repdistiller',
    model='resnet8',
    num_classes=NUM_CLASSES,
    input_std=(trained, fed),
    report=None,
  )
  # The same pixels, normalized with the other std.
  fed_images = (
    images
    * torch.tensor(trained)[None, :, None, None]
    / torch.tensor(fed)[None, :, None, None]
  )
  assert_close_relative(
    kdjax_logits(variables, 'repdistiller', 'resnet8', fed_images), expected
  )


def test_cli_input_normalization_per_format():
  notes = []
  trained, fed = convert_cli.input_normalization(
    'repdistiller', 'resnet32x4', None, notes.append
  )
  # RepDistiller's dataset/cifar100.py stds; kdjax's CIFAR-100 stds.
  assert trained == (0.2675, 0.2565, 0.2761)
  assert fed == (0.2023, 0.1994, 0.2010)
  # Its mean (0.5071, ...) is not kdjax's (0.4914, ...): reported, in its units.
  assert len(notes) == 1 and '[-0.0587, -0.0175, 0.0206]' in notes[0]
  notes.clear()
  trained, fed = convert_cli.input_normalization(
    'torchvision', 'resnet152', None, notes.append
  )
  assert trained == fed == (0.229, 0.224, 0.225) and not notes


def random_kdjax_variables(name, conv_type, num_classes, seed=0):
  """Random values for every variable of a zoo model (no init compile)."""
  model = models.build_model(name, conv_type=conv_type, num_classes=num_classes)
  size = models.model_spec(name).default_image_size
  abstract = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, size, size, 3)), train=False
    )
  )
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = rng.standard_normal(leaf.shape).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['var']"):
      value = np.abs(value) + 0.5
    return value

  return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize(
  'fmt,name,reference',
  [
    ('addernet', 'resnet20', lambda: ref.addernet_resnet20(10)),
    ('addernet', 'resnet50', lambda: ref.addernet_resnet50(10)),
    ('torchvision', 'resnet34', lambda: ref.torchvision_resnet(34, 10)),
    ('repdistiller', 'resnet32x4', None),
    ('ofd', 'wrn28_4', lambda: ref.WideResNet(28, 4, 10)),
  ],
)
def test_to_torch_loads_strictly_and_round_trips_exactly(fmt, name, reference):
  variables = random_kdjax_variables(name, convert.CONV_TYPE[fmt], 10)
  state = convert.to_torch(variables, format=fmt, model=name)
  if reference is not None:
    with torch.device('meta'):  # No memory, no init: assign=True takes ours.
      net = reference()
    # Raises on any missing or unexpected key or shape.
    net.load_state_dict(state, strict=True, assign=True)
    assert set(net.state_dict()) == set(state)
  back = convert.from_torch(
    state, format=fmt, model=name, num_classes=10, report=None
  )
  flat_in = jax.tree_util.tree_leaves_with_path(variables)
  flat_back = dict(jax.tree_util.tree_leaves_with_path(back))
  assert len(flat_in) == len(flat_back)
  for path, value in flat_in:
    np.testing.assert_array_equal(flat_back[path], value)


# Every model of every format, as the public definitions name them.
REFERENCES = {
  'torchvision': {
    f'resnet{d}': functools.partial(ref.torchvision_resnet, d)
    for d in (18, 34, 50, 101, 152)
  },
  'addernet': {
    'resnet20': ref.addernet_resnet20,
    'resnet50': ref.addernet_resnet50,
  },
  'repdistiller': {
    **{
      f'resnet{d}': functools.partial(ref.repdistiller_resnet, d)
      for d in (8, 14, 20, 32, 44, 56, 110)
    },
    'resnet8x4': lambda n: ref.repdistiller_resnet(8, n, (32, 64, 128, 256)),
    'resnet32x4': lambda n: ref.repdistiller_resnet(32, n, (32, 64, 128, 256)),
    'wrn16_1': lambda n: ref.WideResNet(16, 1, n),
    'wrn16_2': lambda n: ref.WideResNet(16, 2, n),
    'wrn40_1': lambda n: ref.WideResNet(40, 1, n),
    'wrn40_2': lambda n: ref.WideResNet(40, 2, n),
  },
  'ofd': {
    'wrn28_4': lambda n: ref.WideResNet(28, 4, n),
    'resnet56': functools.partial(ref.repdistiller_resnet, 56),
  },
}


@pytest.mark.parametrize(
  'fmt,name', [(f, m) for f in REFERENCES for m in REFERENCES[f]]
)
def test_layout_names_every_reference_tensor(fmt, name):
  with torch.device('meta'):  # Shapes only: no memory, no init.
    reference = REFERENCES[fmt][name](100).state_dict()
  expected = {k: tuple(v.shape) for k, v in reference.items()}
  abstract = convert_lib._abstract_variables(name, convert.CONV_TYPE[fmt], 100)
  required, optional = convert_lib.expected_tensors(
    layouts.layout(fmt, name, abstract['params']), abstract
  )
  assert required.items() <= expected.items()
  assert set(expected) - set(required) <= set(optional)
  assert all(optional[k] == v for k, v in expected.items() if k in optional)


# ----------------------------------------------------------------------------
# Files.


@pytest.fixture(scope='module')
def resnet8():
  """A random RepDistiller resnet8 for 10 classes and its state dict."""
  net = ref.randomize(
    ref.repdistiller_resnet(8, 10), random_images((4, 3, 32, 32), seed=4)
  )
  return net, net.state_dict()


def _save(obj, path):
  torch.save(obj, path)
  return str(path)


@pytest.mark.parametrize(
  'form',
  ['plain', 'state_dict', 'model', 'net', 'module_prefix', 'safetensors'],
)
def test_file_forms(form, resnet8, tmp_path):
  _, state = resnet8
  path = tmp_path / 'weights.pth'
  if form == 'plain':
    _save(state, path)
  elif form == 'safetensors':
    path = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(
      {k: v.contiguous() for k, v in state.items()}, str(path)
    )
  elif form == 'module_prefix':
    _save({'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)
  else:
    # As training scripts save it, e.g. RepDistiller's {'epoch', 'model',
    # 'accuracy', 'optimizer'}.
    _save(
      {
        'epoch': 240,
        form: state,
        'accuracy': np.float64(79.4),  # NumPy scalars are data, allowed.
        'optimizer': {'lr': 0.1},
      },
      path,
    )
  notes = []
  loaded = convert.load_state_dict_file(str(path), notes.append)
  assert sorted(loaded) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(np.asarray(loaded[key]), value.numpy())
  if form == 'module_prefix':
    assert any("'module.'" in n for n in notes)


def test_pickled_code_is_refused(resnet8, tmp_path):
  net, _ = resnet8
  path = _save(net, tmp_path / 'whole_module.pth')  # Pickles the classes.
  with pytest.raises(convert.ConversionError, match='weights_only=True') as e:
    convert.load_state_dict_file(path)
  assert 'state_dict()' in str(e.value)
  assert 'torch_reference_models' in str(e.value)  # The refused class.


def test_file_without_a_state_dict(tmp_path):
  path = _save({'epoch': 3, 'args': {'lr': 0.1}}, tmp_path / 'x.pth')
  with pytest.raises(convert.ConversionError, match='holds no state dict'):
    convert.load_state_dict_file(path)
  with pytest.raises(convert.ConversionError, match='does not exist'):
    convert.load_state_dict_file(str(tmp_path / 'missing.pth'))


def test_missing_torch_is_named(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails
  path = tmp_path / 'w.pth'
  path.write_bytes(b'PK\x03\x04 not really')
  with pytest.raises(convert.ConversionError, match='pip install torch'):
    convert.load_state_dict_file(str(path))


# ----------------------------------------------------------------------------
# Mismatches: one error each, listing everything.


def _convert(state, **kwargs):
  args = dict(format='repdistiller', model='resnet8', num_classes=10)
  args.update(kwargs)
  return convert.from_torch(state, report=None, **args)


def test_every_mismatch_in_one_error(resnet8):
  _, state = resnet8
  state = dict(state)
  del state['layer2.0.bn1.running_var']
  state['layer1.0.extra.weight'] = torch.zeros(3)
  state['layer3.0.conv2.weight'] = torch.zeros(64, 64, 1, 1)
  with pytest.raises(convert.ConversionError) as e:
    _convert(state)
  message = str(e.value)
  assert 'missing keys (expected shape) (1):' in message
  assert 'layer2.0.bn1.running_var (32,)' in message
  assert 'unexpected keys (found shape) (1):' in message
  assert 'layer1.0.extra.weight (3,)' in message
  assert 'shape mismatches (expected vs found) (1):' in message
  assert 'layer3.0.conv2.weight: (64, 64, 3, 3) vs (64, 64, 1, 1)' in message


def test_wrong_num_classes_names_the_classifier(resnet8):
  _, state = resnet8
  with pytest.raises(convert.ConversionError) as e:
    _convert(state, num_classes=100)
  message = str(e.value)
  assert 'fc.weight has shape (10, 64)' in message
  assert 'trained for 10 classes, not 100' in message
  assert '--num-classes=10' in message
  with pytest.raises(convert.ConversionError, match='positive int'):
    _convert(state, num_classes=0)


def test_wrong_model_suggests_the_matching_one():
  net = ref.repdistiller_resnet(20, 10)
  with pytest.raises(convert.ConversionError) as e:
    _convert(net.state_dict(), model='resnet32', num_classes=100)
  assert (
    'It matches --format=repdistiller --model=resnet20 --num-classes=10.'
    in str(e.value)
  )


def test_wrong_format_hints_at_addernet():
  state = ref.addernet_resnet20(10).state_dict()
  with pytest.raises(convert.ConversionError, match='use --format=addernet'):
    _convert(state, model='resnet20')


@pytest.mark.parametrize(
  'fmt,name,message',
  [
    ('torchvision', 'resnet20', '--format=addernet/repdistiller'),
    ('torchvision', 'mobilenet_v1', 'use --format=ofd'),
    ('addernet', 'resnet32x4', 'Models of --format=addernet: resnet8'),
    ('caffe', 'resnet50', 'unknown format'),
    ('torchvision', 'resnet99', 'unknown model'),
    ('repdistiller', 'vgg_small', 'AdderNet code publishes ResNets only'),
    ('ofd', 'vgg13', 'use --format=repdistiller'),
    ('repdistiller', 'pyramidnet110_84', 'use --format=ofd'),
  ],
)
def test_unsupported_pairs(fmt, name, message):
  with pytest.raises(convert.ConversionError, match=message):
    convert.from_torch({}, format=fmt, model=name, num_classes=10)


def test_to_torch_refuses_variables_of_another_model():
  variables = random_kdjax_variables('resnet20', 'conv', 10)
  with pytest.raises(convert.ConversionError, match="conv_type='adder'"):
    convert.to_torch(variables, format='addernet', model='resnet20')


# ----------------------------------------------------------------------------
# The CLI and the trainer.


def test_core_import_does_not_need_torch():
  code = (
    'import sys; sys.modules["torch"] = None; import kdjax.convert; '
    'import kdjax.convert.__main__; print("ok")'
  )
  result = subprocess.run(
    [sys.executable, '-c', code],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    check=False,
  )
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr


def test_cli_error_is_one_message_and_exit_2(resnet8, tmp_path, capsys):
  _, state = resnet8
  path = _save(state, tmp_path / 'w.pth')
  assert convert_repdistiller_resnet8(path, 100, tmp_path / 'out') == 2
  err = capsys.readouterr().err
  assert 'kdjax.convert: error:' in err and '--num-classes=10' in err
  assert 'Traceback' not in err
  assert not (tmp_path / 'out').exists()
