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


def build_method(config, *, num_classes, image_shape) -> Method:
  if config.method not in METHODS:
    raise ValueError(
      f'Unknown method {config.method!r}; choose one of {sorted(METHODS)}'
    )
  return METHODS[config.method](
    config, num_classes=num_classes, image_shape=image_shape
  )
