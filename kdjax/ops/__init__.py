"""Low-level array ops."""

from kdjax.ops.adder import adder_conv, adder_method
from kdjax.ops.geometry import normalize_padding, normalize_strides
from kdjax.ops.norms import filter_sq_norms, patch_sq_norms

__all__ = [
  'adder_conv',
  'adder_method',
  'filter_sq_norms',
  'normalize_padding',
  'normalize_strides',
  'patch_sq_norms',
]
