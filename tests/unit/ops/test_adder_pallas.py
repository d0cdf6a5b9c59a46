"""adder_conv(method='pallas'): both kernel families, interpreted on the CPU.

Every case of test_adder_op.py is checked against its NumPy loop reference
(imported, not copied), for the Triton ('gpu') and the Mosaic ('tpu') kernel
family, under jit and grad; then bfloat16, vmap, the 8-device sharded step,
and lowering for the real chips (Triton and Mosaic lowering run in Python, so
a kernel that would not lower is caught here even without the hardware).

The blocks here are tiny so that every axis has several tiles and a padded
remainder (M = 50 rows in tiles of 16 or 8, K = 18 in chunks of 4, C_out = 3
or 5 in tiles of 2 or 4) while interpret mode stays fast.
"""

import functools
import importlib.util
import pathlib
import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.ops import adder_conv, adder_method
from kdjax.ops import adder_pallas
from kdjax.ops.adder_pallas import Blocks, KernelBlocks

from adder_reference import (  # pylint: disable=g-bad-import-order
  REFERENCE_CASES,
  assert_matches_reference,
  make_cotangent,
  make_inputs,
  reference_adder,
  sharded_step,
)

FAMILIES = ('gpu', 'tpu')

TEST_BLOCKS = {
  'gpu': KernelBlocks(
    forward=Blocks(m=16, n=4, r=4), input_grad=Blocks(m=16, n=8, r=2)
  ),
  'tpu': KernelBlocks(
    forward=Blocks(m=8, n=2, r=4), input_grad=Blocks(m=8, n=4, r=2)
  ),
}


def _conv(family, blocks='test'):
  blocks = TEST_BLOCKS[family] if blocks == 'test' else blocks
  return functools.partial(
    adder_conv, method='pallas', pallas_backend=family, pallas_blocks=blocks
  )


@functools.partial(
  jax.jit, static_argnames=('strides', 'padding', 'method', 'family')
)
def _value_and_grads(x, f, g, strides, padding, method, family):
  assert method == 'pallas'

  def loss(x, f):
    y = _conv(family)(x, f, strides, padding)
    return jnp.sum(y * g), y

  (_, y), (dx, df) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    x, f
  )
  return y, dx, df


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('case', sorted(REFERENCE_CASES))
def test_matches_numpy_reference(case, family):
  (n, h, w, c), (kh, kw, o), strides, padding = REFERENCE_CASES[case]
  x, f = make_inputs(n, h, w, c, kh, kw, o)
  assert_matches_reference(
    x,
    f,
    strides,
    padding,
    method='pallas',
    value_and_grads=functools.partial(_value_and_grads, family=family),
  )


def _pallas_input_dtypes(fn, *args):
  """Dtypes of every pallas_call operand in fn's jaxpr (grad included)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'pallas_call':
        found.append(tuple(v.aval.dtype for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.parametrize('family', FAMILIES)
def test_bfloat16_inputs_with_the_block_table(family):
  # The default (table) blocks: one tile per axis here, the rest padding.
  conv = _conv(family, blocks=None)
  x, f = make_inputs(2, 5, 6, 4, 3, 3, 5, seed=7)
  xb, fb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(f, jnp.bfloat16)
  g = make_cotangent((2, 5, 6, 5), seed=8)
  xr, fr = (np.asarray(a.astype(jnp.float32)) for a in (xb, fb))
  want_y, want_dx, want_df = reference_adder(xr, fr, g, 1, 'SAME')

  def loss(x, f):
    y = conv(x, f, 1, 'SAME')
    return jnp.sum(y.astype(jnp.float32) * g), y

  grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, y), (dx, df) = grads(xb, fb)
  assert y.dtype == dx.dtype == df.dtype == jnp.bfloat16
  # float32 accumulation: only the output rounding (bf16, 8 bits) is lost.
  scale = np.abs(want_y).max()
  np.testing.assert_allclose(
    y.astype(np.float32), want_y, rtol=1e-2, atol=1e-2 * scale
  )
  np.testing.assert_allclose(
    dx.astype(np.float32), want_dx, rtol=1e-2, atol=2e-2
  )
  np.testing.assert_allclose(
    df.astype(np.float32), want_df, rtol=1e-2, atol=0.1
  )
  # The kernels read bfloat16 (half the memory traffic), not a float32 copy.
  dtypes = _pallas_input_dtypes(lambda x, f: grads(x, f)[1], xb, fb)
  assert len(dtypes) == 2, dtypes
  assert all(d == jnp.bfloat16 for call in dtypes for d in call), dtypes


@pytest.mark.parametrize('family', FAMILIES)
def test_vmap_of_grad(family):
  conv = lambda x, f: _conv(family)(x, f, 2, 'SAME')
  rng = np.random.default_rng(5)
  xs = rng.normal(size=(2, 1, 5, 4, 2)).astype(np.float32)
  fs = rng.normal(size=(2, 3, 3, 2, 3)).astype(np.float32)
  g = rng.normal(size=(2, 1, 3, 2, 3)).astype(np.float32)

  def value_and_grads(x, f, g):
    loss = lambda x, f: jnp.sum(conv(x, f) * g)
    return conv(x, f), *jax.grad(loss, argnums=(0, 1))(x, f)

  ys, dxs, dfs = jax.jit(jax.vmap(value_and_grads))(xs, fs, g)
  for i in range(2):
    want = reference_adder(xs[i], fs[i], g[i], 2, 'SAME')
    for got, ref in zip((ys[i], dxs[i], dfs[i]), want):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('family', FAMILIES)
def test_inside_a_sharded_step(family):
  """jit over an 8-device batch mesh gives the reference values and gradients."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(8, 4, 4, 2)).astype(np.float32)
  f = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
  r = rng.normal(size=(8, 2, 2, 3)).astype(np.float32)
  want_y, want_dx, want_df = reference_adder(x, f, r, 2, 1)
  compiled, y, dx, df = sharded_step(
    lambda x, f: _conv(family)(x, f, 2, 1), x, f, r
  )
  # Each device runs the kernels on its own examples: the batch is never
  # gathered (XLA cannot partition a Pallas kernel by itself).
  assert 'all-gather' not in compiled.as_text()
  np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(df), want_df, rtol=1e-5, atol=1e-3)


# (M, K, C_out) of ResNet-20 (batch 64) and ResNet-50 (batch 32) layers, and an
# odd one: K = 9 * 3, C_out = 5, M prime.
LOWERING_SHAPES = {
  'resnet20_stage1': (64 * 32 * 32, 144, 16),
  'resnet20_stage3': (64 * 8 * 8, 576, 64),
  'resnet50_3x3_c256': (32 * 14 * 14, 2304, 256),
  'odd': (4099, 27, 5),
}


@pytest.mark.parametrize('family', FAMILIES)
def test_kernels_lower_for_the_chip(family):
  # Triton (Pallas -> TTIR) and Mosaic (Pallas -> Mosaic MLIR) lowering run in
  # Python: this catches block shapes or ops the real compiler would refuse.
  platform, custom_call = {
    'gpu': ('cuda', 'triton'),
    'tpu': ('tpu', 'tpu_custom_call'),
  }[family]
  config = adder_pallas.PallasConfig(family, False, '*')
  for m, k, o in LOWERING_SHAPES.values():
    p = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    f = jax.ShapeDtypeStruct((k, o), jnp.bfloat16)
    g = jax.ShapeDtypeStruct((m, o), jnp.bfloat16)
    for fn, args in (
      (lambda p, f: adder_pallas.forward(p, f, config, p.dtype), (p, f)),
      (lambda p, f, g: adder_pallas.input_grad(p, f, g, config), (p, f, g)),
    ):
      lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
      assert custom_call in lowered.as_text()


def test_tpu_blocks_that_mosaic_would_refuse_are_a_clear_error():
  config = adder_pallas.PallasConfig(
    'tpu',
    False,
    '*',
    KernelBlocks(Blocks(m=100, n=8, r=128), Blocks(m=256, n=128, r=128)),
  )
  p = jax.ShapeDtypeStruct((1000, 144), jnp.float32)
  f = jax.ShapeDtypeStruct((144, 16), jnp.float32)
  with pytest.raises(
    ValueError, match=r'M block \(m\) to be a multiple of 128'
  ):
    jax.eval_shape(
      lambda p, f: adder_pallas.forward(p, f, config, p.dtype), p, f
    )


def test_block_table_and_candidates():
  kinds = ('NVIDIA H100 80GB HBM3', 'TPU v5 lite', 'interpret')
  for family in FAMILIES:
    for kind in kinds:
      for o in (16, 64):
        blocks = adder_pallas.table_blocks(family, kind, o)
        cls = 'narrow' if o <= 32 else 'wide'
        assert blocks == adder_pallas.BLOCK_TABLE[(family, '*', cls)]
  pow2 = lambda v: v & (v - 1) == 0
  for b in adder_pallas.CANDIDATES['gpu']:
    assert pow2(b.m) and pow2(b.n) and pow2(b.r) and pow2(b.num_warps)
  for b in adder_pallas.CANDIDATES['tpu']:
    assert b.m % 128 == 0 and b.n % 8 == 0 and b.r % 128 == 0
  for (family, _, _), blocks in adder_pallas.BLOCK_TABLE.items():
    assert blocks.forward in adder_pallas.CANDIDATES[family]
    assert blocks.input_grad in adder_pallas.CANDIDATES[family]


def test_backend_choice():
  # None is the platform's family, and the CPU's is the interpreted GPU one;
  # a family that is not the platform's is interpreted.
  platform = jax.default_backend()
  config = adder_pallas.make_config(None)
  assert config.family == ('tpu' if platform == 'tpu' else 'gpu')
  assert config.interpret == (platform == 'cpu')
  for family in FAMILIES:
    assert adder_pallas.make_config(family).interpret == (platform != family)


def _has_pallas_call(fn, *args):
  return bool(_pallas_input_dtypes(fn, *args))


def test_auto_keeps_todays_choice():
  # No committed benchmark shows pallas faster: 'auto' must not contain it.
  x, f = make_inputs(1, 4, 4, 2, 3, 3, 2)
  auto = lambda x, f: jnp.sum(adder_conv(x, f, method='auto'))
  assert not _has_pallas_call(jax.grad(auto, argnums=(0, 1)), x, f)
  pallas = lambda x, f: jnp.sum(adder_conv(x, f, method='pallas'))
  assert _has_pallas_call(jax.grad(pallas, argnums=(0, 1)), x, f)
  # adder_method sets the method of calls that pass none, for its block only.
  default = lambda x, f: jnp.sum(adder_conv(x, f))
  with adder_method('pallas', pallas_backend='tpu'):
    assert _has_pallas_call(jax.grad(default, argnums=(0, 1)), x, f)
  assert not _has_pallas_call(jax.grad(default, argnums=(0, 1)), x, f)


def test_inside_a_users_shard_map():
  if jax.device_count() < 8:
    pytest.skip(f'needs 8 devices; have {jax.device_count()}')
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh(
    (8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  x, f = make_inputs(8, 4, 4, 2, 3, 3, 3, seed=9)
  want = reference_adder(x, f, np.zeros((8, 2, 2, 3)), 2, 1)[0]
  conv = lambda x, f: _conv('tpu')(x, f, 2, 1)

  def per_device(check_vma):
    return jax.jit(
      jax.shard_map(
        conv,
        mesh=mesh,
        in_specs=(P('data'), P()),
        out_specs=P('data'),
        check_vma=check_vma,
      )
    )

  y = per_device(False)(x, f)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match='pass check_vma=False'):
    per_device(True)(x, f)


def test_option_errors():
  x, f = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 3))
  with pytest.raises(ValueError, match="go with method='pallas'"):
    adder_conv(x, f, pallas_backend='gpu')
  with pytest.raises(ValueError, match="only apply to method='pallas'"):
    adder_conv(x, f, method='fused', pallas_backend='gpu')
  with pytest.raises(ValueError, match='method must be one of'):
    with adder_method('triton'):
      pass
  with pytest.raises(ValueError, match='pallas_backend must be one of'):
    adder_conv(x, f, method='pallas', pallas_backend='cuda')
  with pytest.raises(ValueError, match='pallas_blocks must be'):
    adder_conv(x, f, method='pallas', pallas_blocks={'m': 8})
  with pytest.raises(ValueError, match='must be a positive int'):
    Blocks(m=0, n=8, r=8)


def _load_bench():
  path = (
    pathlib.Path(__file__).resolve().parents[3]
    / 'benchmarks'
    / 'adder_bench.py'
  )
  spec = importlib.util.spec_from_file_location('adder_bench_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_device_limits(monkeypatch):
  bench = _load_bench()

  def no_nvidia_smi(*args, **kwargs):
    raise OSError('nvidia-smi not installed')

  monkeypatch.setattr(bench.subprocess, 'run', no_nvidia_smi)
  h100 = types.SimpleNamespace(
    platform='gpu',
    device_kind='NVIDIA H100 80GB HBM3',
    compute_capability='9.0',
    core_count=132,
  )
  limit, how = bench.device_limit(h100)
  # The figure: 132 SMs x 128 lanes x 1.98 GHz / 2 = 16.7 T.
  assert limit == pytest.approx(132 * 128 * 1.98e9 / 2)
  assert '132 SMs' in how and 'boost-clock table' in how
  v5e = types.SimpleNamespace(platform='tpu', device_kind='TPU v5 lite')
  limit, how = bench.device_limit(v5e)
  # docs/adder_kernels.md: 4096 f32 ALUs x 1.5 GHz / 3 ops = 2.05 T.
  assert limit == pytest.approx(2.048e12)
  unknown = types.SimpleNamespace(platform='tpu', device_kind='TPU v9')
  assert bench.device_limit(unknown)[0] is None
  cpu = types.SimpleNamespace(platform='cpu', device_kind='cpu')
  assert bench.device_limit(cpu)[0] is None
