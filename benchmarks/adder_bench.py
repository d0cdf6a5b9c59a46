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

This file is the command (options, the device's limit, the meta line);
adder_bench_measure.py beside it measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys

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


def meta(args, jax, bench) -> dict:
  """The first JSON line: the run's settings and the fields' definitions."""
  return {
    'batch': args.batch,
    'reps': args.reps,
    'torch_reps': args.torch_reps,
    'threads': args.threads,
    'cpu': platform.processor() or platform.machine(),
    'jax': jax.__version__,
    'jax_device': str(jax.devices()[0]),
    'device_kind': jax.devices()[0].device_kind,
    'methods': bench.methods,
    'pallas_backend': bench.family if 'pallas' in bench.methods else None,
    'pallas_interpreted': (
      'pallas' in bench.methods and jax.default_backend() != bench.family
    ),
    'device_limit': {
      'adder_macs_per_s': bench.limit,
      'how': bench.limit_how,
    },
    'torch_baseline': bench.have_torch,
    'torch_device': bench.torch_device if bench.have_torch else None,
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


def main(argv=None):
  args = parse_args(argv)
  # Before JAX starts, so that its thread pool is sized to the CPUs we allow.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])

  import jax

  # The measurements, beside this script (its folder is sys.path[0]).
  import adder_bench_measure as measure
  from kdjax.ops import adder_pallas

  on_chip = jax.default_backend() in ('gpu', 'tpu')
  methods = args.methods or (['auto', 'pallas'] if on_chip else ['auto'])
  if 'auto' not in methods:
    methods = ['auto'] + methods  # The torch check and kdjax_vs_conv use it.
  limit, limit_how = device_limit(jax.devices()[0])
  bench = measure.Bench(
    methods=methods,
    family=adder_pallas.make_config(args.pallas_backend).family,
    limit=limit,
    limit_how=limit_how,
    have_torch=(
      not args.no_torch and importlib.util.find_spec('torch') is not None
    ),
    torch_device=args.torch_device
    or ('cuda' if jax.default_backend() == 'gpu' else 'cpu'),
    on_chip=on_chip,
  )
  print(json.dumps({'meta': meta(args, jax, bench)}), flush=True)
  for name in args.shapes:
    record = measure.shape_record(jax, name, SHAPES[name], args, bench)
    print(json.dumps(record), flush=True)
  if args.model_step:
    for step_record in (measure.model_step_record, measure.pkkd_step_record):
      for record in step_record(
        jax, methods, bench.family, args.batch, args.reps
      ):
        print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
