"""Distillation methods, by the name used in ``config.method``."""

from kdjax.train.methods.base import Method
from kdjax.train.methods.ekd import EKD
from kdjax.train.methods.kd import KnowledgeDistillation
from kdjax.train.methods.ofd import OFD
from kdjax.train.methods.pkkd import PKKD
from kdjax.train.methods.supervised import Supervised

METHODS = {
  'supervised': Supervised,
  'kd': KnowledgeDistillation,
  'pkkd': PKKD,
  'ofd': OFD,
  'ekd': EKD,
}


def method_class(config) -> type:
  if config.method not in METHODS:
    raise ValueError(
      f'Unknown method {config.method!r}; choose one of {sorted(METHODS)}'
    )
  return METHODS[config.method]


def frozen_teacher_configs(config) -> list:
  """The model entries of the teachers `config.method` restores, not trains."""
  return method_class(config).frozen_teacher_configs(config)


def build_method(config, *, num_classes, image_shape) -> Method:
  method = method_class(config)(
    config, num_classes=num_classes, image_shape=image_shape
  )
  return method.seal()
