"""Pallas kernels for the adder matmul: the forward and input gradient.

The adder convolution is a matmul-shaped reduction over im2col patches
P (M x K, M = N*Ho*Wo, K = kh*kw*C_in) and filters F (K x O):

    forward     Y[m, o]  = -sum_k |P[m, k] - F[k, o]|
    input grad  dP[m, k] =  sum_o g[m, o] * clip(F[k, o] - P[m, k], -1, 1)

Tiled kernels with float32 accumulators (inputs may be bfloat16), in two
families: 'gpu' (Triton, grid (M tiles, N tiles), the reduction walked in a
``fori_loop``) and 'tpu' (Mosaic, grid (M, N, reduction tiles), a VMEM scratch
accumulator). Block sizes come from ``BLOCK_TABLE`` or a ``KernelBlocks``;
``CANDIDATES`` lists what an autotune should try. Operands are zero-padded to
whole tiles, which is exact. Design, tiling and the TPU roofline:
docs/adder_kernels.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

FAMILIES = ('gpu', 'tpu')


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Tile of one kernel: ``m`` rows of M, ``n`` output columns, ``r`` per step.

  For the forward, n tiles O and r is the K chunk; for the input gradient,
  n tiles K and r is the O chunk. ``num_warps``/``num_stages`` are Triton's
  (ignored on TPU).
  """

  m: int
  n: int
  r: int
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ('m', 'n', 'r', 'num_warps', 'num_stages'):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(
          f'adder_conv: Pallas block size {name} must be a positive int, got '
          f'{value!r} in {self}'
        )


@dataclasses.dataclass(frozen=True)
class KernelBlocks:
  """Block sizes of the forward and of the input-gradient kernel."""

  forward: Blocks
  input_grad: Blocks


# (family, device kind, shape class) -> KernelBlocks. The device kind is a
# prefix of jax.Device.device_kind ('NVIDIA H100', 'TPU v5 lite'), '*' for any.
# Shape classes: 'narrow' for C_out <= 32 (ResNet-20 stages 1-2), else 'wide'.
# Only the '*' rows exist so far: they are design choices, not measurements
# (docs/adder_kernels.md says why each is what it is); a session with the
# device adds its rows after timing CANDIDATES with benchmarks/adder_bench.py.
BLOCK_TABLE = {
  # GPU: 128 threads (4 warps) per program. Forward: a 64x64 (narrow: 128x32)
  # float32 tile is 32 accumulators a thread, and r = 4 keeps the (m, r, n)
  # broadcast at 128 values a thread. Input gradient: n = 16 tiles K, which
  # is 9 * C_in = a multiple of 16 in every model-zoo layer (no padding).
  ('gpu', '*', 'narrow'): KernelBlocks(
    forward=Blocks(m=128, n=32, r=4), input_grad=Blocks(m=128, n=16, r=4)
  ),
  ('gpu', '*', 'wide'): KernelBlocks(
    forward=Blocks(m=64, n=64, r=4), input_grad=Blocks(m=128, n=16, r=4)
  ),
  # TPU (M on the lanes): forward tile 64 x 512 float32 = 32 vregs of 4 KiB,
  # K in steps of 128; input-gradient tile 128 (K) x 256 (M), O in steps of
  # 128. An axis at most twice its block is taken whole (no padding).
  ('tpu', '*', 'narrow'): KernelBlocks(
    forward=Blocks(m=512, n=64, r=128),
    input_grad=Blocks(m=256, n=128, r=128),
  ),
  ('tpu', '*', 'wide'): KernelBlocks(
    forward=Blocks(m=512, n=64, r=128),
    input_grad=Blocks(m=256, n=128, r=128),
  ),
}

# What an autotune over one kernel should try, per family.
CANDIDATES = {
  'gpu': tuple(
    Blocks(m=m, n=n, r=r, num_warps=w, num_stages=s)
    for m, n in ((32, 32), (64, 16), (64, 32), (64, 64), (128, 16), (128, 32))
    for r in (1, 2, 4, 8)
    for w in (4, 8)
    for s in (1, 2, 3)
  ),
  'tpu': tuple(
    Blocks(m=m, n=n, r=r)
    for m in (256, 512, 1024)
    for n in (32, 64, 128)
    for r in (128, 256)
  ),
}


def shape_class(out_channels: int) -> str:
  return 'narrow' if out_channels <= 32 else 'wide'


def table_blocks(family: str, device_kind: str, out_channels: int):
  """The BLOCK_TABLE entry for a family, a device kind and C_out."""
  cls = shape_class(out_channels)
  for (fam, kind, row_cls), blocks in BLOCK_TABLE.items():
    if (fam, row_cls) == (family, cls) and kind != '*':
      if device_kind.startswith(kind):
        return blocks
  return BLOCK_TABLE[(family, '*', cls)]


@dataclasses.dataclass(frozen=True)
class PallasConfig:
  """Which kernel family runs, whether interpreted, and with which blocks.

  ``blocks`` None means ``table_blocks`` at each call's shape.
  """

  family: str
  interpret: bool
  device_kind: str
  blocks: Optional[KernelBlocks] = None


def make_config(
  family: Optional[str], blocks: Optional[KernelBlocks] = None
) -> PallasConfig:
  """Resolves ``pallas_backend`` against the platform JAX runs on.

  None picks the current platform's family ('gpu' on CUDA/ROCm, 'tpu' on
  TPU, 'gpu' interpreted on CPU). A family that is not the platform's runs in
  Pallas interpret mode (slow, exact; for tests and checks without the chip).
  """
  platform = jax.default_backend()
  if family is None:
    family = 'tpu' if platform == 'tpu' else 'gpu'
  if family not in FAMILIES:
    raise ValueError(
      f'adder_conv: pallas_backend must be one of {FAMILIES} or None (the '
      f'current platform, {platform!r}), got {family!r}'
    )
  if blocks is not None and not isinstance(blocks, KernelBlocks):
    raise ValueError(
      'adder_conv: pallas_blocks must be a kdjax.ops.adder_pallas.KernelBlocks '
      f'(forward=Blocks(...), input_grad=Blocks(...)) or None, got {blocks!r}'
    )
  interpret = platform != family
  device_kind = 'interpret' if interpret else jax.devices()[0].device_kind
  return PallasConfig(family, interpret, device_kind, blocks)


def _gpu_tile(size: int, block: int) -> int:
  # Triton tensors have power-of-two sides; no larger than the axis needs.
  return min(block, pl.next_power_of_2(size))


def _tpu_tile(size: int, block: int, align: int, what: str, check: bool):
  """The whole axis when it is at most twice the block (always allowed, and
  it wastes no padding), else the block, a multiple of ``align`` (8 on
  sublane axes, 128 on lane axes)."""
  if size <= 2 * block:
    return size
  if check and block % align:
    raise ValueError(
      f'adder_conv: the Pallas TPU kernel needs {what} to be a multiple of '
      f'{align} (or at least half the axis, {size}), got {block}; choose '
      'another Blocks entry (kdjax.ops.adder_pallas.CANDIDATES lists valid '
      'ones)'
    )
  return block


def _pad_to(a, rows, cols):
  return jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


def _round_up(size, tile):
  return -(-size // tile) * tile


def _out_shape(shape, dtype, patches):
  # Under jax.shard_map the output varies over the mesh axes the patches vary
  # over (the batch's); outside it the type carries no manual axes.
  return jax.ShapeDtypeStruct(
    shape, dtype, manual_axis_type=jax.typeof(patches).mat
  )


def _cost(kind, problem_size, operands, out_size, out_dtype):
  # An adder-MAC is two adds; the input gradient a subtract, a clamp (2) and
  # an FMA per (m, k, o). Counted on the padded problem the kernel runs.
  return pl.CostEstimate(
    flops=(2 if kind == 'forward' else 4) * problem_size,
    transcendentals=0,
    bytes_accessed=sum(x.size * x.dtype.itemsize for x in operands)
    + out_size * jnp.dtype(out_dtype).itemsize,
  )


def _gpu_forward_kernel(p_ref, f_ref, y_ref, *, chunk):
  block_m, block_o = y_ref.shape

  def add_chunk(step, acc):
    start = pl.multiple_of(step * chunk, chunk)
    p = p_ref[:, pl.ds(start, chunk)].astype(jnp.float32)  # (bm, r)
    f = f_ref[pl.ds(start, chunk), :].astype(jnp.float32)  # (r, bo)
    return acc + jnp.sum(jnp.abs(p[:, :, None] - f[None, :, :]), axis=1)

  acc = jnp.zeros((block_m, block_o), jnp.float32)
  acc = jax.lax.fori_loop(0, p_ref.shape[1] // chunk, add_chunk, acc)
  y_ref[...] = (-acc).astype(y_ref.dtype)


def _gpu_input_grad_kernel(p_ref, ft_ref, g_ref, dp_ref, *, chunk):
  p = p_ref[...].astype(jnp.float32)  # (bm, bk)

  def add_chunk(step, acc):
    start = pl.multiple_of(step * chunk, chunk)
    g = g_ref[:, pl.ds(start, chunk)].astype(jnp.float32)  # (bm, r)
    ft = ft_ref[pl.ds(start, chunk), :].astype(jnp.float32)  # (r, bk)
    clipped = jnp.clip(ft[None, :, :] - p[:, None, :], -1.0, 1.0)
    return acc + jnp.sum(g[:, :, None] * clipped, axis=1)

  steps = g_ref.shape[1] // chunk
  dp_ref[...] = jax.lax.fori_loop(0, steps, add_chunk, jnp.zeros_like(p))


def _gpu_call(config, kind, blocks, p, f, g, out_dtype):
  """Grid (M tiles, N tiles); the reduction runs inside, ``blocks.r`` a step.

  forward: Y (M x O) from P (M x K), F (K x O).
  input_grad: dP (M x K) from P, F^T (O x K), g (M x O).
  """
  (m, k), o = p.shape, f.shape[1]
  n, red = (o, k) if kind == 'forward' else (k, o)
  tm, tn = _gpu_tile(m, blocks.m), _gpu_tile(n, blocks.n)
  tr = _gpu_tile(red, blocks.r)
  rows, cols, red = _round_up(m, tm), _round_up(n, tn), _round_up(red, tr)
  if kind == 'forward':
    operands = (_pad_to(p, rows, red), _pad_to(f, red, cols))
    kernel = functools.partial(_gpu_forward_kernel, chunk=tr)
    in_specs = [
      pl.BlockSpec((tm, red), lambda i, j: (i, 0)),
      pl.BlockSpec((red, tn), lambda i, j: (0, j)),
    ]
  else:
    operands = (
      _pad_to(p, rows, cols),
      _pad_to(f.T, red, cols),
      _pad_to(g, rows, red),
    )
    kernel = functools.partial(_gpu_input_grad_kernel, chunk=tr)
    in_specs = [
      pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
      pl.BlockSpec((red, tn), lambda i, j: (0, j)),
      pl.BlockSpec((tm, red), lambda i, j: (i, 0)),
    ]
  out = pl.pallas_call(
    kernel,
    out_shape=_out_shape((rows, cols), out_dtype, p),
    grid=(rows // tm, cols // tn),
    in_specs=in_specs,
    out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
    compiler_params=pl_triton.CompilerParams(
      num_warps=blocks.num_warps, num_stages=blocks.num_stages
    ),
    cost_estimate=_cost(
      kind, rows * cols * red, operands, rows * cols, out_dtype
    ),
    interpret=config.interpret,
    name=f'adder_{kind}_gpu',
  )(*operands)
  return out[:m, :n]


def _tpu_forward_kernel(ft_ref, pt_ref, yt_ref, acc_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  ft = ft_ref[...].astype(jnp.float32)  # (bo, bk), k on lanes
  pt = pt_ref[...].astype(jnp.float32)  # (bk, bm), m on lanes
  acc = acc_ref[...]  # (bo, bm)
  # Per k, a column of F^T broadcast across lanes against a row of P^T
  # broadcast across sublanes; unrolled over the block.
  for k in range(pt.shape[0]):
    acc = acc + jnp.abs(ft[:, k : k + 1] - pt[k : k + 1, :])
  acc_ref[...] = acc

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    yt_ref[...] = (-acc_ref[...]).astype(yt_ref.dtype)


def _tpu_input_grad_kernel(f_ref, gt_ref, pt_ref, dpt_ref, acc_ref):
  @pl.when(pl.program_id(2) == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  f = f_ref[...].astype(jnp.float32)  # (bk, bo), o on lanes
  gt = gt_ref[...].astype(jnp.float32)  # (bo, bm), m on lanes
  pt = pt_ref[...].astype(jnp.float32)  # (bk, bm)
  acc = acc_ref[...]
  for o in range(gt.shape[0]):
    acc = acc + gt[o : o + 1, :] * jnp.clip(f[:, o : o + 1] - pt, -1.0, 1.0)
  acc_ref[...] = acc

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    dpt_ref[...] = acc_ref[...]


def _tpu_call(config, kind, blocks, p, f, g, out_dtype):
  """Grid (M tiles, N tiles, reduction tiles), reduction last ('arbitrary').

  Runs transposed, M on the 128 lanes (the axis that is always long; C_out
  and K may be 16), so every vector op is full:
  forward: Y^T (O x M) from F^T (O x K), P^T (K x M).
  input_grad: dP^T (K x M) from F (K x O), g^T (O x M), P^T.
  """
  (m, k), o = p.shape, f.shape[1]
  n, red = (o, k) if kind == 'forward' else (k, o)
  check = not config.interpret
  tm = _tpu_tile(m, blocks.m, 128, 'the M block (m)', check)
  tn = _tpu_tile(n, blocks.n, 8, 'the output block (n)', check)
  tr = _tpu_tile(red, blocks.r, 128, 'the reduction block (r)', check)
  rows, cols, red = _round_up(m, tm), _round_up(n, tn), _round_up(red, tr)
  pt = p.T
  if kind == 'forward':
    operands = (_pad_to(f.T, cols, red), _pad_to(pt, red, rows))
    kernel = _tpu_forward_kernel
    in_specs = [
      pl.BlockSpec((tn, tr), lambda i, j, r: (j, r)),
      pl.BlockSpec((tr, tm), lambda i, j, r: (r, i)),
    ]
  else:
    operands = (
      _pad_to(f, cols, red),
      _pad_to(g.T, red, rows),
      _pad_to(pt, cols, rows),
    )
    kernel = _tpu_input_grad_kernel
    in_specs = [
      pl.BlockSpec((tn, tr), lambda i, j, r: (j, r)),
      pl.BlockSpec((tr, tm), lambda i, j, r: (r, i)),
      pl.BlockSpec((tn, tm), lambda i, j, r: (j, i)),
    ]
  out = pl.pallas_call(
    kernel,
    out_shape=_out_shape((cols, rows), out_dtype, p),
    grid=(rows // tm, cols // tn, red // tr),
    in_specs=in_specs,
    out_specs=pl.BlockSpec((tn, tm), lambda i, j, r: (j, i)),
    scratch_shapes=[pltpu.VMEM((tn, tm), jnp.float32)],
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=('parallel', 'parallel', 'arbitrary')
    ),
    cost_estimate=_cost(
      kind, rows * cols * red, operands, rows * cols, out_dtype
    ),
    interpret=config.interpret,
    name=f'adder_{kind}_tpu',
  )(*operands)
  return out[:n, :m].T


def _blocks_for(config, out_channels):
  if config.blocks is not None:
    return config.blocks
  return table_blocks(config.family, config.device_kind, out_channels)


def _call(config, kind, p, f, g, out_dtype):
  blocks = getattr(_blocks_for(config, f.shape[1]), kind)
  run = _gpu_call if config.family == 'gpu' else _tpu_call
  return run(config, kind, blocks, p, f, g, out_dtype)


def forward(p, f, config: PallasConfig, out_dtype):
  """Y = -sum_k |P[m, k] - F[k, o]|: (M, K) x (K, O) -> (M, O) in out_dtype.

  Accumulates in float32 whatever the input dtype.
  """
  return _call(config, 'forward', p, f, None, out_dtype)


def input_grad(p, f, g, config: PallasConfig):
  """dP = sum_o g[m, o] * clip(F[k, o] - P[m, k], -1, 1): (M, K) float32.

  p: (M, K) patches, f: (K, O) filters, g: (M, O) output cotangent.
  """
  return _call(config, 'input_grad', p, f, g, jnp.float32)
