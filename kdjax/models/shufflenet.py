"""ShuffleNet V1 and V2 for CIFAR, as RepDistiller's ShuffleV1 / ShuffleV2.

Both: conv1x1 24 (multiplicative stem, stride 1) -> BN -> ReLU, three
stages that each halve the resolution in their first block, global average
pooling (the reference's avg_pool2d(4) at 32x32), classifier. Total stride 8.

ShuffleV1 (models/ShuffleNetv1.py; groups 3, widths 240/480/960, blocks
4/8/4): block = grouped 1x1 (1 group when its input is the 24-channel stem)
-> BN -> ReLU -> channel shuffle -> depthwise 3x3 (stride) -> BN -> grouped
1x1 -> BN; stride 1: + input; stride 2: concatenated with avgpool3x3/2 (pad 1,
zeros counted) of the input, the branch giving width - input channels. The
block's ReLU follows.

ShuffleV2 (models/ShuffleNetv2.py, net_size 1; widths 116/232/464, blocks
3/7/3 after one down block, a 1x1 conv 1024 -> BN -> ReLU head): down block
= [depthwise 3x3/2 -> BN -> 1x1 -> BN -> ReLU] and [1x1 -> BN -> ReLU ->
depthwise 3x3/2 -> BN -> 1x1 -> BN -> ReLU], concatenated and shuffled (2
groups); basic block: the first half of the channels passes, the second goes
1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN -> ReLU, concatenated
and shuffled.

Adder mode: every conv but the stem is an adder (grouped and depthwise ones
as grouped adders), each followed by its BN.

Stage features: RepDistiller's ``preact`` outputs of each stage's last block,
240/480/960 (V1) and 116/232/464 (V2) channels at strides 2/4/8. V1: bn3 +
input, with bn3's scale and bias. V2: [passed half, bn3 output] before the
shuffle; the passed half is a ReLU output already (never negative, whatever
the margin), so its 'bn_scale' / 'bn_bias' entries are 1 / 0; 'raw',
'patch_energy' and 'filter_sq_norm' are those of conv3 (half the channels).
V1's conv3 is grouped: its 'patch_energy' has one entry per output channel
(its group's patch energy), (B, H, W, C).
RepDistiller has no OFD BNs for these models (it raises).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers

STEM_WIDTH = 24


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """NHWC channel shuffle: channel g * (C / groups) + i moves to i * groups + g."""
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


def _stem(module: nn.Module, images: jax.Array, train: bool) -> jax.Array:
  x = layers.ConvOrAdder(
    STEM_WIDTH, 1, conv_type='conv', dtype=module.dtype, name='stem'
  )(images)
  return nn.relu(layers.batch_norm(train, module.dtype, name='stem_bn')(x))


def _head(module: nn.Module, x: jax.Array, stages, train: bool):
  pooled = layers.global_avg_pool(x)
  logits = layers.classify(
    pooled, module.num_classes, module.conv_type, train, module.dtype
  )
  return logits, dict(stages=tuple(stages), pooled=pooled)


class ShuffleV1Block(nn.Module):
  """ShuffleNet V1 bottleneck; returns (pre-ReLU output, features)."""

  features: int  # conv3 outputs (the block's width less a concatenated input)
  strides: int
  groups: int
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv, norm = layers.conv_and_norm(self, train)
    mid = self.features // 4
    first_groups = 1 if x.shape[-1] == STEM_WIDTH else self.groups
    y = conv(mid, 1, feature_group_count=first_groups, name='conv1')(x)
    y = channel_shuffle(nn.relu(norm(name='bn1')(y)), first_groups)
    y = conv(mid, 3, self.strides, feature_group_count=mid, name='conv2')(y)
    y = norm(name='bn2')(y)
    raw, patch_energy, filter_sq_norm = conv(
      self.features, 1, feature_group_count=self.groups, name='conv3'
    )(y, return_kernel_features=True)
    # Each output channel's own group energy, so PKKD's distances broadcast.
    patch_energy = jnp.repeat(
      patch_energy, self.features // self.groups, axis=-1
    )
    bn3 = norm(name='bn3')
    y = bn3(raw)
    if self.strides == 2:
      shortcut = nn.avg_pool(
        x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))
      )
      preact = jnp.concatenate([y, shortcut], axis=-1)
    else:
      preact = y + x
    return preact, layers.stage_features(
      preact, bn3, raw, patch_energy, filter_sq_norm
    )


class ShuffleNetV1(nn.Module):
  """RepDistiller's ShuffleV1. See the module docstring."""

  num_classes: int = 100
  stage_widths: Sequence[int] = (240, 480, 960)
  stage_sizes: Sequence[int] = (4, 8, 4)
  groups: int = 3
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 8

  @property
  def layout(self) -> str:
    return (
      f'ShuffleNet V1 (CIFAR, {self.groups} groups): stem conv1x1 24 '
      f'(multiplicative), stages {list(self.stage_sizes)} of widths '
      f'{list(self.stage_widths)}, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    x = _stem(self, images, train)
    stages = []
    for s, (width, blocks) in enumerate(
      zip(self.stage_widths, self.stage_sizes), 1
    ):
      for j in range(blocks):
        preact, block_features = ShuffleV1Block(
          width - (x.shape[-1] if j == 0 else 0),
          2 if j == 0 else 1,
          self.groups,
          self.conv_type,
          self.dtype,
          name=f'stage{s}_block{j + 1}',
        )(x, train)
        x = nn.relu(preact)
      stages.append(block_features)
    return _head(self, x, stages, train)


class ShuffleV2Down(nn.Module):
  """ShuffleNet V2 down-sampling block (stride 2, two branches)."""

  features: int
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv, norm = layers.conv_and_norm(self, train)
    channels, mid = x.shape[-1], self.features // 2
    left = conv(channels, 3, 2, feature_group_count=channels, name='conv1')(x)
    left = norm(name='bn1')(left)
    left = nn.relu(norm(name='bn2')(conv(mid, 1, name='conv2')(left)))
    right = nn.relu(norm(name='bn3')(conv(mid, 1, name='conv3')(x)))
    right = conv(mid, 3, 2, feature_group_count=mid, name='conv4')(right)
    right = norm(name='bn4')(right)
    right = nn.relu(norm(name='bn5')(conv(mid, 1, name='conv5')(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Basic(nn.Module):
  """ShuffleNet V2 basic block; returns (output, features)."""

  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv, norm = layers.conv_and_norm(self, train)
    half = x.shape[-1] // 2
    passed, branch = x[..., :half], x[..., half:]
    y = nn.relu(norm(name='bn1')(conv(half, 1, name='conv1')(branch)))
    y = conv(half, 3, feature_group_count=half, name='conv2')(y)
    y = norm(name='bn2')(y)
    raw, patch_energy, filter_sq_norm = conv(half, 1, name='conv3')(
      y, return_kernel_features=True
    )
    bn3 = norm(name='bn3')
    branch_preact = bn3(raw)
    out = jnp.concatenate([passed, nn.relu(branch_preact)], axis=-1)
    preact = jnp.concatenate([passed, branch_preact], axis=-1)
    scale, bias = layers.bn_scale_bias(bn3)
    features = dict(
      preact=preact,
      # The passed half is never negative: placeholders 1 / 0 for its margin.
      bn_scale=jnp.concatenate([jnp.ones((half,), scale.dtype), scale]),
      bn_bias=jnp.concatenate([jnp.zeros((half,), bias.dtype), bias]),
      raw=raw,
      patch_energy=patch_energy,
      filter_sq_norm=filter_sq_norm,
    )
    return channel_shuffle(out, 2), features


class ShuffleNetV2(nn.Module):
  """RepDistiller's ShuffleV2. See the module docstring."""

  num_classes: int = 100
  stage_widths: Sequence[int] = (116, 232, 464)
  stage_sizes: Sequence[int] = (3, 7, 3)
  head_width: int = 1024
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 8

  @property
  def layout(self) -> str:
    return (
      'ShuffleNet V2 (CIFAR, net_size 1): stem conv1x1 24 (multiplicative), '
      f'stages of a down block + {list(self.stage_sizes)} basic blocks of '
      f'widths {list(self.stage_widths)}, conv1x1 {self.head_width}, global '
      'avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    conv, norm = layers.conv_and_norm(self, train)
    x = _stem(self, images, train)
    stages = []
    for s, (width, blocks) in enumerate(
      zip(self.stage_widths, self.stage_sizes), 1
    ):
      x = ShuffleV2Down(
        width, self.conv_type, self.dtype, name=f'stage{s}_block1'
      )(x, train)
      for j in range(blocks):
        x, block_features = ShuffleV2Basic(
          self.conv_type, self.dtype, name=f'stage{s}_block{j + 2}'
        )(x, train)
      stages.append(block_features)
    x = nn.relu(norm(name='head_bn')(conv(self.head_width, 1, name='head')(x)))
    return _head(self, x, stages, train)
