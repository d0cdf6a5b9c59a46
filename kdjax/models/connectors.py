"""The learnable pieces of the distillation objectives, as small linen modules.

The caller applies them and passes their outputs to the pure losses
(``kdjax.losses``); they are discarded after training.

  FeatureConnector  OFD connector r_i and FitNets regressor: 1x1 conv + BN
                    (docs/ofd.md, docs/baselines.md).
  KernelTransform   PKKD rho_m: trainable 1x1 conv on the student kernel
                    features (docs/pkkd.md).
  BranchAdapters    EKD P_k: one linear map per branch onto its teacher's width
                    (docs/ekd.md).
  StageConnectors   one FeatureConnector or KernelTransform per distilled
                    stage, in one parameter subtree.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

# Official OFD connector init: weight ~ N(0, 2 / (k * k * C_out)), untruncated,
# which is He-normal with fan-out.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def identity_1x1_init(
  key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32
) -> Array:
  """Kernel of a 1x1 conv that copies channel c to channel c (rectangular eye)."""
  del key
  if tuple(shape[:-2]) != (1, 1):
    raise ValueError(
      f'identity_1x1_init: expects a (1, 1, C_in, C_out) kernel, got {shape}'
    )
  return jnp.eye(shape[-2], shape[-1], dtype=dtype).reshape(shape)


class FeatureConnector(nn.Module):
  """Student channels -> teacher channels: 1x1 conv (no bias) + BN.

  The OFD connector r_i (Heo et al., ICCV 2019; official
  ``build_feature_connector``) and the FitNets regressor (Romero et al., ICLR
  2015): He-normal fan-out init, BN scale 1, bias 0, PyTorch BN defaults.

  Attributes:
    features: teacher channel count.
    momentum, epsilon: BN hyper-parameters (flax momentum 0.9 = PyTorch 0.1).
    axis_name: BN cross-device axis under ``shard_map``; None under plain jit.
    dtype: computation dtype (None: from the input); parameters stay float32.
    kernel_init: initializer of the conv kernel.
  """

  features: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  # Under plain jit batch statistics are already global: no axis needed.
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = he_normal_fan_out

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """(B, H, W, C_s) -> (B, H, W, features); BN uses batch statistics when ``train``."""
    x = nn.Conv(
      self.features,
      (1, 1),
      use_bias=False,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )(x)
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.momentum,
      epsilon=self.epsilon,
      axis_name=self.axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='bn',
    )(x)


class KernelTransform(nn.Module):
  """PKKD's rho_m: a trainable 1x1 conv on the student's kernel features.

  Xu et al. (NeurIPS 2020); details our reconstruction (docs/pkkd.md).
  Default init: the identity with zero bias.

  Attributes:
    features: teacher channel count of the layer.
    use_bias: an affine map lets rho also shift the kernel values.
  """

  features: int
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  # Identity: at step 0 the feature loss compares the two kernel maps directly
  # (our choice).
  kernel_init: Initializer = identity_1x1_init

  @nn.compact
  def __call__(self, kernel_feats: Array) -> Array:
    """(B, H, W, C_s) -> (B, H, W, features)."""
    return nn.Conv(
      self.features,
      (1, 1),
      use_bias=self.use_bias,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )(kernel_feats)


class BranchAdapters(nn.Module):
  """EKD's P_k: a linear map per branch, onto the width of teacher k mod T (docs/ekd.md).

  Attributes:
    teacher_features: penultimate width of every teacher, in teacher order.
  """

  teacher_features: Sequence[int]
  use_bias: bool = True
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, branch_feats: Union[Array, Sequence[Array]]
  ) -> Tuple[Array, ...]:
    """(K, B, D) array or K arrays (B, D_k) -> K arrays (B, teacher_features[k mod T])."""
    num_teachers = len(self.teacher_features)
    return tuple(
      nn.Dense(
        self.teacher_features[k % num_teachers],
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f'adapter_{k}',
      )(branch_feats[k])
      for k in range(len(branch_feats))
    )


class StageConnectors(nn.Module):
  """One connector per distilled feature, so a method keeps them in one subtree.

  kind 'feature': ``FeatureConnector`` (1x1 conv + BN; OFD, FitNets), named
  connector0, connector1, ...; 'kernel': ``KernelTransform`` (PKKD's rho),
  named rho0, rho1, ...

  Attributes:
    kind: 'feature' or 'kernel'.
    features: output channels of each connector, in stage order.
  """

  kind: str
  features: Tuple[int, ...]

  @nn.compact
  def __call__(self, xs, train: bool):
    """xs: one feature per connector -> tuple of the connectors' outputs."""
    if self.kind == 'feature':
      return tuple(
        FeatureConnector(f, name=f'connector{i}')(x, train=train)
        for i, (f, x) in enumerate(zip(self.features, xs))
      )
    if self.kind == 'kernel':
      return tuple(
        KernelTransform(f, name=f'rho{i}')(x)
        for i, (f, x) in enumerate(zip(self.features, xs))
      )
    raise ValueError(
      f"StageConnectors: kind must be 'feature' or 'kernel', got {self.kind!r}"
    )
