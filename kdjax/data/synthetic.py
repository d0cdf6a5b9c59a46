"""Random images through the trainer's input path, to measure throughput.

`--config.dataset.name=synthetic` on any preset feeds batches of N(0, 1)
images and uniform labels of the preset's shape (`dataset.synthetic.like`,
set by the preset to its real dataset), so a preset's speed can be measured
where its data is not available:

  python -m kdjax.main --config=configs/pkkd.py:cifar10_resnet20 \
    --config.dataset.name=synthetic --workdir=/tmp/kdjax/throughput

The batches are a small pool drawn once per process and cycled, so producing
them costs the host nothing; accuracy on them is chance by construction.
Each batch's 'index' numbers its rows as the real loaders do: row b of
process p at step s is example s * global_batch + p * local_batch + b, so a
train epoch's indices are a permutation of range(steps_per_epoch *
global_batch), the same every epoch (a pool batch comes back every
POOL_BATCHES steps under other indices; eval padding carries -1, as in the
real loaders).
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, Optional

import numpy as np

from kdjax.data import specs

NAME = 'synthetic'
# Distinct batches per process and split; cycled through every epoch.
POOL_BATCHES = 4
DEFAULT_TRAIN_BATCHES = 64
DEFAULT_EVAL_BATCHES = 4


class SyntheticSource:
  """A source with the attributes the trainer reads (see specs.SourceBase)."""

  def __init__(
    self,
    *,
    image_shape,
    num_classes: int,
    num_examples: int,
    global_batch_size: int,
    train: bool,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if global_batch_size % process_count:
      raise ValueError(
        f'global batch {global_batch_size} is not divisible by the '
        f'{process_count} processes'
      )
    self.name, self.split, self.train = (
      NAME,
      'train' if train else 'eval',
      train,
    )
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.num_examples = num_examples
    if train:
      self.steps_per_epoch = num_examples // global_batch_size
      if not self.steps_per_epoch:
        raise ValueError(
          f'synthetic train_examples={num_examples} is fewer than one global '
          f'batch of {global_batch_size}.'
        )
    else:
      self.steps_per_epoch = math.ceil(num_examples / global_batch_size)
    rng = np.random.default_rng([seed, process_index, int(train)])
    shape = (POOL_BATCHES, self.local_batch_size) + self.image_shape
    self._images = rng.standard_normal(shape, dtype=np.float32)
    self._labels = rng.integers(
      0, num_classes, (POOL_BATCHES, self.local_batch_size), dtype=np.int32
    )
    self._process_index = process_index

  def epoch(
    self, epoch_index: int, start_step: int = 0
  ) -> Iterator[Dict[str, np.ndarray]]:
    del epoch_index
    for step in range(start_step, self.steps_per_epoch):
      k = step % POOL_BATCHES
      first = step * self.global_batch_size
      first += self._process_index * self.local_batch_size
      index = np.arange(first, first + self.local_batch_size, dtype=np.int32)
      mask = np.ones((self.local_batch_size,), np.float32)
      if not self.train:  # The last eval batch is padded past the split.
        mask = (index < self.num_examples).astype(np.float32)
        index = np.where(mask > 0, index, -1).astype(np.int32)
      yield {
        'image': self._images[k],
        'label': self._labels[k],
        'mask': mask,
        'index': index,
      }


def build_inputs(
  dataset_config,
  *,
  global_batch_size: int,
  eval_batch_size: int,
  seed: int,
  process_index: int,
  process_count: int,
):
  """(train, eval) sources for `dataset_config` (config.dataset)."""
  synthetic = dataset_config.get('synthetic') or {}
  like = synthetic.get('like') or 'mnist5k'
  if like not in specs.DATASETS:
    raise ValueError(
      f'dataset.synthetic.like={like!r}; use one of {sorted(specs.DATASETS)}'
    )
  spec = specs.DATASETS[like]
  size = synthetic.get('image_size') or dataset_config.get('image_size')
  height, width, channels = spec.image_shape
  if size:
    height = width = int(size)
  channels = int(synthetic.get('channels') or channels)
  num_classes = int(synthetic.get('num_classes') or spec.num_classes)
  train_examples: Optional[int] = synthetic.get('train_examples')
  eval_examples: Optional[int] = synthetic.get('eval_examples')
  common = dict(
    image_shape=(height, width, channels),
    num_classes=num_classes,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )
  train = SyntheticSource(
    num_examples=train_examples or DEFAULT_TRAIN_BATCHES * global_batch_size,
    global_batch_size=global_batch_size,
    train=True,
    **common,
  )
  evaluation = SyntheticSource(
    num_examples=eval_examples or DEFAULT_EVAL_BATCHES * eval_batch_size,
    global_batch_size=eval_batch_size,
    train=False,
    **common,
  )
  return train, evaluation
