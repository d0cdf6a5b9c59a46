"""The measurements of adder_bench.py: one shape, the autotune, the model steps.

adder_bench.py (the command, its options and the device's limit) imports
this module once JAX is set up; its docstring defines every field written
here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_SCRIPT = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'reference_addernet_torch.py'
)


@dataclasses.dataclass
class Bench:
  """What every shape is measured with (from the options and the device)."""

  methods: List[str]
  family: str  # The pallas kernel family.
  limit: Optional[float]  # Peak adder-MACs/s of the device, None: unknown.
  limit_how: str
  have_torch: bool
  torch_device: str
  on_chip: bool


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

  The trainer's own step (kdjax.train.step.train_step) for the
  configs/pkkd.py:cifar10_resnet20 preset: CNN teacher and adder student
  co-trained, both updated, on random CIFAR-shaped arrays (no dataset needed).
  """
  import jax.numpy as jnp

  from kdjax import config_defaults
  from kdjax.ops import adder_method
  from kdjax.methods import build_method
  from kdjax.train import setup as train_setup
  from kdjax.train import step as train_step

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
  frozen = method.prepare_frozen([], arrays['image'][:2])  # Co-trained.
  params = jax.eval_shape(
    lambda: method.init(jax.random.key(0), arrays['image'])[0]
  )
  # 50,000 CIFAR images at this batch, for the LR schedule only.
  optimizers = train_setup.build_optimizers(
    config, method, params, steps_per_epoch=-(-50000 // batch)
  )
  state = train_setup.init_state(
    config, method, optimizers, {}, arrays['image']
  )
  step = functools.partial(train_step.train_step, method, optimizers)
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


def _inputs(shape, batch):
  """x, kernel and cotangent of one shape, and its output size and paddings."""
  h, w, c, o, k, stride, pad = shape
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, h, w, c)).astype(np.float32)
  kernel = rng.normal(size=(k, k, c, o)).astype(
    np.float32
  )  # adder init N(0, 1)
  cotangent = rng.normal(size=(batch, ho, wo, o)).astype(np.float32)
  return x, kernel, cotangent, (ho, wo), ((pad, pad), (pad, pad))


def _time_layers(jax, layers, xj, kj, rj, reps):
  """Times, XLA memory and forward outputs of each (label, layer), and
  kdjax's (method='auto') gradients."""
  import jax.numpy as jnp

  times, memory, outputs, grads = {}, {}, {}, None
  for label, layer in layers:
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
      lambda: jax.block_until_ready(fwd_bwd(xj, kj, rj)), reps
    )
    outputs[label] = jax.block_until_ready(fwd(xj, kj))
    times[f'{label}_fwd'] = median_time(
      lambda: jax.block_until_ready(fwd(xj, kj)), reps
    )
    if label == 'kdjax':
      _, grads = fwd_bwd(xj, kj, rj)
  return times, memory, outputs, grads


def torch_official(x, kernel, cotangent, stride, pad, args, torch_device):
  """The official algorithm's run in a fresh subprocess: (its result, the
  max abs and relative differences of y, dL/dx and dL/dF to ``ours``)."""
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
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = dict(np.load(outputs_path))
  return result, ref


def _differences(ours, ref) -> Dict[str, float]:
  check = {}
  for label in ('y', 'dx', 'dkernel'):
    theirs = ref[label]
    diff = float(np.max(np.abs(np.asarray(ours[label]) - theirs)))
    check[f'{label}_max_abs_diff'] = diff
    check[f'{label}_rel_diff'] = diff / max(
      float(np.max(np.abs(theirs))), 1e-30
    )
  return check


def _rates(record, times, memory, labels, adds, bench):
  """The time ratios, adds/s, adder-MACs/s and percent of the limit."""
  for label in labels:
    record[f'{label}_vs_conv'] = round(
      times[f'{label}_fwd_bwd'] / times['conv_fwd_bwd'], 2
    )
  if bench.have_torch:
    record['official_vs_kdjax'] = round(
      times['torch_official_fwd_bwd'] / times['kdjax_fwd_bwd'], 2
    )
    record['official_vs_kdjax_fwd'] = round(
      times['torch_official_fwd'] / times['kdjax_fwd'], 2
    )
  record['memory_bytes'] = memory
  record['adder_adds_fwd'] = adds
  record['adds_per_s'] = {
    **{f'{label}_fwd': round(adds / times[f'{label}_fwd']) for label in labels},
    **(
      {'torch_official_fwd': round(adds / times['torch_official_fwd'])}
      if bench.have_torch
      else {}
    ),
  }
  record['adder_macs_per_s'] = {
    key: value // 2 for key, value in record['adds_per_s'].items()
  }
  if bench.limit:
    record['pct_of_limit'] = {
      key: round(100 * value / bench.limit, 2)
      for key, value in record['adder_macs_per_s'].items()
    }


def shape_record(jax, name, shape, args, bench: Bench) -> Dict[str, Any]:
  """One shape's JSON line (adder_bench.py's docstring defines its fields)."""
  import jax.numpy as jnp
  from jax import lax

  from kdjax.ops import adder_conv

  h, w, c, o, k, stride, pad = shape
  n = args.batch
  x, kernel, cotangent, (ho, wo), pads = _inputs(shape, n)

  def adder(x, kernel, method='auto'):
    options = {'pallas_backend': bench.family} if method == 'pallas' else {}
    return adder_conv(x, kernel, stride, pads, method=method, **options)

  def conv(x, kernel):
    return lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      pads,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )

  xj, kj, rj = jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(cotangent)
  layers = [
    (label_of(m), functools.partial(adder, method=m)) for m in bench.methods
  ]
  times, memory, outputs, (kd_dx, kd_dk) = _time_layers(
    jax, layers + [('conv', conv)], xj, kj, rj, args.reps
  )
  record = {
    'shape': name,
    'input_nhwc': [n, h, w, c],
    'kernel_hwio': [k, k, c, o],
    'stride': stride,
    'padding': pad,
    'output_nhwc': [n, ho, wo, o],
  }
  check = None
  if bench.have_torch:
    torch_result, ref = torch_official(
      x, kernel, cotangent, stride, pad, args, bench.torch_device
    )
    ours = {'y': outputs['kdjax'], 'dx': kd_dx, 'dkernel': kd_dk}
    check = _differences(ours, ref)
    times['torch_official_fwd_bwd'] = torch_result['fwd_bwd_s']
    times['torch_official_fwd'] = torch_result['fwd_s']
    memory['torch_rss_peak_delta'] = torch_result['rss_peak_delta_bytes']
    record['torch_rss_method'] = torch_result['rss_method']
  memory['torch_difference_tensor'] = o * c * k * k * n * ho * wo * 4
  memory['im2col_patches'] = n * ho * wo * k * k * c * 4
  record['time_s'] = {key: round(value, 5) for key, value in times.items()}
  labels = [label for label, _ in layers]
  _rates(record, times, memory, labels, n * ho * wo * k * k * c * o * 2, bench)
  # pallas outputs against auto's, so a fast but wrong kernel shows.
  for label in labels[1:]:
    record[f'{label}_max_abs_diff_vs_kdjax'] = float(
      f'{float(jnp.max(jnp.abs(outputs[label] - outputs["kdjax"]))):.3g}'
    )
  if args.autotune and 'pallas' in bench.methods and bench.on_chip:
    from kdjax.ops import adder_pallas

    record['autotune'] = autotune(
      jax,
      adder_conv,
      adder_pallas,
      bench.family,
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
  return record
