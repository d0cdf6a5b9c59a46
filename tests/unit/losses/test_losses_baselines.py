"""Baseline losses (logits, relational, feature maps) against PyTorch.

Each reference below is a short torch function written here from the public
code the loss names (RepDistiller distiller_zoo/*.py, mdistiller DKD.py and
ReviewKD.py, torchdistill mid_level.py), in NCHW as there, in float64. Every
loss is compared in value and in its gradient with respect to the student;
its gradient with respect to the teacher must be exactly zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdjax import losses

from loss_parity import (
  RTOL,
  assert_close,
  check_parity,
  map_lists,
  normal,
  to_torch,
  value_and_grads,
)


def torch_dkd(zs, zt, y, alpha, beta, temperature):
  """mdistiller DKD.py dkd_loss."""
  y = torch.as_tensor(np.asarray(y))
  gt = F.one_hot(y, zs.shape[1]).bool()
  ps = F.softmax(zs / temperature, 1)
  pt = F.softmax(zt / temperature, 1)

  def two(p):
    return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)

  n = zs.shape[0]
  tckd = F.kl_div(torch.log(two(ps)), two(pt), reduction='sum') / n
  nckd = (
    F.kl_div(
      F.log_softmax(zs / temperature - 1000.0 * gt, 1),
      F.softmax(zt / temperature - 1000.0 * gt, 1),
      reduction='sum',
    )
    / n
  )
  return temperature**2 * (alpha * tckd + beta * nckd)


@pytest.mark.parametrize(
  'alpha, beta, temperature', [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)]
)
def test_dkd_matches_mdistiller(alpha, beta, temperature):
  rng = np.random.default_rng(0)
  zs, zt = normal(rng, 6, 7, scale=3), normal(rng, 6, 7, scale=3)
  y = rng.integers(0, 7, 6)
  value = check_parity(
    lambda s, t, y: losses.dkd_loss(
      s, t, y, alpha=alpha, beta=beta, temperature=temperature
    ),
    lambda s, t, y: torch_dkd(s, t, y, alpha, beta, temperature),
    zs,
    zt,
    y,
  )
  assert value > 0


def test_dkd_defaults_and_large_logits():
  rng = np.random.default_rng(1)
  zs, zt = normal(rng, 4, 5, scale=30), normal(rng, 4, 5, scale=30)
  y = rng.integers(0, 5, 4)
  check_parity(
    losses.dkd_loss,
    lambda s, t, y: torch_dkd(s, t, y, 1.0, 8.0, 4.0),
    zs,
    zt,
    y,
  )


def torch_dist(zs, zt, beta, gamma, tau):
  """torchdistill DISTLoss."""
  ys, yt = F.softmax(zs / tau, 1), F.softmax(zt / tau, 1)

  def relation(a, b):
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return 1 - F.cosine_similarity(a, b, eps=1e-8).mean()

  inter = relation(ys, yt)
  intra = relation(ys.t(), yt.t())
  return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize('beta, gamma, tau', [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_torchdistill(beta, gamma, tau):
  rng = np.random.default_rng(2)
  zs, zt = normal(rng, 5, 8, scale=2), normal(rng, 5, 8, scale=2)
  check_parity(
    lambda s, t: losses.dist_loss(
      s, t, beta=beta, gamma=gamma, temperature=tau
    ),
    lambda s, t: torch_dist(s, t, beta, gamma, tau),
    zs,
    zt,
  )


def torch_logit_std(zs, zt, temperature):
  """torchdistill LogitStdKDLoss: T^2 times its batch-mean KL."""

  def standardize(z):
    return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))

  kl = F.kl_div(
    F.log_softmax(standardize(zs) / temperature, 1),
    F.softmax(standardize(zt) / temperature, 1),
    reduction='batchmean',
  )
  return temperature**2 * kl


@pytest.mark.parametrize('temperature', [2.0, 1.0])
def test_logit_std_kd_matches_torchdistill(temperature):
  rng = np.random.default_rng(3)
  zs, zt = normal(rng, 5, 6, scale=3), normal(rng, 5, 6, scale=3)
  check_parity(
    lambda s, t: losses.logit_std_kd_loss(s, t, temperature=temperature),
    lambda s, t: torch_logit_std(s, t, temperature),
    zs,
    zt,
  )
  # Standardisation: the loss ignores shifts and positive scalings.
  logit_std = jax.jit(losses.logit_std_kd_loss)
  np.testing.assert_allclose(
    logit_std(zs * 3 + 1, zt - 2, temperature=temperature),
    logit_std(zs, zt, temperature=temperature),
    rtol=1e-4,
  )


def test_logit_std_kd_constant_logits_have_finite_gradient():
  zs = np.zeros((2, 4), np.float32)
  zt = np.arange(8, dtype=np.float32).reshape(2, 4)
  _, (grad, _) = value_and_grads(losses.logit_std_kd_loss)(zs, zt)
  assert np.all(np.isfinite(grad))


# ------------------------------------------------------------ relational


def torch_sp(fs, ft):
  """RepDistiller SP.py similarity_loss, one pair."""
  b = fs.shape[0]
  fs, ft = fs.reshape(b, -1), ft.reshape(b, -1)
  gs = F.normalize(fs @ fs.t())
  gt = F.normalize(ft @ ft.t())
  return ((gt - gs) ** 2).sum() / (b * b)


def test_sp_matches_repdistiller():
  rng = np.random.default_rng(4)
  check_parity(
    losses.sp_loss,
    torch_sp,
    normal(rng, 5, 3, 3, 4),
    normal(rng, 5, 2, 2, 6),
  )


def torch_cc(es, et):
  """RepDistiller CC.py Correlation."""
  delta = (es - et).abs()
  return (delta[:-1] * delta[1:]).sum(1).mean()


def test_cc_matches_repdistiller():
  rng = np.random.default_rng(5)
  es, et = normal(rng, 6, 8), normal(rng, 6, 8)
  check_parity(losses.cc_loss, torch_cc, es, et)
  # The opt-in teacher gradient: |e_s - e_t| makes it minus the student's.
  gs, gt = jax.grad(
    lambda s, t: losses.cc_loss(s, t, train_teacher_embedding=True), (0, 1)
  )(es, et)
  np.testing.assert_allclose(gt, -gs, rtol=1e-6)
  assert np.any(gt != 0)


def torch_rkd(es, et, w_d=25.0, w_a=50.0):
  """RepDistiller RKD.py RKDLoss (its Gram-expansion pdist)."""
  es, et = es.reshape(es.shape[0], -1), et.reshape(et.shape[0], -1)

  def pdist(e):
    sq = (e**2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=1e-12).sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype))

  def normalized(e):
    d = pdist(e)
    return d / d[d > 0].mean()

  def angles(e):
    n = F.normalize(e[None] - e[:, None], p=2, dim=2)
    return torch.bmm(n, n.transpose(1, 2)).reshape(-1)

  loss_d = F.smooth_l1_loss(normalized(es), normalized(et))
  loss_a = F.smooth_l1_loss(angles(es), angles(et))
  return w_d * loss_d + w_a * loss_a


@pytest.mark.parametrize('weights', [(25.0, 50.0), (1.0, 2.0)])
def test_rkd_matches_repdistiller_with_finite_diagonal_gradient(weights):
  # Every batch has zero-distance pairs on the diagonal (e_i - e_i): the
  # angle term normalises them, whose unguarded norm gradient is NaN in JAX.
  rng = np.random.default_rng(6)
  es, et = normal(rng, 5, 2, 2, 2), normal(rng, 5, 7)
  w_d, w_a = weights
  check_parity(
    lambda s, t: losses.rkd_loss(s, t, distance_weight=w_d, angle_weight=w_a),
    lambda s, t: torch_rkd(s, t, w_d, w_a),
    es,
    et,
  )


def test_rkd_large_differences_use_the_linear_branch():
  # A teacher with a far outlier: normalised distances and angles then differ
  # from the student's by more than 1, the smooth L1's linear branch.
  rng = np.random.default_rng(7)
  es, et = normal(rng, 5, 3), normal(rng, 5, 3)
  et[0] *= 100.0
  d = lambda e: np.linalg.norm(e[:, None] - e[None], axis=-1)
  gap = np.abs(
    d(es) / d(es)[d(es) > 0].mean() - d(et) / d(et)[d(et) > 0].mean()
  )
  assert gap.max() > 1.0
  check_parity(losses.rkd_loss, torch_rkd, es, et)


def torch_pkt(es, et, eps=1e-7):
  """RepDistiller PKT.py cosine_similarity_loss."""

  def probabilities(e):
    e = e / (torch.sqrt((e**2).sum(1, keepdim=True)) + eps)
    e = torch.where(torch.isnan(e), torch.zeros_like(e), e)
    sim = (e @ e.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)

  ps, pt = probabilities(es), probabilities(et)
  return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def test_pkt_matches_repdistiller():
  rng = np.random.default_rng(8)
  check_parity(losses.pkt_loss, torch_pkt, normal(rng, 6, 5), normal(rng, 6, 3))


def test_pkt_replaces_nan_like_the_reference():
  # An inf entry makes inf / inf = NaN in the normalised row; the reference
  # sets it to 0 (the row's finite entries become 0 too: x / inf).
  rng = np.random.default_rng(9)
  es, et = normal(rng, 4, 5), normal(rng, 4, 5)
  et[1, 2] = np.inf
  value = check_parity(losses.pkt_loss, torch_pkt, es, et)
  assert np.isfinite(value)


def test_pkt_zero_student_row_value_and_finite_gradient():
  # torch's gradient is NaN at a zero row (sqrt at 0); kdjax's is finite.
  rng = np.random.default_rng(10)
  es, et = normal(rng, 4, 5), normal(rng, 4, 5)
  es[2] = 0.0
  value, (grad, _) = value_and_grads(losses.pkt_loss)(es, et)
  ref = torch_pkt(to_torch(es), to_torch(et))
  np.testing.assert_allclose(value, ref.item(), rtol=RTOL)
  assert np.all(np.isfinite(grad))


# ----------------------------------------------------------- feature maps


def _pool_smaller(fs, ft):
  """The reference's size match: the larger map pooled to the smaller."""
  hs, ht = fs.shape[2], ft.shape[2]
  if hs > ht:
    fs = F.adaptive_avg_pool2d(fs, (ht, ht))
  elif hs < ht:
    ft = F.adaptive_avg_pool2d(ft, (hs, hs))
  return fs, ft


@pytest.mark.parametrize(
  'size_in, size_out', [((4, 4), (2, 2)), ((5, 7), (3, 2)), ((3, 3), (1, 1))]
)
def test_adaptive_avg_pool_matches_torch(size_in, size_out):
  x = normal(np.random.default_rng(11), 2, *size_in, 3)
  got = losses.adaptive_avg_pool(x, size_out)
  want = F.adaptive_avg_pool2d(to_torch(x), size_out).permute(0, 2, 3, 1)
  assert_close(got, want.numpy())


def torch_nst(fs, ft):
  """RepDistiller NST.py nst_loss, one pair."""
  fs, ft = _pool_smaller(fs, ft)
  fs = F.normalize(fs.reshape(fs.shape[0], fs.shape[1], -1), dim=2)
  ft = F.normalize(ft.reshape(ft.shape[0], ft.shape[1], -1), dim=2)

  def poly(a, b):
    return ((a.unsqueeze(1) * b.unsqueeze(2)).sum(-1) ** 2).mean()

  return poly(ft, ft).detach() + poly(fs, fs) - 2 * poly(fs, ft)


@pytest.mark.parametrize('hs, ht', [(4, 4), (4, 2), (2, 4)])
def test_nst_matches_repdistiller_with_pooling(hs, ht):
  rng = np.random.default_rng(12)
  check_parity(
    losses.nst_loss,
    torch_nst,
    normal(rng, 3, hs, hs, 4),
    normal(rng, 3, ht, ht, 5),
  )


def torch_ft(fs, ft, p1=2, p2=1):
  """RepDistiller FT.py factor_loss."""
  fs, ft = _pool_smaller(fs, ft)

  def factor(f):
    return F.normalize(f.pow(p1).mean(1).reshape(f.shape[0], -1))

  diff = factor(fs) - factor(ft)
  return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


@pytest.mark.parametrize(
  'hs, ht, p1, p2', [(4, 4, 2, 1), (4, 2, 2, 1), (2, 4, 1, 2), (4, 4, 3, 2)]
)
def test_factor_transfer_matches_repdistiller(hs, ht, p1, p2):
  rng = np.random.default_rng(13)
  check_parity(
    lambda s, t: losses.factor_transfer_loss(s, t, p1=p1, p2=p2),
    lambda s, t: torch_ft(s, t, p1, p2),
    normal(rng, 3, hs, hs, 4),
    normal(rng, 3, ht, ht, 6),
  )


def torch_fsp(g_s, g_t):
  """RepDistiller FSP.py: its per-pair losses, summed."""

  def matrices(g):
    out = []
    for bot, top in zip(g[:-1], g[1:]):
      bot, top = _pool_smaller(bot, top)
      b = bot.shape[0]
      bot = bot.unsqueeze(1).reshape(b, 1, bot.shape[1], -1)
      top = top.unsqueeze(2).reshape(b, top.shape[1], 1, -1)
      out.append((bot * top).mean(-1))
    return out

  return sum(
    ((s - t) ** 2).mean() for s, t in zip(matrices(g_s), matrices(g_t))
  )


def test_fsp_matches_repdistiller_across_sizes():
  rng = np.random.default_rng(14)
  shapes = [(2, 4, 4, 3), (2, 4, 4, 5), (2, 2, 2, 6)]
  student, teacher = map_lists(rng, shapes)
  check_parity(losses.fsp_loss, torch_fsp, student, teacher)
  with pytest.raises(ValueError, match='channel'):
    losses.fsp_loss(student, [t[..., :2] for t in teacher])


def torch_ab(g_s, g_t, margin=1.0):
  """RepDistiller AB.py ABLoss: its weighted list, summed."""
  n, b = len(g_s), g_s[0].shape[0]
  total = 0.0
  for i, (s, t) in enumerate(zip(g_s, g_t)):
    per = (s + margin) ** 2 * ((s > -margin) & (t <= 0)).double() + (
      s - margin
    ) ** 2 * ((s <= margin) & (t > 0)).double()
    total = total + 2 ** (i - n + 1) * per.abs().sum() / b / 1000 * 3
  return total


@pytest.mark.parametrize('margin', [1.0, 0.5])
def test_activation_boundary_matches_repdistiller(margin):
  rng = np.random.default_rng(15)
  student = [normal(rng, 2, 4, 4, 3, scale=2), normal(rng, 2, 2, 2, 5)]
  teacher = [normal(rng, 2, 4, 4, 3), normal(rng, 2, 2, 2, 5)]
  check_parity(
    lambda s, t: losses.activation_boundary_loss(s, t, margin=margin),
    lambda s, t: torch_ab(s, t, margin),
    student,
    teacher,
  )


def torch_vid(mu, log_scale, target, eps=1e-5):
  """RepDistiller VID.py VIDLoss after its regressor (target pooled)."""
  if target.shape[2] > mu.shape[2]:
    target = F.adaptive_avg_pool2d(target, mu.shape[2:])
  var = (torch.log(1.0 + torch.exp(log_scale)) + eps).view(1, -1, 1, 1)
  return (0.5 * ((mu - target) ** 2 / var + torch.log(var))).mean()


@pytest.mark.parametrize('ht', [3, 6])
def test_vid_matches_repdistiller(ht):
  rng = np.random.default_rng(16)
  mu, target = normal(rng, 2, 3, 3, 4), normal(rng, 2, ht, ht, 4)
  log_scale = normal(rng, 4) + np.log(np.exp(5.0 - 1e-5) - 1.0)
  # (mu, log_scale) are the student side: both gradients checked.
  check_parity(
    lambda s, t: losses.vid_loss(s[0], s[1], t),
    lambda s, t: torch_vid(s[0], s[1], t),
    [mu, log_scale.astype(np.float32)],
    target,
  )


def test_vid_rejects_a_predicted_mean_larger_than_the_teacher():
  with pytest.raises(ValueError, match='before the regressor'):
    losses.vid_loss(jnp.ones((2, 4, 4, 3)), jnp.ones(3), jnp.ones((2, 2, 2, 3)))


def torch_hcl(g_s, g_t):
  """mdistiller ReviewKD.py hcl_loss."""
  total = 0.0
  for fs, ft in zip(g_s, g_t):
    loss = F.mse_loss(fs, ft)
    cnt, tot = 1.0, 1.0
    for level in (4, 2, 1):
      if level >= fs.shape[2]:
        continue
      cnt /= 2.0
      loss = loss + cnt * F.mse_loss(
        F.adaptive_avg_pool2d(fs, (level, level)),
        F.adaptive_avg_pool2d(ft, (level, level)),
      )
      tot += cnt
    total = total + loss / tot
  return total


def test_review_kd_hcl_matches_mdistiller():
  # 8x8: levels 4, 2, 1; 3x3: levels 2, 1; 1x1: none.
  rng = np.random.default_rng(17)
  shapes = [(2, 8, 8, 3), (2, 3, 3, 4), (2, 1, 1, 5)]
  student, teacher = map_lists(rng, shapes)
  check_parity(losses.review_kd_hcl_loss, torch_hcl, student, teacher)
