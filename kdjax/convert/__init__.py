"""PyTorch checkpoints as kdjax teachers or students, and kdjax ANNs for PyTorch.

  python -m kdjax.convert --format=torchvision --model=resnet152 \
      --checkpoint=resnet152.pth --num-classes=1000 --out=DIR

  variables = kdjax.convert.from_torch(state_dict, format='repdistiller',
                                       model='resnet32x4', num_classes=100)
  state_dict = kdjax.convert.to_torch(variables, format='addernet',
                                      model='resnet20')

Formats and their kdjax models are in ``SUPPORTED``; the layouts, the BN
semantics and the folds are described in docs/interop.md. PyTorch is needed
only to read .pth files and to build state dicts (``pip install torch``);
it is imported when used.
"""

from kdjax.convert.checkpoint import teacher_meta, write_teacher
from kdjax.convert.convert import ConversionError, from_torch, to_torch
from kdjax.convert.files import find_state_dict, load_state_dict_file
from kdjax.convert.layouts import CONV_TYPE, FORMATS, SUPPORTED

__all__ = [
  'CONV_TYPE',
  'ConversionError',
  'FORMATS',
  'SUPPORTED',
  'find_state_dict',
  'from_torch',
  'load_state_dict_file',
  'teacher_meta',
  'to_torch',
  'write_teacher',
]
