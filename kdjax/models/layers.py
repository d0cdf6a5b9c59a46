"""Layers shared by the model zoo; every conv is a ``ConvOrAdder``."""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from kdjax.ops import (
  adder_conv,
  filter_sq_norms,
  normalize_padding,
  patch_sq_norms,
)

# ConvOrAdder is the one place where a model chooses between a multiplicative
# conv and an adder, so op counting, the adder-parameter mask of the AdderNet
# LR scaling and the PKKD kernel features all hook into this single module.
CONV_TYPES = ('conv', 'adder')

IntOrPair = Union[int, Sequence[int]]
Dtype = Any

# PyTorch reference nets use kaiming_normal_(mode='fan_out', nonlinearity='relu')
# with an untruncated normal; flax's fan_out for an HWIO kernel is kh*kw*O,
# the same as PyTorch's (also for grouped convs).
CONV_KERNEL_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# AdderNet initialises adder filters N(0, 1) (docs/adder.md).
ADDER_KERNEL_INIT = nn.initializers.normal(stddev=1.0)
# torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weight init.
DENSE_KERNEL_INIT = nn.initializers.variance_scaling(
  1.0 / 3.0, 'fan_in', 'uniform'
)

# PyTorch BatchNorm2d defaults: momentum 0.1 on the new value, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def check_conv_type(conv_type: str) -> None:
  if conv_type not in CONV_TYPES:
    raise ValueError(
      f'conv_type must be one of {list(CONV_TYPES)}, got {conv_type!r}'
    )


def as_pair(value: IntOrPair) -> Tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'expected an int or a pair of ints, got {value!r}')
  return value


def symmetric_padding(
  kernel_size: IntOrPair,
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """PyTorch-style padding (k - 1) // 2 on every side, whatever the stride."""
  # flax's 'SAME' pads more at the bottom/right at stride 2, which shifts every
  # downsampled map by a pixel relative to the reference nets.
  kh, kw = as_pair(kernel_size)
  return (((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2))


def grouped_adder_conv(
  x: jax.Array, kernel: jax.Array, strides: Tuple[int, int], pads, groups: int
) -> jax.Array:
  """Adder convolution with ``feature_group_count`` semantics (lax channel order).

  Input channel group g meets the kernel's output group g, as in
  ``lax.conv_general_dilated``.
  """
  if groups == 1:
    return adder_conv(x, kernel, strides, pads)
  batch, height, width, _ = x.shape
  kh, kw, group_in, out_features = kernel.shape
  # adder_conv has no groups, so the groups are vmapped.
  x_groups = jnp.moveaxis(
    x.reshape(batch, height, width, groups, group_in), 3, 0
  )
  kernel_groups = jnp.moveaxis(
    kernel.reshape(kh, kw, group_in, groups, out_features // groups), 3, 0
  )
  y_groups = jax.vmap(lambda xg, kg: adder_conv(xg, kg, strides, pads))(
    x_groups, kernel_groups
  )
  y = jnp.moveaxis(y_groups, 0, 3)
  return y.reshape(y.shape[:3] + (out_features,))


class ConvOrAdder(nn.Module):
  """A bias-free 2-D convolution that multiplies (``'conv'``) or adds (``'adder'``).

  'conv':  y = sum x * f, kernel He-normal (fan_out), as in the PyTorch nets.
  'adder': y = -sum |x - f| (kdjax.ops.adder_conv, AdderNet backward), kernel
           N(0, 1); callers follow it with BN (docs/adder.md).
  The parameter is named 'kernel' (HWIO) in both cases.

  Attributes:
    features, kernel_size, strides: output channels, int or (kh, kw), int or
      (sh, sw).
    padding: None for PyTorch-style symmetric padding (k - 1) // 2, an int or
      ((top, bottom), (left, right)); 'SAME' is asymmetric at stride 2.
    feature_group_count: channel groups (in_features for a depthwise conv).
    conv_type: 'conv' or 'adder'.
    dtype, precision: compute dtype (params in ``param_dtype``); lax precision
      of the multiplicative conv.
  """

  features: int
  kernel_size: IntOrPair = 3
  strides: IntOrPair = 1
  padding: Any = None
  feature_group_count: int = 1
  conv_type: str = 'conv'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, return_kernel_features: bool = False):
    """Applies the layer to NHWC ``x``.

    Args:
      x: (B, H, W, C) input.
      return_kernel_features: also return the PKKD kernel-feature ingredients.

    Returns:
      y (B, Ho, Wo, features), or with ``return_kernel_features`` the triple
      (y, patch_energy, filter_sq_norm): ||x_p||^2 of every input patch per
      channel group (B, Ho, Wo, groups) and ||f_o||^2 of every filter
      (features,), both float32.
    """
    check_conv_type(self.conv_type)
    kernel_size = as_pair(self.kernel_size)
    strides = as_pair(self.strides)
    padding = (
      symmetric_padding(kernel_size) if self.padding is None else self.padding
    )
    pads = normalize_padding(padding, x.shape[1:3], kernel_size, strides)
    in_features = x.shape[-1]
    groups = self.feature_group_count
    if in_features % groups or self.features % groups:
      raise ValueError(
        f'{self.path}: feature_group_count={groups} must divide the input '
        f'({in_features}) and output ({self.features}) channels'
      )
    init = ADDER_KERNEL_INIT if self.conv_type == 'adder' else CONV_KERNEL_INIT
    kernel = self.param(
      'kernel',
      init,
      kernel_size + (in_features // groups, self.features),
      self.param_dtype,
    )
    x_in, kernel_in = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.conv_type == 'adder':
      # The inputs carry the compute dtype's rounding, but the output stays
      # float32: adder outputs have a large mean and a small spread, and a
      # bfloat16 output (8 bits) would round away the spread the BN after
      # it normalises (ulp(3000) = 16 in bfloat16).
      y = grouped_adder_conv(
        x_in.astype(jnp.float32),
        kernel_in.astype(jnp.float32),
        strides,
        pads,
        groups,
      )
    else:
      y = lax.conv_general_dilated(
        x_in,
        kernel_in,
        strides,
        pads,
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=groups,
        precision=self.precision,
      )
    if not return_kernel_features:
      return y
    # Unused outputs cost nothing under jit (dead-code eliminated).
    # One copy of the kernel-feature math, shared with kdjax.losses.
    patch_energy = patch_sq_norms(
      x, kernel_size, strides, pads, feature_group_count=groups
    )
    filter_sq_norm = filter_sq_norms(kernel)
    return y, patch_energy, filter_sq_norm


def batch_norm(
  train: bool,
  dtype: Dtype = jnp.float32,
  name: Optional[str] = None,
  axis_name: Optional[str] = None,
  *,
  after_adder: bool = False,
) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; gamma = 1, beta = 0 at init.

  `after_adder`: use the two-pass variance E[(x - E[x])^2], for adder outputs.
  """
  # Adder outputs (-sum |x - f| over k*k*C terms) have a large mean and a small
  # spread: flax's one-pass E[x^2] - E[x]^2 cancels catastrophically there in
  # float32 (5-13x PyTorch's error was measured).
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    axis_name=axis_name,
    use_fast_variance=not after_adder,
    name=name,
  )


def conv_and_norm(module: nn.Module, train: bool):
  """(ConvOrAdder, batch_norm) factories with ``module``'s conv_type and dtype.

  The BNs use the two-pass variance in adder mode (``after_adder``).
  """
  conv = functools.partial(
    ConvOrAdder, conv_type=module.conv_type, dtype=module.dtype
  )
  norm = functools.partial(
    batch_norm, train, module.dtype, after_adder=module.conv_type == 'adder'
  )
  return conv, norm


def bn_scale_bias(bn: nn.BatchNorm) -> Tuple[jax.Array, jax.Array]:
  """The (scale, bias) params of a BatchNorm that has already been called."""
  params = bn.variables['params']
  return params['scale'], params['bias']


def stage_features(
  preact: jax.Array,
  bn: nn.BatchNorm,
  raw: jax.Array,
  patch_energy: jax.Array,
  filter_sq_norm: jax.Array,
) -> Dict[str, jax.Array]:
  """One entry of ``features['stages']`` (contract in kdjax/models/__init__.py)."""
  scale, bias = bn_scale_bias(bn)
  return dict(
    preact=preact,
    bn_scale=scale,
    bn_bias=bias,
    raw=raw,
    patch_energy=patch_energy,
    filter_sq_norm=filter_sq_norm,
  )


def stages_after(
  entries: Sequence[Tuple[jax.Array, jax.Array, jax.Array]],
  last_blocks: Sequence[Dict[str, jax.Array]],
) -> Tuple[Dict[str, jax.Array], ...]:
  """``features['stages']`` of pre-activation nets (WRN, PyramidNet).

  Their pre-ReLU point of a stage is a BN after it: ``entries`` holds one
  (preact, bn_scale, bn_bias) per stage; the PKKD entries come from the
  stage's last block (``last_blocks``: dicts with 'raw', 'patch_energy',
  'filter_sq_norm').
  """
  return tuple(
    dict(
      preact=preact,
      bn_scale=scale,
      bn_bias=bias,
      raw=last['raw'],
      patch_energy=last['patch_energy'],
      filter_sq_norm=last['filter_sq_norm'],
    )
    for (preact, scale, bias), last in zip(entries, last_blocks, strict=True)
  )


def classify(
  pooled: jax.Array,
  num_classes: int,
  conv_type: str,
  train: bool,
  dtype: Dtype = jnp.float32,
) -> jax.Array:
  """Classifier head, created in the calling module's scope.

  Always multiplicative. In adder mode (AdderNet): no bias, a BN over the
  logits ('logit_bn').
  """
  adder = conv_type == 'adder'
  logits = nn.Dense(
    num_classes,
    use_bias=not adder,
    kernel_init=DENSE_KERNEL_INIT,
    dtype=dtype,
    name='classifier',
  )(pooled)
  if adder:  # The logit BN's beta plays the bias's role.
    logits = batch_norm(train, dtype, name='logit_bn')(logits)
  return logits


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


def check_images(images: jax.Array, total_stride: int, model_name: str) -> None:
  """Raises ValueError unless images are NHWC with H, W >= total_stride."""
  # With symmetric padding every stride-2 layer maps H to ceil(H / 2), so the
  # arithmetic never fails; but below total_stride pixels the last stride-2
  # layers only see padding-dominated 1x1 maps.
  if images.ndim != 4:
    raise ValueError(
      f'{model_name}: expected NHWC images, got shape {images.shape}'
    )
  height, width = images.shape[1:3]
  if min(height, width) < total_stride:
    raise ValueError(
      f'{model_name}: image size {height}x{width} is too small; the model downsamples by '
      f'{total_stride}, so height and width must be at least {total_stride}'
    )


class BasicBlock(nn.Module):
  """Post-activation ResNet basic block (CIFAR ResNets, ResNet-18/34, EKD branches).

  conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut: identity, or a 1x1
  conv/adder with the stride + BN when the shape changes. Returns the pre-ReLU
  sum and its stage features; the caller applies the ReLU.
  """

  features: int
  strides: int = 1
  conv_type: str = 'conv'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv = functools.partial(
      ConvOrAdder, conv_type=self.conv_type, dtype=self.dtype
    )
    norm = functools.partial(
      batch_norm, train, self.dtype, after_adder=self.conv_type == 'adder'
    )
    y = conv(self.features, 3, self.strides, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    raw, patch_energy, filter_sq_norm = conv(self.features, 3, name='conv2')(
      y, return_kernel_features=True
    )
    bn2 = norm(name='bn2')
    y = bn2(raw)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.strides, name='shortcut')(x)
      shortcut = norm(name='shortcut_bn')(shortcut)
    # Pre-ReLU for OFD: the block-ending ReLU moves to the start of the next
    # block, the same function.
    preact = y + shortcut
    return preact, stage_features(
      preact, bn2, raw, patch_energy, filter_sq_norm
    )


def adder_kernel_mask(
  model: nn.Module, images_shape: Sequence[int], **call_kwargs
) -> Any:
  """A params-shaped pytree of bools: True for the kernels of adder layers.

  The mask of the AdderNet adaptive learning-rate scaling. Found by tracing
  the model (no compute), not by names.

  Args:
    model: a zoo model (or any module built from ConvOrAdder).
    images_shape: (B, H, W, C) of a representative input.
    **call_kwargs: extra keyword arguments for ``model.init`` (default train=False).
  """
  adder_paths = set()

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (
      isinstance(module, ConvOrAdder)
      and context.method_name == '__call__'
      and module.conv_type == 'adder'
    ):
      adder_paths.add(tuple(module.path))
    return next_fun(*args, **kwargs)

  call_kwargs.setdefault('train', False)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(
      lambda: model.init(
        jax.random.key(0), jnp.zeros(images_shape, jnp.float32), **call_kwargs
      )
    )

  def is_adder_kernel(path, _):
    names = tuple(getattr(k, 'key', k) for k in path)
    return names[-1] == 'kernel' and names[:-1] in adder_paths

  return jax.tree_util.tree_map_with_path(is_adder_kernel, variables['params'])
