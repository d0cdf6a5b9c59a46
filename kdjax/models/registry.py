"""Model registry: names -> zoo constructors, and input-size checks."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models import layers
from kdjax.models.cifar_resnet import CifarResNet
from kdjax.models.ekd_student import EKDStudent
from kdjax.models.imagenet_resnet import ImageNetResNet
from kdjax.models.mobilenet import MobileNetV1
from kdjax.models.mobilenet_v2 import MobileNetV2
from kdjax.models.pyramidnet import PyramidNet
from kdjax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdjax.models.vgg import VGG, VGGSmall
from kdjax.models.wide_resnet import WideResNet


class ModelSpec(NamedTuple):
  constructor: Callable[..., nn.Module]
  defaults: Dict[str, Any]
  # Only the CLIs use these; build_model always takes num_classes explicitly.
  default_image_size: int
  default_num_classes: int


def _cifar(
  blocks: int, stem: int = 16, widths: Sequence[int] = (16, 32, 64)
) -> ModelSpec:
  return ModelSpec(
    CifarResNet,
    dict(
      stage_sizes=(blocks,) * 3, stem_width=stem, stage_widths=tuple(widths)
    ),
    32,
    100,
  )


def _wrn(depth: int, widen_factor: int) -> ModelSpec:
  return ModelSpec(
    WideResNet, dict(depth=depth, widen_factor=widen_factor), 32, 100
  )


def _cifar_model(constructor, **defaults) -> ModelSpec:
  return ModelSpec(constructor, defaults, 32, 100)


def _imagenet(stage_sizes: Sequence[int], block: str) -> ModelSpec:
  return ModelSpec(
    ImageNetResNet, dict(stage_sizes=tuple(stage_sizes), block=block), 224, 1000
  )


_MODELS: Dict[str, ModelSpec] = {
  'resnet8': _cifar(1),
  'resnet14': _cifar(2),
  'resnet20': _cifar(3),
  'resnet32': _cifar(5),
  'resnet44': _cifar(7),
  'resnet56': _cifar(9),
  'resnet110': _cifar(18),
  'resnet8x4': _cifar(1, 32, (64, 128, 256)),
  'resnet32x4': _cifar(5, 32, (64, 128, 256)),
  'wrn16_1': _wrn(16, 1),
  'wrn16_2': _wrn(16, 2),
  'wrn16_4': _wrn(16, 4),
  'wrn28_2': _wrn(28, 2),
  'wrn28_4': _wrn(28, 4),
  'wrn40_1': _wrn(40, 1),
  'wrn40_2': _wrn(40, 2),
  'resnet18': _imagenet((2, 2, 2, 2), 'basic'),
  'resnet34': _imagenet((3, 4, 6, 3), 'basic'),
  'resnet50': _imagenet((3, 4, 6, 3), 'bottleneck'),
  'resnet101': _imagenet((3, 4, 23, 3), 'bottleneck'),
  'resnet152': _imagenet((3, 8, 36, 3), 'bottleneck'),
  'mobilenet_v1': ModelSpec(MobileNetV1, {}, 224, 1000),
  'ekd_student': ModelSpec(EKDStudent, {}, 32, 10),
  # RepDistiller's CIFAR zoo (models/__init__.py model_dict).
  'vgg8': _cifar_model(VGG, depth=8),
  'vgg11': _cifar_model(VGG, depth=11),
  'vgg13': _cifar_model(VGG, depth=13),
  'vgg16': _cifar_model(VGG, depth=16),
  'vgg19': _cifar_model(VGG, depth=19),
  'mobilenet_v2': _cifar_model(MobileNetV2),
  'shufflenet_v1': _cifar_model(ShuffleNetV1),
  'shufflenet_v2': _cifar_model(ShuffleNetV2),
  'resnet50_cifar': _cifar_model(
    ImageNetResNet,
    stage_sizes=(3, 4, 6, 3),
    block='bottleneck',
    cifar_stem=True,
  ),
  # AdderNet / PKKD's CIFAR-10 network.
  'vgg_small': ModelSpec(VGGSmall, {}, 32, 10),
  # OFD's CIFAR-100 teacher and student.
  'pyramidnet200_240': _cifar_model(
    PyramidNet, depth=200, alpha=240, bottleneck=True
  ),
  'pyramidnet110_84': _cifar_model(
    PyramidNet, depth=110, alpha=84, bottleneck=False
  ),
}

# RepDistiller's spellings whose lower case means another model
# ('ResNet50' is its CIFAR ResNet-50, 'resnet50' the ImageNet one).
_EXACT_ALIASES = {'ResNet50': 'resnet50_cifar'}

# Spellings used by RepDistiller / OFD (matched in lower case).
_ALIASES = {
  'wrn_16_1': 'wrn16_1',
  'wrn_16_2': 'wrn16_2',
  'wrn_16_4': 'wrn16_4',
  'wrn_28_2': 'wrn28_2',
  'wrn_28_4': 'wrn28_4',
  'wrn_40_1': 'wrn40_1',
  'wrn_40_2': 'wrn40_2',
  'mobilenet': 'mobilenet_v1',
  'mobilenetv1': 'mobilenet_v1',
  'mobilenetv2': 'mobilenet_v2',
  'mobile_half': 'mobilenet_v2',
  'shufflev1': 'shufflenet_v1',
  'shufflev2': 'shufflenet_v2',
  'vgg8_bn': 'vgg8',
  'vgg11_bn': 'vgg11',
  'vgg13_bn': 'vgg13',
  'vgg16_bn': 'vgg16',
  'vgg19_bn': 'vgg19',
  'pyramidnet200': 'pyramidnet200_240',
  'pyramidnet110': 'pyramidnet110_84',
}


def available_models() -> List[str]:
  return sorted(_MODELS)


def canonical_name(name: str) -> str:
  """The zoo's own name for ``name`` ('wrn_40_2' -> 'wrn40_2').

  Case-insensitive, except RepDistiller's 'ResNet50' (its CIFAR ResNet-50,
  resnet50_cifar), which is not kdjax's ImageNet 'resnet50'.
  """
  if name in _EXACT_ALIASES:
    return _EXACT_ALIASES[name]
  key = name.lower().replace('-', '_')
  key = _ALIASES.get(key, key)
  if key not in _MODELS:
    raise ValueError(
      f'unknown model {name!r}; valid choices: {", ".join(available_models())}'
    )
  return key


def model_spec(name: str) -> ModelSpec:
  return _MODELS[canonical_name(name)]


def build_model(
  name: str,
  *,
  conv_type: str = 'conv',
  num_classes: int,
  dtype: Any = jnp.float32,
  **kwargs,
) -> nn.Module:
  """Builds a zoo model by name.

  Args:
    name: one of ``available_models()`` (RepDistiller spellings such as
      'wrn_40_2', 'MobileNetV2', 'ShuffleV1' or 'ResNet50' are accepted too;
      ``canonical_name``).
    conv_type: 'conv' (CNN) or 'adder' (AdderNet, as in kdjax.models).
    num_classes: classifier outputs.
    dtype: computation dtype (params stay float32).
    **kwargs: family-specific options overriding the named configuration, e.g.
      ``stride_in_1x1=True`` (ImageNet ResNets), ``num_branches``, ``width``,
      ``shared_stages`` (ekd_student), ``width_multiplier`` (mobilenet_v1/v2),
      ``depth``, ``alpha`` (PyramidNets).

  Returns:
    An unbound linen module whose ``apply(variables, images, train=...)``
    returns ``(logits, features)`` (contract in kdjax.models).

  Raises:
    ValueError: unknown name, conv_type or option.
  """
  spec = model_spec(name)
  layers.check_conv_type(conv_type)
  fields = {f.name for f in dataclasses.fields(spec.constructor)} - {
    'parent',
    'name',
  }
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(
      f'{name} ({spec.constructor.__name__}) has no option(s) {unknown}; '
      f'valid options: {sorted(fields - {"conv_type", "num_classes", "dtype"})}'
    )
  config = dict(spec.defaults, **kwargs)
  return spec.constructor(
    num_classes=num_classes, conv_type=conv_type, dtype=dtype, **config
  )


def min_image_size(name: str, **kwargs) -> int:
  """Smallest height/width the named model accepts (its total downsampling)."""
  model = build_model(name, num_classes=1, **kwargs)
  return int(model.total_stride)


def check_input_size(
  name: str, image_size: Union[int, Sequence[int]], **kwargs
) -> None:
  """Raises ValueError unless ``image_size`` (int or (H, W)) >= the total stride.

  Every model but vgg_small ends in global average pooling, so any larger
  size works; vgg_small's classifier takes the flattened last map, so its
  parameters follow the image size.
  """
  # Smaller inputs would leave the last stride-2 layers only padding-dominated
  # 1x1 maps; the models check this too.
  sizes = (
    (image_size, image_size)
    if isinstance(image_size, int)
    else tuple(image_size)
  )
  if len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
    raise ValueError(
      f'image size must be a positive int or (height, width), got {image_size!r}'
    )
  needed = min_image_size(name, **kwargs)
  if min(sizes) < needed:
    raise ValueError(
      f'{name} downsamples by {needed}: image size {sizes[0]}x{sizes[1]} is too '
      f'small, height and width must be at least {needed}'
    )
