"""EKD student (Asif, Tang & Harrer, ECAI 2020; docs/ekd.md): parallel branches.

A shared trunk (stem conv3x3 -> BN -> ReLU, plus the first ``shared_stages``
CIFAR-ResNet stages) feeds ``num_branches`` independent branches, each the
rest of a ResNet-8-style network (the remaining stages of ``blocks_per_stage``
basic blocks, widths w/2w/4w, strides 1/2/2, global avg pool) with its own
classifier. Logits: the mean of the branch logits. Defaults: 7 branches (the
paper's ResNet-8 student), only the stem shared (our choice).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import layers

NUM_STAGES = 3


class EKDBranch(nn.Module):
  """Stages ``first_stage``..2 of a CIFAR ResNet, pooling and a classifier."""

  first_stage: int
  width: int = 16
  blocks_per_stage: int = 1
  num_classes: int = 10
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    for i in range(self.first_stage, NUM_STAGES):
      for j in range(self.blocks_per_stage):
        strides = 2 if i > 0 and j == 0 else 1
        preact, _ = layers.BasicBlock(
          self.width * 2**i,
          strides,
          self.conv_type,
          self.dtype,
          name=f'stage{i + 1}_block{j + 1}',
        )(x, train)
        x = nn.relu(preact)
    pooled = layers.global_avg_pool(x)
    logits = layers.classify(
      pooled, self.num_classes, self.conv_type, train, self.dtype
    )
    return logits, pooled


class EKDStudent(nn.Module):
  """Multi-branch student. See the module docstring; features as in kdjax.models."""

  # Branch k is meant to distil from teacher k mod T (the loss decides).
  num_branches: int = 7
  width: int = 16
  shared_stages: int = 0  # Our choice: no official code exists.
  blocks_per_stage: int = 1
  num_classes: int = 10
  conv_type: str = 'conv'
  dtype: Any = jnp.float32

  total_stride = 2 ** (NUM_STAGES - 1)

  @property
  def layout(self) -> str:
    depth = 2 + 2 * NUM_STAGES * self.blocks_per_stage
    return (
      f'EKD student: shared stem conv3x3 {self.width} (multiplicative) + '
      f'{self.shared_stages} shared stage(s), {self.num_branches} ResNet-{depth}-style '
      f'branches (widths {[self.width * 2**i for i in range(NUM_STAGES)]}, '
      f'{self.blocks_per_stage} block(s) per stage), each with a dense classifier; '
      f'logits = branch mean'
    )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    layers.check_conv_type(self.conv_type)
    if self.num_branches < 1:
      raise ValueError(f'num_branches must be >= 1, got {self.num_branches}')
    if not 0 <= self.shared_stages < NUM_STAGES:
      raise ValueError(
        f'shared_stages must be in [0, {NUM_STAGES - 1}], got {self.shared_stages}'
      )
    layers.check_images(images, self.total_stride, type(self).__name__)
    x = layers.ConvOrAdder(
      self.width, 3, conv_type='conv', dtype=self.dtype, name='stem'
    )(images)
    x = nn.relu(layers.batch_norm(train, self.dtype, name='stem_bn')(x))
    stages = []
    for i in range(self.shared_stages):
      for j in range(self.blocks_per_stage):
        strides = 2 if i > 0 and j == 0 else 1
        preact, block_features = layers.BasicBlock(
          self.width * 2**i,
          strides,
          self.conv_type,
          self.dtype,
          name=f'trunk_stage{i + 1}_block{j + 1}',
        )(x, train)
        x = nn.relu(preact)
      stages.append(block_features)
    # A Python loop rather than nn.vmap: branches stay separate in the params
    # tree and op counting sees every branch.
    branch_logits, branch_pooled = [], []
    for k in range(self.num_branches):
      logits, pooled = EKDBranch(
        self.shared_stages,
        self.width,
        self.blocks_per_stage,
        self.num_classes,
        self.conv_type,
        self.dtype,
        name=f'branch{k + 1}',
      )(x, train)
      branch_logits.append(logits)
      branch_pooled.append(pooled)
    branch_logits = jnp.stack(branch_logits)
    branch_pooled = jnp.stack(branch_pooled)
    # 'pooled' concatenates the branches: the ensemble logits are a linear map of
    # it (mean of per-branch classifiers), so it is the ensemble's penultimate layer.
    pooled = jnp.concatenate(list(branch_pooled), axis=-1)
    features = dict(
      stages=tuple(stages),
      pooled=pooled,
      branch_logits=branch_logits,
      branch_pooled=branch_pooled,
    )
    return jnp.mean(branch_logits, axis=0), features
