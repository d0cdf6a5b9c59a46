"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the OFD and RepDistiller code.

Stem conv3x3 16 (no BN of its own), three stages of pre-activation blocks of
widths 16k/32k/64k with strides 1/2/2, final BN -> ReLU, global average pooling,
classifier. WRN-d-k has (d - 4) / 6 blocks per stage. No dropout (the OFD and
RepDistiller CIFAR runs use drop rate 0).

Block: a = ReLU(BN1(x)); y = conv3x3(a, stride) -> BN2 -> ReLU -> conv3x3;
out = shortcut + y, the shortcut being x, or a 1x1 conv/adder of ``a`` when
the shape changes. Adder mode adds a BN after conv2 and after the projection
shortcut ('bn3', 'shortcut_bn'); conv mode is the reference unchanged.

OFD positions: the first BN of stage i + 1 applied to stage i's output
(``block1.bn1`` of the next stage), the final BN for the last stage, as in
OFD's ``get_bn_before_relu``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers


class PreActBlock(nn.Module):
  """Pre-activation wide basic block. Returns (out, block features)."""

  features: int
  strides: int = 1
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    adder = self.conv_type == 'adder'
    conv = functools.partial(
      layers.ConvOrAdder, conv_type=self.conv_type, dtype=self.dtype
    )
    norm = functools.partial(
      layers.batch_norm,
      train,
      self.dtype,
      after_adder=self.conv_type == 'adder',
    )
    bn1 = norm(name='bn1')
    input_preact = bn1(x)
    activated = nn.relu(input_preact)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.strides, name='shortcut')(
        activated
      )
      # The reference projects a, not x. Pre-activation blocks add conv2 and
      # the projection to the stream without a BN, but AdderNet needs a BN
      # after every adder (raw outputs are large and negative, docs/adder.md).
      if adder:
        shortcut = norm(name='shortcut_bn')(shortcut)
    y = conv(self.features, 3, self.strides, name='conv1')(activated)
    y = nn.relu(norm(name='bn2')(y))
    raw, patch_energy, filter_sq_norm = conv(self.features, 3, name='conv2')(
      y, return_kernel_features=True
    )
    y = norm(name='bn3')(raw) if adder else raw
    scale, bias = layers.bn_scale_bias(bn1)
    return shortcut + y, dict(
      input_preact=input_preact,
      input_bn_scale=scale,
      input_bn_bias=bias,
      raw=raw,
      patch_energy=patch_energy,
      filter_sq_norm=filter_sq_norm,
    )


class WideResNet(nn.Module):
  """WRN-depth-widen_factor. See the module docstring; features as in kdjax.models."""

  depth: int = 16
  widen_factor: int = 2
  num_classes: int = 100
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 4

  @property
  def layout(self) -> str:
    widths = [16 * self.widen_factor * 2**i for i in range(3)]
    return (
      f'WRN-{self.depth}-{self.widen_factor}: stem conv3x3 16 (multiplicative), stages of '
      f'{(self.depth - 4) // 6} pre-activation blocks of widths {widths}, strides 1/2/2, '
      f'final BN-ReLU, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    if (self.depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6n + 4, got {self.depth}')
    layers.check_images(images, self.total_stride, type(self).__name__)
    blocks_per_stage = (self.depth - 4) // 6
    x = layers.ConvOrAdder(
      16, 3, conv_type='conv', dtype=self.dtype, name='stem'
    )(images)
    first_blocks, last_blocks = [], []
    for i in range(3):
      width = 16 * self.widen_factor * 2**i
      for j in range(blocks_per_stage):
        x, block_features = PreActBlock(
          width,
          2 if i > 0 and j == 0 else 1,
          self.conv_type,
          self.dtype,
          name=f'stage{i + 1}_block{j + 1}',
        )(x, train)
        if j == 0:
          first_blocks.append(block_features)
      last_blocks.append(block_features)
    final_bn = layers.batch_norm(
      train,
      self.dtype,
      name='final_bn',
      after_adder=self.conv_type == 'adder',
    )
    final_preact = final_bn(x)
    pooled = layers.global_avg_pool(nn.relu(final_preact))
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )

    final_scale, final_bias = layers.bn_scale_bias(final_bn)
    next_bns = [
      (b['input_preact'], b['input_bn_scale'], b['input_bn_bias'])
      for b in first_blocks[1:]
    ] + [(final_preact, final_scale, final_bias)]
    stages = layers.stages_after(next_bns, last_blocks)
    return logits, dict(stages=stages, pooled=pooled)
