"""The trainer's one entry into kdjax.data: a run config -> (train, eval) sources.

    kdjax.data.check_config(config)        # fast, imports no TensorFlow
    train_source, eval_source = kdjax.data.build_inputs(
        config, process_index=jax.process_index(),
        process_count=jax.process_count())

`config.dataset` picks the data (docs/your_data.md):

  name='synthetic'         random batches (synthetic.py), any loader
  name=<built in>          cifar10, cifar100, imagenet2012, mnist5k
  name=<any tfds name>     read with a spec from its tfds info (custom.py)
  image_folder=DIR         DIR/<split>/<class>/*.png|*.jpg (custom.py)

and `config.data.loader` how it is read ('tfds', or 'numpy' for mnist5k).
Nothing here imports TensorFlow; the tfds paths import it when they run.
"""

from __future__ import annotations

import os
import re

from kdjax.data import in_memory
from kdjax.data import loaders
from kdjax.data import specs
from kdjax.data import synthetic

# config.dataset keys that describe a dataset that is not built in; None
# (their default) means "from the dataset's tfds info".
OVERRIDES = (
  'image_key',
  'label_key',
  'num_classes',
  'image_size',
  'mean',
  'std',
)
# Overrides that a built-in dataset's spec takes through the tfds loader.
_SPEC_OVERRIDES = ('image_key', 'label_key', 'num_classes', 'mean', 'std')

# What `tfds.builder` accepts: name, optional /config, optional :version.
_TFDS_NAME = re.compile(r'^[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9.*]+)?$')


def _uses_custom(dataset_config) -> bool:
  """Whether the data is read with a spec built by custom.py."""
  return bool(dataset_config.get('image_folder')) or (
    dataset_config.name not in specs.DATASETS
    or any(dataset_config.get(k) is not None for k in _SPEC_OVERRIDES)
  )


def check_config(config) -> None:
  """Raises ValueError for a dataset or loader the run cannot read.

  Cheap: reads no data and imports neither TensorFlow nor tfds, so the
  trainer calls it before anything slow. A tfds name that is not built in is
  accepted here if it is spelled like one; the builder's load checks it.
  """
  ds = config.dataset
  name = ds.get('name')
  folder = ds.get('image_folder')
  loader = loaders.config_loader(config)
  if loader not in loaders.LOADERS:
    raise ValueError(
      f'Unknown data loader {loader!r}; expected one of '
      f'{list(loaders.LOADERS)}.'
    )
  if folder:
    if name == synthetic.NAME:
      raise ValueError(
        'dataset.name=synthetic and dataset.image_folder exclude each other: '
        'synthetic batches read no data. Unset one of them.'
      )
    if '://' not in folder and not os.path.isdir(os.path.expanduser(folder)):
      raise ValueError(
        f'dataset.image_folder={folder!r} is not a directory. It must hold '
        'one folder per split, each with one folder per class: '
        'DIR/train/<class>/*.png, DIR/test/<class>/*.png (docs/your_data.md).'
      )
  elif name == synthetic.NAME:
    return  # Any loader: nothing is read.
  elif name not in specs.DATASETS and not _TFDS_NAME.match(str(name)):
    raise specs.UnknownDatasetError(specs.unknown_dataset_message(name))
  for key in ('mean', 'std'):
    values = ds.get(key)
    if values is not None and (
      not isinstance(values, (tuple, list)) or not values
    ):
      raise ValueError(
        f'dataset.{key}={values!r}: give one value per channel, e.g. '
        f'--config.dataset.{key}="(0.5, 0.5, 0.5)".'
      )
  if (ds.get('mean') is None) != (ds.get('std') is None):
    raise ValueError(
      'Set both dataset.mean and dataset.std, or neither (then they are '
      'computed once from the train split and recorded).'
    )
  if loader == 'numpy':
    if folder:
      in_memory.check_served('', f'dataset.image_folder={folder!r}')
    in_memory.check_served(name)
    overridden = [k for k in _SPEC_OVERRIDES if ds.get(k) is not None]
    if overridden:
      raise ValueError(
        f"data.loader='numpy' reads {name} as built in; dataset."
        f'{", dataset.".join(overridden)} need the tfds loader '
        "(data.loader='tfds', the default)."
      )


def build_inputs(config, *, process_index=None, process_count=None):
  """(train source, eval source) of a run config, for this process.

  Args:
    config: the run config; reads `dataset`, `data.loader`, `batch_size`,
      `eval_batch_size`, `seed`.
    process_index: this process; default `jax.process_index()`.
    process_count: the number of processes; default `jax.process_count()`.

  Returns:
    Two sources with `epoch(epoch_index, start_step)`, `steps_per_epoch`,
    `num_examples`, `num_classes`, `image_shape` and (except synthetic ones)
    `normalization`: {'mean', 'std', 'from'}, what the trainer records.
  """
  check_config(config)
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index()
    process_count = jax.process_count()
  ds = config.dataset
  eval_batch = config.get('eval_batch_size') or config.batch_size
  if ds.name == synthetic.NAME and not ds.get('image_folder'):
    return synthetic.build_inputs(
      ds,
      global_batch_size=config.batch_size,
      eval_batch_size=eval_batch,
      seed=config.seed,
      process_index=process_index,
      process_count=process_count,
    )
  common = dict(
    seed=config.seed,
    image_size=ds.get('image_size'),
    process_index=process_index,
    process_count=process_count,
  )
  train_args = dict(
    global_batch_size=config.batch_size,
    train=True,
    train_fraction=ds.get('train_fraction', 1.0),
    augment=ds.get('augment', 'default'),
    **common,
  )
  eval_args = dict(global_batch_size=eval_batch, train=False, **common)
  if not _uses_custom(ds):
    loader = loaders.config_loader(config)
    data_dir = ds.get('data_dir')
    return (
      loaders.build_input(
        ds.name,
        ds.train_split,
        loader=loader,
        data_dir=data_dir,
        **train_args,
      ),
      loaders.build_input(
        ds.name, ds.eval_split, loader=loader, data_dir=data_dir, **eval_args
      ),
    )
  loaders.import_pipeline()  # The message for a missing tensorflow.
  from kdjax.data import custom  # pylint: disable=g-import-not-at-top
  from kdjax.data import pipeline  # pylint: disable=g-import-not-at-top

  name, builder, spec = custom.resolve(ds, process_index=process_index)
  return (
    pipeline.build_source(builder, spec, name, spec.train_split, **train_args),
    pipeline.build_source(builder, spec, name, spec.eval_split, **eval_args),
  )
