"""Multiplication / addition counts and energy of the zoo models, per image.

    python -m kdjax.opcount --model=resnet50 --conv=adder --image-size=224 \
        --num-classes=1000 --stride-in-1x1

How it counts: the model is traced once with ``jax.eval_shape`` (no compute)
under ``flax.linen.intercept_methods``; every ``ConvOrAdder``, ``nn.Conv`` and
``nn.Dense`` call is recorded with its real input and output shapes. So the
count is of what the code builds, never a table.

Per layer, with output (Ho, Wo, Cout), kernel (kh, kw) and Cin / groups input
channels per filter, ``MACs = Ho * Wo * Cout * kh * kw * Cin / groups`` (a dense
layer: Din * Dout). Convention (AdderNet; docs/adder.md):
  conv or dense MAC: 1 multiplication + 1 addition (the accumulation; the n-th
    addition of a length-n dot product stands for the bias, so biases are not
    counted separately);
  adder MAC |x - f| accumulated: 2 additions (subtract, accumulate), 0 mul.
Not counted: BatchNorm (foldable into the neighbouring layers at inference),
ReLU, pooling, residual additions, padding. The PKKD patch-energy conv is a
training-time feature, not part of the network, and is not counted either.

Energy: 45 nm, 32-bit float, mul 3.7 pJ, add 0.9 pJ (Horowitz 2014, as used by
AdderNet): ``energy_pj = 3.7 * multiplications + 0.9 * additions``.

Worked numbers (this module's output):
  ResNet-20 CIFAR (32x32, 100 classes): 40.37M MACs in the 18 3x3 convs of the
    blocks and the two 1x1 projection shortcuts, + 0.44M in the stem and 6.4K in
    the classifier (40.82M in all). Adder mode: the stem and classifier stay
    multiplicative (0.45M mul), the rest gives 2 x 40.37M = 80.74M additions,
    81.19M in all (AdderNet: ~82M).
  ResNet-50 at 224, 1000 classes. The stem conv7x7 is 118.0M MACs and the
    classifier 2.05M, so ANN mode has 0.12G multiplications. The rest depends on
    where a bottleneck downsamples:
      --stride-in-1x1 (ResNet v1, the papers' "3.9G"): 3.738G adder MACs ->
        7.476G + 0.120G = 7.60G additions; CNN: 3.86G MACs.
      default (torchvision, official AdderNet code): 3.969G adder MACs ->
        7.938G + 0.120G = 8.06G additions; CNN: 4.09G MACs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any, Dict, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import models
from kdjax.models.layers import ConvOrAdder, as_pair

MUL_ENERGY_PJ = 3.7
ADD_ENERGY_PJ = 0.9

CONVENTION = (
  'conv/dense MAC = 1 multiplication + 1 addition (bias included); adder MAC '
  '|x - f| = 2 additions; not counted: BatchNorm, ReLU, pooling, residual additions, '
  'padding, the PKKD patch-energy feature'
)


@dataclasses.dataclass(frozen=True)
class LayerRecord:
  """One traced conv/adder/dense call."""

  path: str
  kind: str  # 'conv', 'adder' or 'dense'
  input_shape: tuple
  output_shape: tuple
  kernel_shape: tuple  # (kh, kw, Cin / groups, Cout), or (Din, Dout) for dense
  macs_per_image: int


def _conv_record(path, kind, x, y, kernel_size, groups) -> LayerRecord:
  kh, kw = kernel_size
  cin_per_group = x.shape[-1] // groups
  cout = y.shape[-1]
  macs = math.prod(y.shape[1:3]) * cout * kh * kw * cin_per_group
  return LayerRecord(
    path,
    kind,
    tuple(x.shape),
    tuple(y.shape),
    (kh, kw, cin_per_group, cout),
    int(macs),
  )


def trace_layers(
  model: nn.Module, input_shape: Sequence[int], **call_kwargs
) -> tuple:
  """Records every conv/adder/dense call of ``model`` on one image.

  Args:
    model: an unbound linen module.
    input_shape: (H, W, C) or (1, H, W, C).
    **call_kwargs: keyword arguments of the model call (default train=False).

  Returns:
    (records, params_shapes): the list of LayerRecord in call order and the
    abstract params tree.
  """
  input_shape = tuple(input_shape)
  if len(input_shape) == 3:
    input_shape = (1,) + input_shape
  if len(input_shape) != 4 or input_shape[0] != 1:
    raise ValueError(
      f'input_shape must be (H, W, C) or (1, H, W, C), got {input_shape}'
    )
  records: List[LayerRecord] = []

  def interceptor(next_fun, args, kwargs, context):
    outputs = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return outputs
    path = '/'.join(module.path)
    if isinstance(module, ConvOrAdder):
      y = outputs[0] if isinstance(outputs, tuple) else outputs
      records.append(
        _conv_record(
          path,
          module.conv_type,
          args[0],
          y,
          as_pair(module.kernel_size),
          module.feature_group_count,
        )
      )
    elif isinstance(module, nn.Conv):
      records.append(
        _conv_record(
          path,
          'conv',
          args[0],
          outputs,
          tuple(module.kernel_size),
          module.feature_group_count,
        )
      )
    elif isinstance(module, nn.Dense):
      x = args[0]
      macs = math.prod(x.shape[1:]) * module.features
      records.append(
        LayerRecord(
          path,
          'dense',
          tuple(x.shape),
          tuple(outputs.shape),
          (x.shape[-1], module.features),
          int(macs),
        )
      )
    return outputs

  call_kwargs.setdefault('train', False)
  images = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, **call_kwargs), images
    )
  return records, variables['params']


def count_ops(
  model: nn.Module, input_shape: Sequence[int], **call_kwargs
) -> Dict[str, Any]:
  """Counts multiplications, additions, MACs by kind, parameters and energy per image.

  Args:
    model: an unbound linen module, typically from ``kdjax.models.build_model``.
    input_shape: (H, W, C) or (1, H, W, C).
    **call_kwargs: keyword arguments of the model call (default train=False).

  Returns:
    A JSON-serialisable dict; see the module docstring for the convention.
  """
  records, params = trace_layers(model, input_shape, **call_kwargs)
  macs = {'conv': 0, 'dense': 0, 'adder': 0}
  layers = {'conv': 0, 'dense': 0, 'adder': 0}
  for record in records:
    macs[record.kind] += record.macs_per_image
    layers[record.kind] += 1
  multiplications = macs['conv'] + macs['dense']
  additions = macs['conv'] + macs['dense'] + 2 * macs['adder']
  energy_pj = MUL_ENERGY_PJ * multiplications + ADD_ENERGY_PJ * additions
  return {
    'model': type(model).__name__,
    'layout': getattr(model, 'layout', type(model).__name__),
    'conv_type': getattr(model, 'conv_type', None),
    'input_shape': list(input_shape[-3:]),
    'multiplications': multiplications,
    'additions': additions,
    'multiply_accumulates': dict(macs, total=sum(macs.values())),
    'layers': layers,
    'parameters': int(
      sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    ),
    'energy_pj': energy_pj,
    'energy_mj': energy_pj * 1e-9,
    'energy_per_op_pj': {
      'mul': MUL_ENERGY_PJ,
      'add': ADD_ENERGY_PJ,
      'note': '45 nm, 32-bit float',
    },
    'convention': CONVENTION,
  }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(
    prog='python -m kdjax.opcount', description=__doc__.split('\n')[0]
  )
  parser.add_argument(
    '--model', required=True, help=f'one of {models.available_models()}'
  )
  parser.add_argument('--conv', default='conv', choices=list(models.CONV_TYPES))
  parser.add_argument(
    '--image-size',
    type=int,
    default=None,
    help='input height and width (default: 32 CIFAR models, 224 ImageNet ones)',
  )
  parser.add_argument('--channels', type=int, default=3)
  parser.add_argument(
    '--num-classes',
    type=int,
    default=None,
    help='default: 100 CIFAR models, 1000 ImageNet ones, 10 ekd_student',
  )
  parser.add_argument(
    '--stride-in-1x1',
    action='store_true',
    help='ImageNet bottleneck ResNets: ResNet v1 layout (stride in the first '
    '1x1)',
  )
  args = parser.parse_args(argv)

  try:
    spec = models.model_spec(args.model)
    image_size = args.image_size or spec.default_image_size
    num_classes = args.num_classes or spec.default_num_classes
    kwargs = {'stride_in_1x1': True} if args.stride_in_1x1 else {}
    models.check_input_size(args.model, image_size, **kwargs)
    model = models.build_model(
      args.model, conv_type=args.conv, num_classes=num_classes, **kwargs
    )
  except ValueError as e:
    parser.error(str(e))
  result = count_ops(model, (image_size, image_size, args.channels))
  result = dict(
    model=args.model,
    num_classes=num_classes,
    **{k: v for k, v in result.items() if k != 'model'},
  )
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
