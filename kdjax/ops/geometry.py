"""Conv geometry shared by the adder op and the norms: strides and padding.

Both take the forms ``flax.linen.Conv`` takes, so a layer switches between
conv and adder with the same arguments.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
from jax import lax

PaddingLike = Union[str, int, Sequence[Tuple[int, int]], Sequence[int]]
Pads = Tuple[Tuple[int, int], Tuple[int, int]]


def _is_int(value) -> bool:
  # NumPy integers count; bools do not (True would silently mean 1).
  return isinstance(value, (int, np.integer)) and not isinstance(
    value, (bool, np.bool_)
  )


def normalize_strides(strides: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if _is_int(strides):
    strides = (strides, strides)
  try:
    ok = len(strides) == 2 and all(_is_int(s) and s >= 1 for s in strides)
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(
      f'adder_conv: strides must be a positive int or a pair of them, '
      f'got {strides!r}'
    )
  return tuple(int(s) for s in strides)


def normalize_padding(
  padding: PaddingLike,
  in_hw: Sequence[int],
  kernel_hw: Sequence[int],
  strides: Tuple[int, int],
) -> Pads:
  """Resolves ``padding`` to explicit ((top, bottom), (left, right)) pairs.

  Accepts what ``flax.linen.Conv`` accepts: 'SAME', 'VALID', 'CIRCULAR' is not
  supported (adder padding is zero padding by definition), an int (symmetric),
  a pair of ints (per spatial dim, symmetric), or two (low, high) pairs.
  """
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in ('SAME', 'VALID'):
      raise ValueError(
        f"adder_conv: padding must be 'SAME', 'VALID', an int or (low, high) pairs, "
        f'got {padding!r}'
      )
    return tuple(
      tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, mode)
    )
  pads = None
  if _is_int(padding):
    pads = ((padding, padding), (padding, padding))
  else:
    try:
      padding = tuple(padding)
      if len(padding) == 2 and all(_is_int(p) for p in padding):
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
      elif len(padding) == 2 and all(
        len(p) == 2 and all(_is_int(v) for v in p) for p in padding
      ):
        pads = tuple(tuple(p) for p in padding)
    except TypeError:
      pads = None
  if pads is None:
    raise ValueError(
      f"adder_conv: cannot read padding {padding!r}; expected 'SAME', 'VALID', "
      'an int, a pair of ints, or ((top, bottom), (left, right))'
    )
  if min(min(p) for p in pads) < 0:
    raise ValueError(
      f'adder_conv: padding must be non-negative (zero padding takes part in '
      f'the sum; crop the input instead), got {padding!r}'
    )
  return tuple((int(lo), int(hi)) for lo, hi in pads)
