"""Optimizers: AdderNet adaptive LR scaling and the papers' SGD recipes."""

from kdjax.optim.adder_lr import (
  DEFAULT_ADDER_ETA,
  adder_kernel_mask,
  default_adder_kernel_predicate,
  kernel_under_module_named,
  path_names,
  scale_by_adder_lr,
  scale_layer_gradient,
)
from kdjax.optim.builder import (
  build_optimizer,
  build_schedule,
  decay_boundary_steps,
  default_config,
  sgd_momentum,
)

__all__ = [
  'DEFAULT_ADDER_ETA',
  'adder_kernel_mask',
  'build_optimizer',
  'build_schedule',
  'decay_boundary_steps',
  'default_adder_kernel_predicate',
  'default_config',
  'kernel_under_module_named',
  'path_names',
  'scale_by_adder_lr',
  'scale_layer_gradient',
  'sgd_momentum',
]
