"""PyramidNets (Han et al. 2017) for CIFAR, as OFD's CIFAR-100/models/PyramidNet.py.

conv3x3 16 (multiplicative stem) -> BN (no ReLU), three stages of n blocks
(strides 1/2/2) whose widths grow by alpha / (3 n) per block (the running sum
rounded with Python's round, as the reference), final BN -> ReLU, global
average pooling (the reference's AvgPool2d(8) at 32x32), classifier.

Blocks (pre-activation, no ReLU after the first BN):
  basic (depth 6n + 2):      BN -> conv3x3 (stride) -> BN -> ReLU -> conv3x3
                             -> BN
  bottleneck (depth 9n + 2): BN -> conv1x1 -> BN -> ReLU -> conv3x3 (stride)
                             -> BN -> ReLU -> conv1x1 (x4) -> BN
plus the shortcut: the input, 2x2 average-pooled (ceil mode) when the block
downsamples, zero-padded to the block's width. No shortcut parameters.

Registered: pyramidnet200_240 (bottleneck, OFD's CIFAR-100 teacher, 26.84 M
parameters) and pyramidnet110_84 (basic, OFD's student, 3.91 M).

OFD positions (OFD's ``extract_feature(preReLU=True)``): for stages 1 and 2,
the first block of the next stage applied up to its first pre-ReLU BN (basic:
bn1 of the stage output; bottleneck: bn2(conv1(bn1(x))), the BN
``get_bn_before_relu`` names); for stage 3, the final BN. 'raw',
'patch_energy' and 'filter_sq_norm' are those of the stage's last conv.
Adder mode: every conv but the stem is an adder; a BN follows each already.
"""

from __future__ import annotations

from typing import Any, List

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers


def avg_pool_ceil(x: jax.Array) -> jax.Array:
  """AvgPool2d(2, 2, ceil_mode=True): edge windows average what they cover."""
  height, width = x.shape[1:3]
  pads = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
  pool = lambda y: nn.avg_pool(jnp.pad(y, pads), (2, 2), strides=(2, 2))
  return pool(x) / pool(jnp.ones((1, height, width, 1), x.dtype))


def block_widths(depth: int, alpha: float, bottleneck: bool) -> List[int]:
  """Main-path widths (before the bottleneck's x4) of the 3 n blocks in order."""
  per_block = 9 if bottleneck else 6
  if depth < per_block + 2 or (depth - 2) % per_block:
    kind = 'bottleneck' if bottleneck else 'basic'
    raise ValueError(
      f'{kind} PyramidNet depth must be {per_block}n + 2 (n >= 1), got {depth}'
    )
  blocks = 3 * ((depth - 2) // per_block)
  add_rate = alpha / (blocks * 1.0)
  widths, width = [], 16.0
  for _ in range(blocks):
    width = width + add_rate
    widths.append(int(round(width)))
  return widths


class PyramidBlock(nn.Module):
  """Returns (out, features); features['entry'] is the first pre-ReLU BN."""

  features: int
  strides: int = 1
  bottleneck: bool = True
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv, norm = layers.conv_and_norm(self, train)
    bn1 = norm(name='bn1')
    y = bn1(x)
    if self.bottleneck:
      entry_bn = norm(name='bn2')
      entry = entry_bn(conv(self.features, 1, name='conv1')(y))
      y = conv(self.features, 3, self.strides, name='conv2')(nn.relu(entry))
      y = nn.relu(norm(name='bn3')(y))
      last_conv, last_bn, kernel = 'conv3', 'bn4', 1
      out_features = self.features * 4
    else:
      entry_bn, entry = bn1, y
      y = conv(self.features, 3, self.strides, name='conv1')(y)
      y = nn.relu(norm(name='bn2')(y))
      last_conv, last_bn, kernel = 'conv2', 'bn3', 3
      out_features = self.features
    raw, patch_energy, filter_sq_norm = conv(
      out_features, kernel, name=last_conv
    )(y, return_kernel_features=True)
    y = norm(name=last_bn)(raw)
    shortcut = x if self.strides == 1 else avg_pool_ceil(x)
    extra = out_features - shortcut.shape[-1]
    shortcut = jnp.pad(shortcut, ((0, 0),) * 3 + ((0, extra),))
    scale, bias = layers.bn_scale_bias(entry_bn)
    return y + shortcut, dict(
      entry=entry,
      entry_bn_scale=scale,
      entry_bn_bias=bias,
      raw=raw,
      patch_energy=patch_energy,
      filter_sq_norm=filter_sq_norm,
    )


class PyramidNet(nn.Module):
  """OFD's CIFAR PyramidNet. See the module docstring."""

  depth: int = 200
  alpha: float = 240
  bottleneck: bool = True
  num_classes: int = 100
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 4

  @property
  def layout(self) -> str:
    kind = 'bottleneck' if self.bottleneck else 'basic'
    widths = block_widths(self.depth, self.alpha, self.bottleneck)
    return (
      f'PyramidNet-{self.depth} (alpha {self.alpha}, {kind} blocks): stem '
      f'conv3x3 16 (multiplicative) + BN, 3 x {len(widths) // 3} blocks of '
      f'widths {widths[0]}..{widths[-1]}, strides 1/2/2, zero-padded '
      'shortcuts, final BN-ReLU, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    widths = block_widths(self.depth, self.alpha, self.bottleneck)
    layers.check_images(images, self.total_stride, type(self).__name__)
    per_stage = len(widths) // 3
    x = layers.ConvOrAdder(
      16, 3, conv_type='conv', dtype=self.dtype, name='stem'
    )(images)
    x = layers.batch_norm(train, self.dtype, name='stem_bn')(x)
    blocks = []
    for index, width in enumerate(widths):
      stage, j = divmod(index, per_stage)
      x, block_features = PyramidBlock(
        width,
        2 if stage > 0 and j == 0 else 1,
        self.bottleneck,
        self.conv_type,
        self.dtype,
        name=f'stage{stage + 1}_block{j + 1}',
      )(x, train)
      blocks.append(block_features)
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
    entries = [
      (b['entry'], b['entry_bn_scale'], b['entry_bn_bias'])
      for b in blocks[per_stage::per_stage]
    ] + [(final_preact, final_scale, final_bias)]
    last_blocks = blocks[per_stage - 1 :: per_stage]
    stages = layers.stages_after(entries, last_blocks)
    return logits, dict(stages=stages, pooled=pooled)
