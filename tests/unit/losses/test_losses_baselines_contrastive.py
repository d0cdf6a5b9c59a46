"""Baseline losses with state or second derivatives: CRD, KDSVD, Jacobian
matching, against PyTorch references written here (float64, NCHW).

CRD follows RepDistiller crd/criterion.py and crd/memory.py; KDSVD its
distiller_zoo/KDSVD.py; Jacobian matching (no official code) uses
torch.autograd.grad(create_graph=True) on the same tiny network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_parity import (
  assert_close,
  check_parity,
  map_lists,
  normal,
  value_and_grads,
)

from kdjax import losses

# ------------------------------------------------------------------- CRD


def torch_crd_step(memory, v1, v2, y, idx, temperature, momentum):
  """One CRDLoss.forward after the heads (ContrastMemory + 2 ContrastLoss).

  ``memory``: dict of float64 tensors mem_v1 (student), mem_v2 (teacher),
  z1, z2 (floats, < 0 when unset); updated in place. Returns the loss.
  """
  n = memory['mem_v1'].shape[0]
  w1 = memory['mem_v1'][idx].detach()
  out_v2 = torch.exp(torch.bmm(w1, v2.unsqueeze(2)).squeeze(2) / temperature)
  w2 = memory['mem_v2'][idx].detach()
  out_v1 = torch.exp(torch.bmm(w2, v1.unsqueeze(2)).squeeze(2) / temperature)
  if memory['z1'] < 0:
    memory['z1'] = out_v1.mean().item() * n
  if memory['z2'] < 0:
    memory['z2'] = out_v2.mean().item() * n
  out_v1, out_v2 = out_v1 / memory['z1'], out_v2 / memory['z2']
  with torch.no_grad():
    for name, v in (('mem_v1', v1), ('mem_v2', v2)):
      rows = memory[name][y] * momentum + v * (1 - momentum)
      rows = rows / rows.pow(2).sum(1, keepdim=True).pow(0.5)
      memory[name] = memory[name].index_copy(0, y, rows)

  def contrast_loss(x):
    m, pn, eps = x.shape[1] - 1, 1.0 / n, 1e-7
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + m * pn + eps))
    log_d0 = torch.log(m * pn / (x[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]

  return contrast_loss(out_v1) + contrast_loss(out_v2)


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_crd_two_steps_match_repdistiller():
  n, d, b, k = 12, 6, 4, 5
  temperature, momentum = 0.07, 0.5
  memory = losses.crd_memory_init(jax.random.key(0), n, d)
  bound = 1.0 / np.sqrt(d / 3.0)
  assert memory.student.shape == (n, d)
  assert np.all(np.abs(memory.teacher) <= bound) and memory.z_student < 0
  ref = {
    'mem_v1': torch.tensor(np.asarray(memory.student, np.float64)),
    'mem_v2': torch.tensor(np.asarray(memory.teacher, np.float64)),
    'z1': -1.0,
    'z2': -1.0,
  }
  step = jax.jit(
    jax.value_and_grad(
      lambda s, t, m, y, idx: losses.crd_loss(
        s, t, m, y, idx, temperature=temperature, momentum=momentum
      ),
      argnums=(0, 1, 2),
      has_aux=True,
    )
  )
  rng = np.random.default_rng(0)
  for seed in range(2):
    es, et = _unit(rng, b, d), _unit(rng, b, d)
    y = rng.permutation(n)[:b]
    idx = losses.crd_sample_indices(jax.random.key(seed + 1), y, n, k)
    assert idx.shape == (b, k + 1)
    np.testing.assert_array_equal(idx[:, 0], y)
    (loss, new_memory), (gs, gt, gm) = step(es, et, memory, y, idx)
    ts = torch.tensor(es, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(et, dtype=torch.float64, requires_grad=True)
    ref_loss = torch_crd_step(
      ref,
      ts,
      tt,
      torch.tensor(y),
      torch.tensor(np.asarray(idx)),
      temperature,
      momentum,
    )
    ref_loss.backward()
    assert_close(loss, ref_loss.item())
    # Both heads learn from CRD: gradients reach both embeddings.
    assert_close(gs, ts.grad.numpy())
    assert_close(gt, tt.grad.numpy())
    assert np.any(gt != 0)
    for g in jax.tree.leaves(gm):
      np.testing.assert_array_equal(g, 0.0)
    # Z is set from the first batch and then kept.
    np.testing.assert_allclose(new_memory.z_student, ref['z1'], rtol=1e-5)
    np.testing.assert_allclose(new_memory.z_teacher, ref['z2'], rtol=1e-5)
    assert_close(new_memory.student, ref['mem_v1'].numpy())
    assert_close(new_memory.teacher, ref['mem_v2'].numpy())
    memory = new_memory
  untouched = np.setdiff1d(np.arange(n), y)
  assert np.any(np.asarray(memory.student)[untouched] != 0)


def test_crd_memory_update_normalises_only_the_given_rows():
  memory = losses.crd_memory_init(jax.random.key(1), 6, 4)
  e = _unit(np.random.default_rng(1), 2, 4)
  new = jax.jit(losses.crd_memory_update)(memory, e, -e, jnp.array([1, 4]))
  np.testing.assert_allclose(
    np.linalg.norm(new.student[jnp.array([1, 4])], axis=-1), 1.0, rtol=1e-6
  )
  keep = jnp.array([0, 2, 3, 5])
  np.testing.assert_array_equal(new.teacher[keep], memory.teacher[keep])
  expected = memory.student[1] * 0.5 + e[0] * 0.5
  np.testing.assert_allclose(
    new.student[1], expected / np.linalg.norm(expected), rtol=1e-6
  )


# ----------------------------------------------------------------- KDSVD


def torch_kdsvd(g_s, g_t):
  """RepDistiller KDSVD.py (k = 1), its list summed; the teacher's singular
  vector signed so that its largest-magnitude entry is positive (kdjax's
  convention; the reference keeps LAPACK's sign)."""

  def finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

  def svd(f, n):
    b, c, h, w = f.shape
    x = f.reshape(b, c, h * w).transpose(-2, -1)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = finite(vh.transpose(-2, -1))[:, :, :n]
    return F.normalize(v, dim=1), F.normalize(finite(s)[:, :n], dim=1)

  total, prev = 0.0, None
  for fs, ft in zip(g_s, g_t):
    v_t, s_t = svd(ft, 1)
    top = v_t.abs().argmax(1, keepdim=True)
    v_t = v_t * torch.sign(torch.gather(v_t, 1, top))
    v_s, _ = svd(fs, 4)
    cosine = v_s.transpose(-2, -1) @ v_t
    best = cosine.abs().max(1, keepdim=True)[0]
    mask = torch.where(
      best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine)
    )
    v_s = v_s @ mask
    v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
    if prev is not None:
      rbf_s = torch.exp(-((v_s.unsqueeze(2) - prev[0].unsqueeze(1)) ** 2) / 8)
      rbf_t = torch.exp(-((v_t.unsqueeze(2) - prev[1].unsqueeze(1)) ** 2) / 8)
      diff = (rbf_s - rbf_t.detach()) ** 2
      total = total + finite(diff).sum() / fs.shape[0]
    prev = (v_s, v_t)
  return total


def test_kdsvd_matches_repdistiller():
  rng = np.random.default_rng(2)
  student, teacher = map_lists(rng, [(3, 4, 4, 3), (3, 2, 2, 5), (3, 2, 2, 6)])
  value = check_parity(
    losses.kdsvd_loss, torch_kdsvd, student, teacher, rtol=1e-4
  )
  assert value > 0
  # The teacher's singular-vector sign is fixed: negating a teacher map (which
  # may flip LAPACK's sign) leaves the loss unchanged.
  flipped, _ = value_and_grads(losses.kdsvd_loss)(
    student, [teacher[0], -teacher[1], teacher[2]]
  )
  np.testing.assert_allclose(flipped, value, rtol=1e-5)


# ------------------------------------------------------- Jacobian matching


def _net_params(rng):
  return {
    'conv': normal(rng, 3, 3, 2, 4, scale=0.5),  # HWIO
    'dense': normal(rng, 4, 5),
    'bias': normal(rng, 5),
  }


def jax_net(params, x):
  h = jax.lax.conv_general_dilated(
    x,
    params['conv'],
    (1, 1),
    'SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return jnp.mean(jnp.tanh(h), axis=(1, 2)) @ params['dense'] + params['bias']


def torch_net(params, x):
  h = F.conv2d(x, params['conv'].permute(3, 2, 0, 1), padding=1)
  return torch.tanh(h).mean((2, 3)) @ params['dense'] + params['bias']


def _torch_params(params, grad=False):
  return {
    k: torch.tensor(np.asarray(v, np.float64), requires_grad=grad)
    for k, v in params.items()
  }


def torch_jacobian_loss(ps, pt, x, y):
  """Input-gradients by autograd.grad(create_graph=True), normalised."""
  x = x.clone().requires_grad_(True)

  def input_grad(params, create_graph):
    z = torch_net(params, x).gather(1, y[:, None]).sum()
    return torch.autograd.grad(z, x, create_graph=create_graph)[0]

  gs = F.normalize(input_grad(ps, True).reshape(len(x), -1), dim=1)
  gt = F.normalize(input_grad(pt, False).reshape(len(x), -1), dim=1)
  return ((gs - gt.detach()) ** 2).sum(1).mean()


def test_logit_input_gradients_match_autograd():
  rng = np.random.default_rng(3)
  params, x = _net_params(rng), normal(rng, 3, 4, 4, 2)
  y = np.array([0, 4, 2])
  got = jax.jit(
    lambda p, x, y: losses.logit_input_gradients(lambda v: jax_net(p, v), x, y)
  )(params, x, y)
  tx = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64)
  tx.requires_grad_(True)
  z = torch_net(_torch_params(params), tx)
  for b in range(3):  # Per example, one at a time.
    (g,) = torch.autograd.grad(z[b, y[b]], tx, retain_graph=True)
    assert_close(got[b], g[b].numpy().transpose(1, 2, 0))


def test_jacobian_matching_double_backprop_matches_torch():
  rng = np.random.default_rng(4)
  student, teacher = _net_params(rng), _net_params(rng)
  x, y = normal(rng, 3, 4, 4, 2), np.array([1, 3, 0])

  def loss(ps, pt, x, y):
    return losses.jacobian_matching_loss(
      losses.logit_input_gradients(lambda v: jax_net(ps, v), x, y),
      losses.logit_input_gradients(lambda v: jax_net(pt, v), x, y),
    )

  value, (gs, gt) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
    student, teacher, x, y
  )
  ts = _torch_params(student, grad=True)
  tx = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64)
  ref = torch_jacobian_loss(
    ts, _torch_params(teacher, grad=True), tx, torch.tensor(y)
  )
  ref.backward()
  assert_close(value, ref.item())
  for k in ('conv', 'dense'):
    assert_close(gs[k], ts[k].grad.numpy())
    assert np.any(gs[k] != 0), k
  # The input-gradient does not depend on the bias (torch: no gradient).
  assert ts['bias'].grad is None
  np.testing.assert_array_equal(gs['bias'], 0.0)
  for g in jax.tree.leaves(gt):
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize('scale', [1.0, 1e-8])
def test_jacobian_matching_is_scale_free_and_zero_safe(scale):
  rng = np.random.default_rng(5)
  g = normal(rng, 2, 3, 3, 2)
  value_and_grad = value_and_grads(losses.jacobian_matching_loss)
  value, _ = value_and_grad(g * scale, g)
  np.testing.assert_allclose(value, 0.0, atol=1e-6)
  value, (zero_grad, _) = value_and_grad(np.zeros_like(g), g)
  np.testing.assert_allclose(value, 1.0, rtol=1e-6)  # ||0 - n(g)||^2
  assert np.all(np.isfinite(zero_grad))
