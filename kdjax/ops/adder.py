"""Adder convolution (AdderNet, Chen et al., CVPR 2020), SPEC section 1.

    Y[n, h, w, o] = - sum_{i, j, c} | X[n, h*s + i, w*s + j, c] - F[i, j, c, o] |

with zero padding taking part (a padded cell contributes ``|0 - F|``), and the
AdderNet backward, which is not the true derivative:

    dL/dF[i, j, c, o] = sum_{n, h, w} g[n, h, w, o] * (X[...] - F[i, j, c, o])      (Eq. 5)
    dL/dX[...]        = sum_{o} g[n, h, w, o] * clip(F[i, j, c, o] - X[...], -1, 1)  (Eq. 6)

Why it is laid out this way:
  * The official code unfolds X into (B*H*W) x (k*k*C) patches and broadcasts
    them against every filter, a (B*H*W) x (k*k*C) x C_out tensor (2.4 GB per
    ResNet-20 layer at batch 256). Here the sum runs offset by offset: for each
    kernel tap (i, j) the strided view of X is compared with F[i, j]. The
    largest intermediate is a (B*Ho*Wo) x C x C_out block of one tap, further
    cut over output channels so that it fits ``memory_budget_bytes``.
  * The weight gradient uses the identity
        sum g * (X - F) = ConvWeightGrad(X, g) - F * sum(g),
    so the heavy part is an ordinary convolution weight gradient (matrix units)
    and the rest is a rank-1 correction.
  * Inputs in bfloat16 are computed and accumulated in float32; the output and
    the gradients come back in the dtypes of the inputs.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

PaddingLike = Union[str, int, Sequence[Tuple[int, int]], Sequence[int]]
Pads = Tuple[Tuple[int, int], Tuple[int, int]]

# Working-set bound for one output-channel chunk of one kernel tap: 256 MiB.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024


def normalize_strides(strides: Union[int, Sequence[int]]) -> Tuple[int, int]:
  if isinstance(strides, int):
    strides = (strides, strides)
  strides = tuple(int(s) for s in strides)
  if len(strides) != 2 or min(strides) < 1:
    raise ValueError(f"adder_conv: strides must be a positive int or a pair, got {strides!r}")
  return strides


def normalize_padding(padding: PaddingLike, in_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Tuple[int, int]) -> Pads:
  """Resolves ``padding`` to explicit ((top, bottom), (left, right)) pairs.

  Accepts what ``flax.linen.Conv`` accepts: 'SAME', 'VALID', 'CIRCULAR' is not
  supported (adder padding is zero padding by definition), an int (symmetric),
  a pair of ints (per spatial dim, symmetric), or two (low, high) pairs.
  """
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in ("SAME", "VALID"):
      raise ValueError(f"adder_conv: padding must be 'SAME', 'VALID', an int or (low, high) pairs, "
                       f"got {padding!r}")
    return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, mode))
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  if len(padding) == 2 and all(len(p) == 2 for p in padding):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  raise ValueError(f"adder_conv: cannot read padding {padding!r}")


def output_channel_chunk(batch: int, out_hw: Tuple[int, int], in_channels: int,
                         out_channels: int, memory_budget_bytes: int) -> int:
  """Largest output-channel chunk whose per-tap working set fits the budget."""
  per_channel = batch * out_hw[0] * out_hw[1] * in_channels * 4
  return int(max(1, min(out_channels, memory_budget_bytes // max(per_channel, 1))))


def _tap(xp: jax.Array, i: int, j: int, out_hw: Tuple[int, int], strides: Tuple[int, int]):
  """Strided view of the padded input seen by kernel tap (i, j): (N, Ho, Wo, C)."""
  n, _, _, c = xp.shape
  (ho, wo), (sh, sw) = out_hw, strides
  return lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                   (1, sh, sw, 1))


def _split_out_channels(a: jax.Array, chunk: int) -> jax.Array:
  """(..., O) -> (num_chunks, ..., chunk), zero-padding O up to a multiple of chunk."""
  o = a.shape[-1]
  num = -(-o // chunk)
  a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, num * chunk - o)])
  a = a.reshape(a.shape[:-1] + (num, chunk))
  return jnp.moveaxis(a, -2, 0)


def _merge_out_channels(a: jax.Array, out_channels: int) -> jax.Array:
  """Inverse of _split_out_channels."""
  a = jnp.moveaxis(a, 0, -2)
  return a.reshape(a.shape[:-2] + (-1,))[..., :out_channels]


def _forward_block(xp, kernel, out_hw, strides):
  kh, kw = kernel.shape[:2]
  acc = None
  for i in range(kh):
    for j in range(kw):
      xs = _tap(xp, i, j, out_hw, strides)
      term = jnp.sum(jnp.abs(xs[..., :, None] - kernel[i, j]), axis=-2)
      acc = term if acc is None else acc + term
  return -acc


def _input_grad_block(xp, kernel, g, out_hw, strides):
  kh, kw = kernel.shape[:2]
  dxp = jnp.zeros_like(xp)
  (ho, wo), (sh, sw) = out_hw, strides
  for i in range(kh):
    for j in range(kw):
      xs = _tap(xp, i, j, out_hw, strides)
      d = jnp.sum(g[..., None, :] * jnp.clip(kernel[i, j] - xs[..., :, None], -1.0, 1.0), axis=-1)
      dxp = dxp.at[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :].add(d)
  return dxp


def _pad(x, pads):
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _out_hw(xp_shape, kernel_shape, strides):
  return ((xp_shape[1] - kernel_shape[0]) // strides[0] + 1,
          (xp_shape[2] - kernel_shape[1]) // strides[1] + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _adder_conv_f32(x, kernel, strides, pads, chunk):
  return _adder_forward(x, kernel, strides, pads, chunk)


def _adder_forward(x, kernel, strides, pads, chunk):
  xp = _pad(x, pads)
  out_hw = _out_hw(xp.shape, kernel.shape, strides)
  out_channels = kernel.shape[-1]
  if chunk >= out_channels:
    return _forward_block(xp, kernel, out_hw, strides)
  ys = lax.map(lambda k: _forward_block(xp, k, out_hw, strides),
               _split_out_channels(kernel, chunk))
  return _merge_out_channels(ys, out_channels)


def _adder_fwd(x, kernel, strides, pads, chunk):
  return _adder_forward(x, kernel, strides, pads, chunk), (x, kernel)


def _adder_bwd(strides, pads, chunk, residuals, g):
  x, kernel = residuals
  xp = _pad(x, pads)
  out_hw = _out_hw(xp.shape, kernel.shape, strides)
  out_channels = kernel.shape[-1]

  if chunk >= out_channels:
    dxp = _input_grad_block(xp, kernel, g, out_hw, strides)
  else:
    def step(acc, kg):
      return acc + _input_grad_block(xp, kg[0], kg[1], out_hw, strides), None
    dxp, _ = lax.scan(step, jnp.zeros_like(xp),
                      (_split_out_channels(kernel, chunk), _split_out_channels(g, chunk)))
  h, w = x.shape[1:3]
  dx = dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w, :]

  conv = lambda k: lax.conv_general_dilated(
      x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST)
  _, conv_vjp = jax.vjp(conv, kernel)
  (dk_conv,) = conv_vjp(g)
  dk = dk_conv - kernel * jnp.sum(g, axis=(0, 1, 2))
  return dx, dk


_adder_conv_f32.defvjp(_adder_fwd, _adder_bwd)


def adder_conv(x: jax.Array, kernel: jax.Array, strides: Union[int, Sequence[int]] = 1,
               padding: PaddingLike = "SAME", *,
               memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> jax.Array:
  """Adder convolution ``Y = -sum |X - F|`` with the AdderNet backward.

  Args:
    x: NHWC input, float32 or bfloat16.
    kernel: HWIO filters.
    strides: int or (sh, sw).
    padding: 'SAME', 'VALID', an int, or ((top, bottom), (left, right)); zero
      padding, and padded cells take part in the sum.
    memory_budget_bytes: bound on the working set of one kernel tap; output
      channels are processed in chunks that fit it.

  Returns:
    NHWC output in the input's dtype, always <= 0.
  """
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"adder_conv: expected NHWC input and HWIO kernel, got shapes "
                     f"{x.shape} and {kernel.shape}")
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"adder_conv: input has {x.shape[-1]} channels but the kernel expects "
                     f"{kernel.shape[2]} (kernel shape {kernel.shape}, HWIO)")
  strides = normalize_strides(strides)
  pads = normalize_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  padded = (x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]))
  if padded[0] < kernel.shape[0] or padded[1] < kernel.shape[1]:
    raise ValueError(f"adder_conv: kernel {kernel.shape[:2]} does not fit the padded input "
                     f"{padded} (input {x.shape[1:3]}, padding {pads})")
  out_hw = _out_hw((0,) + padded, kernel.shape, strides)
  chunk = output_channel_chunk(x.shape[0], out_hw, x.shape[-1], kernel.shape[-1],
                               memory_budget_bytes)
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  y = _adder_conv_f32(x.astype(jnp.float32), kernel.astype(jnp.float32), strides, pads, chunk)
  return y.astype(out_dtype)
