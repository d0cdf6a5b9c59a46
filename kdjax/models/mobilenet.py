"""MobileNet-v1 (Howard et al. 2017) for ImageNet, as in the OFD code.

conv3x3/2 32 (multiplicative stem) -> BN -> ReLU, then 13 depthwise-separable
blocks (depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU), global
average pooling, classifier. In adder mode both the depthwise and the pointwise
convs are adders (grouped adders for the depthwise ones), each followed by its BN.

OFD positions: the pointwise BN outputs (before ReLU) of blocks 3, 5, 11, 13,
counting the stem as block 0 (OFD's ``model[3]``, ``model[5]``, ``model[11]``,
``model[13]``): 128/256/512/1024 channels at strides 4/8/16/32.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers

# (output channels, stride) of depthwise-separable blocks 1..13.
BLOCKS = (
  (64, 1),
  (128, 2),
  (128, 1),
  (256, 2),
  (256, 1),
  (512, 2),
  (512, 1),
  (512, 1),
  (512, 1),
  (512, 1),
  (512, 1),
  (1024, 2),
  (1024, 1),
)
FEATURE_BLOCKS = (3, 5, 11, 13)


class MobileNetV1(nn.Module):
  """MobileNet-v1. See the module docstring; features as in kdjax.models."""

  num_classes: int = 1000
  width_multiplier: float = 1.0
  conv_type: str = 'conv'
  dtype: Any = jnp.float32
  feature_blocks: Sequence[int] = FEATURE_BLOCKS

  total_stride = 32

  def _width(self, channels: int) -> int:
    return max(8, int(channels * self.width_multiplier))

  @property
  def layout(self) -> str:
    return (
      f'MobileNet-v1 (width x{self.width_multiplier}): stem conv3x3/2 32 (multiplicative), '
      f'13 depthwise-separable blocks, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    conv = functools.partial(
      layers.ConvOrAdder, conv_type=self.conv_type, dtype=self.dtype
    )
    norm = functools.partial(
      layers.batch_norm,
      train,
      self.dtype,
      after_adder=self.conv_type == 'adder',
    )
    x = layers.ConvOrAdder(
      self._width(32), 3, 2, conv_type='conv', dtype=self.dtype, name='stem'
    )(images)
    x = nn.relu(norm(name='stem_bn')(x))
    stages = []
    for index, (channels, strides) in enumerate(BLOCKS, start=1):
      in_features = x.shape[-1]
      x = conv(
        in_features,
        3,
        strides,
        feature_group_count=in_features,
        name=f'block{index}_dw',
      )(x)
      x = nn.relu(norm(name=f'block{index}_dw_bn')(x))
      raw, patch_energy, filter_sq_norm = conv(
        self._width(channels), 1, name=f'block{index}_pw'
      )(x, return_kernel_features=True)
      pw_bn = norm(name=f'block{index}_pw_bn')
      preact = pw_bn(raw)
      if index in self.feature_blocks:
        stages.append(
          layers.stage_features(
            preact, pw_bn, raw, patch_energy, filter_sq_norm
          )
        )
      x = nn.relu(preact)
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)
