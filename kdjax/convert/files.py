"""Reading PyTorch checkpoint files without running pickled code."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict, Mapping

import numpy as np

from kdjax.convert.convert import (
  ConversionError,
  Report,
  import_torch,
  print_note,
)

# Where training scripts put the state dict inside what they save: the usual
# {'state_dict': ...}, RepDistiller's {'model': ...}, {'net': ...}.
WRAPPER_KEYS = ('state_dict', 'model', 'net', 'model_state_dict')
DATA_PARALLEL_PREFIX = 'module.'

_SAFETENSORS_DTYPES = {
  'F64': '<f8',
  'F32': '<f4',
  'F16': '<f2',
  'I64': '<i8',
  'I32': '<i4',
  'I16': '<i2',
  'I8': 'i1',
  'U8': 'u1',
  'BOOL': '?',
}


def _is_safetensors(path: str) -> bool:
  """An 8-byte little-endian header size, then the JSON header."""
  with open(path, 'rb') as f:
    head = f.read(9)
  if len(head) < 9 or head[8:9] != b'{':
    return False
  return int.from_bytes(head[:8], 'little') < os.path.getsize(path)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a .safetensors file as NumPy arrays (bfloat16 as float32)."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    size = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8 : 8 + size])
    tensors = {}
    for name, info in header.items():
      if name == '__metadata__':
        continue
      begin, end = info['data_offsets']
      raw = data[8 + size + begin : 8 + size + end]
      shape = tuple(info['shape'])
      if info['dtype'] == 'BF16':
        bits = np.frombuffer(raw, '<u2').astype(np.uint32) << 16
        array = bits.view(np.float32)
      elif info['dtype'] in _SAFETENSORS_DTYPES:
        array = np.frombuffer(raw, _SAFETENSORS_DTYPES[info['dtype']])
      else:
        raise ValueError(f'tensor {name!r} has dtype {info["dtype"]}')
      tensors[name] = array.reshape(shape)
  except (ValueError, KeyError, TypeError) as e:
    raise ConversionError(
      f'{path} is not a readable .safetensors file ({e})'
    ) from None
  return tensors


def _numpy_scalar_globals():
  """What a pickled NumPy scalar (e.g. a saved best accuracy) needs: data only."""
  core = getattr(np, '_core', None) or np.core
  dtype_classes = [
    getattr(np.dtypes, name)
    for name in dir(np.dtypes)
    if name.endswith('DType') and isinstance(getattr(np.dtypes, name), type)
  ]
  return [core.multiarray.scalar, np.dtype] + dtype_classes


def _unpickling_reason(error: Exception) -> str:
  """The line of torch's message that names what was refused."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  for line in lines:
    if 'WeightsUnpickler error' in line:
      return line.split('Please use')[0].strip()
  return lines[0] if lines else type(error).__name__


def _torch_load(path: str) -> Any:
  torch = import_torch()
  try:
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise ConversionError(
      f'{path} does not load with torch.load(weights_only=True): it pickles '
      'more than tensors, NumPy scalars and plain containers (a whole '
      f'nn.Module, or objects of other classes: {_unpickling_reason(e)[:300]}'
      '). kdjax.convert never runs pickled code. In the PyTorch code that '
      'made it, save the weights alone, e.g. '
      "torch.save(model.state_dict(), 'weights.pth') (or "
      'safetensors.torch.save_file(model.state_dict(), '
      "'weights.safetensors')), and convert that file."
    ) from None
  except (RuntimeError, EOFError, OSError) as e:
    raise ConversionError(
      f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: '
      f'{str(e)[:300]})'
    ) from None


def _is_tensor(value: Any) -> bool:
  return hasattr(value, 'detach') or isinstance(value, np.ndarray)


def find_state_dict(
  loaded: Any, path: str, report: Report = print_note
) -> Dict[str, Any]:
  """The state dict in what a training script saved; removes 'module.'.

  Accepts a plain state dict, one under a key of ``WRAPPER_KEYS`` (nested
  wrappers too), and DataParallel's 'module.' prefix on every key.
  """
  where = []
  while isinstance(loaded, Mapping) and not (
    loaded and all(_is_tensor(v) for v in loaded.values())
  ):
    key = next(
      (
        k
        for k in WRAPPER_KEYS
        if k in loaded and isinstance(loaded[k], Mapping)
      ),
      None,
    )
    if key is None:
      summary = {str(k): type(v).__name__ for k, v in list(loaded.items())[:12]}
      raise ConversionError(
        f'{path} holds no state dict: expected a mapping of parameter names '
        f'to tensors, or one under {", ".join(map(repr, WRAPPER_KEYS))}; '
        f'found a mapping of {summary}'
      )
    where.append(key)
    loaded = loaded[key]
  if not isinstance(loaded, Mapping):
    raise ConversionError(
      f'{path} holds a {type(loaded).__name__}, not a state dict (a mapping '
      'of parameter names to tensors)'
    )
  state = {str(k): v for k, v in loaded.items()}
  if where:
    report(f'took the state dict under {"/".join(map(repr, where))}')
  if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
    state = {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    report(f"removed DataParallel's {DATA_PARALLEL_PREFIX!r} key prefix")
  return state


def load_state_dict_file(
  path: str, report: Report = print_note
) -> Dict[str, Any]:
  """Reads a .pth/.pt/.bin (torch.load, weights only) or .safetensors file.

  Returns:
    The state dict (name -> torch tensor or NumPy array), unwrapped and
    without a DataParallel prefix.

  Raises:
    ConversionError: a missing or unreadable file, one that needs pickled
      code (anything beyond tensors and plain containers), or one without a
      state dict.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f'checkpoint file {path!r} does not exist')
  if path.endswith('.safetensors') or _is_safetensors(path):
    loaded = read_safetensors(path)
  else:
    loaded = _torch_load(path)
  return find_state_dict(loaded, path, report)
