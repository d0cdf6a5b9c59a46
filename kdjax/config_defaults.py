"""Building blocks shared by the files in configs/ (recipes: docs/recipes.md).

`load_config_module` imports one of those files by path, as --config does, for
code that builds configs in Python (tests, experiments/mnist5k_study).
"""

import importlib.util
import os
import types

import ml_collections

from kdjax.optim.builder import default_config as default_optimizer


def load_config_module(path: str) -> types.ModuleType:
  """The config file at ``path`` (e.g. configs/pkkd.py) as a module with its get_config.

  configs/ is not a package, so its files are loaded by path, like
  ml_collections' config_flags does for ``--config=configs/pkkd.py:demo``.
  """
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(
    f'kdjax_config_file_{name}', path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config(method: str) -> ml_collections.ConfigDict:
  """Fields every method reads; presets override them."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.seed = 0
  config.num_devices = 0  # 0: every device; n: the first n (single process).
  config.batch_size = 128
  config.eval_batch_size = 0  # 0: same as batch_size.
  config.num_epochs = 1
  config.max_steps = -1  # > 0 stops early (smoke tests).
  config.log_every_steps = 50
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch.
  # Also save at the first log boundary this many minutes after the last
  # checkpoint (0: off), so an interruption loses at most about this much.
  config.checkpoint_every_minutes = 10.0
  config.keep_checkpoints = 3
  config.nonfinite = 'raise'  # or 'skip': drop a batch whose loss is NaN/Inf.
  # > 0: before each eval, BN running statistics are recomputed over this many
  # train batches with the current weights ("precise BN"); the saved state is
  # unchanged. Off for paper presets; on for the short demo runs.
  config.eval_bn_recalibration_batches = 0
  # Tests and benchmarks: make any device-to-host read between log,
  # checkpoint, eval and preemption boundaries an error.
  config.debug_disallow_host_sync = False

  # The data (docs/your_data.md): a built-in name (cifar10, cifar100,
  # imagenet2012, mnist5k), 'synthetic', any tfds dataset name, or your own
  # images with image_folder=DIR (DIR/<split>/<class>/*.png; it wins over
  # name). The keys left None come from the dataset's tfds info.
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'mnist5k'
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
  config.dataset.image_folder = ml_collections.config_dict.placeholder(str)
  # A split missing from a dataset that is not built in: 'train' and 'test'
  # fall back to the splits it has ('test' to 'validation').
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'test'
  config.dataset.image_size = ml_collections.config_dict.placeholder(int)
  config.dataset.image_key = ml_collections.config_dict.placeholder(str)
  config.dataset.label_key = ml_collections.config_dict.placeholder(str)
  config.dataset.num_classes = ml_collections.config_dict.placeholder(int)
  # Per-channel statistics of [0, 1] pixels, e.g. (0.5, 0.5, 0.5). Unset: the
  # built-in values, or computed once from the train split and recorded in
  # kdjax_normalization.json beside the data.
  config.dataset.mean = ml_collections.config_dict.placeholder(tuple)
  config.dataset.std = ml_collections.config_dict.placeholder(tuple)
  config.dataset.augment = (
    'default'  # or a recipe name: cifar, cifar_reflect, imagenet, mnist, none
  )
  config.dataset.train_fraction = 1.0
  # --config.dataset.name=synthetic: random batches shaped like `like` (the
  # preset's dataset) for throughput runs; unset fields follow `like`.
  config.dataset.synthetic = ml_collections.ConfigDict(
    dict(
      like='mnist5k',
      image_size=ml_collections.config_dict.placeholder(int),
      channels=ml_collections.config_dict.placeholder(int),
      num_classes=ml_collections.config_dict.placeholder(int),
      train_examples=ml_collections.config_dict.placeholder(int),
      eval_examples=ml_collections.config_dict.placeholder(int),
    )
  )
  # How the examples are read. 'tfds': tfds + tf.data, every dataset (needs
  # tensorflow and tensorflow_datasets). 'numpy': from memory with NumPy alone,
  # for hosts without TensorFlow; only for the embedded mnist5k digits.
  config.data = ml_collections.ConfigDict()
  config.data.loader = 'tfds'

  config.model = model('resnet20', 'conv')
  config.optimizer = default_optimizer()
  config.optimizers = (
    ml_collections.ConfigDict()
  )  # Per-group overrides, e.g. 'teacher'.
  config.loss = ml_collections.ConfigDict({'label_smoothing': 0.0})
  return config


def kd_section(**overrides) -> ml_collections.ConfigDict:
  """``config.kd`` of the 'kd' method: Hinton KD (T 4, lambda 0.9), no hint, no AT.

  fitnet_stage is the stage whose pre-ReLU output is the FitNets hint;
  multi_teacher says how several frozen teachers (config.teachers) combine:
  'mean_targets' or 'sum_losses' (kdjax/methods/kd.py).
  """
  section = ml_collections.ConfigDict(
    dict(
      temperature=4.0,
      kd_weight=0.9,
      fitnet_weight=0.0,
      fitnet_stage=1,
      at_weight=0.0,
      multi_teacher='mean_targets',
    )
  )
  section.update(overrides)
  return section


def model(
  name: str,
  conv_type: str = 'conv',
  checkpoint_dir=None,
  pretrain_epochs: int = 0,
  **kwargs,
) -> ml_collections.ConfigDict:
  """A model entry: the student, a co-trained teacher, or a frozen teacher.

  Frozen teachers load from ``checkpoint_dir`` (a supervised run's workdir).
  When it is unset and ``pretrain_epochs`` > 0, the trainer first trains the
  teacher in-process with the run's data and optimizer (demos, studies).
  """
  config = ml_collections.ConfigDict()
  config.name = name
  config.conv_type = conv_type
  config.kwargs = ml_collections.ConfigDict(kwargs)
  config.checkpoint_dir = ml_collections.config_dict.placeholder(str)
  if checkpoint_dir:
    config.checkpoint_dir = checkpoint_dir
  config.pretrain_epochs = pretrain_epochs
  # A frozen teacher from a run that stopped before its last step is refused
  # unless this is True.
  config.allow_unfinished = False
  # Compute dtype of activations and conv/adder inputs: 'float32' or
  # 'bfloat16' (parameters, BN statistics and losses stay float32).
  config.dtype = 'float32'
  return config


def set_dataset(
  config: ml_collections.ConfigDict, name: str, **overrides
) -> None:
  config.dataset.name = name
  config.dataset.synthetic.like = name
  if name == 'imagenet2012':
    config.dataset.eval_split = 'validation'
  for key, value in overrides.items():
    config.dataset[key] = value


def addernet_cifar_recipe(config: ml_collections.ConfigDict) -> None:
  """SGD 0.1, momentum 0.9, wd 5e-4, batch 256, cosine over 400 epochs (docs/recipes.md)."""
  config.batch_size = 256
  config.num_epochs = 400
  config.optimizer.reference_batch_size = 256
  config.optimizer.update(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=5e-4,
    schedule='cosine',
  )


def addernet_imagenet_recipe(config: ml_collections.ConfigDict) -> None:
  """Cosine over 150 epochs, lr 0.1, wd 1e-4, batch 256 (docs/recipes.md)."""
  config.batch_size = 256
  config.num_epochs = 150
  config.optimizer.reference_batch_size = 256
  config.optimizer.update(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule='cosine',
  )


def ofd_cifar_recipe(config: ml_collections.ConfigDict) -> None:
  """Nesterov 0.9, wd 5e-4, lr 0.1, 200 epochs, batch 128, x0.1 at 100/150 (docs/recipes.md)."""
  config.batch_size = 128
  config.num_epochs = 200
  config.optimizer.reference_batch_size = 128
  config.optimizer.update(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule='step',
    decay_epochs=(100, 150),
    decay_factor=0.1,
    reset_momentum_at_boundaries=True,
  )


def ofd_imagenet_recipe(config: ml_collections.ConfigDict) -> None:
  """Nesterov, wd 1e-4, lr 0.1 x0.1 every 30 epochs, 100 epochs, batch 256 (docs/recipes.md)."""
  config.batch_size = 256
  config.num_epochs = 100
  config.optimizer.reference_batch_size = 256
  config.optimizer.update(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    schedule='step',
    decay_epochs=(30, 60, 90),
    decay_factor=0.1,
    reset_momentum_at_boundaries=True,
  )


def repdistiller_recipe(config: ml_collections.ConfigDict) -> None:
  """SGD, batch 64, 240 epochs, lr 0.05 x0.1 at 150/180/210, wd 5e-4 (docs/recipes.md)."""
  config.batch_size = 64
  config.num_epochs = 240
  config.optimizer.reference_batch_size = 64
  config.optimizer.update(
    learning_rate=0.05,
    momentum=0.9,
    nesterov=False,
    weight_decay=5e-4,
    schedule='step',
    decay_epochs=(150, 180, 210),
    decay_factor=0.1,
  )


def demo_recipe(config: ml_collections.ConfigDict, epochs: int = 4) -> None:
  """A few epochs on the embedded MNIST-5k digits: minutes on 2 CPU cores."""
  set_dataset(config, 'mnist5k')
  config.batch_size = 64
  config.num_epochs = epochs
  config.log_every_steps = 20
  config.checkpoint_every_minutes = 0.0  # Minutes-long runs: epoch ends only.
  config.eval_bn_recalibration_batches = 10
  config.optimizer.update(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=False,
    weight_decay=5e-4,
    schedule='cosine',
  )
