"""PyTorch state dicts <-> kdjax variables, strictly (docs/interop.md)."""

from __future__ import annotations

import collections
import functools
import re
import sys
from typing import (
  Any,
  Callable,
  Dict,
  List,
  Mapping,
  Optional,
  Sequence,
  Tuple,
)

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.convert import layouts
from kdjax.models import pyramidnet, registry

PyTree = Any
Report = Callable[[str], None]

# The BN counter PyTorch keeps for momentum=None; kdjax's BN has a fixed
# momentum and no counter, so it is read as optional and written as 0.
BATCHES_TRACKED = 'num_batches_tracked'
_LISTED = 25  # Entries shown per category of a mismatch.


class ConversionError(ValueError):
  """A checkpoint that does not convert; the message says why and what to do."""


def print_note(message: str) -> None:
  print(f'kdjax.convert: {message}', file=sys.stderr)


def _as_numpy(value: Any, key: str) -> np.ndarray:
  """A torch tensor or array-like as a NumPy array (bfloat16 via float32)."""
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch.
    value = value.detach().cpu()
    if not value.is_floating_point() or value.element_size() >= 4:
      return value.numpy()
    return value.float().numpy()
  try:
    return np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(
      f'state-dict entry {key!r} is a {type(value).__name__}, not a tensor'
    ) from e


@functools.lru_cache(maxsize=64)
def _abstract_variables(model: str, conv_type: str, num_classes: int):
  """Shapes of the kdjax variables of a zoo model (abstract, no compute)."""
  spec = registry.model_spec(model)
  module = registry.build_model(
    model, conv_type=conv_type, num_classes=num_classes
  )
  size = spec.default_image_size
  return jax.eval_shape(
    lambda: module.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False
    )
  )


def _lookup(tree: Mapping[str, Any], path: Tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _torch_shape(kind: str, leaf: str, flax_shape: Tuple[int, ...]):
  if kind in ('conv', 'adder'):  # HWIO -> OIHW
    kh, kw, fan_in, out = flax_shape
    return (out, fan_in, kh, kw)
  if kind == 'conv_dense':
    fan_in, out = flax_shape
    return (out, fan_in, 1, 1)
  if kind == 'linear' and leaf == 'kernel':
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def expected_tensors(
  layers: List[layouts.Layer], abstract: Mapping[str, Any]
) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
  """(required, optional) PyTorch keys -> shapes of a layout."""
  required, optional = {}, {}
  for layer in layers:
    for suffix, (collection, leaf) in layouts.tensor_suffixes(
      layer.kind
    ).items():
      flax_shape = _lookup(abstract[collection], layer.flax)[leaf].shape
      required[f'{layer.torch}.{suffix}'] = _torch_shape(
        layer.kind, leaf, flax_shape
      )
    if layer.kind == 'bn':
      optional[f'{layer.torch}.{BATCHES_TRACKED}'] = ()
    if layer.fold_into is not None:
      out = _lookup(abstract['params'], layer.flax)['kernel'].shape[-1]
      optional[f'{layer.torch}.bias'] = (out,)
  return required, optional


def head_prefixes(layers: List[layouts.Layer]) -> Tuple[str, ...]:
  """PyTorch prefixes (with '.') of the classifier and a BN over the logits."""
  heads = [x for x in layers if x.flax[0] in ('classifier', 'logit_bn')]
  heads.sort(key=lambda x: x.flax[0] != 'classifier')  # The classifier first.
  return tuple(f'{x.torch}.' for x in heads)


def _listing(title: str, entries: List[str]) -> str:
  shown = entries[:_LISTED]
  more = len(entries) - len(shown)
  tail = f'\n    ... and {more} more' if more else ''
  return (
    f'  {title} ({len(entries)}):\n'
    + '\n'.join(f'    {e}' for e in shown)
    + tail
  )


def _format_hints(format: str, keys: List[str]) -> List[str]:
  """What the key names say about the checkpoint's true format."""
  hints = []
  adder = any(k.endswith('.adder') for k in keys)
  if adder and format != 'addernet':
    hints.append(
      "it has AdderNet layers ('.adder' keys): use --format=addernet"
    )
  if format == 'addernet' and keys and not adder:
    hints.append(
      "it has no AdderNet layers ('.adder' keys): a multiplicative CNN, use "
      '--format=torchvision or --format=repdistiller'
    )
  if any(k.startswith('block1.layer.') for k in keys) and format not in (
    'repdistiller',
    'ofd',
  ):
    hints.append(
      'it is a Wide ResNet: use --format=ofd or --format=repdistiller'
    )
  return hints


_BLOCK_KEY = re.compile(r'(?:layer(\d+)\.(\d+)|block(\d+)\.layer\.(\d+))\.')


def _stage_depths(keys) -> Tuple[int, ...]:
  """Blocks per stage named by ResNet ('layer<i>.<j>.') or WRN keys."""
  depths: Dict[int, int] = {}
  for key in keys:
    match = _BLOCK_KEY.match(key)
    if match:
      stage = int(match.group(1) or match.group(3))
      block = int(match.group(2) or match.group(4))
      depths[stage] = max(depths.get(stage, 0), block + 1)
  return tuple(depths[s] for s in sorted(depths))


def _model_stage_depths(name: str) -> Tuple[int, ...]:
  """What ``_stage_depths`` reads from the keys of ``name``'s layouts."""
  model = registry.build_model(name, num_classes=1)
  family = type(model).__name__
  if family == 'WideResNet':
    return ((model.depth - 4) // 6,) * 3
  if family == 'PyramidNet':
    return (
      len(pyramidnet.block_widths(model.depth, model.alpha, model.bottleneck))
      // 3,
    ) * 3
  if family == 'ShuffleNetV2':  # A down block before each stage's blocks.
    return tuple(n + 1 for n in model.stage_sizes)
  return tuple(getattr(model, 'stage_sizes', ()))  # VGG, MobileNets: none


def _matching_models(
  format: str, num_classes: int, have: Dict[str, tuple]
) -> List[str]:
  """Models of ``format`` whose layout has exactly these keys and shapes.

  The classifier's output size is left free, so a wrong --num-classes does
  not hide the right model.
  """

  def without_classes(shapes, head):
    return {k: v[1:] if k.startswith(head) else v for k, v in shapes.items()}

  depths = _stage_depths(have)
  matches = []
  for name in layouts.SUPPORTED[format]:
    if _model_stage_depths(name) != depths:
      continue  # Cheap: the key names already rule it out.
    abstract = _abstract_variables(name, layouts.CONV_TYPE[format], num_classes)
    layers = layouts.layout(format, name, abstract['params'])
    required, optional = expected_tensors(layers, abstract)
    if not set(required) <= set(have) <= set(required) | set(optional):
      continue
    head = head_prefixes(layers)
    expected = without_classes({**required, **optional}, head)
    if all(expected[k] == v for k, v in without_classes(have, head).items()):
      matches.append(name)
  return matches


def _check_tensors(
  format: str,
  model: str,
  num_classes: int,
  have: Dict[str, tuple],
  required: Dict[str, tuple],
  optional: Dict[str, tuple],
  head: Tuple[str, ...] = ('fc.', 'bn2.'),
) -> None:
  """Raises one ConversionError listing every difference, or returns.

  ``head``: the key prefixes of the classifier (first) and a BN after it.
  """
  missing = sorted(set(required) - set(have))
  unexpected = sorted(set(have) - set(required) - set(optional))
  wrong = sorted(
    k
    for k in set(have) & (set(required) | set(optional))
    if tuple(have[k]) != {**required, **optional}[k]
  )
  if not (missing or unexpected or wrong):
    return
  expected = {**required, **optional}
  lines = [
    f'The checkpoint does not match --format={format} --model={model} '
    f'--num-classes={num_classes}; nothing was converted.'
  ]
  # The classifier ('fc') and, in AdderNet, the BN over its logits ('bn2').
  classifier = f'{head[0]}weight'
  head = {k for k in expected if k.startswith(head)}
  if (
    not missing
    and not unexpected
    and set(wrong) <= head
    and have[classifier][1:] == expected[classifier][1:]
  ):
    found = have[classifier][0]
    lines.append(
      f'Its classifier {classifier} has shape {tuple(have[classifier])}: it '
      f'was trained for {found} classes, not {num_classes}. Pass '
      f'--num-classes={found}.'
    )
  else:
    matches = _matching_models(format, num_classes, have)
    classes = (
      f' --num-classes={have[classifier][0]}' if classifier in have else ''
    )
    if matches:
      lines.append(
        f'It matches --format={format} '
        + ' or '.join(f'--model={m}{classes}' for m in matches)
        + '.'
      )
    lines += [f'Hint: {h}.' for h in _format_hints(format, sorted(have))]
  if missing:
    lines.append(
      _listing(
        'missing keys (expected shape)',
        [f'{k} {expected[k]}' for k in missing],
      )
    )
  if unexpected:
    lines.append(
      _listing(
        'unexpected keys (found shape)',
        [f'{k} {tuple(have[k])}' for k in unexpected],
      )
    )
  if wrong:
    lines.append(
      _listing(
        'shape mismatches (expected vs found)',
        [f'{k}: {expected[k]} vs {tuple(have[k])}' for k in wrong],
      )
    )
  raise ConversionError('\n'.join(lines))


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def from_torch(
  state_dict: Mapping[str, Any],
  *,
  format: str,
  model: str,
  num_classes: int,
  input_std: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
  report: Optional[Report] = print_note,
) -> Dict[str, PyTree]:
  """Converts a PyTorch state dict into the variables of a kdjax zoo model.

  Args:
    state_dict: PyTorch key -> tensor (torch tensors or NumPy arrays), as
      ``module.state_dict()`` returns it, with no wrapper or 'module.' prefix
      (``load_state_dict_file`` removes those).
    format: 'torchvision', 'addernet', 'repdistiller' or 'ofd'.
    model: kdjax zoo name (``layouts.SUPPORTED[format]`` lists the models).
    num_classes: classifier outputs.
    input_std: optional ``(trained, fed)`` per-channel stds of [0, 1] pixels:
      the input normalization the network was trained with, and the one kdjax
      will feed it. Input channel c of the stem kernel is multiplied by
      ``fed[c] / trained[c]``, so the stem sees the scale it was trained on,
      exactly (zero padding stays zero). A mean difference is not folded
      (docs/interop.md). None: the weights as they are.
    report: called with one line per layout difference folded exactly (e.g. a
      classifier bias absorbed by the BN after it); None for silence.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 NumPy arrays for
    ``kdjax.models.build_model(model, conv_type=CONV_TYPE[format],
    num_classes=num_classes)``. BN running statistics are copied as they are
    (PyTorch's running variance is the unbiased estimate; docs/interop.md).

  Raises:
    ConversionError: unsupported format/model, or any key or shape mismatch
      (one error listing missing keys, unexpected keys and shape mismatches).
  """
  try:
    name = layouts.check_supported(format, model)
  except layouts.LayoutError as e:
    raise ConversionError(str(e)) from None
  if isinstance(num_classes, bool) or not (
    isinstance(num_classes, (int, np.integer)) and num_classes > 0
  ):
    raise ConversionError(
      f'num_classes must be a positive int (the classifier outputs), got '
      f'{num_classes!r}'
    )
  conv_type = layouts.CONV_TYPE[format]
  arrays = {str(k): _as_numpy(v, str(k)) for k, v in state_dict.items()}
  abstract = _abstract_variables(name, conv_type, int(num_classes))
  layers = layouts.layout(format, name, abstract['params'])
  required, optional = expected_tensors(layers, abstract)
  _check_tensors(
    format,
    name,
    num_classes,
    {k: tuple(v.shape) for k, v in arrays.items()},
    required,
    optional,
    head_prefixes(layers),
  )

  variables: Dict[str, Any] = {'params': {}, 'batch_stats': {}}
  notes, folded = [], []
  for layer in layers:
    for suffix, (collection, leaf) in layouts.tensor_suffixes(
      layer.kind
    ).items():
      value = arrays[f'{layer.torch}.{suffix}'].astype(np.float32)
      if layer.kind in ('conv', 'adder'):
        value = value.transpose(2, 3, 1, 0)
      elif layer.kind == 'conv_dense':
        value = value[:, :, 0, 0].T
      elif layer.kind == 'linear' and leaf == 'kernel':
        value = value.T
      _set(
        variables[collection], layer.flax + (leaf,), np.ascontiguousarray(value)
      )
  for layer in layers:
    bias_key = f'{layer.torch}.bias'
    if layer.fold_into is not None and bias_key in arrays:
      # BN(z + b) with running mean m is BN(z) with running mean m - b; in
      # train mode the batch mean absorbs b. The same function either way.
      bn = next(x for x in layers if x.torch == layer.fold_into)
      stats = _lookup(variables['batch_stats'], bn.flax)
      stats['mean'] = stats['mean'] - arrays[bias_key].astype(np.float32)
      folded.append(
        f'{bias_key} {tuple(arrays[bias_key].shape)} into '
        f'{layer.fold_into}.running_mean'
      )
  if len(folded) > 2:
    folded = [
      f'the biases of {len(folded)} convs ({folded[0]}, ...) into the '
      'running means of the BNs after them'
    ]
  notes += [
    f'folded {f} (kdjax has no bias before a BN; the same function)'
    for f in folded
  ]
  if input_std is not None:
    notes += _rescale_stem(variables['params'], input_std)
  counters = [k for k in arrays if k.endswith(f'.{BATCHES_TRACKED}')]
  if counters:
    notes.append(
      f'ignored {len(counters)} BN {BATCHES_TRACKED} counters (used by '
      'PyTorch only with momentum=None; kdjax BN momentum is 0.9)'
    )
  off_dtype = sorted(
    {str(v.dtype) for v in arrays.values() if v.dtype != np.float32} - {'int64'}
  )
  if off_dtype:
    notes.append(f'cast {", ".join(off_dtype)} tensors to float32')
  _check_complete(variables, abstract, name)
  if report is not None:
    for note in notes:
      report(note)
  return variables


def _rescale_stem(params, input_std) -> List[str]:
  """Multiplies the stem kernel's input channels by fed / trained std."""
  trained, fed = (np.asarray(s, np.float32) for s in input_std)
  kernel = params['stem']['kernel']  # HWIO
  if trained.shape != (kernel.shape[2],) or fed.shape != trained.shape:
    raise ConversionError(
      f'input_std needs {kernel.shape[2]} stds each (one per input channel), '
      f'got {trained.shape[0]} and {fed.shape[0]}'
    )
  if np.all(trained == fed):
    return []
  params['stem']['kernel'] = kernel * (fed / trained)[None, None, :, None]
  return [
    'scaled the stem kernel by fed/trained input std '
    f'{np.round(fed / trained, 4).tolist()} per channel: kdjax feeds inputs '
    f'normalized with std {fed.tolist()}, the network was trained with '
    f'{trained.tolist()} (exact)'
  ]


def _check_complete(variables, abstract, name) -> None:
  """Every kdjax leaf was written once, with its shape (a layout bug otherwise)."""

  def shapes(tree):
    return {
      jax.tree_util.keystr(p): tuple(np.shape(x))
      for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }

  have = shapes({k: variables[k] for k in ('params', 'batch_stats')})
  want = shapes({k: abstract[k] for k in ('params', 'batch_stats')})
  if have != want:
    diff = sorted(set(have.items()) ^ set(want.items()))[:10]
    raise ConversionError(
      f'internal error: the layout of {name} does not cover the kdjax '
      f'variables exactly; differences: {diff}'
    )


def import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(
      'kdjax.convert needs PyTorch to read .pth/.pt checkpoints and to write '
      'state dicts; install it with `pip install torch` (the CPU build is '
      'enough). .safetensors files convert without it.'
    ) from None
  return torch


def to_torch(
  variables: Mapping[str, PyTree], *, format: str = 'addernet', model: str
) -> 'collections.OrderedDict[str, Any]':
  """Converts kdjax variables into a PyTorch state dict of ``format``.

  Args:
    variables: ``{'params': ..., 'batch_stats': ...}`` of ``model`` built with
      ``conv_type=CONV_TYPE[format]`` (for 'addernet': an ANN); the number of
      classes is read from the classifier.
    format: a format of ``layouts.FORMATS``; 'addernet' gives the layout of
      the official AdderNet resnet20.py / resnet50.py (which load it with
      ``strict=True``).
    model: kdjax zoo name.

  Returns:
    An OrderedDict of torch tensors, including each BN's num_batches_tracked
    (0) and, where the PyTorch layer has one, a zero classifier bias.

  Raises:
    ConversionError: unsupported format/model, or variables of another model.
  """
  torch = import_torch()
  try:
    name = layouts.check_supported(format, model)
  except layouts.LayoutError as e:
    raise ConversionError(str(e)) from None
  conv_type = layouts.CONV_TYPE[format]
  try:
    num_classes = int(np.shape(variables['params']['classifier']['kernel'])[1])
  except (KeyError, TypeError, IndexError):
    raise ConversionError(
      'variables must be {"params": ..., "batch_stats": ...} of a kdjax zoo '
      'model (params["classifier"]["kernel"] not found)'
    ) from None
  abstract = _abstract_variables(name, conv_type, num_classes)
  try:
    _check_complete(variables, abstract, name)
  except (ConversionError, KeyError) as e:
    raise ConversionError(
      f'variables are not those of kdjax {name} with conv_type={conv_type!r} '
      f'(as --format={format} needs): {e}'
    ) from None
  layers = layouts.layout(format, name, abstract['params'])
  state = collections.OrderedDict()
  for layer in layers:
    for suffix, (collection, leaf) in layouts.tensor_suffixes(
      layer.kind
    ).items():
      value = np.asarray(_lookup(variables[collection], layer.flax)[leaf])
      value = value.astype(np.float32)
      if layer.kind in ('conv', 'adder'):
        value = value.transpose(3, 2, 0, 1)
      elif layer.kind == 'conv_dense':
        value = value.T[:, :, None, None]
      elif layer.kind == 'linear' and leaf == 'kernel':
        value = value.T
      state[f'{layer.torch}.{suffix}'] = torch.from_numpy(
        np.ascontiguousarray(value)
      )
    if layer.export_bias:
      out = state[f'{layer.torch}.weight'].shape[0]
      state[f'{layer.torch}.bias'] = torch.zeros(out)
    if layer.kind == 'bn':
      state[f'{layer.torch}.{BATCHES_TRACKED}'] = torch.tensor(0)
  return state
