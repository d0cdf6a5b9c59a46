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

# kdjax zoo models each format defines with the same function.
SUPPORTED = {
  # torchvision.models.resnet18 ... resnet152 (stride in the bottleneck's 3x3).
  'torchvision': ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152'),
  # The official resnet20.py ResNet(BasicBlock, [n] * 3) and resnet50.py
  # ResNet(Bottleneck, layers); resnet20 / resnet50 are what they instantiate.
  'addernet': _CIFAR_16 + ('resnet50', 'resnet101', 'resnet152'),
  # models/resnet.py resnet8 ... resnet32x4 and models/wrn.py WideResNet.
  'repdistiller': _CIFAR_16 + ('resnet8x4', 'resnet32x4') + _WRNS,
  # CIFAR-100/models/WideResNet.py (the state-dict layout of RepDistiller's)
  # and models/ResNet.py (RepDistiller's CIFAR ResNet layout; its ReLU moved
  # to the start of the next block is the same function).
  'ofd': _CIFAR_16 + _WRNS,
}

# Why a zoo model has no layout in a format (shown in the error).
_UNSUPPORTED_REASONS = {
  'mobilenet_v1': (
    'no supported PyTorch format defines a MobileNet-v1 (torchvision has '
    'MobileNet v2/v3, RepDistiller MobileNetV2): other architectures'
  ),
  'ekd_student': 'ekd_student is kdjax-only',
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
    fold_into: conv_dense only: the BN (a PyTorch prefix) right after it that
      absorbs its optional bias (kdjax's classifier has none before a BN).
    export_bias: conv_dense only: the PyTorch layer has a bias, so ``to_torch``
      writes a zero one.
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
  family = registry.model_spec(name).constructor.__name__
  kind = 'imagenet' if family == 'ImageNetResNet' else 'cifar'
  return TRAINING_NORMALIZATION[format][kind]


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


def _resnet(
  params: Mapping[str, Any], format: str, imagenet: bool
) -> List[Layer]:
  """CIFAR and ImageNet post-activation ResNets (torchvision naming)."""
  block_conv = 'adder' if format == 'addernet' else 'conv'
  names = {}
  for k in (1, 2, 3):
    names[f'conv{k}'] = (f'conv{k}', block_conv)
    names[f'bn{k}'] = (f'bn{k}', 'bn')
  names['shortcut'] = ('downsample.0', block_conv)
  names['shortcut_bn'] = ('downsample.1', 'bn')
  layers = [Layer('conv1', 'conv', ('stem',)), Layer('bn1', 'bn', ('stem_bn',))]
  for stage, block, name in _blocks(params):
    layers += _submodules(
      params[name], f'layer{stage}.{block - 1}', (name,), names
    )
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


def layout(format: str, model: str, params: Mapping[str, Any]) -> List[Layer]:
  """The layers of ``model`` in ``format``, for its kdjax ``params`` tree.

  Raises:
    LayoutError: the format has no layout for the model, or the params tree
      has modules the layout does not name.
  """
  name = check_supported(format, model)
  family = registry.model_spec(name).constructor.__name__
  if family == 'WideResNet':
    layers = _wide_resnet(params)
  else:
    layers = _resnet(params, format, imagenet=family == 'ImageNetResNet')
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
