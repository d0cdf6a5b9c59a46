"""`build_input`: the one entry point, dispatching to a loader.

  'tfds'   tfds + tf.data (pipeline.py): every dataset, any tfds name, an
           image folder (custom.py); needs tensorflow and
           tensorflow_datasets. The default.
  'numpy'  NumPy from memory (in_memory.py): mnist5k only; needs neither.

The trainer picks one with `config.data.loader`. TensorFlow is imported only
when the tfds loader is used, so the numpy loader runs where it is missing.
"""

from kdjax.data import in_memory

LOADERS = ('tfds', 'numpy')

_TF_MODULES = ('tensorflow', 'tensorflow_datasets')


def config_loader(config) -> str:
  """The loader a run config asks for: `config.data.loader`, 'tfds' if unset."""
  return config.get('data', {}).get('loader', 'tfds')


def check_loader(loader: str, dataset: str) -> None:
  """Raises ValueError unless `loader` is known and can read `dataset`.

  Cheap (reads nothing), so callers can check a config before heavy work.
  A whole run config: `inputs.check_config`.
  """
  if loader not in LOADERS:
    raise ValueError(
      f'Unknown data loader {loader!r}; expected one of {list(LOADERS)}.'
    )
  if loader == 'numpy':
    in_memory.check_served(dataset)


def import_pipeline():
  """pipeline.py, or ModuleNotFoundError saying what to install."""
  try:
    from kdjax.data import pipeline  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if (e.name or '').split('.')[0] not in _TF_MODULES:
      raise
    served = ', '.join(sorted(in_memory.DATASETS))
    raise ModuleNotFoundError(
      f"data.loader='tfds' needs tensorflow and tensorflow_datasets ({e}). "
      f'Install them (requirements.txt), or, for {served}, read it without '
      "them: --config.data.loader=numpy (build_input(..., loader='numpy')).",
      name=e.name,
    ) from e
  return pipeline


def build_input(name: str, split: str, *, loader: str = 'tfds', **kwargs):
  """Builds the input of one split for this process with the given loader.

  Args:
    name: dataset, a key of `DATASETS` or any tfds name ('numpy': 'mnist5k'
      only).
    split: a tfds split string, e.g. 'train', 'test[:64]'.
    loader: 'tfds' or 'numpy' (see the module docstring).
    **kwargs: the keyword arguments of `pipeline.build_input`, which both
      loaders take with the same meaning.

  Returns:
    A `specs.SourceBase`: `epoch(epoch_index, start_step=0)`,
    `steps_per_epoch`, `num_examples`, `num_classes`, `image_shape`, ...

  Raises:
    ValueError: an unknown loader, or 'numpy' with a dataset it cannot read.
    ModuleNotFoundError: 'tfds' without tensorflow / tensorflow_datasets.
  """
  check_loader(loader, name)
  if loader == 'numpy':
    return in_memory.build_input(name, split, **kwargs)
  return import_pipeline().build_input(name, split, **kwargs)
