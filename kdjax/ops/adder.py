"""Adder convolution (AdderNet, Chen et al., CVPR 2020); docs/adder.md.

    Y[n, h, w, o] = - sum_{i, j, c} | X[n, h*s + i, w*s + j, c] - F[i, j, c, o] |

with zero padding taking part (a padded cell contributes ``|0 - F|``), and the
AdderNet backward, which is not the true derivative:

    dL/dF[i, j, c, o] = sum_{n, h, w} g[n, h, w, o] * (X[...] - F[i, j, c, o])      (Eq. 5)
    dL/dX[...]        = sum_{o} g[n, h, w, o] * clip(F[i, j, c, o] - X[...], -1, 1)  (Eq. 6)

bfloat16 inputs are computed and accumulated in float32; the output and the
gradients come back in the input dtypes. Layout and methods: docs/adder.md
("How it is computed") and docs/adder_kernels.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from kdjax.ops import adder_pallas
from kdjax.ops.geometry import (
  PaddingLike,
  normalize_padding,
  normalize_strides,
)

# Neither patches nor differences are materialised (the official code's
# (B*H*W) x (k*k*C) x C_out tensor is 2.4 GB per ResNet-20 layer at batch 256).
# The forward loops over input channels and adds, for every tap,
# |x_c - F[i, j, c, :]| into the output accumulator. The input gradient loops
# over output channels on the input pixel grid, one stride phase at a time:
# the output gradient is moved once to the pixel each tap reads, so the clip
# reads X in place and the patch-to-pixel scatter becomes a sum. The weight
# gradient is ConvWeightGrad(X, g) - F * sum(g): matrix units plus a rank-1
# correction.
# Working-set bound for one output-channel chunk of one kernel tap: 256 MiB.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 * 1024


def output_channel_chunk(
  batch: int,
  padded_hw: Tuple[int, int],
  taps: int,
  out_channels: int,
  memory_budget_bytes: int,
) -> int:
  """Largest output-channel chunk whose backward working set fits the budget."""
  # Per chunk the input gradient keeps the output gradient placed on the padded
  # grid once per tap: at most taps * N * Hp * Wp * chunk floats (less at
  # stride > 1, where each phase holds only its own taps).
  per_channel = taps * batch * padded_hw[0] * padded_hw[1] * 4
  return int(
    max(1, min(out_channels, memory_budget_bytes // max(per_channel, 1)))
  )


def _tap(
  xp: jax.Array,
  i: int,
  j: int,
  out_hw: Tuple[int, int],
  strides: Tuple[int, int],
):
  """Strided view of the padded input seen by kernel tap (i, j): (N, Ho, Wo, C)."""
  n, _, _, c = xp.shape
  (ho, wo), (sh, sw) = out_hw, strides
  return lax.slice(
    xp,
    (0, i, j, 0),
    (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
    (1, sh, sw, 1),
  )


def _pad(x, pads):
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _out_hw(xp_shape, kernel_shape, strides):
  return (
    (xp_shape[1] - kernel_shape[0]) // strides[0] + 1,
    (xp_shape[2] - kernel_shape[1]) // strides[1] + 1,
  )


def _adder_forward(x, kernel, strides, pads):
  """Loops over input channels; each step adds |x_c - F[:, :, c, :]| for every tap."""
  # Vectorised over output channels (the minor axis): XLA fuses a whole step
  # into one elementwise pass over the (N, Ho, Wo, C_out) accumulator, and
  # nothing larger than the output is ever live.
  xp = _pad(x, pads)
  kh, kw, in_channels, out_channels = kernel.shape
  out_hw = _out_hw(xp.shape, kernel.shape, strides)
  taps = [_tap(xp, i, j, out_hw, strides) for i in range(kh) for j in range(kw)]
  filters = kernel.reshape(kh * kw, in_channels, out_channels)

  def add_channel(c, acc):
    for t, xs in enumerate(taps):
      x_c = lax.dynamic_slice_in_dim(xs, c, 1, axis=3)
      f_c = lax.dynamic_index_in_dim(filters[t], c, 0, keepdims=False)
      acc = acc + jnp.abs(x_c - f_c)
    return acc

  acc = jnp.zeros((x.shape[0],) + out_hw + (out_channels,), jnp.float32)
  return -lax.fori_loop(0, in_channels, add_channel, acc)


def _phase_input_grad(xq, filters, g, offsets, chunk):
  """Input gradient on one stride phase of the padded input.

      dL/dxq[p, c] = sum_{t, o} G_t[p, o] * clip(F[t, c, o] - xq[p, c])

  xq (N, Hq, Wq, C): the padded input pixels congruent to the phase modulo
  the strides, read by tap t at stride 1 from ``offsets[t]``; filters
  (O, T, C) for those taps; g (N, Ho, Wo, O); G_t is g placed where tap t
  reads.
  """
  # Placing g makes the patch-to-pixel scatter a sum and lets the clip read x
  # in place. Output channels run `chunk` at a time, (output channel, tap)
  # pairs one at a time inside a chunk: taps * N * Hq * Wq * chunk floats.
  hq, wq = xq.shape[1:3]
  out_channels = g.shape[-1]

  def place(a, offset):
    (_, ho, wo, _), (di, dj) = a.shape, offset
    return lax.pad(
      a,
      jnp.zeros((), a.dtype),
      [(0, 0, 0), (di, hq - di - ho, 0), (dj, wq - dj - wo, 0), (0, 0, 0)],
    )

  def chunk_grad(acc, chunk_in):
    g_chunk, f_chunk = chunk_in  # (N, Ho, Wo, oc), (oc, T, C)
    placed = jnp.stack(
      [place(g_chunk, offset) for offset in offsets]
    )  # (T, N, Hq, Wq, oc)
    placed = jnp.moveaxis(placed, -1, 0)  # (oc, T, N, Hq, Wq)

    # One (output channel, tap) pair per scan step: XLA CPU fuses a single
    # broadcast-multiply-add into a fast vectorised loop, while several taps
    # in one step made a fusion that ran ~4x slower per tap (measured).
    pairs = (
      placed.reshape((-1,) + placed.shape[2:]),
      f_chunk.reshape(-1, f_chunk.shape[-1]),
    )

    def add_pair(acc, pair):
      g_ot, f_ot = pair  # (N, Hq, Wq), (C,)
      return acc + g_ot[..., None] * jnp.clip(f_ot - xq, -1.0, 1.0), None

    return lax.scan(add_pair, acc, pairs)[0], None

  num_chunks = -(-out_channels // chunk)
  extra = num_chunks * chunk - out_channels
  # Zero-padded output channels carry zero gradient, so they add nothing.
  g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, extra)))
  filters = jnp.pad(filters, ((0, extra), (0, 0), (0, 0)))
  g_chunks = jnp.moveaxis(g.reshape(g.shape[:3] + (num_chunks, chunk)), 3, 0)
  f_chunks = filters.reshape((num_chunks, chunk) + filters.shape[1:])
  acc, _ = lax.scan(chunk_grad, jnp.zeros_like(xq), (g_chunks, f_chunks))
  return acc


def _phase_input_grad_by_channel(xq, filters, g, offsets, chunk):
  """`_phase_input_grad` with every tap of one output channel in one step."""
  # The forward's layout turned around: a loop over output channels whose step
  # adds, per tap, a shifted window of that channel's zero-padded output
  # gradient times the clip. Nothing per tap is stored (one padded gradient
  # plane plus the accumulator), so `chunk` is not needed.
  del chunk
  n, hq, wq, _ = xq.shape
  _, ho, wo, out_channels = g.shape
  low_h, low_w = max(d for d, _ in offsets), max(d for _, d in offsets)
  # g moved so that tap t's window of it starts at (low_h - di, low_w - dj).
  g_padded = jnp.pad(g, ((0, 0), (low_h, hq - ho), (low_w, wq - wo), (0, 0)))

  def add_channel(o, acc):
    g_o = lax.dynamic_slice_in_dim(g_padded, o, 1, axis=3)
    f_o = lax.dynamic_index_in_dim(filters, o, 0, keepdims=False)  # (T, C)
    for t, (di, dj) in enumerate(offsets):
      window = lax.slice(
        g_o,
        (0, low_h - di, low_w - dj, 0),
        (n, low_h - di + hq, low_w - dj + wq, 1),
      )
      acc = acc + window * jnp.clip(f_o[t] - xq, -1.0, 1.0)
    return acc

  return lax.fori_loop(0, out_channels, add_channel, jnp.zeros_like(xq))


# XLA:CPU runs the all-taps-per-step loop about 2x faster than the
# pair-per-step scan when the input has 16 channels or fewer, and 2-3x slower
# from 32 up (benchmarks/adder_bench.py shapes, 2 cores).
TAPS_FUSED_MAX_CHANNELS = 16


def _input_grad(xp, kernel, g, strides, chunk):
  """dL/dX on the padded grid, one stride phase at a time."""
  # At stride s, tap (i, j) only reads pixels congruent to (i mod sh, j mod sw);
  # the sh * sw phases keep the work at taps * pixels / (sh * sw).
  kh, kw, in_channels, out_channels = kernel.shape
  (sh, sw), (hp, wp) = strides, xp.shape[1:3]
  filters = jnp.moveaxis(
    kernel.reshape(kh * kw, in_channels, out_channels), -1, 0
  )  # (O, T, C)
  dxp = jnp.zeros_like(xp)
  for a in range(min(sh, kh)):
    for b in range(min(sw, kw)):
      taps = [(i, j) for i in range(a, kh, sh) for j in range(b, kw, sw)]
      xq = xp[:, a::sh, b::sw, :]
      phase_filters = filters[:, [i * kw + j for i, j in taps], :]
      offsets = [(i // sh, j // sw) for i, j in taps]
      phase_grad = (
        _phase_input_grad_by_channel
        if in_channels <= TAPS_FUSED_MAX_CHANNELS
        else _phase_input_grad
      )
      dxq = phase_grad(xq, phase_filters, g, offsets, chunk)
      hq, wq = dxq.shape[1:3]
      dxp = dxp + lax.pad(
        dxq,
        jnp.zeros((), dxq.dtype),
        [
          (0, 0, 0),
          (a, hp - a - ((hq - 1) * sh + 1), sh - 1),
          (b, wp - b - ((wq - 1) * sw + 1), sw - 1),
          (0, 0, 0),
        ],
      )
  return dxp


def _patches(xp, kernel_hw, out_hw, strides):
  """(N, Ho, Wo, T * C) im2col patches of the padded input, tap-major."""
  return jnp.concatenate(
    [
      _tap(xp, i, j, out_hw, strides)
      for i in range(kernel_hw[0])
      for j in range(kernel_hw[1])
    ],
    axis=-1,
  )


def _fused_forward(x, kernel, strides, pads):
  """One reduction over the im2col patches, for GPUs."""
  # A broadcast feeding a reduction: XLA fuses the two, so the (N*Ho*Wo, T*C, O)
  # difference tensor is never stored and every output element runs in
  # parallel instead of looping over input channels.
  xp = _pad(x, pads)
  out_hw = _out_hw(xp.shape, kernel.shape, strides)
  patches = _patches(xp, kernel.shape[:2], out_hw, strides)
  filters = kernel.reshape(-1, kernel.shape[-1]).T  # (O, T*C)
  return -jnp.sum(jnp.abs(patches[..., None, :] - filters), axis=-1)


def _patch_input_grad(xp, kernel, g, strides, patch_grad):
  """dL/dX on the padded grid (float32) from a gradient on the patches.

  ``patch_grad(patches, filters, g)`` returns the float32 (N, Ho, Wo, T*C)
      dP[..., k] = sum_o g[..., o] * clip(F[k, o] - P[..., k], -1, 1);
  the patch-to-pixel scatter is the transpose of the patch extraction.
  """
  out_hw = g.shape[1:3]
  extract = lambda xp: _patches(xp, kernel.shape[:2], out_hw, strides)
  # The transpose is taken at float32 so that bfloat16 patches still scatter
  # a float32 gradient (the unused float32 patches are dead code).
  _, scatter = jax.vjp(extract, xp.astype(jnp.float32))
  filters = kernel.reshape(-1, kernel.shape[-1])  # (T*C, O)
  return scatter(patch_grad(extract(xp), filters, g))[0]


def _fused_patch_grad(patches, filters, g):
  return jnp.sum(
    g[..., None, :] * jnp.clip(filters - patches[..., None], -1.0, 1.0), axis=-1
  )


def _fused_input_grad(xp, kernel, g, strides):
  """dL/dX on the padded grid from one fused reduction over output channels."""
  return _patch_input_grad(xp, kernel, g, strides, _fused_patch_grad)


def _pallas_forward(x, kernel, strides, pads, config):
  """The forward as a Pallas adder matmul over (N*Ho*Wo, T*C) patches.

  Runs in the input dtype (float32 accumulation) and returns it.
  """
  xp = _pad(x, pads)
  out_hw = _out_hw(xp.shape, kernel.shape, strides)
  patches = _patches(xp, kernel.shape[:2], out_hw, strides)
  out_channels = kernel.shape[-1]
  y = adder_pallas.forward(
    patches.reshape(-1, patches.shape[-1]),
    kernel.reshape(-1, out_channels),
    config,
    x.dtype,
  )
  return y.reshape(patches.shape[:3] + (out_channels,))


def _pallas_input_grad(xp, kernel, g, strides, config):
  """dL/dX on the padded grid: the Pallas patch gradient, scattered by XLA."""

  def patch_grad(patches, filters, g):
    dpatches = adder_pallas.input_grad(
      patches.reshape(-1, patches.shape[-1]),
      filters,
      g.reshape(-1, g.shape[-1]),
      config,
    )
    return dpatches.reshape(patches.shape)

  return _patch_input_grad(xp, kernel, g, strides, patch_grad)


# Which formulation each platform runs: XLA:CPU is fastest on the loops (one
# small fused elementwise pass per step), GPUs on the fused reductions, which
# expose all the parallelism at once (benchmarks/adder_bench.py measures both).
# 'pallas' is never chosen by 'auto': no committed benchmark has measured it
# faster than 'fused' on any device (docs/adder_kernels.md).
METHODS = ('auto', 'loop', 'fused', 'pallas')


def _by_method(method, loop_fn, fused_fn, pallas_fn, *args):
  """Runs one formulation; ``method`` is a METHODS name or a PallasConfig."""
  if isinstance(method, adder_pallas.PallasConfig):
    return pallas_fn(*args, config=method)
  if method == 'loop':
    return loop_fn(*args)
  if method == 'fused':
    return fused_fn(*args)
  return lax.platform_dependent(*args, cpu=loop_fn, default=fused_fn)


def _forward(x, kernel, strides, pads, method):
  return _by_method(
    method,
    functools.partial(_adder_forward, strides=strides, pads=pads),
    functools.partial(_fused_forward, strides=strides, pads=pads),
    functools.partial(_pallas_forward, strides=strides, pads=pads),
    x,
    kernel,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _adder_conv_vjp(x, kernel, strides, pads, chunk, method):
  """The op with the AdderNet backward; 'loop'/'fused' get float32 inputs."""
  del chunk  # Only the backward needs a working-set bound.
  return _forward(x, kernel, strides, pads, method)


def _adder_fwd(x, kernel, strides, pads, chunk, method):
  del chunk
  return _forward(x, kernel, strides, pads, method), (x, kernel)


def _adder_bwd(strides, pads, chunk, method, residuals, g):
  x, kernel = residuals
  dxp = _by_method(
    method,
    functools.partial(_input_grad, strides=strides, chunk=chunk),
    functools.partial(_fused_input_grad, strides=strides),
    functools.partial(_pallas_input_grad, strides=strides),
    _pad(x, pads),
    kernel,
    g,
  )
  h, w = x.shape[1:3]
  dx = dxp[:, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w, :]
  # 'pallas' keeps bfloat16 inputs; the weight gradient stays in float32.
  x, kernel, g = (a.astype(jnp.float32) for a in (x, kernel, g))

  conv = lambda k: lax.conv_general_dilated(
    x,
    k,
    strides,
    pads,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    precision=lax.Precision.HIGHEST,
  )
  _, conv_vjp = jax.vjp(conv, kernel)
  (dk_conv,) = conv_vjp(g)
  dk = dk_conv - kernel * jnp.sum(g, axis=(0, 1, 2))
  return dx.astype(residuals[0].dtype), dk.astype(residuals[1].dtype)


_adder_conv_vjp.defvjp(_adder_fwd, _adder_bwd)


def _check_method(method, pallas_backend, pallas_blocks, *overrides):
  if any(option is not None for option in overrides):
    raise ValueError(
      "adder_conv: pallas_backend and pallas_blocks go with method='pallas'; "
      "pass method='pallas' too (or, inside adder_method(...), give them to "
      'adder_method)'
    )
  if method not in METHODS:
    raise ValueError(
      f'adder_conv: method must be one of {METHODS}, got {method!r}'
    )
  if method != 'pallas' and (
    pallas_backend is not None or pallas_blocks is not None
  ):
    raise ValueError(
      f'adder_conv: pallas_backend and pallas_blocks only apply to '
      f"method='pallas', got method={method!r}; drop them or pass "
      f"method='pallas'"
    )
  return method, pallas_backend, pallas_blocks


_method_in_context = contextvars.ContextVar(
  'adder_method', default=('auto', None, None)
)


@contextlib.contextmanager
def adder_method(
  method: str,
  *,
  pallas_backend: Optional[str] = None,
  pallas_blocks: Optional[adder_pallas.KernelBlocks] = None,
):
  """Within the block, ``adder_conv`` calls that pass no ``method`` use this.

  So a whole model runs one method without a model option, e.g.
  ``with adder_method('pallas'): step = jax.jit(train_step).lower(...)``.
  It acts when a function is traced: a jitted function traced before the
  block keeps the method it was traced with.
  """
  _check_method(method, pallas_backend, pallas_blocks)
  token = _method_in_context.set((method, pallas_backend, pallas_blocks))
  try:
    yield
  finally:
    _method_in_context.reset(token)


def adder_conv(
  x: jax.Array,
  kernel: jax.Array,
  strides: Union[int, Sequence[int]] = 1,
  padding: PaddingLike = 'SAME',
  *,
  memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
  method: Optional[str] = None,
  pallas_backend: Optional[str] = None,
  pallas_blocks: Optional[adder_pallas.KernelBlocks] = None,
) -> jax.Array:
  """Adder convolution ``Y = -sum |X - F|`` with the AdderNet backward.

  Args:
    x: NHWC input, float32 or bfloat16.
    kernel: HWIO filters.
    strides: int or (sh, sw).
    padding: 'SAME', 'VALID', an int, or ((top, bottom), (left, right)); zero
      padding, and padded cells take part in the sum.
    memory_budget_bytes: bound on the loop backward's working set; output
      channels are processed in chunks that fit it.
    method: 'loop' (loops over channels and taps, bounded by
      ``memory_budget_bytes``), 'fused' (broadcast-and-reduce over im2col
      patches, which XLA fuses so that only the patches are stored), or
      'auto' (the default, unless inside ``adder_method``): 'loop' on CPU
      and 'fused' elsewhere, decided when lowering;
      or 'pallas': Pallas kernels for the forward and the input gradient
      over the im2col patches (docs/adder_kernels.md), which keep bfloat16
      inputs in bfloat16 in memory. All compute the same values.
    pallas_backend: with method='pallas', the kernel family: 'gpu' (Triton),
      'tpu' (Mosaic), or None for the current platform's ('gpu' on CPU). A
      family that is not the platform's runs in Pallas interpret mode.
    pallas_blocks: with method='pallas', a ``adder_pallas.KernelBlocks`` to
      use instead of the block table (autotuning, tests).

  Returns:
    NHWC output in the input's dtype, always <= 0.
  """
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
      f'adder_conv: expected NHWC input and HWIO kernel, got shapes '
      f'{x.shape} and {kernel.shape}'
    )
  if x.shape[-1] != kernel.shape[2]:
    raise ValueError(
      f'adder_conv: input has {x.shape[-1]} channels but the kernel expects '
      f'{kernel.shape[2]} (kernel shape {kernel.shape}, HWIO)'
    )
  if method is None:
    method, pallas_backend, pallas_blocks = _check_method(
      *_method_in_context.get(), pallas_backend, pallas_blocks
    )
  else:
    _check_method(method, pallas_backend, pallas_blocks)
  strides = normalize_strides(strides)
  pads = normalize_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  padded = (x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]))
  if padded[0] < kernel.shape[0] or padded[1] < kernel.shape[1]:
    raise ValueError(
      f'adder_conv: kernel {kernel.shape[:2]} does not fit the padded input '
      f'{padded} (input {x.shape[1:3]}, padding {pads})'
    )
  chunk = output_channel_chunk(
    x.shape[0],
    padded,
    kernel.shape[0] * kernel.shape[1],
    kernel.shape[-1],
    memory_budget_bytes,
  )
  out_dtype = jnp.result_type(x.dtype, kernel.dtype)
  if method != 'pallas':
    y = _adder_conv_vjp(
      x.astype(jnp.float32),
      kernel.astype(jnp.float32),
      strides,
      pads,
      chunk,
      method,
    )
    return y.astype(out_dtype)
  # The kernels read the input dtype and accumulate in float32.
  config = adder_pallas.make_config(pallas_backend, pallas_blocks)
  if config.interpret and jax.typeof(x).mat.varying:
    raise ValueError(
      "adder_conv: method='pallas' in Pallas interpret mode cannot run inside "
      'a jax.shard_map with check_vma=True (the interpreter mistypes its loop '
      'carry over the mesh axes); pass check_vma=False to that shard_map, or '
      "use method='auto' there"
    )
  run = lambda x, kernel: _adder_conv_vjp(
    x, kernel, strides, pads, chunk, config
  )
  return _split_batch_over_mesh(
    run, x.astype(out_dtype), kernel.astype(out_dtype)
  )


def _split_batch_over_mesh(run, x, kernel):
  """``run(x, kernel)``, under ``jax.shard_map`` over the batch if a mesh is set.

  With a mesh set (``jax.set_mesh``) the batch is split over all its axes and
  the kernel gradient summed over the mesh; a batch that does not divide by
  the mesh size runs unsplit (correct, slower).
  """
  # XLA cannot partition a Pallas kernel: under a sharded jit it would gather
  # the whole batch onto every device. Splitting the batch matches the
  # data-parallel layout of kdjax.train; each device runs its own examples.
  mesh = jax.sharding.get_abstract_mesh()
  # Axes already manual (inside the caller's own shard_map) are per-device.
  axes = tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
  size = int(np.prod([mesh.shape[a] for a in axes]))
  if not axes or x.shape[0] % size:
    return run(x, kernel)
  batch = jax.sharding.PartitionSpec(axes)
  # check_vma=False: the custom VJP's per-device kernel gradient is untyped
  # over the mesh, and shard_map's transpose sums it over the devices (the
  # interpreted kernels' fori_loops do not carry vma types either).
  return jax.shard_map(
    run,
    in_specs=(batch, jax.sharding.PartitionSpec()),
    out_specs=batch,
    check_vma=False,
  )(x, kernel)
