"""Feature-map baselines: NST, FT, FSP, AB, VID, ReviewKD's HCL, KDSVD.

Pure functions of NHWC feature maps (docs/losses.md); float32 inside, the
teacher under ``stop_gradient``, a float32 scalar out. Where the reference
average-pools the larger of two maps to the smaller one's size, so do these
(``adaptive_avg_pool``, torch's adaptive_avg_pool2d bins).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses.relational import _normalize

Array = jax.Array

# RepDistiller ABLoss: every layer's loss is divided by B and scaled by 3/1000.
_AB_SCALE = 3.0 / 1000.0
# RepDistiller KDSVD: teacher's k = 1 singular vectors, the student's k + 3.
_KDSVD_TEACHER_VECTORS = 1
_KDSVD_STUDENT_VECTORS = 4
# exp(-(a - b)^2 / 8): the RBF of KDSVD.
_KDSVD_RBF_SCALE = 8.0


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging weights of torch's adaptive pooling bins."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)  # ceil
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: Array, size: Tuple[int, int]) -> Array:
  """torch.nn.functional.adaptive_avg_pool2d on NHWC: (B, H, W, C) -> size.

  Bin i of an axis of length n averages [floor(i n / s), ceil((i + 1) n / s)).
  """
  if x.ndim != 4:
    raise ValueError(f'adaptive_avg_pool: expects NHWC, got {x.shape}')
  oh, ow = size
  ph = jnp.asarray(_pool_matrix(x.shape[1], oh))
  pw = jnp.asarray(_pool_matrix(x.shape[2], ow))
  return jnp.einsum('ih,bhwc,jw->bijc', ph, x, pw)


def _pool_to_smaller(s: Array, t: Array) -> Tuple[Array, Array]:
  """Pools whichever map is larger to the other's spatial size."""
  for x in (s, t):
    if x.ndim != 4:
      raise ValueError(f'expects NHWC feature maps, got {x.shape}')
  size = (min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2]))
  if s.shape[1:3] != size:
    s = adaptive_avg_pool(s, size)
  if t.shape[1:3] != size:
    t = adaptive_avg_pool(t, size)
  return s, t


def _f32(x: Array) -> Array:
  return x.astype(jnp.float32)


def _teacher(x: Array) -> Array:
  return jax.lax.stop_gradient(x).astype(jnp.float32)


def nst_loss(student_features: Array, teacher_features: Array) -> Array:
  """Neuron selectivity transfer (Huang & Wang 2017), one pair.

      f_c = vec(F[:, :, c]) / max(||vec(F[:, :, c])||, 1e-12)    (per channel)
      K(a, b) = mean_{b, i, j} <a_i, b_j>^2                (polynomial, d=2, c=0)
      loss = K(t, t) + K(s, s) - 2 K(s, t)

  Source: HobbitLong/RepDistiller, distiller_zoo/NST.py ``nst_loss`` (its
  full_loss form: the constant K(t, t) is included). ``student_features``
  (B, H, W, C_s), ``teacher_features`` (B, H', W', C_t): the larger map is
  average-pooled to the smaller. Reduction: the MMD^2 of the paper, with
  means over batch and channel pairs.
  """
  s, t = _pool_to_smaller(_f32(student_features), _teacher(teacher_features))

  def channels(f):
    b, h, w, c = f.shape
    return _normalize(jnp.swapaxes(f.reshape(b, h * w, c), 1, 2))

  s, t = channels(s), channels(t)

  def kernel(a, b):
    return jnp.mean(jnp.square(jnp.einsum('bip,bjp->bij', a, b)))

  return kernel(t, t) + kernel(s, s) - 2.0 * kernel(s, t)


def _factor(f: Array, p1) -> Array:
  b, h, w, _ = f.shape
  # An integer exponent (lax.integer_pow) keeps negative entries valid.
  p1 = int(p1) if float(p1).is_integer() else p1
  return _normalize(jnp.mean(f**p1, axis=-1).reshape(b, h * w))


def factor_transfer_loss(
  student_factor: Array, teacher_factor: Array, *, p1=2, p2=1
) -> Array:
  """Factor transfer (Kim et al., NeurIPS 2018), RepDistiller's factor_loss.

      phi(F) = vec(mean_c F^p1) / max(||.||, 1e-12)               (B, H W)
      loss = mean |phi(F_s) - phi(F_t)|          (p2 = 1; else mean (.)^p2)

  Source: HobbitLong/RepDistiller, distiller_zoo/FT.py ``FactorTransfer``.
  ``student_factor`` is the translator's output, ``teacher_factor`` the
  paraphraser's factor, NHWC; the larger map is pooled to the smaller. The
  paper normalises the whole factor vec(F) / ||vec(F)||; the reference's
  phi (a channel mean of F^p1, as in attention transfer) is used here.
  Reduction: mean over batch and positions.
  """
  s, t = _pool_to_smaller(_f32(student_factor), _teacher(teacher_factor))
  diff = _factor(s, p1) - _factor(t, p1)
  if p2 == 1:
    return jnp.mean(jnp.abs(diff))
  p2 = int(p2) if float(p2).is_integer() else p2
  return jnp.mean(diff**p2)


def _fsp_matrices(features: Sequence[Array]) -> list:
  out = []
  for bottom, top in zip(features[:-1], features[1:]):
    bottom, top = _pool_to_smaller(bottom, top)
    b, h, w, _ = bottom.shape
    out.append(
      jnp.einsum(
        'bpc,bpd->bdc',
        bottom.reshape(b, h * w, -1),
        top.reshape(b, h * w, -1),
      )
      / (h * w)
    )
  return out


def fsp_loss(
  student_features_list: Sequence[Array],
  teacher_features_list: Sequence[Array],
) -> Array:
  """Flow of solution procedure (Yim et al., CVPR 2017).

      G(F1, F2)_{c2, c1} = mean_{h, w} F1[h, w, c1] * F2[h, w, c2]
      loss = sum_i mean_{b, c2, c1} (G(S_i, S_{i+1}) - G(T_i, T_{i+1}))^2

  Source: HobbitLong/RepDistiller, distiller_zoo/FSP.py, its list of
  per-pair losses summed. Consecutive maps are pooled to the smaller size;
  student and teacher channel counts must match position by position. The
  paper weights each pair (lambda_i) and sums squared norms over the batch;
  the reference's unweighted element means are used here. Reduction: mean
  over batch and matrix entries, sum over consecutive pairs.
  """
  if len(student_features_list) != len(teacher_features_list):
    raise ValueError('fsp_loss: unequal numbers of student and teacher maps')
  for s, t in zip(student_features_list, teacher_features_list):
    if s.shape[-1] != t.shape[-1]:
      raise ValueError(
        f'fsp_loss: channel counts differ: student {s.shape}, teacher {t.shape}'
      )
  gs = _fsp_matrices([_f32(s) for s in student_features_list])
  gt = _fsp_matrices([_teacher(t) for t in teacher_features_list])
  return sum(
    (jnp.mean(jnp.square(s - t)) for s, t in zip(gs, gt)),
    jnp.zeros((), jnp.float32),
  )


def activation_boundary_loss(
  student_features_list: Sequence[Array],
  teacher_features_list: Sequence[Array],
  *,
  margin: float = 1.0,
) -> Array:
  """Activation-boundary transfer (Heo et al., AAAI 2019).

      l(s, t) = (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]
      loss = sum_i 2^(i - n + 1) * (3 / 1000) * sum_{b, h, w, c} l(S_i, T_i) / B

  Source: HobbitLong/RepDistiller, distiller_zoo/AB.py ``ABLoss`` (its
  weighted list summed; from bhheo/AB_distillation). ``S_i`` are the
  student's pre-ReLU maps after the connector, ``T_i`` the teacher's pre-ReLU
  maps, same shapes; n the number of positions. The paper states the squared
  hinge per neuron; the layer weights 2^(i-n+1), the 1/B and the 3/1000 are
  the reference's. Reduction: sum over elements, divided by B.
  """
  n = len(student_features_list)
  if n != len(teacher_features_list):
    raise ValueError(
      'activation_boundary_loss: unequal numbers of student and teacher maps'
    )
  total = jnp.zeros((), jnp.float32)
  for i, (s, t) in enumerate(zip(student_features_list, teacher_features_list)):
    if s.shape != t.shape:
      raise ValueError(
        f'activation_boundary_loss: student {s.shape} and teacher {t.shape} '
        'maps must have the same shape (apply the connector first)'
      )
    s, t = _f32(s), _teacher(t)
    on = t > 0
    per = jnp.where(
      on,
      jnp.where(s <= margin, jnp.square(s - margin), 0.0),
      jnp.where(s > -margin, jnp.square(s + margin), 0.0),
    )
    weight = 2.0 ** (i - n + 1)
    total = total + weight * jnp.sum(per) / s.shape[0] * _AB_SCALE
  return total


def vid_loss(
  predicted_mean: Array,
  log_scale: Array,
  teacher_features: Array,
  *,
  eps: float = 1e-5,
) -> Array:
  """Variational information distillation (Ahn et al., CVPR 2019).

      sigma^2_c = softplus(log_scale_c) + eps                  (per channel)
      loss = mean_{b, h, w, c} 0.5 * ((mu - t)^2 / sigma^2_c + log sigma^2_c)

  Source: HobbitLong/RepDistiller, distiller_zoo/VID.py ``VIDLoss`` after its
  regressor (from ssahn0215/variational-information-distillation).
  ``predicted_mean`` (B, H, W, C): the regressor's output mu;
  ``log_scale`` (C,): the trainable pre-softplus variance, RepDistiller
  initialises it to log(exp(5 - eps) - 1); ``teacher_features`` (B, H', W',
  C). A larger teacher map is pooled to mu's size; RepDistiller pools a larger
  student map before the regressor, so a larger ``predicted_mean`` is an
  error here (pool with ``adaptive_avg_pool`` first). Reduction: mean over
  every element (the Gaussian negative log-likelihood without 0.5 log 2 pi).
  """
  mu = _f32(predicted_mean)
  t = _teacher(teacher_features)
  if mu.ndim != 4 or t.ndim != 4 or mu.shape[-1] != t.shape[-1]:
    raise ValueError(
      f'vid_loss: predicted mean {mu.shape} and teacher {t.shape} must be '
      'NHWC with the same channels'
    )
  if mu.shape[1] > t.shape[1] or mu.shape[2] > t.shape[2]:
    raise ValueError(
      f'vid_loss: predicted mean {mu.shape} is larger than the teacher '
      f'{t.shape}; pool the student features before the regressor'
    )
  if t.shape[1:3] != mu.shape[1:3]:
    t = adaptive_avg_pool(t, mu.shape[1:3])
  var = jax.nn.softplus(_f32(log_scale)) + eps
  return jnp.mean(0.5 * (jnp.square(mu - t) / var + jnp.log(var)))


def review_kd_hcl_loss(
  student_features_list: Sequence[Array],
  teacher_features_list: Sequence[Array],
) -> Array:
  """Hierarchical context loss of ReviewKD (Chen et al., CVPR 2021).

      per pair: (mse(S, T) + sum_{l in (4, 2, 1), l < H} 2^-k_l mse(P_l S,
                 P_l T)) / (1 + sum of the 2^-k_l used)
      loss = sum over pairs

  P_l: adaptive average pooling to l x l; k_l = 1, 2, 3 for the levels
  actually used (levels l >= H are skipped). Source:
  megvii-research/mdistiller, mdistiller/distillers/ReviewKD.py ``hcl_loss``.
  Student (fused) and teacher maps NHWC, same shapes pair by pair.
  Reduction: element means, weighted mean over levels, sum over pairs.
  """
  if len(student_features_list) != len(teacher_features_list):
    raise ValueError('review_kd_hcl_loss: unequal numbers of maps')
  total = jnp.zeros((), jnp.float32)
  for s, t in zip(student_features_list, teacher_features_list):
    if s.shape != t.shape or s.ndim != 4:
      raise ValueError(
        f'review_kd_hcl_loss: student {s.shape} and teacher {t.shape} must '
        'be NHWC of the same shape'
      )
    s, t = _f32(s), _teacher(t)
    loss = jnp.mean(jnp.square(s - t))
    weight, norm = 1.0, 1.0
    for level in (4, 2, 1):
      if level >= s.shape[1]:
        continue
      weight /= 2.0
      ps = adaptive_avg_pool(s, (level, level))
      pt = adaptive_avg_pool(t, (level, level))
      loss = loss + weight * jnp.mean(jnp.square(ps - pt))
      norm += weight
    total = total + loss / norm
  return total


def _right_singular(features: Array, n: int) -> Tuple[Array, Array]:
  """The first n right singular vectors (B, C, n) and values (B, n) of each
  example's (H W, C) matrix, NaN/inf set to 0, each L2-normalised (over C
  for the vectors, over the n values for the values)."""
  b, h, w, c = features.shape
  _, s, vh = jnp.linalg.svd(features.reshape(b, h * w, c), full_matrices=False)
  v = jnp.swapaxes(vh, 1, 2)[:, :, :n]
  s = s[:, :n]
  v = jnp.where(jnp.isfinite(v), v, 0.0)
  s = jnp.where(jnp.isfinite(s), s, 0.0)
  return _normalize(v, axis=1), _normalize(s, axis=1)


def kdsvd_loss(
  student_features_list: Sequence[Array],
  teacher_features_list: Sequence[Array],
) -> Array:
  """KD with singular value decomposition (Lee et al., ECCV 2018).

      v^t_i: teacher's first right singular vector of (H W, C) per example,
             sign fixed so its largest-magnitude entry is positive
      v^s_i: of the student's first 4, the one of largest |cos| with v^t_i,
             times sign(cos)
      both scaled by the normalised singular value (1 for a single vector)
      R(v_i, v_{i-1})_{c, c'} = exp(-(v_i[c] - v_{i-1}[c'])^2 / 8)
      loss = sum_{i >= 1} sum_{b, c, c'} (R^s - R^t)^2 / B    (non-finite -> 0)

  Source: HobbitLong/RepDistiller, distiller_zoo/KDSVD.py ``KDSVD`` (k = 1;
  from sseung0703/SSKD_SVD), its list summed. Student and teacher channel
  counts must match position by position. Deviation: the reference keeps
  LAPACK's sign of each teacher vector, and its loss changes when the signs
  of consecutive positions flip; kdjax fixes that sign as above so the value
  does not depend on the SVD backend. Reduction: sum over channel pairs,
  mean over the batch, sum over consecutive positions.
  """
  if len(student_features_list) != len(teacher_features_list):
    raise ValueError('kdsvd_loss: unequal numbers of student and teacher maps')
  total = jnp.zeros((), jnp.float32)
  prev_s = prev_t = None
  for s, t in zip(student_features_list, teacher_features_list):
    if s.ndim != 4 or t.ndim != 4 or s.shape[-1] != t.shape[-1]:
      raise ValueError(
        f'kdsvd_loss: student {s.shape} and teacher {t.shape} must be NHWC '
        'with the same channels'
      )
    v_t, s_t = _right_singular(_teacher(t), _KDSVD_TEACHER_VECTORS)
    v_t = v_t * _largest_entry_sign(v_t)
    v_s, _ = _right_singular(_f32(s), _KDSVD_STUDENT_VECTORS)
    cosine = jnp.einsum('bcn,bck->bnk', v_s, v_t)  # (B, 4, 1)
    best = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
    mask = jnp.where(best == jnp.abs(cosine), jnp.sign(cosine), 0.0)
    v_s = jnp.einsum('bcn,bnk->bck', v_s, jax.lax.stop_gradient(mask))
    v_t = v_t * s_t[:, None, :]
    v_s = v_s * s_t[:, None, :]
    if prev_s is not None:
      diff = jnp.square(
        _rbf(v_s, prev_s) - jax.lax.stop_gradient(_rbf(v_t, prev_t))
      )
      diff = jnp.where(jnp.isfinite(diff), diff, 0.0)
      total = total + jnp.sum(diff) / s.shape[0]
    prev_s, prev_t = v_s, v_t
  return total


def _largest_entry_sign(v: Array) -> Array:
  """+-1 per (example, vector): the sign of the largest-|.| entry over C."""
  idx = jnp.argmax(jnp.abs(v), axis=1, keepdims=True)
  sign = jnp.sign(jnp.take_along_axis(v, idx, axis=1))
  return jnp.where(sign == 0, 1.0, sign)


def _rbf(v: Array, prev: Array) -> Array:
  """exp(-(v[c] - prev[c'])^2 / 8), (B, C, C', k)."""
  return jnp.exp(
    -jnp.square(v[:, :, None, :] - prev[:, None, :, :]) / _KDSVD_RBF_SCALE
  )
