"""ImageNet ResNets 18/34/50/101/152 (He et al. 2016) in the torchvision layout.

Stem conv7x7/2 64 (multiplicative) -> BN -> ReLU -> maxpool 3x3/2 (padding 1),
four stages (layer1..4) of widths 64/128/256/512 with strides 1/2/2/2, global
average pooling, classifier. Basic blocks for 18/34, bottlenecks (expansion 4)
for 50/101/152. Shortcuts: identity, or 1x1 conv/adder (with the stride) + BN.

``stride_in_1x1``: where a bottleneck downsamples.
  False (default, torchvision and the official AdderNet resnet50.py): in the
    3x3 conv. ResNet-50: ~4.09G MACs at 224.
  True (the original ResNet v1 / Caffe layout): in the first 1x1 conv, so the
    3x3 runs at the reduced resolution. ResNet-50: ~3.86G MACs, the "3.9G"
    of the ResNet and AdderNet papers.
Basic blocks have no 1x1 in the main path and ignore the option.

``cifar_stem``: a conv3x3 64 stem (stride 1) -> BN -> ReLU and no max-pool,
total stride 8: RepDistiller's CIFAR ``ResNet50`` (models/resnetv2.py,
registered as resnet50_cifar), whose bottlenecks are the torchvision ones.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers


class Bottleneck(nn.Module):
  """Post-activation bottleneck: 1x1 -> 3x3 -> 1x1 (x4), returns the pre-ReLU sum."""

  width: int
  strides: int = 1
  stride_in_1x1: bool = False
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv = functools.partial(
      layers.ConvOrAdder, conv_type=self.conv_type, dtype=self.dtype
    )
    norm = functools.partial(
      layers.batch_norm,
      train,
      self.dtype,
      after_adder=self.conv_type == 'adder',
    )
    strides_1x1, strides_3x3 = (
      (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    )
    out_features = self.width * self.expansion
    y = conv(self.width, 1, strides_1x1, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.width, 3, strides_3x3, name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    raw, patch_energy, filter_sq_norm = conv(out_features, 1, name='conv3')(
      y, return_kernel_features=True
    )
    bn3 = norm(name='bn3')
    y = bn3(raw)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = conv(out_features, 1, self.strides, name='shortcut')(x)
      shortcut = norm(name='shortcut_bn')(shortcut)
    preact = y + shortcut
    return preact, layers.stage_features(
      preact, bn3, raw, patch_energy, filter_sq_norm
    )


class ImageNetResNet(nn.Module):
  """ImageNet ResNet. See the module docstring; features as in kdjax.models."""

  stage_sizes: Sequence[int]
  block: str = 'bottleneck'  # 'basic' or 'bottleneck'
  stride_in_1x1: bool = False
  cifar_stem: bool = False
  num_classes: int = 1000
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  stage_widths = (64, 128, 256, 512)

  @property
  def total_stride(self) -> int:
    return 8 if self.cifar_stem else 32

  @property
  def layout(self) -> str:
    depth = 2 + (2 if self.block == 'basic' else 3) * sum(self.stage_sizes)
    if self.block == 'basic':
      where = 'basic blocks, stride in the first 3x3'
    elif self.stride_in_1x1:
      where = 'ResNet v1 layout: stride in the first 1x1 of each bottleneck'
    else:
      where = 'torchvision layout: stride in the 3x3 of each bottleneck'
    stem = (
      'stem conv3x3 64 (multiplicative), no maxpool'
      if self.cifar_stem
      else 'stem conv7x7/2 64 (multiplicative) + maxpool 3x3/2'
    )
    return (
      f'ResNet-{depth} ({where}); {stem}, stages {list(self.stage_sizes)}, '
      f'1x1 projection shortcuts, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    if self.block not in ('basic', 'bottleneck'):
      raise ValueError(
        f"block must be 'basic' or 'bottleneck', got {self.block!r}"
      )
    layers.check_images(images, self.total_stride, type(self).__name__)
    x = layers.ConvOrAdder(
      64,
      3 if self.cifar_stem else 7,
      1 if self.cifar_stem else 2,
      conv_type='conv',
      dtype=self.dtype,
      name='stem',
    )(images)
    x = nn.relu(layers.batch_norm(train, self.dtype, name='stem_bn')(x))
    if not self.cifar_stem:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    stages = []
    for i, (num_blocks, width) in enumerate(
      zip(self.stage_sizes, self.stage_widths)
    ):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        name = f'stage{i + 1}_block{j + 1}'
        if self.block == 'basic':
          block = layers.BasicBlock(
            width, strides, self.conv_type, self.dtype, name=name
          )
        else:
          block = Bottleneck(
            width,
            strides,
            self.stride_in_1x1,
            self.conv_type,
            self.dtype,
            name=name,
          )
        preact, block_features = block(x, train)
        x = nn.relu(preact)
      stages.append(block_features)
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)
