"""PyTorch port of the official AdderNet adder layer, as a speed and correctness baseline.

Written from the description of huawei-noah/AdderNet's adder.py (not copied):
  * X is unfolded with ``F.unfold`` into X_col of shape (C*k*k, N*Ho*Wo) and the
    filters are flattened to W_col of shape (C_out, C*k*k);
  * the forward broadcasts them into the difference tensor
    D = X_col[None] - W_col[:, :, None] of shape (C_out, C*k*k, N*Ho*Wo) and
    returns -|D|.sum(1);
  * a custom autograd Function recomputes D in the backward:
        grad_W_col = (D * grad_out[:, None]).sum(2)
        grad_X_col = (-D.clamp(-1, 1) * grad_out[:, None]).sum(0)
    and the backward of F.unfold (that is, F.fold) scatters grad_X_col back to
    pixels. The official backward also rescales grad_W_col by
    eta * sqrt(numel) / ||grad_W_col|| (adaptive LR); here that is optional
    (``adaptive_eta``) and off by default, because kdjax does it in the
    optimizer (kdjax.optim.scale_by_adder_lr), not in the op.

Run as a script it times one layer shape in a fresh process so that its peak
RSS can be measured in isolation; benchmarks/adder_bench.py drives it that way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


class AdderColumns(torch.autograd.Function):
  """-|X_col - W_col| summed over C*k*k, with the AdderNet backward."""

  @staticmethod
  def forward(ctx, x_col, w_col, adaptive_eta):
    ctx.save_for_backward(x_col, w_col)
    ctx.adaptive_eta = adaptive_eta
    difference = x_col.unsqueeze(0) - w_col.unsqueeze(
      2
    )  # (C_out, C*k*k, N*Ho*Wo)
    return -difference.abs().sum(1)

  @staticmethod
  def backward(ctx, grad_out):
    x_col, w_col = ctx.saved_tensors
    difference = x_col.unsqueeze(0) - w_col.unsqueeze(2)
    grad_w_col = (difference * grad_out.unsqueeze(1)).sum(2)
    if ctx.adaptive_eta is not None:
      norm = grad_w_col.norm(p=2).clamp(min=1e-12)
      grad_w_col = (
        grad_w_col / norm * (ctx.adaptive_eta * math.sqrt(grad_w_col.numel()))
      )
    grad_x_col = (-difference.clamp(-1, 1) * grad_out.unsqueeze(1)).sum(0)
    return grad_x_col, grad_w_col, None


def adder2d(
  x: torch.Tensor,
  weight: torch.Tensor,
  stride: int = 1,
  padding: int = 0,
  adaptive_eta: Optional[float] = None,
) -> torch.Tensor:
  """Official-algorithm adder convolution. x: (N, C, H, W), weight: (C_out, C, k, k)."""
  n, _, h, w = x.shape
  out_channels, _, kh, kw = weight.shape
  ho = (h + 2 * padding - kh) // stride + 1
  wo = (w + 2 * padding - kw) // stride + 1
  x_col = F.unfold(
    x, (kh, kw), padding=padding, stride=stride
  )  # (N, C*k*k, Ho*Wo)
  x_col = x_col.permute(1, 2, 0).reshape(x_col.shape[1], -1)  # (C*k*k, Ho*Wo*N)
  w_col = weight.reshape(out_channels, -1)
  out = AdderColumns.apply(x_col, w_col, adaptive_eta)  # (C_out, Ho*Wo*N)
  return out.reshape(out_channels, ho, wo, n).permute(3, 0, 1, 2).contiguous()


def difference_tensor_bytes(
  n, c, h, w, out_channels, k, stride, padding, itemsize=4
):
  """Size of the (C_out, C*k*k, N*Ho*Wo) difference tensor the official code materialises."""
  ho = (h + 2 * padding - k) // stride + 1
  wo = (w + 2 * padding - k) // stride + 1
  return out_channels * c * k * k * n * ho * wo * itemsize


def _proc_status_bytes(field: str) -> Optional[int]:
  try:
    with open('/proc/self/status') as status:
      for line in status:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024  # reported in kB
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets VmHWM (Linux >= 4.0), so the next peak is this layer's, not torch's import."""
  try:
    with open('/proc/self/clear_refs', 'w') as clear_refs:
      clear_refs.write('5')
    return True
  except OSError:
    return False


def _peak_rss_growth(fn) -> tuple:
  """Runs fn once; returns (its result, peak RSS minus RSS before, how it was measured)."""
  if _reset_peak_rss() and _proc_status_bytes('VmRSS') is not None:
    before = _proc_status_bytes('VmRSS')
    result = fn()
    return (
      result,
      _proc_status_bytes('VmHWM') - before,
      'VmHWM after reset - VmRSS before',
    )
  # Fallback: ru_maxrss only moves past the process's earlier peak (e.g. the
  # import), so small layers can read 0.
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  result = fn()
  after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return result, after - before, 'ru_maxrss growth (lower bound)'


def _median_time(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_cuda_growth(fn) -> tuple:
  """Runs fn once; returns (its result, peak allocated CUDA memory minus before, how)."""
  torch.cuda.synchronize()
  torch.cuda.reset_peak_memory_stats()
  before = torch.cuda.memory_allocated()
  result = fn()
  torch.cuda.synchronize()
  return (
    result,
    torch.cuda.max_memory_allocated() - before,
    'torch.cuda.max_memory_allocated after reset - memory_allocated before',
  )


def run_layer(
  inputs_path: str,
  outputs_path: str,
  stride: int,
  padding: int,
  reps: int,
  threads: int,
  device: str = 'cpu',
) -> dict:
  """Times and checks one layer; inputs/outputs in kdjax layouts (NHWC, HWIO)."""
  torch.set_num_threads(threads)
  data = np.load(inputs_path)
  to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
  x = to_torch(data['x'].transpose(0, 3, 1, 2))
  weight = to_torch(data['kernel'].transpose(3, 2, 0, 1))
  cotangent = to_torch(data['cotangent'].transpose(0, 3, 1, 2))
  x.requires_grad_(True)
  weight.requires_grad_(True)
  # CUDA kernels run asynchronously: a timed call must wait for them.
  sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)

  def forward_backward():
    x.grad = None
    weight.grad = None
    y = adder2d(x, weight, stride, padding)
    (y * cotangent).sum().backward()
    sync()
    return y

  def forward():
    with torch.no_grad():
      y = adder2d(x, weight, stride, padding)
    sync()
    return y

  # The first call (a warm-up, excluded from timing) also gives the peak memory
  # growth of one forward+backward over the inputs already resident.
  peak_growth = (
    _peak_cuda_growth if device.startswith('cuda') else _peak_rss_growth
  )
  y, rss_peak_delta, rss_method = peak_growth(forward_backward)
  to_numpy = lambda t: t.detach().cpu().numpy()
  np.savez(
    outputs_path,
    y=to_numpy(y).transpose(0, 2, 3, 1),
    dx=to_numpy(x.grad).transpose(0, 2, 3, 1),
    dkernel=to_numpy(weight.grad).transpose(2, 3, 1, 0),
  )
  del y
  fwd_bwd_s = _median_time(forward_backward, reps)
  # No separate forward warm-up: eager torch has nothing to compile, and the
  # allocator is already warm from the forward+backward runs.
  fwd_s = _median_time(forward, reps)
  return {
    'fwd_bwd_s': fwd_bwd_s,
    'fwd_s': fwd_s,
    'rss_peak_delta_bytes': rss_peak_delta,
    'rss_method': rss_method,
    'threads': torch.get_num_threads(),
    'torch': torch.__version__,
    'device': device,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--inputs',
    required=True,
    help='npz with x (NHWC), kernel (HWIO), cotangent',
  )
  parser.add_argument(
    '--outputs', required=True, help='npz to write y, dx, dkernel to'
  )
  parser.add_argument('--stride', type=int, required=True)
  parser.add_argument('--padding', type=int, required=True)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument(
    '--device', default='cpu', help='torch device: cpu or cuda'
  )
  args = parser.parse_args(argv)
  result = run_layer(
    args.inputs,
    args.outputs,
    args.stride,
    args.padding,
    args.reps,
    args.threads,
    args.device,
  )
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
