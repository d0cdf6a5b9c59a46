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
  LinearEmbed       CC's embeddings (RepDistiller LinearEmbed).
  NormalizedEmbed   CRD's embeddings: linear + L2 normalisation (RepDistiller
                    crd/criterion.py Embed).
  VIDRegressor      VID's regressor and per-channel variance.
  ReviewFusion      ReviewKD's attention-based fusion (AttentionFusion blocks).
  ABConnectors      AB's per-stage connectors (RepDistiller ``Connector``).
  Paraphraser       FT's teacher-side autoencoder (RepDistiller ``Paraphraser``).
  Translator        FT's student-side encoder (RepDistiller ``Translator``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.layers import DENSE_KERNEL_INIT

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
    in_hw, out_hw: the student's and the teacher's spatial size, where they
      differ (FitNets between architectures). The conv then resamples as
      RepDistiller's ``ConvReg`` does: 3x3 stride 2 when the student's map is
      twice the teacher's, a 4x4 stride-2 transposed conv when it is half,
      a VALID conv of kernel 1 + (in - out) when it is larger otherwise.
  """

  features: int
  in_hw: Optional[Tuple[int, int]] = None
  out_hw: Optional[Tuple[int, int]] = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  # Under plain jit batch statistics are already global: no axis needed.
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = he_normal_fan_out

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """(B, H, W, C_s) -> (B, H', W', features); BN uses batch statistics when ``train``."""
    conv = dict(
      use_bias=False,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='conv',
    )
    (ih, iw), (oh, ow) = self.in_hw or (0, 0), self.out_hw or (0, 0)
    if (ih, iw) == (oh, ow):
      x = nn.Conv(self.features, (1, 1), **conv)(x)
    elif (ih, iw) == (2 * oh, 2 * ow):
      x = nn.Conv(self.features, (3, 3), 2, ((1, 1), (1, 1)), **conv)(x)
    elif (2 * ih, 2 * iw) == (oh, ow):
      x = nn.ConvTranspose(self.features, (4, 4), (2, 2), 'SAME', **conv)(x)
    elif ih >= oh and iw >= ow:
      x = nn.Conv(
        self.features, (1 + ih - oh, 1 + iw - ow), 1, 'VALID', **conv
      )(x)
    else:
      raise ValueError(
        f'FeatureConnector: cannot map a {ih}x{iw} student map onto a '
        f"{oh}x{ow} teacher map (RepDistiller's ConvReg cannot either)."
      )
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
  # 'feature' only: the teacher's spatial size per connector, where the
  # student's may differ (FeatureConnector's out_hw); () keeps every size.
  out_hws: Tuple[Tuple[int, int], ...] = ()

  @nn.compact
  def __call__(self, xs, train: bool):
    """xs: one feature per connector -> tuple of the connectors' outputs."""
    if self.kind == 'feature':
      out_hws = self.out_hws or tuple(tuple(x.shape[1:3]) for x in xs)
      return tuple(
        FeatureConnector(
          f, tuple(x.shape[1:3]), tuple(hw), name=f'connector{i}'
        )(x, train=train)
        for i, (f, x, hw) in enumerate(zip(self.features, xs, out_hws))
      )
    if self.kind == 'kernel':
      return tuple(
        KernelTransform(f, name=f'rho{i}')(x)
        for i, (f, x) in enumerate(zip(self.features, xs))
      )
    raise ValueError(
      f"StageConnectors: kind must be 'feature' or 'kernel', got {self.kind!r}"
    )


# -- baselines of issue 25 (kdjax.methods.distill) ---------------------------


class LinearEmbed(nn.Module):
  """CC's embedding: flatten, then a linear map (RepDistiller ``LinearEmbed``).

  Attributes:
    features: embedding width (RepDistiller's --feat_dim, 128).
  """

  features: int = 128
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, ...) -> (B, features)."""
    return nn.Dense(
      self.features,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='linear',
    )(x.reshape(x.shape[0], -1))


class NormalizedEmbed(nn.Module):
  """CRD's embedding head: flatten, linear, L2-normalise each row.

  RepDistiller crd/criterion.py ``Embed`` (``nn.Linear`` then ``Normalize(2)``):
  the kernel has torch's Linear init U(+-1 / sqrt(fan_in)), the bias is zero
  (as kdjax's classifiers). The norm is floored at 1e-12 (torch's
  ``F.normalize`` eps; RepDistiller divides by the bare norm), so a zero row
  keeps a finite gradient; any other row is unchanged.

  Attributes:
    features: embedding width (RepDistiller's --feat_dim, 128).
  """

  features: int = 128
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(B, ...) -> (B, features), unit L2 norm per row, float32."""
    x = nn.Dense(
      self.features,
      kernel_init=DENSE_KERNEL_INIT,
      param_dtype=self.param_dtype,
      name='linear',
    )(x.reshape(x.shape[0], -1).astype(jnp.float32))
    # max before sqrt: the gradient of sqrt at 0 would be NaN.
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared, 1e-24))


def _softplus_inverse_init(value: float):
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)

  return init


class VIDRegressor(nn.Module):
  """VID's regressor and per-channel variance (RepDistiller ``VIDLoss``).

  Three bias-free 1x1 convs with ReLUs between (C_s -> mid -> mid -> C_t) give
  the predicted mean mu; ``log_scale`` (C_t,) is the pre-softplus variance,
  initialised to log(exp(init_pred_var - eps) - 1) as in RepDistiller.

  Attributes:
    features: teacher channels C_t.
    mid_features: hidden channels (RepDistiller: C_t).
    init_pred_var, eps: the initial variance and its floor.
  """

  features: int
  mid_features: int
  init_pred_var: float = 5.0
  eps: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """(B, H, W, C_s) -> (mu (B, H, W, features), log_scale (features,))."""
    widths = (self.mid_features, self.mid_features, self.features)
    for i, width in enumerate(widths):
      if i:
        x = nn.relu(x)
      x = nn.Conv(
        width,
        (1, 1),
        use_bias=False,
        param_dtype=self.param_dtype,
        name=f'conv{i}',
      )(x)
    start = math.log(math.expm1(self.init_pred_var - self.eps))
    log_scale = self.param(
      'log_scale',
      _softplus_inverse_init(start),
      (self.features,),
      self.param_dtype,
    )
    return x, log_scale


def resize_nearest(x: Array, size: int) -> Array:
  """torch's F.interpolate(mode='nearest') of NHWC to size x size.

  Output row i reads input row floor(i * H / size), as in PyTorch.
  """
  h, w = x.shape[1], x.shape[2]
  rows = (jnp.arange(size) * h) // size
  cols = (jnp.arange(size) * w) // size
  return x[:, rows][:, :, cols]


# ReviewKD's ABF convs: kaiming_uniform_(a=1), i.e. U(+-sqrt(3 / fan_in)).
_kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


class AttentionFusion(nn.Module):
  """ReviewKD's ABF block (mdistiller ``ABF``): 1x1 conv + BN, an attention
  fusion with the deeper level's residual, then 3x3 conv + BN.

  Attributes:
    mid_features, features: the residual's and the output's channels.
    fuse: False for the deepest level (no residual to fuse).
  """

  mid_features: int
  features: int
  fuse: bool

  @nn.compact
  def __call__(self, x, residual, out_size: int, *, train: bool):
    """x (B, H, W, C_s), residual (B, h, w, mid) or None -> (out, new residual)."""

    def bn(name):
      return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name
      )

    x = nn.Conv(
      self.mid_features,
      (1, 1),
      use_bias=False,
      kernel_init=_kaiming_uniform_a1,
      name='conv1',
    )(x)
    x = bn('bn1')(x)
    if self.fuse:
      residual = resize_nearest(residual, x.shape[1])
      z = jnp.concatenate([x, residual], axis=-1)
      z = nn.sigmoid(nn.Conv(2, (1, 1), name='att_conv')(z))
      x = x * z[..., 0:1] + residual * z[..., 1:2]
    if x.shape[1] != out_size:
      x = resize_nearest(x, out_size)
    out = nn.Conv(
      self.features,
      (3, 3),
      padding=1,
      use_bias=False,
      kernel_init=_kaiming_uniform_a1,
      name='conv2',
    )(x)
    return bn('bn2')(out), x


class ReviewFusion(nn.Module):
  """ReviewKD's review path: one ``AttentionFusion`` per level, deepest first.

  Levels run shallow to deep, the last one the pooled feature as a 1x1 map
  (mdistiller ``ReviewKD``); each level's output is compared with the
  teacher's feature of the same level.

  Attributes:
    features: teacher channels per level.
    out_sizes: teacher spatial size per level.
    mid_features: residual width, min(512, the student's deepest channels).
  """

  features: Tuple[int, ...]
  out_sizes: Tuple[int, ...]
  mid_features: int

  @nn.compact
  def __call__(self, xs, *, train: bool):
    """xs: student features shallow to deep -> fused outputs, same order."""
    n = len(xs)
    outs = [None] * n
    residual = None
    for i in reversed(range(n)):
      outs[i], residual = AttentionFusion(
        self.mid_features,
        self.features[i],
        fuse=i < n - 1,
        name=f'abf{i}',
      )(xs[i], residual, self.out_sizes[i], train=train)
    return tuple(outs)


class ABConnectors(nn.Module):
  """AB's connectors, one per stage (RepDistiller ``Connector``).

  Where a student map has the teacher's channels and height the connector is
  the identity; otherwise a FeatureConnector (conv + BN, no ReLU, resampling
  as RepDistiller's ``ConvReg(use_relu=False)``). RepDistiller's conv has a
  bias and PyTorch's default init; here it is bias-free (BN follows, so a
  bias only shifts the running mean) with He-normal fan-out init.

  Attributes:
    student_shapes / teacher_shapes: (H, W, C) of each stage's map.
  """

  student_shapes: Tuple[Tuple[int, int, int], ...]
  teacher_shapes: Tuple[Tuple[int, int, int], ...]

  @nn.compact
  def __call__(
    self, maps: Sequence[Array], *, train: bool
  ) -> Tuple[Array, ...]:
    out = []
    for i, (x, s, t) in enumerate(
      zip(maps, self.student_shapes, self.teacher_shapes)
    ):
      if s[2] == t[2] and s[0] == t[0]:
        out.append(x)
        continue
      out.append(
        FeatureConnector(
          t[2], in_hw=tuple(s[:2]), out_hw=tuple(t[:2]), name=f'stage{i}'
        )(x, train=train)
      )
    return tuple(out)


def _ft_conv(features: int, name: str, transpose: bool = False):
  # PyTorch's Conv2d / ConvTranspose2d(k=3, stride 1, padding 1), with bias.
  layer = nn.ConvTranspose if transpose else nn.Conv
  return layer(features, (3, 3), padding='SAME', name=name)


class Paraphraser(nn.Module):
  """FT's paraphraser (Kim et al., NeurIPS 2018; RepDistiller ``Paraphraser``).

  Encoder: three 3x3 convs C -> C -> kC -> kC, decoder three 3x3 transposed
  convs kC -> kC -> C -> C, each followed by LeakyReLU(0.1); no BN
  (RepDistiller's default use_bn=False). Trained to reconstruct the teacher's
  map in FT's initialization phase, then frozen: its encoder gives the
  teacher factor.

  Attributes:
    features: the teacher map's channels C.
    rate: k, the factor's share of C (RepDistiller 0.5).
  """

  features: int
  rate: float = 0.5

  def setup(self):
    inner = int(self.features * self.rate)
    self.encoder = (
      _ft_conv(self.features, 'enc0'),
      _ft_conv(inner, 'enc1'),
      _ft_conv(inner, 'enc2'),
    )
    self.decoder = (
      _ft_conv(inner, 'dec0', transpose=True),
      _ft_conv(self.features, 'dec1', transpose=True),
      _ft_conv(self.features, 'dec2', transpose=True),
    )

  def encode(self, x: Array) -> Array:
    """The factor: (B, H, W, C) -> (B, H, W, kC)."""
    for conv in self.encoder:
      x = nn.leaky_relu(conv(x), 0.1)
    return x

  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """(factor, reconstruction of x)."""
    factor = self.encode(x)
    y = factor
    for conv in self.decoder:
      y = nn.leaky_relu(conv(y), 0.1)
    return factor, y


class Translator(nn.Module):
  """FT's translator (RepDistiller ``Translator``, use_bn=True).

  Three 3x3 convs C_s -> C_s -> kC_t -> kC_t, each conv + BN + LeakyReLU(0.1):
  the student's factor, trained with the student.

  Attributes:
    student_features: C_s; factor_features: kC_t (int(C_t * k)).
  """

  student_features: int
  factor_features: int

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    widths = (self.student_features, self.factor_features, self.factor_features)
    for i, width in enumerate(widths):
      x = _ft_conv(width, f'conv{i}')(x)
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        name=f'bn{i}',
      )(x)
      x = nn.leaky_relu(x, 0.1)
    return x
