"""Low-level array ops."""

from kdjax.ops.adder import (
  adder_conv,
  adder_method,
  normalize_padding,
  normalize_strides,
)

__all__ = [
  'adder_conv',
  'adder_method',
  'normalize_padding',
  'normalize_strides',
]
