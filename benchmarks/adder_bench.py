r"""Speed and memory of kdjax's adder_conv at the ResNet-20 layer shapes.

For each shape (batch 64 by default) it times, as the median of --reps runs
(--torch-reps for the slow official baseline) after one excluded warm-up:
  kdjax           jit(value_and_grad(sum(adder_conv(x, F) * r))) w.r.t. x and F,
                  and jit(adder_conv) alone, with method='auto';
  kdjax_<method>  the same for every other --methods entry (loop, fused,
                  pallas; pallas by default only on a GPU or TPU, as interpret
                  mode on a CPU measures nothing useful);
  conv            the same with lax.conv_general_dilated (same shapes, strides,
                  padding): what an ordinary multiplicative layer costs;
  torch_official  a PyTorch port of the official AdderNet algorithm
                  (reference_addernet_torch.py: unfold, (C_out, C*k*k, N*Ho*Wo)
                  difference tensor, autograd.Function backward, fold), run in a
                  fresh subprocess per shape so its peak RSS is its own; skipped
                  when torch is not importable.
value_and_grad (not grad) is timed so that XLA cannot drop the forward: the
gradient of sum(y * r) does not need y. The adaptive LR normalisation of the
official backward is left out (kdjax does it in the optimizer).

Once per shape it checks that torch and kdjax agree on y, dL/dx and dL/dF for
the same inputs (max abs difference, and relative to the largest magnitude).

Output: one JSON line of definitions ("meta"), then one JSON line per shape:
  time_s.*_fwd_bwd / *_fwd   median seconds per call.
  kdjax_vs_conv               time_kdjax / time_conv (fwd+bwd): adder cost in
                              units of a same-shape convolution.
  official_vs_kdjax           time_torch_official / time_kdjax (fwd+bwd): the
                              speed-up of kdjax over the official algorithm.
  memory_bytes.kdjax_xla_temp / conv_xla_temp: temp_size_in_bytes of XLA's
                              compiled memory_analysis() for the jitted
                              fwd+bwd (scratch buffers besides arguments and
                              outputs); *_xla_args: argument_size_in_bytes.
  memory_bytes.torch_difference_tensor: C_out * C*k*k * N*Ho*Wo * 4, one
                              materialised difference tensor (the forward holds
                              it and |D|; the backward rebuilds it).
  memory_bytes.torch_rss_peak_delta: peak RSS of the torch subprocess during
                              its first fwd+bwd minus its RSS just before
                              (VmHWM reset through /proc/self/clear_refs),
                              inputs already resident.
  memory_bytes.im2col_patches: N*Ho*Wo * k*k*C * 4, the unfolded input alone.
  adder_adds_fwd              N*Ho*Wo * k*k*C * C_out * 2: one subtract and one
                              accumulate per adder MAC (docs/adder.md).
  adds_per_s.*                adder_adds_fwd / forward-only time.
  adder_macs_per_s.*          adder_adds_fwd / 2 / forward-only time.
  pct_of_limit.*_fwd          100 * adder_macs_per_s / the device's limit
                              (meta.device_limit says how it is computed for
                              this device kind; absent where it is unknown).
  <label>_vs_conv             time <label> fwd_bwd / time conv fwd_bwd.

--model-step adds two lines per method, at --batch, in images/s: an adder
ResNet-20 training step alone (CIFAR shape 32x32x3, 10 classes; forward,
backward and an SGD update, BN in train mode), and the trainer's PKKD step for
configs/pkkd.py:cifar10_resnet20 (CNN teacher and adder student co-trained) on
random arrays, each with its first-step loss. --autotune N times N of
kdjax.ops.adder_pallas.CANDIDATES for each pallas kernel and shape and reports
the fastest (on the chip only).

Threads: --threads N pins this process (and the torch subprocess) to N CPUs
with sched_setaffinity before JAX starts, so XLA's thread pool sees N cores,
and calls torch.set_num_threads(N). The default N is every CPU this process may
use, for both, so neither side is handicapped.

  python benchmarks/adder_bench.py                      # ResNet-20 shapes
  python benchmarks/adder_bench.py --shapes s1_8x8x64_to64 --reps 5
  python benchmarks/adder_bench.py --shapes all --methods auto,pallas \
      --model-step --autotune 24                        # on a GPU or TPU
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# name: (H, W, C_in, C_out, k, stride, padding). Paddings are PyTorch-style
# symmetric ints, as in the ResNet-20 of the official code; note that XLA's
# 'SAME' would pad (0, 1) rather than (1, 1) at stride 2.
SHAPES = {
  's1_32x32x16_to16': (32, 32, 16, 16, 3, 1, 1),
  's1_16x16x32_to32': (16, 16, 32, 32, 3, 1, 1),
  's1_8x8x64_to64': (8, 8, 64, 64, 3, 1, 1),
  's2_32x32x16_to32': (32, 32, 16, 32, 3, 2, 1),
  's2_16x16x32_to64': (16, 16, 32, 64, 3, 2, 1),
  's2_1x1_32x32x16_to32': (32, 32, 16, 32, 1, 2, 0),
  's2_1x1_16x16x32_to64': (16, 16, 32, 64, 1, 2, 0),
}
RESNET20_SHAPES = tuple(SHAPES)
# ImageNet ResNet-50 (torchvision layout: stride in the 3x3), the 3x3 layer of
# each stage at stride 1 and two of its 1x1 layers.
SHAPES.update(
  {
    'r50_3x3_56x56x64_to64': (56, 56, 64, 64, 3, 1, 1),
    'r50_3x3_28x28x128_to128': (28, 28, 128, 128, 3, 1, 1),
    'r50_3x3_14x14x256_to256': (14, 14, 256, 256, 3, 1, 1),
    'r50_3x3_7x7x512_to512': (7, 7, 512, 512, 3, 1, 1),
    'r50_1x1_56x56x64_to256': (56, 56, 64, 256, 1, 1, 0),
    'r50_1x1_14x14x1024_to256': (14, 14, 1024, 256, 1, 1, 0),
  }
)
RESNET50_SHAPES = tuple(name for name in SHAPES if name.startswith('r50_'))
SHAPE_GROUPS = {
  'resnet20': RESNET20_SHAPES,
  'resnet50': RESNET50_SHAPES,
  'all': tuple(SHAPES),
}
METHODS = ('auto', 'loop', 'fused', 'pallas')

# FP32 lanes per SM by CUDA compute capability (NVIDIA CUDA C++ Programming
# Guide, "Arithmetic Instructions": 32-bit floating-point add/FMA results per
# clock per SM), and boost clocks in GHz by device kind for when nvidia-smi
# does not report clocks.max.sm.
FP32_LANES_PER_SM = {'7.0': 64, '8.0': 64, '8.6': 128, '8.9': 128, '9.0': 128}
GPU_BOOST_GHZ = {
  'NVIDIA H100 80GB HBM3': 1.98,
  'NVIDIA H200': 1.98,
  'NVIDIA H100 PCIe': 1.755,
  'NVIDIA A100-SXM4-80GB': 1.41,
  'NVIDIA A100-SXM4-40GB': 1.41,
}
# TPU vector units, per TensorCore an (8 sublanes x 128 lanes) VPU with
# `alus` f32 ALUs per (sublane, lane) at `ghz`, `cores` TensorCores per chip
# (sources in docs/adder_kernels.md). An adder-MAC is 3 VPU ops.
TPU_VPU = {
  'TPU v4': dict(alus=2, ghz=1.05, cores=2),
  'TPU v5 lite': dict(alus=4, ghz=1.5, cores=1),
}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_SCRIPT = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'reference_addernet_torch.py'
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument(
    '--reps', type=int, default=3, help='timed runs per measurement'
  )
  parser.add_argument(
    '--shapes',
    default='resnet20',
    help=f'comma-separated shape names or groups ({", ".join(SHAPE_GROUPS)}); '
    f'shapes: {", ".join(SHAPES)}',
  )
  parser.add_argument(
    '--methods',
    default=None,
    help=f'comma-separated adder_conv methods of {METHODS} (default: auto, '
    'plus pallas on a GPU or TPU)',
  )
  parser.add_argument(
    '--pallas-backend',
    default=None,
    choices=('gpu', 'tpu'),
    help="kernel family of method='pallas' (default: the platform's)",
  )
  parser.add_argument(
    '--model-step',
    action='store_true',
    help='also time the adder ResNet-20 and the PKKD ResNet-20 training '
    'steps per method (images/s)',
  )
  parser.add_argument(
    '--autotune',
    type=int,
    default=0,
    metavar='N',
    help='time N block-size candidates per pallas kernel and shape',
  )
  parser.add_argument(
    '--torch-reps',
    type=int,
    default=2,
    help='timed runs of the official baseline (about 10 s each at the '
    'largest shapes on 2 cores)',
  )
  parser.add_argument(
    '--threads',
    type=int,
    default=len(os.sched_getaffinity(0)),
    help='CPUs for JAX (affinity) and torch (set_num_threads)',
  )
  parser.add_argument(
    '--no-torch', action='store_true', help='skip the official baseline'
  )
  parser.add_argument(
    '--torch-device',
    default=None,
    help='device of the official baseline (default: cuda when JAX runs on a '
    'GPU, else cpu), so both sides run on the same hardware',
  )
  args = parser.parse_args(argv)
  names = []
  for name in args.shapes.split(','):
    if name not in SHAPES and name not in SHAPE_GROUPS:
      parser.error(
        f'unknown shape {name!r}; choose from {list(SHAPE_GROUPS)} or '
        f'{list(SHAPES)}'
      )
    names.extend(SHAPE_GROUPS.get(name, (name,)))
  args.shapes = list(dict.fromkeys(names))
  if args.methods is not None:
    args.methods = args.methods.split(',')
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
      parser.error(f'unknown methods {unknown}; choose from {list(METHODS)}')
  return args


def gpu_clock_ghz(device_kind):
  """(max SM clock in GHz, its source) from nvidia-smi, else the table."""
  try:
    out = subprocess.run(
      [
        'nvidia-smi',
        '--query-gpu=clocks.max.sm',
        '--format=csv,noheader,nounits',
      ],
      capture_output=True,
      text=True,
      timeout=30,
      check=True,
    ).stdout
    return float(out.split()[0]) / 1000, 'nvidia-smi clocks.max.sm'
  except (OSError, subprocess.SubprocessError, ValueError, IndexError):
    ghz = GPU_BOOST_GHZ.get(device_kind)
    return ghz, 'boost-clock table' if ghz else None


def device_limit(device):
  """(peak adder-MACs/s of the device or None, how it is computed)."""
  kind = device.device_kind
  if device.platform == 'gpu':
    cc = getattr(device, 'compute_capability', None)
    sms = getattr(device, 'core_count', None)
    lanes = FP32_LANES_PER_SM.get(str(cc))
    ghz, clock_source = gpu_clock_ghz(kind)
    if not (sms and lanes and ghz):
      return None, f'unknown for {kind} (compute capability {cc})'
    limit = sms * lanes * ghz * 1e9 / 2
    return limit, (
      f'{sms} SMs x {lanes} FP32 lanes x {ghz:.3f} GHz ({clock_source}) / 2 '
      'instructions per adder-MAC (subtract; add with the |.| operand '
      'modifier): the CUDA-core limit'
    )
  if device.platform == 'tpu':
    for prefix, vpu in TPU_VPU.items():
      if kind.startswith(prefix):
        limit = 8 * 128 * vpu['alus'] * vpu['ghz'] * 1e9 * vpu['cores'] / 3
        return limit, (
          f'8 x 128 lanes x {vpu["alus"]} ALUs x {vpu["ghz"]} GHz x '
          f'{vpu["cores"]} TensorCores / 3 VPU ops per adder-MAC (subtract, '
          'abs, add): the VPU limit (docs/adder_kernels.md)'
        )
    return None, f'unknown for {kind} (see docs/adder_kernels.md)'
  return None, (
    'none for CPUs: an adder-MAC is ~3 SIMD ops against 1 FMA per conv MAC, '
    'so compare kdjax_vs_conv with 3'
  )


def median_time(fn, reps):
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def label_of(method):
  # 'kdjax' is method='auto', as in the records committed before --methods.
  return 'kdjax' if method == 'auto' else f'kdjax_{method}'


def spread(candidates, count):
  """``count`` candidates evenly spread over the list (all if fewer)."""
  if count >= len(candidates):
    return list(candidates)
  step = len(candidates) / count
  return [candidates[int(i * step)] for i in range(count)]


def autotune(jax, adder_conv, adder_pallas, family, x, kernel, r, conv_args, n):
  """Fastest of n candidates for each pallas kernel: {kernel: (blocks, s)}."""
  import jax.numpy as jnp

  table = adder_pallas.table_blocks(
    family, jax.devices()[0].device_kind, kernel.shape[-1]
  )
  best = {}
  for which in ('forward', 'input_grad'):
    timings = []
    for blocks in spread(adder_pallas.CANDIDATES[family], n):
      trial = adder_pallas.KernelBlocks(
        forward=blocks if which == 'forward' else table.forward,
        input_grad=blocks if which == 'input_grad' else table.input_grad,
      )
      layer = lambda x, k, trial=trial: adder_conv(
        x,
        k,
        *conv_args,
        method='pallas',
        pallas_backend=family,
        pallas_blocks=trial,
      )
      if which == 'forward':
        fn = jax.jit(layer)
        call = lambda fn=fn: fn(x, kernel)
      else:
        fn = jax.jit(jax.grad(lambda x, k: jnp.sum(layer(x, k) * r)))
        call = lambda fn=fn: fn(x, kernel)
      try:
        jax.block_until_ready(call())
      except Exception as error:  # A candidate the compiler refuses.
        timings.append((float('inf'), blocks, repr(error)[:200]))
        continue
      seconds = median_time(lambda: jax.block_until_ready(call()), 3)
      timings.append((seconds, blocks, None))
    seconds, blocks, _ = min(timings, key=lambda t: t[0])
    best[which] = {
      'blocks': dataclasses.asdict(blocks),
      'time_s': round(seconds, 6),
      'table_blocks': dataclasses.asdict(getattr(table, which)),
      'tried': len(timings),
      'failed': sum(t[2] is not None for t in timings),
    }
  return best


def model_step_record(jax, methods, pallas_backend, batch, reps):
  """images/s of an adder ResNet-20 training step, one dict per method."""
  import jax.numpy as jnp
  import optax

  from kdjax.models import build_model
  from kdjax.ops import adder_method

  model = build_model('resnet20', conv_type='adder', num_classes=10)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=(batch,)))
  variables = model.init(jax.random.key(0), images, train=False)
  optimizer = optax.sgd(0.1, momentum=0.9)
  opt_state = optimizer.init(variables['params'])

  def step(variables, opt_state):
    def loss_fn(params):
      (logits, _), updates = model.apply(
        {**variables, 'params': params},
        images,
        train=True,
        mutable=['batch_stats'],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables['params']
    )
    changes, opt_state = optimizer.update(grads, opt_state)
    params = optax.apply_updates(variables['params'], changes)
    return {**variables, **updates, 'params': params}, opt_state, loss

  records = []
  for method in methods:
    options = {'pallas_backend': pallas_backend} if method == 'pallas' else {}
    with adder_method(method, **options):
      compiled = jax.jit(step).lower(variables, opt_state).compile()
    # The same first step for every method: its loss shows a wrong kernel.
    loss = float(jax.block_until_ready(compiled(variables, opt_state))[2])
    seconds = median_time(
      lambda: jax.block_until_ready(compiled(variables, opt_state)), reps
    )
    records.append(
      {
        'model_step': 'adder_resnet20_sgd',
        'method': method,
        'batch': batch,
        'time_s': round(seconds, 5),
        'images_per_s': round(batch / seconds, 1),
        'first_step_loss': loss,
      }
    )
  return records


def pkkd_step_record(jax, methods, pallas_backend, batch, reps):
  """images/s of kdjax's PKKD training step on ResNet-20, one dict per method.

  The trainer's own step (kdjax.train.train.train_step) for the
  configs/pkkd.py:cifar10_resnet20 preset: CNN teacher and adder student
  co-trained, both updated, on random CIFAR-shaped arrays (no dataset needed).
  """
  import jax.numpy as jnp

  from kdjax import config_defaults
  from kdjax.ops import adder_method
  from kdjax.train import train as train_lib
  from kdjax.train.methods import build_method

  path = os.path.join(REPO, 'configs', 'pkkd.py')
  config = config_defaults.load_config_module(path).get_config(
    'cifar10_resnet20'
  )
  config.batch_size = batch
  method = build_method(config, num_classes=10, image_shape=(32, 32, 3))
  rng = np.random.default_rng(0)
  arrays = {
    'image': jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, size=(batch,)), jnp.int32),
  }
  frozen = method.load_frozen(arrays['image'][:2])
  params = jax.eval_shape(
    lambda: method.init(jax.random.key(0), arrays['image'])[0]
  )
  # 50,000 CIFAR images at this batch, for the LR schedule only.
  optimizers = train_lib.build_optimizers(
    config, method, params, steps_per_epoch=-(-50000 // batch)
  )
  state = train_lib.init_state(config, method, optimizers, arrays['image'])
  step = functools.partial(train_lib.train_step, method, optimizers, False)
  records = []
  for name in methods:
    options = {'pallas_backend': pallas_backend} if name == 'pallas' else {}
    with adder_method(name, **options):
      compiled = jax.jit(step).lower(state, frozen, arrays).compile()
    # The same first step for every method: its loss shows a wrong kernel.
    _, metrics = jax.block_until_ready(compiled(state, frozen, arrays))
    seconds = median_time(
      lambda: jax.block_until_ready(compiled(state, frozen, arrays)), reps
    )
    records.append(
      {
        'model_step': 'pkkd_resnet20',
        'method': name,
        'batch': batch,
        'time_s': round(seconds, 5),
        'images_per_s': round(batch / seconds, 1),
        'first_step_loss': float(metrics['loss/total']),
      }
    )
  return records


def main(argv=None):
  args = parse_args(argv)
  # Before JAX starts, so that its thread pool is sized to the CPUs we allow.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])

  import jax
  import jax.numpy as jnp
  from jax import lax

  from kdjax.ops import adder_conv
  from kdjax.ops import adder_pallas

  have_torch = (
    not args.no_torch and importlib.util.find_spec('torch') is not None
  )
  on_chip = jax.default_backend() in ('gpu', 'tpu')
  on_gpu = jax.default_backend() == 'gpu'
  torch_device = args.torch_device or ('cuda' if on_gpu else 'cpu')
  methods = args.methods or (['auto', 'pallas'] if on_chip else ['auto'])
  if 'auto' not in methods:
    methods = ['auto'] + methods  # The torch check and kdjax_vs_conv use it.
  family = adder_pallas.make_config(args.pallas_backend).family
  limit, limit_how = device_limit(jax.devices()[0])
  print(
    json.dumps(
      {
        'meta': {
          'batch': args.batch,
          'reps': args.reps,
          'torch_reps': args.torch_reps,
          'threads': args.threads,
          'cpu': platform.processor() or platform.machine(),
          'jax': jax.__version__,
          'jax_device': str(jax.devices()[0]),
          'device_kind': jax.devices()[0].device_kind,
          'methods': methods,
          'pallas_backend': family if 'pallas' in methods else None,
          'pallas_interpreted': (
            'pallas' in methods and jax.default_backend() != family
          ),
          'device_limit': {
            'adder_macs_per_s': limit,
            'how': limit_how,
          },
          'torch_baseline': have_torch,
          'torch_device': torch_device if have_torch else None,
          'timing': 'median seconds of reps (torch: torch_reps) after 1 warm-up; fwd_bwd = '
          'jit(value_and_grad) w.r.t. x and kernel; torch fwd under no_grad',
          'kdjax_vs_conv': 'time kdjax fwd_bwd / time conv fwd_bwd',
          'official_vs_kdjax': 'time torch_official fwd_bwd / time kdjax fwd_bwd',
          'xla_temp': 'compiled.memory_analysis().temp_size_in_bytes of the jitted fwd_bwd',
          'torch_difference_tensor': 'C_out*C*k*k*N*Ho*Wo*4',
          'torch_rss_peak_delta': 'torch subprocess peak RSS (on cuda: peak allocated GPU memory) '
          'during its first fwd_bwd minus before it (VmHWM reset via '
          '/proc/self/clear_refs)',
          'im2col_patches': 'N*Ho*Wo*k*k*C*4',
          'adder_adds_fwd': 'N*Ho*Wo*k*k*C*C_out*2',
          'adds_per_s': 'adder_adds_fwd / fwd time',
          'adder_macs_per_s': 'adder_adds_fwd / 2 / fwd time',
          'pct_of_limit': '100 * adder_macs_per_s / device_limit',
        }
      }
    ),
    flush=True,
  )

  for name in args.shapes:
    h, w, c, o, k, stride, pad = SHAPES[name]
    n = args.batch
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    pads = ((pad, pad), (pad, pad))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(k, k, c, o)).astype(
      np.float32
    )  # adder init N(0, 1)
    cotangent = rng.normal(size=(n, ho, wo, o)).astype(np.float32)

    def adder(x, kernel, method='auto'):
      options = {'pallas_backend': family} if method == 'pallas' else {}
      return adder_conv(x, kernel, stride, pads, method=method, **options)

    def conv(x, kernel):
      return lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        pads,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )

    times, memory, outputs = {}, {}, {}
    xj, kj, rj = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(cotangent)
    layers = [
      (label_of(m), functools.partial(adder, method=m)) for m in methods
    ]
    for label, layer in layers + [('conv', conv)]:
      loss = lambda x, kernel, r, layer=layer: jnp.sum(layer(x, kernel) * r)
      fwd_bwd = (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        .lower(xj, kj, rj)
        .compile()
      )
      fwd = jax.jit(layer).lower(xj, kj).compile()
      stats = fwd_bwd.memory_analysis()
      memory[f'{label}_xla_temp'] = int(stats.temp_size_in_bytes)
      memory[f'{label}_xla_args'] = int(stats.argument_size_in_bytes)
      jax.block_until_ready(fwd_bwd(xj, kj, rj))
      times[f'{label}_fwd_bwd'] = median_time(
        lambda: jax.block_until_ready(fwd_bwd(xj, kj, rj)), args.reps
      )
      outputs[label] = jax.block_until_ready(fwd(xj, kj))
      times[f'{label}_fwd'] = median_time(
        lambda: jax.block_until_ready(fwd(xj, kj)), args.reps
      )
      if label == 'kdjax':
        _, (kd_dx, kd_dk) = fwd_bwd(xj, kj, rj)

    record = {
      'shape': name,
      'input_nhwc': [n, h, w, c],
      'kernel_hwio': [k, k, c, o],
      'stride': stride,
      'padding': pad,
      'output_nhwc': [n, ho, wo, o],
    }
    check = None
    if have_torch:
      with tempfile.TemporaryDirectory() as tmp:
        inputs_path = os.path.join(tmp, 'inputs.npz')
        outputs_path = os.path.join(tmp, 'outputs.npz')
        np.savez(inputs_path, x=x, kernel=kernel, cotangent=cotangent)
        proc = subprocess.run(
          [
            sys.executable,
            REFERENCE_SCRIPT,
            '--inputs',
            inputs_path,
            '--outputs',
            outputs_path,
            '--stride',
            str(stride),
            '--padding',
            str(pad),
            '--reps',
            str(args.torch_reps),
            '--threads',
            str(args.threads),
            '--device',
            torch_device,
          ],
          capture_output=True,
          text=True,
          check=True,
        )
        torch_result = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = np.load(outputs_path)
        check = {}
        for label, ours, theirs in (
          ('y', outputs['kdjax'], ref['y']),
          ('dx', kd_dx, ref['dx']),
          ('dkernel', kd_dk, ref['dkernel']),
        ):
          diff = float(np.max(np.abs(np.asarray(ours) - theirs)))
          check[f'{label}_max_abs_diff'] = diff
          check[f'{label}_rel_diff'] = diff / max(
            float(np.max(np.abs(theirs))), 1e-30
          )
      times['torch_official_fwd_bwd'] = torch_result['fwd_bwd_s']
      times['torch_official_fwd'] = torch_result['fwd_s']
      memory['torch_rss_peak_delta'] = torch_result['rss_peak_delta_bytes']
      record['torch_rss_method'] = torch_result['rss_method']
    memory['torch_difference_tensor'] = o * c * k * k * n * ho * wo * 4
    memory['im2col_patches'] = n * ho * wo * k * k * c * 4
    adds = n * ho * wo * k * k * c * o * 2

    record['time_s'] = {key: round(value, 5) for key, value in times.items()}
    for label, _ in layers:
      record[f'{label}_vs_conv'] = round(
        times[f'{label}_fwd_bwd'] / times['conv_fwd_bwd'], 2
      )
    if have_torch:
      record['official_vs_kdjax'] = round(
        times['torch_official_fwd_bwd'] / times['kdjax_fwd_bwd'], 2
      )
      record['official_vs_kdjax_fwd'] = round(
        times['torch_official_fwd'] / times['kdjax_fwd'], 2
      )
    record['memory_bytes'] = memory
    record['adder_adds_fwd'] = adds
    record['adds_per_s'] = {
      **{
        f'{label}_fwd': round(adds / times[f'{label}_fwd'])
        for label, _ in layers
      },
      **(
        {'torch_official_fwd': round(adds / times['torch_official_fwd'])}
        if have_torch
        else {}
      ),
    }
    record['adder_macs_per_s'] = {
      key: value // 2 for key, value in record['adds_per_s'].items()
    }
    if limit:
      record['pct_of_limit'] = {
        key: round(100 * value / limit, 2)
        for key, value in record['adder_macs_per_s'].items()
      }
    # pallas outputs against auto's, so a fast but wrong kernel shows.
    for label, _ in layers[1:]:
      record[f'{label}_max_abs_diff_vs_kdjax'] = float(
        f'{float(jnp.max(jnp.abs(outputs[label] - outputs["kdjax"]))):.3g}'
      )
    if args.autotune and 'pallas' in methods and on_chip:
      record['autotune'] = autotune(
        jax,
        adder_conv,
        adder_pallas,
        family,
        xj,
        kj,
        rj,
        (stride, pads),
        args.autotune,
      )
    if check is not None:
      record['check_vs_torch'] = {
        key: float(f'{value:.3g}') for key, value in check.items()
      }
    print(json.dumps(record), flush=True)
  if args.model_step:
    for step_record in (model_step_record, pkkd_step_record):
      for record in step_record(jax, methods, family, args.batch, args.reps):
        print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
