"""What both input loaders share: dataset specs, recipes, argument checks.

The tfds loader (pipeline.py) and the NumPy loader (in_memory.py) read these
definitions from here, so that the same arguments mean the same thing in both;
which examples a process reads and in which order is in splits.py.
Nothing here imports TensorFlow: a host without it can still build configs,
validate arguments and run the NumPy loader.
"""

import dataclasses
import math

from kdjax.data.splits import AUGMENT_STREAM  # noqa: F401 (moved; re-exported)
from kdjax.data.splits import class_balanced_subset  # noqa: F401
from kdjax.data.splits import derive_seed  # noqa: F401
from kdjax.data.splits import SHUFFLE_STREAM  # noqa: F401


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset has no prepared files in the data_dir searched."""


class InvalidRecordError(ValueError):
  """A record is corrupt, mis-shaped, or has a label outside [0, classes)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Per-dataset defaults (what the configs can refer to).

  Attributes:
    num_classes: number of classes of the 'label' feature.
    image_shape: (H, W, C) the model sees at the default image size.
    stored_shape: (H, W, C) of the stored images; None where it varies.
    mean: per-channel mean of [0, 1] pixels, for normalization.
    std: per-channel std of [0, 1] pixels.
    train_split: tfds training split.
    eval_split: tfds evaluation split.
    augment: default training recipe, a key of `AUGMENTATIONS`.
    fit: how `image_size` changes fixed-size images: 'pad' or 'resize'.
    cache: keep the decoded split in memory across epochs (small datasets).
    shuffle_buffer: per-process shuffle buffer; None means the whole split.
    manual_download: tfds cannot fetch the source itself (ImageNet): the
      archives must be put in a `manual_dir` first.
    image_key: the tfds feature holding the image.
    label_key: the tfds feature holding the class label.
    encoded_jpeg: variable-size images are JPEGs, decoded only inside the crop
      window (ImageNet); otherwise any format, decoded whole.
    eval_resize_ratio: variable-size images: evaluation resizes the short
      side to this ratio of the image size, then center-crops (256/224 for
      ImageNet; 1 for any other dataset).
    stats_from: where `mean` and `std` come from, for the run's record.
  """

  num_classes: int
  image_shape: tuple[int, int, int]
  stored_shape: tuple[int, int, int] | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_split: str
  eval_split: str
  augment: str
  fit: str = 'resize'
  cache: bool = True
  shuffle_buffer: int | None = None
  manual_download: bool = False
  image_key: str = 'image'
  label_key: str = 'label'
  encoded_jpeg: bool = False
  eval_resize_ratio: float = 1.0
  stats_from: str = 'kdjax built-in values'


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)

DATASETS = {
  'cifar10': DatasetSpec(
    num_classes=10,
    image_shape=(32, 32, 3),
    stored_shape=(32, 32, 3),
    mean=_CIFAR_MEAN,
    std=_CIFAR_STD,
    train_split='train',
    eval_split='test',
    augment='cifar',
  ),
  'cifar100': DatasetSpec(
    num_classes=100,
    image_shape=(32, 32, 3),
    stored_shape=(32, 32, 3),
    mean=_CIFAR_MEAN,
    std=_CIFAR_STD,
    train_split='train',
    eval_split='test',
    augment='cifar',
  ),
  'imagenet2012': DatasetSpec(
    num_classes=1000,
    image_shape=(224, 224, 3),
    stored_shape=None,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    train_split='train',
    eval_split='validation',
    augment='imagenet',
    # Encoded JPEGs (~110 kB each): ~5.5 GB per process.
    cache=False,
    shuffle_buffer=50_000,
    manual_download=True,
    encoded_jpeg=True,
    eval_resize_ratio=256 / 224,
  ),
  # Canonical full-MNIST statistics; measured on the 5,000 digits they are
  # 0.1313 / 0.3085, a difference that does not matter.
  'mnist5k': DatasetSpec(
    num_classes=10,
    image_shape=(28, 28, 1),
    stored_shape=(28, 28, 1),
    mean=(0.1307,),
    std=(0.3081,),
    train_split='train',
    eval_split='test',
    augment='mnist',
    fit='pad',
  ),
}

# The `dataset.name` of random batches (synthetic.py), accepted by every loader.
SYNTHETIC = 'synthetic'


class UnknownDatasetError(ValueError):
  """A dataset name that is neither built in nor a tfds dataset."""


def accepted_datasets() -> str:
  """One sentence naming every accepted `dataset.name` and the folder key."""
  names = ', '.join(repr(n) for n in sorted(DATASETS) + [SYNTHETIC])
  return (
    f'Accepted: the built-in datasets {names}; any tfds dataset name '
    "(e.g. 'fashion_mnist', 'svhn_cropped', 'imagenette/320px-v2', "
    'https://www.tensorflow.org/datasets/catalog/overview), prepared in '
    'dataset.data_dir; or your own images with '
    '--config.dataset.image_folder=DIR (DIR/<split>/<class>/*.png or '
    '*.jpg; docs/your_data.md).'
  )


def unknown_dataset_message(name: str, close: tuple[str, ...] = ()) -> str:
  """The one-paragraph error for a `dataset.name` nobody knows."""
  hint = (
    f' Did you mean {" or ".join(repr(c) for c in close)}?' if close else ''
  )
  return f'Unknown dataset {name!r}.{hint} {accepted_datasets()}'


# Augmentation recipes --------------------------------------------------------

PAD_CROP = 'pad_crop'
INCEPTION_CROP = 'inception_crop'
NO_AUGMENT = 'none'


@dataclasses.dataclass(frozen=True)
class Augment:
  """A training augmentation recipe.

  Attributes:
    kind: 'none'; 'pad_crop' (pad, then random crop back to the input size:
      CIFAR, MNIST); or 'inception_crop' (random-resized-crop to the input
      size: ImageNet).
    pad: pixels added on each side for 'pad_crop'.
    padding_mode: 'constant' (zeros, black before normalization: AdderNet,
      RepDistiller) or 'reflect' (OFD) for 'pad_crop'.
    flip: random horizontal flip with probability 1/2.
    area_range: crop area as a fraction of the image, for 'inception_crop'
      (torchvision RandomResizedCrop's scale).
    aspect_ratio_range: crop width/height range for 'inception_crop',
      sampled uniformly.
  """

  kind: str = NO_AUGMENT
  pad: int = 0
  padding_mode: str = 'constant'
  flip: bool = False
  area_range: tuple[float, float] = (0.08, 1.0)
  # Sampled uniformly by TF; torchvision samples log-uniformly (a small
  # difference, ours).
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)

  def __post_init__(self):
    if self.kind not in (NO_AUGMENT, PAD_CROP, INCEPTION_CROP):
      raise ValueError(f'Unknown augmentation kind {self.kind!r}.')
    if self.padding_mode not in ('constant', 'reflect'):
      raise ValueError(
        f"padding_mode must be 'constant' or 'reflect', got "
        f'{self.padding_mode!r}.'
      )
    if self.pad < 0:
      raise ValueError(f'pad must be >= 0, got {self.pad}.')

  @property
  def is_identity(self) -> bool:
    return self.kind == NO_AUGMENT and not self.flip


# Named recipes, the values configs use for `build_input(augment=...)`.
AUGMENTATIONS = {
  'none': Augment(),
  # AdderNet / RepDistiller: RandomCrop(32, padding=4) + flip, zero padding.
  'cifar': Augment(PAD_CROP, pad=4, padding_mode='constant', flip=True),
  # OFD (clovaai/overhaul-distillation): reflect padding.
  'cifar_reflect': Augment(PAD_CROP, pad=4, padding_mode='reflect', flip=True),
  # Digits are not mirror-symmetric: shift only.
  'mnist': Augment(PAD_CROP, pad=2, padding_mode='constant', flip=False),
  'imagenet': Augment(INCEPTION_CROP, flip=True),
}


def get_augment(augment: 'str | Augment | None') -> Augment:
  """Resolves a recipe name (see `AUGMENTATIONS`) or passes an `Augment`."""
  if augment is None or augment is False:
    return AUGMENTATIONS['none']
  if isinstance(augment, Augment):
    return augment
  try:
    return AUGMENTATIONS[augment]
  except KeyError:
    raise ValueError(
      f'Unknown augmentation {augment!r}; expected one of '
      f'{sorted(AUGMENTATIONS)} or an Augment.'
    ) from None


# Choices shared by the loaders -----------------------------------------------


def check_input_args(
  name: str,
  *,
  global_batch_size: int,
  train: bool,
  augment: 'str | Augment | None',
  train_fraction: float,
  process_index: int | None,
  process_count: int | None,
  spec: DatasetSpec | None = None,
) -> tuple[DatasetSpec, Augment, int, int]:
  """Validates what `build_input` is given, before any data is touched.

  `spec`: the dataset's spec where `name` is not a key of `DATASETS` (a tfds
  dataset or an image folder, resolved by custom.py); None looks it up.

  Returns:
    (the dataset's spec, the training recipe (none for evaluation), process
    index, process count), the last two defaulting to jax's.
  """
  if spec is None:
    if name not in DATASETS:
      raise UnknownDatasetError(unknown_dataset_message(name))
    spec = DATASETS[name]
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = (
      jax.process_index() if process_index is None else (process_index)
    )
    process_count = (
      jax.process_count() if process_count is None else (process_count)
    )
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index {process_index} outside [0, {process_count}).'
    )
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f'global_batch_size {global_batch_size} must be a positive multiple '
      f'of the process count {process_count} (each process loads '
      'global_batch_size // process_count examples).'
    )
  if not 0.0 < train_fraction <= 1.0:
    raise ValueError(f'train_fraction must be in (0, 1], got {train_fraction}.')
  if augment == 'default':
    augment = spec.augment
  recipe = get_augment(augment if train else None)
  if recipe.kind == PAD_CROP and spec.encoded_jpeg:
    raise ValueError(
      f'{name} images vary in size: pad_crop needs fixed-size '
      "images; use 'imagenet' (inception_crop)."
    )
  return spec, recipe, process_index, process_count


class SourceBase:
  """What the trainer reads from an input source, whichever loader built it.

  Attributes:
    num_examples: examples of the split (after train_fraction), all processes.
    steps_per_epoch: train: full global batches (the remainder of the split is
      left out, a different part each epoch); eval: enough global batches to
      cover the split, the last padded with mask 0.
    local_batch_size: global_batch_size // process_count.
    image_shape: (H, W, C) of the batches.

  Batches are {'image', 'label', 'mask', 'index'}; 'index' (int32) is each
  example's row in [0, num_examples), stable across epochs and unique over
  processes (`splits.ProcessShare.rows`), -1 for eval padding.
  """

  def __init__(
    self,
    *,
    name: str,
    split: str,
    spec: DatasetSpec,
    global_batch_size: int,
    train: bool,
    seed: int,
    image_size: int,
    augment: Augment,
    process_index: int,
    process_count: int,
  ):
    self.name = name
    self.split = split
    self.train = train
    self.seed = seed
    self.global_batch_size = global_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch_size = global_batch_size // process_count
    self.augment = augment
    self.image_shape = (image_size, image_size, spec.image_shape[-1])
    self.num_classes = spec.num_classes
    self._spec_stats = (spec.mean, spec.std, spec.stats_from)
    self.num_examples = 0
    self.steps_per_epoch = 0
    self._local_examples_per_epoch = 0

  @property
  def normalization(self) -> dict:
    """{'mean', 'std', 'from'}: the statistics the images are normalized with."""
    return {
      'mean': [float(m) for m in self._spec_stats[0]],
      'std': [float(s) for s in self._spec_stats[1]],
      'from': self._spec_stats[2],
    }

  def _set_num_examples(self, num_examples: int) -> None:
    self.num_examples = num_examples
    if self.train:
      self.steps_per_epoch = num_examples // self.global_batch_size
      if self.steps_per_epoch == 0:
        raise ValueError(
          f'{self.name}/{self.split} has {num_examples} examples, fewer '
          f'than one global batch of {self.global_batch_size}.'
        )
    else:
      self.steps_per_epoch = math.ceil(num_examples / self.global_batch_size)
    # Even splits differ by at most one example, so every process has at
    # least (train) / at most (eval) this many examples.
    self._local_examples_per_epoch = (
      self.steps_per_epoch * self.local_batch_size
    )

  def _check_start_step(self, start_step: int) -> None:
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(
        f'start_step {start_step} outside [0, {self.steps_per_epoch}].'
      )

  def __repr__(self):
    return (
      f'{type(self).__name__}({self.name}/{self.split}, '
      f'train={self.train}, num_examples={self.num_examples}, '
      f'steps_per_epoch={self.steps_per_epoch}, '
      f'image_shape={self.image_shape}, process {self.process_index}/'
      f'{self.process_count})'
    )
