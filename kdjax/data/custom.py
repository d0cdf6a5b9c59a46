"""Datasets that are not built in: any tfds dataset, and an image folder.

    --config.dataset.name=fashion_mnist         (any tfds name, prepared)
    --config.dataset.image_folder=DIR           (DIR/<split>/<class>/*.png)

What kdjax needs to know about a dataset (`specs.DatasetSpec`) is read from
its tfds `info`, each field overridable in the config (docs/your_data.md):

  image_key, label_key  info.supervised_keys, else 'image' and 'label'
  num_classes           the label feature's ClassLabel
  image_size            the image feature's fixed square size; else the short
                        side of the first training image, at most 224
  train/eval split      dataset.train_split / eval_split when the dataset has
                        them; the defaults ('train', 'test') fall back to the
                        splits the dataset has ('validation', ...)
  mean, std             computed once from the first `STATS_EXAMPLES` images
                        of the train split and recorded in
                        `<the dataset's folder>/kdjax_normalization.json`

An image folder is read by tfds's `ImageFolder` builder (classes are the
sorted folder names, the same in every split), extended with split slices so
that train_fraction and multi-process shares work as for any tfds dataset.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kdjax.data import augment as augment_lib
from kdjax.data.inputs import OVERRIDES
from kdjax.data import pipeline
from kdjax.data import specs
from kdjax.data.specs import DatasetSpec

STATS_FILE = 'kdjax_normalization.json'
# Images of the train split the statistics are computed from (read order).
STATS_EXAMPLES = 2048
# Largest image size chosen for a dataset of variable-size images.
MAX_DEFAULT_SIZE = 224
# Fixed-size datasets whose decoded train split is smaller stay in memory.
CACHE_BYTES = 2 << 30
# Images up to this side get the CIFAR recipe by default, larger ones the
# ImageNet one.
SMALL_IMAGE = 64
# The config's split defaults (config_defaults.base_config), and what they
# fall back to on a dataset without a split of that name.
DEFAULT_SPLITS = {'train': ('train',), 'test': ('test', 'validation', 'valid')}


class ImageFolder(tfds.folder_dataset.ImageFolder):
  """tfds's ImageFolder, reading split slices too ('train[:50%]')."""

  def _as_dataset(
    self, split, shuffle_files=False, decoders=None, read_config=None
  ):
    del read_config
    instructions = tfds.core.splits.AbstractSplit.from_spec(split).to_absolute(
      self.info.splits
    )
    label_names = self.info.features['label']
    paths, labels = [], []
    for instruction in instructions:
      examples = self._split_examples[instruction.splitname]
      for example in examples[instruction.from_ : instruction.to]:
        paths.append(example.image_path)
        labels.append(label_names.str2int(example.label))
    ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(paths, tf.string), tf.constant(labels, tf.int64))
    )
    if shuffle_files:
      ds = ds.shuffle(len(paths))
    features = self.info.features

    def load(path, label):
      example = {
        'image': tf.io.read_file(path),
        'label': label,
        'image/filename': path,
      }
      return features.decode_example(example, decoders=decoders)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def image_folder_builder(folder: str) -> ImageFolder:
  """The builder of `folder`; ValueError where its layout is not DIR/split/class."""
  if not tf.io.gfile.isdir(folder):
    raise ValueError(
      f'dataset.image_folder={folder!r} is not a directory. '
      'It must hold one folder per split, each with one folder per class: '
      'DIR/train/<class>/*.png and DIR/test/<class>/*.png (docs/your_data.md).'
    )
  builder = ImageFolder(folder)
  sizes = pipeline.split_sizes(builder)
  if not any(sizes.values()):
    raise ValueError(
      f'dataset.image_folder={folder!r} has no images in the layout '
      'DIR/<split>/<class>/*.png (or .jpg, .jpeg): found split folders '
      f'{sorted(sizes) or "none"}. Put each split in a folder of its own '
      '(train/, test/) with one folder per class inside (docs/your_data.md).'
    )
  return builder


def folder_name(folder: str) -> str:
  """The name of an image folder's dataset in messages: image_folder:<base>."""
  return 'image_folder:' + os.path.basename(os.path.normpath(folder))


def _base_splits(split: str) -> list[str]:
  """Split names that a split string reads: 'train[:90%]+test' -> train, test."""
  return [part.split('[')[0].strip() for part in str(split).split('+')]


def resolve_split(
  name: str, configured: str, available: Mapping[str, int], what: str
) -> str:
  """`configured` if the dataset has it, else the fallback of a default."""
  if all(base in available for base in _base_splits(configured)):
    return configured
  for candidate in DEFAULT_SPLITS.get(configured, ()):
    if candidate in available:
      return candidate
  has = sorted(available)
  hint = ''
  if len(has) == 1:
    hint = (
      f' With one split, hold part of it out: --config.dataset.train_split='
      f"'{has[0]}[:90%]' --config.dataset.eval_split='{has[0]}[90%:]'."
    )
  raise ValueError(
    f'{name} has no split {configured!r} for dataset.{what}; its splits are '
    f'{has}. Set --config.dataset.{what}=<one of them, or a slice such as '
    f"'{has[0]}[:90%]'>.{hint}"
  )


def _feature(name: str, features, key: str | None, kind, what: str):
  """(key, feature) of the `kind` feature named `key`, or the only one.

  `what` is the feature's role: 'image' or 'label' (dataset.<what>_key).
  """
  candidates = [k for k, f in features.items() if isinstance(f, kind)]
  if key is None:
    if len(candidates) != 1 and what not in candidates:
      raise ValueError(
        f'{name} has {what} features {candidates}: choose one with '
        f'--config.dataset.{what}_key=<name>.'
      )
    key = what if what in candidates else candidates[0]
  # An image must be an Image feature; a label may be any integer feature.
  if key not in (candidates if what == 'image' else features):
    raise ValueError(
      f'dataset.{what}_key={key!r}: {name} has no {what} feature of that '
      f'name; its {what} features are {candidates} (of {sorted(features)}).'
    )
  return key, features[key]


def _first_image_side(builder, spec: DatasetSpec, split: str) -> int:
  """The short side of the first image of `split` (variable-size datasets)."""
  first = f'{_base_splits(split)[0]}[0:1]'
  ds = pipeline._read(builder, first, spec)  # pylint: disable=protected-access
  for example in ds.take(1):
    image = tf.io.decode_image(example['image'], expand_animations=False)
    return int(min(image.shape[0], image.shape[1]))
  raise ValueError(f'split {split!r} is empty.')


def _stats_path(builder) -> str:
  return os.path.join(os.fspath(builder.data_dir), STATS_FILE)


def _stats_key(spec: DatasetSpec, split: str) -> str:
  key = f'{spec.image_key} {split}'
  if spec.stored_shape is None:  # Computed after resizing to the image size.
    key += f' {spec.image_shape[0]}px'
  return key


def compute_stats(
  builder, spec: DatasetSpec, split: str, examples: int = STATS_EXAMPLES
) -> tuple[tuple[float, ...], tuple[float, ...], int]:
  """Per-channel (mean, std, count) of [0, 1] pixels of `split`'s first images."""
  channels = spec.image_shape[-1]
  size = spec.image_shape[0]

  def pixels(example):
    image = tf.io.decode_image(
      example['image'], channels=channels, expand_animations=False
    )
    image = tf.ensure_shape(image, [None, None, channels])
    if spec.stored_shape is None:
      image = augment_lib.resize_and_center_crop(image, size, size)
    image = tf.cast(image, tf.float64) / 255.0
    flat = tf.reshape(image, [-1, channels])
    return tf.stack(
      [tf.reduce_sum(flat, 0), tf.reduce_sum(flat * flat, 0)]
    ), tf.cast(tf.shape(flat)[0], tf.float64)

  ds = pipeline._read(builder, split, spec)  # pylint: disable=protected-access
  ds = ds.take(examples).map(pixels, num_parallel_calls=tf.data.AUTOTUNE)
  sums, count, seen = np.zeros([2, channels]), 0.0, 0
  for moments, n in ds.as_numpy_iterator():
    sums += moments
    count += n
    seen += 1
  if not seen:
    raise ValueError(f'split {split!r} is empty: no statistics to compute.')
  mean = sums[0] / count
  std = np.sqrt(np.maximum(sums[1] / count - mean**2, 0.0))
  std = np.maximum(std, 1e-3)  # A constant channel: leave it unscaled.
  return (
    tuple(round(float(m), 6) for m in mean),
    tuple(round(float(s), 6) for s in std),
    seen,
  )


def normalization(
  builder, spec: DatasetSpec, split: str, name: str, *, write: bool
) -> DatasetSpec:
  """`spec` with mean and std from the stats file, computed once if absent.

  Args:
    builder: the dataset's builder; the file lives in its data_dir.
    spec: the spec without statistics (mean/std empty).
    split: the train split the statistics are computed from.
    name: the dataset's name in messages.
    write: record newly computed statistics (process 0 only).
  """
  path = _stats_path(builder)
  key = _stats_key(spec, split)
  recorded = {}
  if tf.io.gfile.exists(path):
    try:
      with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
    except (ValueError, OSError) as e:
      logging.warning('kdjax: ignoring unreadable %s (%s).', path, e)
      recorded = {}
  entry = recorded.get(key)
  if entry and len(entry.get('mean', ())) == spec.image_shape[-1]:
    return dataclasses.replace(
      spec,
      mean=tuple(entry['mean']),
      std=tuple(entry['std']),
      stats_from=f'{path} [{key!r}]',
    )
  mean, std, seen = compute_stats(builder, spec, split)
  where = f'computed from the first {seen} images of {split}'
  if write:
    recorded[key] = {
      'mean': list(mean),
      'std': list(std),
      'examples': seen,
      'split': split,
      'image_key': spec.image_key,
    }
    try:
      temporary = f'{path}.tmp-{os.getpid()}'
      with tf.io.gfile.GFile(temporary, 'w') as f:
        json.dump(recorded, f, indent=1, sort_keys=True)
      tf.io.gfile.rename(temporary, path, overwrite=True)
      where += f', recorded in {path} [{key!r}]'
    except (OSError, tf.errors.OpError) as e:
      where += f' (not recorded: {path} is not writable: {e})'
  logging.warning(
    'kdjax: %s normalization mean=%s std=%s, %s. Set --config.dataset.mean '
    'and --config.dataset.std to fix other values.',
    name,
    list(mean),
    list(std),
    where,
  )
  return dataclasses.replace(spec, mean=mean, std=std, stats_from=where)


def spec_from_info(
  name: str,
  builder,
  overrides: Mapping[str, Any],
  *,
  train_split: str = 'train',
  eval_split: str = 'test',
  base: DatasetSpec | None = None,
) -> DatasetSpec:
  """The spec of a dataset from its tfds info, with the config's overrides.

  Args:
    name: the dataset's name in messages.
    builder: its tfds builder (prepared) or `ImageFolder`.
    overrides: the config's values of `OVERRIDES`; None means from the info.
    train_split: the configured training split (resolved by `resolve_split`).
    eval_split: the configured evaluation split.
    base: a built-in dataset's spec: the overrides apply to it, the rest
      stays as built in.

  Returns:
    A spec without statistics where mean/std are not given and `base` is
    None: `normalization` completes it.
  """
  given = {k: overrides.get(k) for k in OVERRIDES}
  available = pipeline.split_sizes(builder)
  train_split = resolve_split(name, train_split, available, 'train_split')
  eval_split = resolve_split(name, eval_split, available, 'eval_split')
  features = builder.info.features
  if base is not None:
    changes = {
      k: given[k]
      for k in ('image_key', 'label_key', 'num_classes')
      if given[k] is not None
    }
    if given['mean'] is not None or given['std'] is not None:
      changes['mean'] = tuple(given['mean'] or base.mean)
      changes['std'] = tuple(given['std'] or base.std)
      changes['stats_from'] = 'the config (dataset.mean, dataset.std)'
    spec = dataclasses.replace(
      base, train_split=train_split, eval_split=eval_split, **changes
    )
    _feature(name, features, spec.image_key, tfds.features.Image, 'image')
    _feature(name, features, spec.label_key, tfds.features.ClassLabel, 'label')
    return _checked(name, spec)

  supervised = builder.info.supervised_keys or ()
  image_key = given['image_key']
  label_key = given['label_key']
  if len(supervised) == 2 and all(isinstance(k, str) for k in supervised):
    image_key = image_key or supervised[0]
    label_key = label_key or supervised[1]
  image_key, image_feature = _feature(
    name, features, image_key, tfds.features.Image, 'image'
  )
  label_key, label_feature = _feature(
    name, features, label_key, tfds.features.ClassLabel, 'label'
  )
  num_classes = given['num_classes'] or getattr(
    label_feature, 'num_classes', None
  )
  if not num_classes:
    raise ValueError(
      f'{name}: the label feature {label_key!r} is not a ClassLabel, so its '
      'number of classes is unknown: set --config.dataset.num_classes=N.'
    )
  shape = tuple(image_feature.shape)
  channels = shape[-1] or 3
  fixed = shape[0] is not None and shape[0] == shape[1]
  stored_shape = (shape[0], shape[1], channels) if fixed else None
  spec = DatasetSpec(
    num_classes=int(num_classes),
    image_shape=(0, 0, channels),
    stored_shape=stored_shape,
    mean=(),
    std=(),
    train_split=train_split,
    eval_split=eval_split,
    augment='cifar',
    image_key=image_key,
    label_key=label_key,
  )
  size = given['image_size'] or (
    shape[0]
    if fixed
    else min(MAX_DEFAULT_SIZE, _first_image_side(builder, spec, train_split))
  )
  examples = available.get(_base_splits(train_split)[0], 0)
  spec = dataclasses.replace(
    spec,
    image_shape=(int(size), int(size), channels),
    augment='cifar' if size <= SMALL_IMAGE else 'imagenet',
    cache=fixed
    and examples * shape[0] * shape[1] * channels < CACHE_BYTES
    and not isinstance(builder, ImageFolder),
    shuffle_buffer=None if fixed else 50_000,
  )
  if given['mean'] is not None or given['std'] is not None:
    if given['mean'] is None or given['std'] is None:
      raise ValueError(
        f'{name}: set both dataset.mean and dataset.std, or neither '
        '(then they are computed from the train split).'
      )
    spec = dataclasses.replace(
      spec,
      mean=tuple(given['mean']),
      std=tuple(given['std']),
      stats_from='the config (dataset.mean, dataset.std)',
    )
  return spec


def _checked(name: str, spec: DatasetSpec) -> DatasetSpec:
  channels = spec.image_shape[-1]
  if len(spec.mean) != channels or len(spec.std) != channels:
    raise ValueError(
      f'{name}: dataset.mean {list(spec.mean)} and dataset.std '
      f'{list(spec.std)} must have one value per channel ({channels}).'
    )
  if min(spec.std) <= 0:
    raise ValueError(f'{name}: dataset.std {list(spec.std)} must be > 0.')
  return spec


def resolve(
  dataset_config, *, process_index: int
) -> tuple[str, Any, DatasetSpec]:
  """(name, builder, complete spec) of config.dataset's tfds data or folder."""
  folder = dataset_config.get('image_folder')
  name = dataset_config.get('name')
  if folder:
    name = folder_name(folder)
    builder = image_folder_builder(folder)
    base = None
  else:
    builder = pipeline.load_builder(name, dataset_config.get('data_dir'))
    base = specs.DATASETS.get(name)
  spec = spec_from_info(
    name,
    builder,
    {k: dataset_config.get(k) for k in OVERRIDES},
    train_split=dataset_config.get('train_split') or 'train',
    eval_split=dataset_config.get('eval_split') or 'test',
    base=base,
  )
  if not spec.mean:
    spec = normalization(
      builder, spec, spec.train_split, name, write=process_index == 0
    )
  return name, builder, _checked(name, spec)


def tfds_source(name: str, data_dir: str | None):
  """(builder, spec) of a tfds dataset that is not built in, all from its info."""
  import jax  # pylint: disable=g-import-not-at-top

  config = {'name': name, 'data_dir': data_dir}
  _, builder, spec = resolve(config, process_index=jax.process_index())
  return builder, spec
