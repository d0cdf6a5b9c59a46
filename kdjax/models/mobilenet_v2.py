"""MobileNetV2 (Sandler et al. 2018) for CIFAR, as RepDistiller's ``mobile_half``.

RepDistiller models/mobilenetv2.py with T=6, width 0.5 (registered as
mobilenet_v2; its spellings 'MobileNetV2' and 'mobile_half' resolve here):
conv3x3/2 (multiplicative stem, int(32 w) channels) -> BN -> ReLU, seven
groups of inverted residual blocks (t, c, n, s below; channels int(c w)), a
1x1 conv to 1280 -> BN -> ReLU, global average pooling, classifier. Every
block has the 1x1 expansion (also at t = 1): expand 1x1 -> BN -> ReLU ->
depthwise 3x3 (stride) -> BN -> ReLU -> project 1x1 -> BN, plus the input
when the stride is 1 and the widths agree. ReLU, not ReLU6, as the reference.
Total stride 16 (the reference's AvgPool2d(2) is global at 32x32).

Adder mode: every conv but the stem is an adder (the depthwise ones grouped
adders), each followed by its BN.

OFD positions (RepDistiller's ``get_bn_before_relu``): the outputs of groups
2, 3, 5 and 7 (its ``blocks[1]``, ``[2]``, ``[4]``, ``[6]``; a linear
bottleneck, no ReLU follows), with the last block's projection BN: 12/16/48/
160 channels at strides 2/4/8/16.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers

# (expansion, channels, blocks, stride) per group; expansion None: the
# model's ``expansion`` (RepDistiller's T).
GROUPS = (
  (1, 16, 1, 1),
  (None, 24, 2, 1),
  (None, 32, 3, 2),
  (None, 64, 4, 2),
  (None, 96, 3, 1),
  (None, 160, 3, 2),
  (None, 320, 1, 1),
)
FEATURE_GROUPS = (2, 3, 5, 7)


class InvertedResidual(nn.Module):
  """Expand 1x1 -> depthwise 3x3 -> project 1x1; returns (out, features)."""

  features: int
  strides: int
  expansion: int
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv, norm = layers.conv_and_norm(self, train)
    hidden = x.shape[-1] * self.expansion
    y = conv(hidden, 1, name='expand')(x)
    y = nn.relu(norm(name='expand_bn')(y))
    y = conv(
      hidden, 3, self.strides, feature_group_count=hidden, name='depthwise'
    )(y)
    y = nn.relu(norm(name='depthwise_bn')(y))
    raw, patch_energy, filter_sq_norm = conv(self.features, 1, name='project')(
      y, return_kernel_features=True
    )
    project_bn = norm(name='project_bn')
    out = project_bn(raw)
    if self.strides == 1 and x.shape[-1] == self.features:
      out = out + x
    return out, layers.stage_features(
      out, project_bn, raw, patch_energy, filter_sq_norm
    )


class MobileNetV2(nn.Module):
  """RepDistiller's CIFAR MobileNetV2. See the module docstring."""

  num_classes: int = 100
  width_multiplier: float = 0.5
  expansion: int = 6
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 16

  @property
  def last_channels(self) -> int:
    multiplier = self.width_multiplier
    return int(1280 * multiplier) if multiplier > 1.0 else 1280

  @property
  def layout(self) -> str:
    return (
      f'MobileNetV2 (CIFAR, T={self.expansion}, width x'
      f'{self.width_multiplier}): stem conv3x3/2 (multiplicative), 17 '
      f'inverted residual blocks, 1x1 conv {self.last_channels}, global avg '
      'pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    conv, norm = layers.conv_and_norm(self, train)
    x = layers.ConvOrAdder(
      int(32 * self.width_multiplier),
      3,
      2,
      conv_type='conv',
      dtype=self.dtype,
      name='stem',
    )(images)
    x = nn.relu(layers.batch_norm(train, self.dtype, name='stem_bn')(x))
    stages = []
    for g, (expansion, channels, blocks, strides) in enumerate(GROUPS, 1):
      for j in range(blocks):
        x, block_features = InvertedResidual(
          int(channels * self.width_multiplier),
          strides if j == 0 else 1,
          self.expansion if expansion is None else expansion,
          self.conv_type,
          self.dtype,
          name=f'stage{g}_block{j + 1}',
        )(x, train)
      if g in FEATURE_GROUPS:
        stages.append(block_features)
    x = conv(self.last_channels, 1, name='head')(x)
    x = nn.relu(norm(name='head_bn')(x))
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)
