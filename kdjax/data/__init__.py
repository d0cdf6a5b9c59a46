"""Input pipelines: tfds + tf.data for CIFAR-10/100, ImageNet-2012, mnist5k,
any tfds dataset and image folders, and an in-memory NumPy loader for mnist5k
(docs/trainer.md, "Data"; docs/your_data.md).

    train_source, eval_source = kdjax.data.build_inputs(config)  # a run's
    source = kdjax.data.build_input('cifar10', 'train', global_batch_size=256,
                                    train=True, seed=0)
    for batch in source.epoch(epoch_index):  # {'image', 'label', 'mask'}
      ...

`build_input(..., loader='numpy')` reads mnist5k without TensorFlow. The
modules that need TensorFlow (pipeline, augment, custom, mnist5k, testing) and
the names they define (InputSource, load_builder, prepare_command) load on
first access. `kdjax.data.mnist5k` registers the `mnist5k` tfds builder.
"""

import importlib

from kdjax.data import in_memory
from kdjax.data import mnist5k_csv
from kdjax.data import specs
from kdjax.data import splits
from kdjax.data.inputs import build_inputs
from kdjax.data.inputs import check_config
from kdjax.data.loaders import build_input
from kdjax.data.loaders import check_loader
from kdjax.data.loaders import config_loader
from kdjax.data.loaders import LOADERS
from kdjax.data.specs import AUGMENTATIONS
from kdjax.data.specs import Augment
from kdjax.data.specs import class_balanced_subset
from kdjax.data.specs import DATASETS
from kdjax.data.specs import DatasetNotPreparedError
from kdjax.data.specs import DatasetSpec
from kdjax.data.specs import InvalidRecordError
from kdjax.data.specs import UnknownDatasetError

# Modules and names that import tensorflow / tensorflow_datasets.
_TF_MODULES = ('augment', 'custom', 'mnist5k', 'pipeline', 'testing')
_TF_NAMES = {
  'InputSource': 'pipeline',
  'load_builder': 'pipeline',
  'prepare_command': 'pipeline',
}


def __getattr__(name):
  if name in _TF_MODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _TF_NAMES:
    module = importlib.import_module(f'{__name__}.{_TF_NAMES[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_TF_MODULES) | set(_TF_NAMES))


__all__ = [
  'AUGMENTATIONS',
  'Augment',
  'DATASETS',
  'DatasetNotPreparedError',
  'DatasetSpec',
  'InputSource',
  'InvalidRecordError',
  'LOADERS',
  'UnknownDatasetError',
  'augment',
  'build_input',
  'build_inputs',
  'check_config',
  'check_loader',
  'config_loader',
  'class_balanced_subset',
  'custom',
  'in_memory',
  'inputs',
  'load_builder',
  'mnist5k',
  'mnist5k_csv',
  'prepare_command',
  'specs',
  'splits',
]
