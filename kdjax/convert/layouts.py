"""State-dict layouts of the PyTorch definitions that kdjax imports and exports.

A layout pairs every PyTorch module of a state dict (its key prefix) with the
kdjax module that computes the same function; docs/interop.md tabulates them.
Layouts are derived from the kdjax variables tree itself (which blocks have a
projection shortcut, how many blocks a stage has), so a kdjax module that no
layout names is an error, never a parameter left at its init.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from kdjax.models import registry

FORMATS = ('torchvision', 'addernet', 'repdistiller', 'ofd')

# The conv type of the kdjax model a format converts to.
CONV_TYPE = {
  'torchvision': 'conv',
  'addernet': 'adder',
  'repdistiller': 'conv',
  'ofd': 'conv',
}

# Per-channel (mean, std) of [0, 1] pixels that each format's training
# scripts normalize inputs with; 'cifar' / 'imagenet' by model family.
_IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TRAINING_NORMALIZATION = {
  'torchvision': {'imagenet': _IMAGENET_NORMALIZATION},
  'addernet': {  # test.py (CIFAR-10 and ImageNet)
    'cifar': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    'imagenet': _IMAGENET_NORMALIZATION,
  },
  'repdistiller': {  # dataset/cifar100.py
    'cifar': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
  },
  'ofd': {  # CIFAR-100/train_with_distillation.py: (125.3, ...) / 255
    'cifar': (
      (125.3 / 255, 123.0 / 255, 113.9 / 255),
      (63.0 / 255, 62.1 / 255, 66.7 / 255),
    ),
    'imagenet': _IMAGENET_NORMALIZATION,  # ImageNet/train_with_distillation.py
  },
}

_CIFAR_16 = (
  'resnet8',
  'resnet14',
  'resnet20',
  'resnet32',
  'resnet44',
  'resnet56',
  'resnet110',
)
_WRNS = (
  'wrn16_1',
  'wrn16_2',
  'wrn16_4',
  'wrn28_2',
  'wrn28_4',
  'wrn40_1',
  'wrn40_2',
)

_IMAGENET_RESNETS = (
  'resnet18',
  'resnet34',
  'resnet50',
  'resnet101',
  'resnet152',
)
_REPDISTILLER_ZOO = (
  'resnet50_cifar',
  'vgg8',
  'vgg11',
  'vgg13',
  'vgg16',
  'vgg19',
  'mobilenet_v2',
  'shufflenet_v1',
  'shufflenet_v2',
)

# kdjax zoo models each format defines with the same function.
SUPPORTED = {
  # torchvision.models.resnet18 ... resnet152 (stride in the bottleneck's 3x3).
  'torchvision': _IMAGENET_RESNETS,
  # The official resnet20.py ResNet(BasicBlock, [n] * 3) and resnet50.py
  # ResNet(Bottleneck, layers); resnet20 / resnet50 are what they instantiate.
  'addernet': _CIFAR_16 + ('resnet50', 'resnet101', 'resnet152'),
  # models/resnet.py resnet8 ... resnet32x4, models/wrn.py WideResNet, and
  # resnetv2.py ResNet50, vgg.py vgg*_bn, mobilenetv2.py mobile_half,
  # ShuffleNetv1.py / ShuffleNetv2.py ShuffleV1 / ShuffleV2.
  'repdistiller': _CIFAR_16
  + ('resnet8x4', 'resnet32x4')
  + _WRNS
  + _REPDISTILLER_ZOO,
  # CIFAR-100/models/WideResNet.py (the state-dict layout of RepDistiller's),
  # models/ResNet.py (RepDistiller's CIFAR ResNet layout; its ReLU moved to
  # the start of the next block is the same function), models/PyramidNet.py;
  # ImageNet/models/MobileNet.py and ResNet.py (torchvision's layout, ReLU
  # moved likewise).
  'ofd': _CIFAR_16
  + _WRNS
  + ('pyramidnet200_240', 'pyramidnet110_84', 'mobilenet_v1')
  + _IMAGENET_RESNETS,
}

# Why a zoo model has no layout in a format (shown in the error).
_UNSUPPORTED_REASONS = {
  'ekd_student': 'ekd_student is kdjax-only',
  'vgg_small': (
    'no supported PyTorch format defines the AdderNet/PKKD VGG-small (the '
    'AdderNet code publishes ResNets only)'
  ),
}


class LayoutError(ValueError):
  """A format/model pair without a layout."""


@dataclasses.dataclass(frozen=True)
class Layer:
  """One PyTorch module paired with one kdjax module.

  Attributes:
    torch: state-dict prefix of the PyTorch module, e.g. 'layer1.0.conv1'.
    kind: 'conv' (weight O,I,kh,kw <-> kernel kh,kw,I,O), 'adder' (the same
      with the AdderNet key 'adder'), 'bn' (weight, bias, running_mean,
      running_var <-> scale, bias, mean, var), 'linear' (weight O,I <-> kernel
      I,O; bias) or 'conv_dense' (a 1x1 conv classifier, weight O,I,1,1 <->
      kernel I,O).
    flax: path of the kdjax module in the params / batch_stats trees.
    fold_into: conv / conv_dense: the BN (a PyTorch prefix) right after it
      that absorbs its optional bias (kdjax's convs, and its classifier
      before a BN, have none).
    export_bias: with fold_into: the PyTorch layer has a bias, so
      ``to_torch`` writes a zero one.
  """

  torch: str
  kind: str
  flax: Tuple[str, ...]
  fold_into: Optional[str] = None
  export_bias: bool = False


def check_supported(format: str, model: str) -> str:
  """The zoo name of ``model``; raises LayoutError when ``format`` lacks it."""
  if format not in FORMATS:
    raise LayoutError(
      f'unknown format {format!r}; choose one of {", ".join(FORMATS)}'
    )
  try:
    name = registry.canonical_name(model)
  except ValueError as e:
    raise LayoutError(str(e)) from None
  if name not in SUPPORTED[format]:
    others = [f for f in FORMATS if name in SUPPORTED[f]]
    reason = _UNSUPPORTED_REASONS.get(name) or (
      f'use --format={"/".join(others)}'
      if others
      else 'its PyTorch definitions are other architectures'
    )
    raise LayoutError(
      f'--format={format} has no layout for the kdjax model {name!r} '
      f'({reason}). Models of --format={format}: '
      f'{", ".join(SUPPORTED[format])}.'
    )
  return name


def training_normalization(format: str, model: str):
  """(mean, std) the format's scripts trained ``model`` with."""
  name = check_supported(format, model)
  large = registry.model_spec(name).default_image_size > 32
  return TRAINING_NORMALIZATION[format]['imagenet' if large else 'cifar']


def _blocks(params: Mapping[str, Any]) -> List[Tuple[int, int, str]]:
  """(stage, block, name) of every 'stage<i>_block<j>' module, in order."""
  found = []
  for name in params:
    match = re.fullmatch(r'stage(\d+)_block(\d+)', name)
    if match:
      found.append((int(match.group(1)), int(match.group(2)), name))
  return sorted(found)


def _submodules(
  block: Mapping[str, Any],
  torch_prefix: str,
  flax_prefix: Tuple[str, ...],
  names: Mapping[str, Tuple[str, str]],
) -> List[Layer]:
  layers = []
  for flax_name, (torch_name, kind) in names.items():
    if flax_name in block:
      layers.append(
        Layer(f'{torch_prefix}.{torch_name}', kind, flax_prefix + (flax_name,))
      )
  unknown = sorted(set(block) - set(names))
  if unknown:
    raise LayoutError(
      f'kdjax module {"/".join(flax_prefix)} has sub-modules {unknown} that '
      'the PyTorch layout does not define'
    )
  return layers


def _numbered(count: int, kind: str = 'conv') -> Dict[str, Tuple[str, str]]:
  """conv1..count and bn1..count, named alike in both trees."""
  names = {}
  for k in range(1, count + 1):
    names[f'conv{k}'] = (f'conv{k}', kind)
    names[f'bn{k}'] = (f'bn{k}', 'bn')
  return names


def _stem_layers(conv: str, bn: str) -> List[Layer]:
  return [Layer(conv, 'conv', ('stem',)), Layer(bn, 'bn', ('stem_bn',))]


def _stage_blocks(
  params: Mapping[str, Any], torch_stage: str, names, first: int = 1
) -> List[Layer]:
  """'stage<i>_block<j>' modules as '<torch_stage><i - 1 + first>.<j - 1>'."""
  layers = []
  for stage, block, name in _blocks(params):
    prefix = f'{torch_stage}{stage - 1 + first}.{block - 1}'
    layers += _submodules(params[name], prefix, (name,), names)
  return layers


def _resnet(
  params: Mapping[str, Any], format: str, imagenet: bool, resnetv2: bool
) -> List[Layer]:
  """Post-activation ResNets: torchvision naming, RepDistiller's for ResNet50."""
  block_conv = 'adder' if format == 'addernet' else 'conv'
  names = _numbered(3, block_conv)
  # RepDistiller's CIFAR ResNet50 (resnetv2.py) calls the projection
  # 'shortcut' and the classifier 'linear'.
  shortcut = 'shortcut' if resnetv2 else 'downsample'
  names['shortcut'] = (f'{shortcut}.0', block_conv)
  names['shortcut_bn'] = (f'{shortcut}.1', 'bn')
  layers = _stem_layers('conv1', 'bn1') + _stage_blocks(params, 'layer', names)
  if resnetv2:
    return layers + [Layer('linear', 'linear', ('classifier',))]
  if format == 'addernet':
    # A 1x1 conv classifier followed by a BN over the logits; resnet50.py's
    # conv has a bias, resnet20.py's has none.
    layers += [
      Layer(
        'fc',
        'conv_dense',
        ('classifier',),
        fold_into='bn2',
        export_bias=imagenet,
      ),
      Layer('bn2', 'bn', ('logit_bn',)),
    ]
  else:
    layers.append(Layer('fc', 'linear', ('classifier',)))
  return layers


def _wide_resnet(params: Mapping[str, Any]) -> List[Layer]:
  """WRN of RepDistiller's models/wrn.py and OFD's WideResNet.py."""
  names = {
    'bn1': ('bn1', 'bn'),
    'conv1': ('conv1', 'conv'),
    'bn2': ('bn2', 'bn'),
    'conv2': ('conv2', 'conv'),
    'shortcut': ('convShortcut', 'conv'),
  }
  layers = [Layer('conv1', 'conv', ('stem',))]
  for stage, block, name in _blocks(params):
    layers += _submodules(
      params[name], f'block{stage}.layer.{block - 1}', (name,), names
    )
  return layers + [
    Layer('bn1', 'bn', ('final_bn',)),
    Layer('fc', 'linear', ('classifier',)),
  ]


def _vgg(params: Mapping[str, Any]) -> List[Layer]:
  """RepDistiller's vgg.py: block<b>.<3i> conv (with a bias), .<3i+1> BN."""
  layers = [Layer('classifier', 'linear', ('classifier',))]
  for name in params:
    match = re.fullmatch(r'block(\d+)_(conv|bn)(\d+)', name)
    if name in ('stem', 'stem_bn'):
      block, kind, index = 0, 'conv' if name == 'stem' else 'bn', 1
    elif match:
      block, kind, index = int(match[1]), match[2], int(match[3])
    else:
      continue
    prefix = f'block{block}.{3 * (index - 1)}'
    bn = f'block{block}.{3 * (index - 1) + 1}'
    if kind == 'conv':
      layers.append(Layer(prefix, 'conv', (name,), bn, export_bias=True))
    else:
      layers.append(Layer(bn, 'bn', (name,)))
  return layers


def _mobilenet_v2(params: Mapping[str, Any]) -> List[Layer]:
  """RepDistiller's mobilenetv2.py: conv1, blocks.<g>.<j>.conv.<i>, conv2."""
  names = {}
  for i, part in enumerate(('expand', 'depthwise', 'project')):
    names[part] = (f'conv.{3 * i}', 'conv')
    names[f'{part}_bn'] = (f'conv.{3 * i + 1}', 'bn')
  return (
    _stem_layers('conv1.0', 'conv1.1')
    + _stage_blocks(params, 'blocks.', names, first=0)
    + [
      Layer('conv2.0', 'conv', ('head',)),
      Layer('conv2.1', 'bn', ('head_bn',)),
      Layer('classifier.0', 'linear', ('classifier',)),
    ]
  )


def _shufflenet(params: Mapping[str, Any], version: int) -> List[Layer]:
  """RepDistiller's ShuffleNetv1.py / ShuffleNetv2.py (conv2/bn2: V2 head)."""
  layers = _stem_layers('conv1', 'bn1') + _stage_blocks(
    params, 'layer', _numbered(3 if version == 1 else 5)
  )
  if version == 2:
    layers += [
      Layer('conv2', 'conv', ('head',)),
      Layer('bn2', 'bn', ('head_bn',)),
    ]
  return layers + [Layer('linear', 'linear', ('classifier',))]


def _pyramidnet(params: Mapping[str, Any]) -> List[Layer]:
  """OFD's PyramidNet.py: conv1/bn1, layer<i>.<j> (bn1-4, conv1-3), bn_final."""
  return (
    _stem_layers('conv1', 'bn1')
    + _stage_blocks(params, 'layer', _numbered(4))
    + [
      Layer('bn_final', 'bn', ('final_bn',)),
      Layer('fc', 'linear', ('classifier',)),
    ]
  )


def _mobilenet_v1(params: Mapping[str, Any]) -> List[Layer]:
  """OFD's ImageNet MobileNet.py: model.<i>.{0, 1, 3, 4}, fc."""
  layers = _stem_layers('model.0.0', 'model.0.1')
  suffixes = {'dw': '0', 'dw_bn': '1', 'pw': '3', 'pw_bn': '4'}
  for name in params:
    match = re.fullmatch(r'block(\d+)_(dw|pw)(_bn)?', name)
    if match:
      kind = 'bn' if match[3] else 'conv'
      suffix = suffixes[match[2] + (match[3] or '')]
      layers.append(Layer(f'model.{match[1]}.{suffix}', kind, (name,)))
  return layers + [Layer('fc', 'linear', ('classifier',))]


def layout(format: str, model: str, params: Mapping[str, Any]) -> List[Layer]:
  """The layers of ``model`` in ``format``, for its kdjax ``params`` tree.

  Raises:
    LayoutError: the format has no layout for the model, or the params tree
      has modules the layout does not name.
  """
  name = check_supported(format, model)
  spec = registry.model_spec(name)
  family = spec.constructor.__name__
  if family == 'WideResNet':
    layers = _wide_resnet(params)
  elif family == 'VGG':
    layers = _vgg(params)
  elif family == 'MobileNetV2':
    layers = _mobilenet_v2(params)
  elif family in ('ShuffleNetV1', 'ShuffleNetV2'):
    layers = _shufflenet(params, int(family[-1]))
  elif family == 'PyramidNet':
    layers = _pyramidnet(params)
  elif family == 'MobileNetV1':
    layers = _mobilenet_v1(params)
  else:
    layers = _resnet(
      params,
      format,
      imagenet=spec.default_image_size > 32,
      resnetv2=spec.defaults.get('cifar_stem', False),
    )
  named = {layer.flax[0] for layer in layers}
  unknown = sorted(set(params) - named)
  if unknown:
    raise LayoutError(
      f'kdjax {name} has modules {unknown} that the {format} layout does not '
      'define'
    )
  return layers


def tensor_suffixes(kind: str) -> Dict[str, Tuple[str, str]]:
  """PyTorch parameter name -> (kdjax collection, kdjax leaf) of a layer kind."""
  if kind == 'bn':
    return {
      'weight': ('params', 'scale'),
      'bias': ('params', 'bias'),
      'running_mean': ('batch_stats', 'mean'),
      'running_var': ('batch_stats', 'var'),
    }
  if kind == 'linear':
    return {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}
  if kind == 'adder':
    return {'adder': ('params', 'kernel')}
  return {'weight': ('params', 'kernel')}  # conv, conv_dense
