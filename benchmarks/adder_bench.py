r"""Speed and memory of kdjax's adder_conv at the ResNet-20 layer shapes.

For each shape (batch 64 by default) it times, as the median of --reps runs
(--torch-reps for the slow official baseline) after one excluded warm-up:
  kdjax           jit(value_and_grad(sum(adder_conv(x, F) * r))) w.r.t. x and F,
                  and jit(adder_conv) alone;
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
                              accumulate per adder MAC (SPEC section 1).
  adds_per_s.*                adder_adds_fwd / forward-only time.

Threads: --threads N pins this process (and the torch subprocess) to N CPUs
with sched_setaffinity before JAX starts, so XLA's thread pool sees N cores,
and calls torch.set_num_threads(N). The default N is every CPU this process may
use, for both, so neither side is handicapped.

  python benchmarks/adder_bench.py                      # all shapes
  python benchmarks/adder_bench.py --shapes s1_8x8x64_to64 --reps 5
"""

from __future__ import annotations

import argparse
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
    default=','.join(SHAPES),
    help=f'comma-separated subset of: {", ".join(SHAPES)}',
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
  unknown = [s for s in args.shapes.split(',') if s not in SHAPES]
  if unknown:
    parser.error(f'unknown shapes {unknown}; choose from {list(SHAPES)}')
  return args


def median_time(fn, reps):
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  args = parse_args(argv)
  # Before JAX starts, so that its thread pool is sized to the CPUs we allow.
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])

  import jax
  import jax.numpy as jnp
  from jax import lax

  from kdjax.ops import adder_conv

  have_torch = (
    not args.no_torch and importlib.util.find_spec('torch') is not None
  )
  on_gpu = jax.default_backend() == 'gpu'
  torch_device = args.torch_device or ('cuda' if on_gpu else 'cpu')
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
        }
      }
    ),
    flush=True,
  )

  for name in args.shapes.split(','):
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

    def adder(x, kernel):
      return adder_conv(x, kernel, stride, pads)

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
    for label, layer in (('kdjax', adder), ('conv', conv)):
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
    record['kdjax_vs_conv'] = round(
      times['kdjax_fwd_bwd'] / times['conv_fwd_bwd'], 2
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
      'kdjax_fwd': round(adds / times['kdjax_fwd']),
      **(
        {'torch_official_fwd': round(adds / times['torch_official_fwd'])}
        if have_torch
        else {}
      ),
    }
    if check is not None:
      record['check_vs_torch'] = {
        key: float(f'{value:.3g}') for key, value in check.items()
      }
    print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
