"""CIFAR ResNets (He et al. 2016, Sec. 4.2) as in RepDistiller and AdderNet.

Stem conv3x3 -> BN -> ReLU, three stages of post-activation basic blocks with
strides 1/2/2, global average pooling, classifier. Depth d has (d - 2) / 6
blocks per stage. Shortcuts are identity, or a 1x1 conv/adder (with the stride)
+ BN when the shape changes (option B, as both references use).

Widths (stem, stage1, stage2, stage3):
  resnet8/14/20/32/44/56/110: 16, 16/32/64 (AdderNet ResNet-20/32, RepDistiller).
  resnet8x4/32x4:       32, 64/128/256, RepDistiller's ``ResNet(d, [32, 64, 128,
                        256])``; the stem is 32 wide, not 64, so the first block
                        of stage 1 has a projection shortcut.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers


class CifarResNet(nn.Module):
  """CIFAR ResNet. See the module docstring; features as in kdjax.models."""

  stage_sizes: Sequence[int]
  stem_width: int = 16
  stage_widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 100
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @property
  def total_stride(self) -> int:
    return 2 ** (len(self.stage_sizes) - 1)

  @property
  def layout(self) -> str:
    depth = 2 + 2 * sum(self.stage_sizes)
    return (
      f'CIFAR ResNet-{depth}: stem conv3x3 {self.stem_width} (multiplicative), stages '
      f'{list(self.stage_sizes)} basic blocks of widths {list(self.stage_widths)}, strides '
      f'1/2/2, 1x1 projection shortcuts, global avg pool, dense classifier'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    layers.check_images(images, self.total_stride, type(self).__name__)
    # AdderNet keeps the stem multiplicative.
    x = layers.ConvOrAdder(
      self.stem_width, 3, conv_type='conv', dtype=self.dtype, name='stem'
    )(images)
    x = nn.relu(layers.batch_norm(train, self.dtype, name='stem_bn')(x))
    stages = []
    for i, (num_blocks, width) in enumerate(
      zip(self.stage_sizes, self.stage_widths)
    ):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        preact, block_features = layers.BasicBlock(
          width,
          strides,
          self.conv_type,
          self.dtype,
          name=f'stage{i + 1}_block{j + 1}',
        )(x, train)
        x = nn.relu(preact)
      stages.append(block_features)
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, dict(stages=tuple(stages), pooled=pooled)
