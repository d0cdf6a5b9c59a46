"""CIFAR VGGs: RepDistiller's VGG-8/11/13/16/19 with BN, and VGG-small.

VGG (RepDistiller models/vgg.py, the ``*_bn`` networks its model_dict names
vgg8 ... vgg19): five blocks of conv3x3 -> BN -> ReLU (widths below), a 2x2
max-pool before blocks 1, 2 and 3, and before block 4 only for 64-pixel-high
inputs (as the reference decides by the input height), global average
pooling, a dense classifier. The reference convs have a bias; a BN follows
every one of them, so kdjax's are bias-free and the converter folds the bias
into the BN's running mean (exact). Adder mode: every conv but the first.

OFD positions (RepDistiller's ``get_bn_before_relu``): the last BN output of
blocks 1-4 (the block outputs before their ReLU), 128/256/512/512 channels at
strides 2/4/8/8 (a 32x32 input).

VGG-small (the CIFAR network of AdderNet and PKKD, as in LQ-Nets and IR-Net):
conv3x3 128, 128, M, 256, 256, M, 512, 512, M, each conv -> (pool) -> BN ->
ReLU, the (C, H, W)-flattened 4x4x512 map into the classifier (so its input
size follows the image size). Stages: the BN outputs after each pool
(128/256/512 channels); 'raw' is the conv output before the pool.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers

# Conv widths of blocks 0..4 (RepDistiller cfg 'S', 'A', 'B', 'D', 'E').
VGG_BLOCKS = {
  8: ((64,), (128,), (256,), (512,), (512,)),
  11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
  19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
VGG_SMALL_WIDTHS = (128, 128, 256, 256, 512, 512)


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def _stem(module: nn.Module, width: int, train: bool):
  """The multiplicative first conv and its BN ('stem', 'stem_bn')."""
  conv = layers.ConvOrAdder(
    width, 3, conv_type='conv', dtype=module.dtype, name='stem'
  )
  return conv, layers.batch_norm(train, module.dtype, name='stem_bn')


class VGG(nn.Module):
  """RepDistiller's VGG-``depth`` with BN. See the module docstring."""

  depth: int = 13
  num_classes: int = 100
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 8

  @property
  def layout(self) -> str:
    return (
      f'VGG-{self.depth} (RepDistiller, BN): conv3x3 widths '
      f'{[list(b) for b in VGG_BLOCKS[self.depth]]}, 2x2 max-pools between '
      'blocks 0-3 (and 3-4 at 64 pixels), global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    if self.depth not in VGG_BLOCKS:
      raise ValueError(
        f'VGG depth must be one of {sorted(VGG_BLOCKS)}, got {self.depth}'
      )
    layers.check_images(images, self.total_stride, type(self).__name__)
    conv, norm = layers.conv_and_norm(self, train)
    pool_before_block4 = images.shape[1] == 64
    x = images
    stages = []
    for b, widths in enumerate(VGG_BLOCKS[self.depth]):
      if b in (1, 2, 3) or (b == 4 and pool_before_block4):
        x = _max_pool(x)
      for i, width in enumerate(widths):
        if b == 0 and i == 0:
          layer, bn = _stem(self, width, train)
        else:
          layer = conv(width, 3, name=f'block{b}_conv{i + 1}')
          bn = norm(name=f'block{b}_bn{i + 1}')
        raw, patch_energy, filter_sq_norm = layer(
          x, return_kernel_features=True
        )
        preact = bn(raw)
        x = nn.relu(preact)
      if b > 0:
        stages.append(
          layers.stage_features(preact, bn, raw, patch_energy, filter_sq_norm)
        )
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)


class VGGSmall(nn.Module):
  """VGG-small of AdderNet / PKKD. See the module docstring."""

  num_classes: int = 10
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 8

  @property
  def layout(self) -> str:
    return (
      'VGG-small: conv3x3 128, 128, M, 256, 256, M, 512, 512, M (conv, pool, '
      'BN, ReLU), flattened into a dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    conv, norm = layers.conv_and_norm(self, train)
    x = images
    stages = []
    for i, width in enumerate(VGG_SMALL_WIDTHS):
      if i == 0:
        layer, bn = _stem(self, width, train)
      else:
        layer, bn = conv(width, 3, name=f'conv{i}'), norm(name=f'bn{i}')
      raw, patch_energy, filter_sq_norm = layer(x, return_kernel_features=True)
      pooled_raw = _max_pool(raw) if i % 2 else raw
      preact = bn(pooled_raw)
      x = nn.relu(preact)
      if i % 2:
        stages.append(
          layers.stage_features(preact, bn, raw, patch_energy, filter_sq_norm)
        )
    # PyTorch's x.view(B, -1) of an NCHW map.
    pooled = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)
