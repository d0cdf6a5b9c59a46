"""Contrastive representation distillation (Tian et al., ICLR 2020).

RepDistiller's CRD criterion (crd/criterion.py) and its memory bank
(crd/memory.py ``ContrastMemory``) as pure functions: the bank is a
``CRDMemory`` of arrays passed in and returned, never hidden state
(docs/losses.md). The trainable embedding heads (linear + L2 normalisation)
are the caller's; both of their outputs receive gradients, as in
RepDistiller, so the teacher's *features* go under ``stop_gradient`` before
its head, and the memory bank is under ``stop_gradient`` here.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# RepDistiller's train_student.py defaults (--nce_t, --nce_m, --nce_k).
DEFAULT_CRD_TEMPERATURE = 0.07
DEFAULT_CRD_MOMENTUM = 0.5
DEFAULT_CRD_NEGATIVES = 16384
# crd/criterion.py's eps in the NCE posterior.
_NCE_EPS = 1e-7


class CRDMemory(NamedTuple):
  """The bank of ContrastMemory as arrays (a pytree).

  student: (N, D) running student embeddings (``memory_v1``).
  teacher: (N, D) running teacher embeddings (``memory_v2``).
  z_student, z_teacher: float32 scalars, the normalisation constants Z of the
  student- and teacher-anchored scores; negative until the first batch sets
  them (``params[2]``, ``params[3]``).
  """

  student: Array
  teacher: Array
  z_student: Array
  z_teacher: Array


def crd_memory_init(key: Array, num_data: int, feat_dim: int) -> CRDMemory:
  """A fresh bank: both tables uniform in [-a, a], a = 1 / sqrt(D / 3).

  Source: RepDistiller crd/memory.py ``ContrastMemory.__init__``; Z unset (-1).
  """
  stdv = 1.0 / (feat_dim / 3.0) ** 0.5
  k1, k2 = jax.random.split(key)
  shape = (num_data, feat_dim)
  return CRDMemory(
    student=jax.random.uniform(k1, shape, jnp.float32, -stdv, stdv),
    teacher=jax.random.uniform(k2, shape, jnp.float32, -stdv, stdv),
    z_student=jnp.asarray(-1.0, jnp.float32),
    z_teacher=jnp.asarray(-1.0, jnp.float32),
  )


def crd_sample_indices(
  key: Array, indices: Array, num_data: int, num_negatives: int
) -> Array:
  """(B, K + 1) bank rows: each example's own index, then K uniform draws.

  ContrastMemory's fallback sampler (a uniform AliasMethod; a draw may hit
  the positive). RepDistiller's CIFAR-100 loader instead draws negatives from
  other classes and passes them as ``contrast_idx``.
  """
  negatives = jax.random.randint(
    key, (indices.shape[0], num_negatives), 0, num_data
  )
  return jnp.concatenate(
    [indices[:, None].astype(negatives.dtype), negatives], 1
  )


def crd_contrast_scores(
  student_embedding: Array,
  teacher_embedding: Array,
  memory: CRDMemory,
  contrast_indices: Array,
  *,
  temperature: float = DEFAULT_CRD_TEMPERATURE,
) -> Tuple[Array, Array, CRDMemory]:
  """Unnormalised NCE scores against the bank, and the bank with Z set.

      P^s_{b, k} = exp(<m^t_{idx[b, k]}, e^s_b> / tau) / Z_s   (student anchor)
      P^t_{b, k} = exp(<m^s_{idx[b, k]}, e^t_b> / tau) / Z_t   (teacher anchor)
      Z = N * mean(exp(...)) of the first batch, then fixed (no gradient)

  Source: RepDistiller crd/memory.py ``ContrastMemory.forward`` (out_v1 and
  out_v2). ``student_embedding``, ``teacher_embedding`` (B, D): the
  L2-normalised head outputs; ``contrast_indices`` (B, K + 1), column 0 the
  positive. Returns (P^s, P^t), each (B, K + 1), and the memory with Z set;
  the tables themselves are updated by ``crd_memory_update``.
  """
  es = student_embedding.astype(jnp.float32)
  et = teacher_embedding.astype(jnp.float32)
  mem_s = jax.lax.stop_gradient(memory.student)[contrast_indices]
  mem_t = jax.lax.stop_gradient(memory.teacher)[contrast_indices]
  out_s = jnp.exp(jnp.einsum('bkd,bd->bk', mem_t, es) / temperature)
  out_t = jnp.exp(jnp.einsum('bkd,bd->bk', mem_s, et) / temperature)
  num_data = memory.student.shape[0]

  def z(current, out):
    first = jax.lax.stop_gradient(jnp.mean(out)) * num_data
    # A constant, as the reference's Python float.
    z = jnp.where(current < 0, first, current).astype(jnp.float32)
    return jax.lax.stop_gradient(z)

  z_s = z(memory.z_student, out_s)
  z_t = z(memory.z_teacher, out_t)
  memory = memory._replace(z_student=z_s, z_teacher=z_t)
  return out_s / z_s, out_t / z_t, memory


def crd_nce_loss(scores: Array, *, num_data: int) -> Array:
  """NCE loss of CRD (their Eq. 18), RepDistiller ``ContrastLoss``.

      m = K, P_n = 1 / N
      loss = -(sum_b log(P_b0 / (P_b0 + m P_n + 1e-7))
               + sum_{b, k >= 1} log(m P_n / (P_bk + m P_n + 1e-7))) / B

  ``scores`` (B, K + 1) from ``crd_contrast_scores``, column 0 the positive;
  ``num_data`` N, the bank size. Reduction: sum over the K + 1 scores, mean
  over the batch.
  """
  scores = scores.astype(jnp.float32)
  m = scores.shape[1] - 1
  noise = m / float(num_data)
  log_pos = jnp.log(scores[:, 0] / (scores[:, 0] + noise + _NCE_EPS))
  log_neg = jnp.log(noise / (scores[:, 1:] + noise + _NCE_EPS))
  return -(jnp.sum(log_pos) + jnp.sum(log_neg)) / scores.shape[0]


def crd_memory_update(
  memory: CRDMemory,
  student_embedding: Array,
  teacher_embedding: Array,
  indices: Array,
  *,
  momentum: float = DEFAULT_CRD_MOMENTUM,
) -> CRDMemory:
  """Momentum update of the bank rows ``indices`` (no gradient).

      m_i <- normalize(momentum * m_i + (1 - momentum) * e_b),  i = idx[b]

  Source: RepDistiller crd/memory.py (the ``torch.no_grad`` block of
  ``ContrastMemory.forward``); the L2 norm has no eps there either.
  """
  es = jax.lax.stop_gradient(student_embedding).astype(jnp.float32)
  et = jax.lax.stop_gradient(teacher_embedding).astype(jnp.float32)

  def update(table, e):
    rows = table[indices] * momentum + e * (1.0 - momentum)
    rows = rows / jnp.sqrt(jnp.sum(jnp.square(rows), axis=-1, keepdims=True))
    return table.at[indices].set(rows)

  return memory._replace(
    student=update(memory.student, es), teacher=update(memory.teacher, et)
  )


def crd_loss(
  student_embedding: Array,
  teacher_embedding: Array,
  memory: CRDMemory,
  indices: Array,
  contrast_indices: Array,
  *,
  temperature: float = DEFAULT_CRD_TEMPERATURE,
  momentum: float = DEFAULT_CRD_MOMENTUM,
) -> Tuple[Array, CRDMemory]:
  """CRD's criterion after the heads: both NCE terms and the bank update.

      loss = NCE(P^s) + NCE(P^t)     (see crd_contrast_scores, crd_nce_loss)

  Source: RepDistiller crd/criterion.py ``CRDLoss.forward`` without its
  ``Embed`` heads. ``indices`` (B,): the examples' dataset indices (rows
  updated); ``contrast_indices`` (B, K + 1), column 0 equal to ``indices``.
  Scores use the bank before this batch's update, as in the reference.
  Returns (loss, new memory); the loss is a float32 scalar, summed over
  scores and averaged over the batch. Gradients reach both embeddings (both
  heads are trained), never the memory.
  """
  out_s, out_t, memory = crd_contrast_scores(
    student_embedding,
    teacher_embedding,
    memory,
    contrast_indices,
    temperature=temperature,
  )
  num_data = memory.student.shape[0]
  loss = crd_nce_loss(out_s, num_data=num_data) + crd_nce_loss(
    out_t, num_data=num_data
  )
  memory = crd_memory_update(
    memory, student_embedding, teacher_embedding, indices, momentum=momentum
  )
  return loss, memory
