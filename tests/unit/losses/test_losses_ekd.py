"""EKD: branch CE, ensemble CE, teacher pairing k mod T, feature and soft-label terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

K, T_TEACHERS, B, C = 5, 2, 4, 6

# Compiled once per input structure; the weights and temperature are traced.
ekd_loss = jax.jit(losses.ekd_loss)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels):
  return -np.mean(np_log_softmax(logits)[np.arange(len(labels)), labels])


def np_kd(student, teacher, temperature):
  log_pt, log_ps = (
    np_log_softmax(teacher / temperature),
    np_log_softmax(student / temperature),
  )
  return temperature**2 * np.mean((np.exp(log_pt) * (log_pt - log_ps)).sum(-1))


@pytest.fixture
def ekd_case():
  rng = np.random.default_rng(0)
  branch_logits = rng.normal(size=(K, B, C)).astype(np.float32) * 2
  teacher_logits = rng.normal(size=(T_TEACHERS, B, C)).astype(np.float32) * 2
  labels = rng.integers(0, C, size=(B,))
  widths = (3, 5)  # the two teachers differ in penultimate width
  teacher_feats = [rng.normal(size=(B, w)).astype(np.float32) for w in widths]
  branch_feats = [
    rng.normal(size=(B, widths[k % T_TEACHERS])).astype(np.float32)
    for k in range(K)
  ]
  return branch_logits, labels, branch_feats, teacher_logits, teacher_feats


def test_reduces_to_cross_entropies_without_distillation(ekd_case):
  branch_logits, labels, branch_feats, teacher_logits, teacher_feats = ekd_case
  total, terms = ekd_loss(
    branch_logits,
    labels,
    branch_feats,
    teacher_logits,
    teacher_feats,
    lambda_feat=0.0,
    lambda_kd=0.0,
  )
  ce_branches = [np_ce(z, labels) for z in branch_logits]
  ce_ensemble = np_ce(branch_logits.astype(np.float64).mean(0), labels)
  np.testing.assert_allclose(total, ce_ensemble + sum(ce_branches), rtol=1e-5)
  np.testing.assert_allclose(terms['ce_ensemble'], ce_ensemble, rtol=1e-5)
  np.testing.assert_allclose(
    [terms[f'ce/{k}'] for k in range(K)], ce_branches, rtol=1e-5
  )


def test_ensemble_logits_are_branch_mean(ekd_case):
  branch_logits = ekd_case[0]
  np.testing.assert_allclose(
    losses.ensemble_logits(branch_logits),
    branch_logits.astype(np.float64).mean(0),
    rtol=1e-6,
  )
  bf16 = losses.ensemble_logits(jnp.asarray(branch_logits, jnp.bfloat16))
  assert bf16.dtype == jnp.float32


def test_full_objective_matches_numpy(ekd_case):
  branch_logits, labels, branch_feats, teacher_logits, teacher_feats = ekd_case
  total, terms = ekd_loss(
    branch_logits,
    labels,
    branch_feats,
    teacher_logits,
    teacher_feats,
    temperature=3.0,
    lambda_feat=0.7,
    lambda_kd=0.4,
  )
  expected = np_ce(branch_logits.astype(np.float64).mean(0), labels)
  for k in range(K):
    t = k % T_TEACHERS
    expected += (
      np_ce(branch_logits[k], labels)
      + 0.7
      * np.mean((branch_feats[k].astype(np.float64) - teacher_feats[t]) ** 2)
      + 0.4 * np_kd(branch_logits[k], teacher_logits[t], 3.0)
    )
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(terms['total'], total)


def test_branch_k_learns_from_teacher_k_mod_t(ekd_case):
  _, labels, _, teacher_logits, teacher_feats = ekd_case
  assert losses.branch_teacher_pairing(K, T_TEACHERS) == (0, 1, 0, 1, 0)
  # Branches that copy their paired teacher have zero KD and feature terms...
  branch_logits = np.stack([teacher_logits[k % T_TEACHERS] for k in range(K)])
  branch_feats = [teacher_feats[k % T_TEACHERS] for k in range(K)]
  _, terms = ekd_loss(
    branch_logits, labels, branch_feats, teacher_logits, teacher_feats
  )
  np.testing.assert_allclose(
    [terms[f'kd/{k}'] for k in range(K)], 0.0, atol=1e-5
  )
  np.testing.assert_allclose(
    [terms[f'feat/{k}'] for k in range(K)], 0.0, atol=1e-7
  )
  # ...and copying the other teacher does not.
  swapped = np.stack([teacher_logits[(k + 1) % T_TEACHERS] for k in range(K)])
  _, terms = ekd_loss(
    swapped, labels, branch_feats, teacher_logits, teacher_feats
  )
  assert all(terms[f'kd/{k}'] > 1e-3 for k in range(K))


def test_stacked_features_and_teacher_gradients(ekd_case):
  branch_logits, labels, _, teacher_logits, _ = ekd_case
  rng = np.random.default_rng(1)
  branch_feats = rng.normal(size=(K, B, 3)).astype(np.float32)
  teacher_feats = rng.normal(size=(T_TEACHERS, B, 3)).astype(np.float32)
  loss = lambda *args: losses.ekd_loss(*args)[0]
  grads = jax.jit(jax.grad(loss, argnums=(0, 2, 3, 4)))(
    branch_logits, labels, branch_feats, teacher_logits, teacher_feats
  )
  assert np.all(np.isfinite(grads[0])) and np.any(grads[1] != 0)
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def test_rejects_feature_width_mismatch(ekd_case):
  branch_logits, labels, branch_feats, teacher_logits, teacher_feats = ekd_case
  wrong = [branch_feats[1]] + list(branch_feats[1:])
  with pytest.raises(ValueError, match='branch 0'):
    ekd_loss(branch_logits, labels, wrong, teacher_logits, teacher_feats)
  with pytest.raises(ValueError, match='expected 5'):
    ekd_loss(
      branch_logits, labels, branch_feats[:3], teacher_logits, teacher_feats
    )
