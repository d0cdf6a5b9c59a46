"""Distillation methods, by the name used in ``config.method``.

Each is an immutable ``Method`` (base.py) built once from its config: it
declares its parameter groups and frozen teachers and gives the trainer pure
``init``, ``loss(step, ...)`` and ``predict``.
"""

from kdjax.errors import ConfigError
from kdjax.methods.base import Method
from kdjax.methods.crd import CRD
from kdjax.methods.distill import Distill
from kdjax.methods.distill_init import DistillInit
from kdjax.methods.dml import DML
from kdjax.methods.ekd import EKD
from kdjax.methods.kd import KnowledgeDistillation
from kdjax.methods.ofd import OFD
from kdjax.methods.pkkd import PKKD
from kdjax.methods.supervised import Supervised

METHODS = {
  'supervised': Supervised,
  'kd': KnowledgeDistillation,
  'pkkd': PKKD,
  'ofd': OFD,
  'ekd': EKD,
  'distill': Distill,
  'distill_init': DistillInit,
  'dml': DML,
  'crd': CRD,
}


def method_class(config) -> type:
  if config.method not in METHODS:
    raise ConfigError(
      f'Unknown method {config.method!r} (--config.method); choose one of '
      f'{sorted(METHODS)}.'
    )
  return METHODS[config.method]


def init_phase_config(config):
  """The config of the run that `config`'s initialization phase trains, or None."""
  return method_class(config).init_phase_config(config)


def frozen_teacher_configs(config) -> list:
  """The model entries of the teachers `config.method` restores, not trains."""
  return method_class(config).frozen_teacher_configs(config)


def build_method(
  config,
  *,
  num_classes,
  image_shape,
  steps_per_epoch: int = 1,
  num_train_examples=None,
) -> Method:
  """The sealed method of ``config``.

  ``steps_per_epoch`` turns steps into epochs; ``num_train_examples`` is the
  size of the train split over all processes (the range of the batches'
  'index'), which CRD's memory bank needs and other methods ignore.
  """
  method = method_class(config)(
    config,
    num_classes=num_classes,
    image_shape=image_shape,
    steps_per_epoch=steps_per_epoch,
    num_train_examples=num_train_examples,
  )
  return method.seal()
