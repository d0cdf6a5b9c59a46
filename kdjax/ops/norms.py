"""Squared norms of the patches a conv sees and of its filters.

PKKD's Gaussian kernel needs ||x_p - f_o||^2 = ||x_p||^2 + ||f_o||^2 - 2 x_p.f_o;
the models compute the two norms beside each conv (``ConvOrAdder``), and the
losses combine them, so both live here, below models and losses.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from kdjax.ops.geometry import normalize_padding, normalize_strides

Array = jax.Array

_CONV_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def patch_sq_norms(
  inputs: Array,
  kernel_size: Sequence[int],
  strides: Union[int, Sequence[int]] = 1,
  padding: Any = 'SAME',
  feature_group_count: int = 1,
) -> Array:
  """||x_p||^2 for every patch a conv with this geometry sees (docs/pkkd.md).

      E[b, h, w, g] = sum_{i, j, c in group g} X[b, h*s + i, w*s + j, c]^2

  ``inputs`` (B, H, W, C) is the layer's input; ``kernel_size`` (kh, kw),
  ``strides``, ``padding`` (``flax.linen.Conv`` / ``adder_conv`` forms) and
  ``feature_group_count`` (must divide C) are the layer's. Zero padding
  contributes 0. Returns (B, H_out, W_out, feature_group_count) float32.
  """
  kernel_hw = tuple(int(k) for k in kernel_size)
  strides = normalize_strides(strides)
  pads = normalize_padding(padding, inputs.shape[1:3], kernel_hw, strides)
  in_channels = inputs.shape[-1]
  if in_channels % feature_group_count:
    raise ValueError(
      f'patch_sq_norms: feature_group_count={feature_group_count} must divide '
      f'the {in_channels} input channels'
    )
  # A conv of X^2 with a ones kernel, one output per group (a grouped conv's
  # filters each see one group); zero padding gives 0, as in the conv output
  # and in kdjax.ops.adder_conv. ConvOrAdder(return_kernel_features=True)
  # calls this same function. float32 because PKKD forms
  # ||x||^2 + ||f||^2 - 2 x.f, which cancels badly in low precision.
  ones = jnp.ones(
    kernel_hw + (in_channels // feature_group_count, feature_group_count),
    jnp.float32,
  )
  return lax.conv_general_dilated(
    jnp.square(inputs.astype(jnp.float32)),
    ones,
    strides,
    pads,
    dimension_numbers=_CONV_DIMENSIONS,
    feature_group_count=feature_group_count,
    precision=lax.Precision.HIGHEST,
  )


def filter_sq_norms(kernel: Array) -> Array:
  """||f_o||^2 per output channel of an HWIO kernel: (O,) float32."""
  return jnp.sum(
    jnp.square(kernel.astype(jnp.float32)), axis=tuple(range(kernel.ndim - 1))
  )
