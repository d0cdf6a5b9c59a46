"""OFD: margin from BN parameters, partial L2 distance, stage weighting.

References: Monte Carlo and math.erfc closed forms for the margin, a NumPy
element loop for the distance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

ofd_margin = jax.jit(losses.ofd_margin)
ofd_distance = jax.jit(losses.ofd_distance)


def np_margin(gamma, beta):
  """Official get_margin_from_BN in float64 with math.erfc."""
  std = abs(gamma)
  z = beta / std
  cdf = 0.5 * math.erfc(z / math.sqrt(2.0))  # Phi(-z)
  if cdf > 0.001:
    return beta - std * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) / cdf
  return -3.0 * std


MC_CASES = [
  (1.0, 0.0),
  (2.0, 1.0),
  (-1.5, 0.5),
  (0.5, -1.0),
  (1.0, 2.5),
  (-0.3, -0.2),
]


def test_margin_matches_monte_carlo_negative_mean():
  rng = np.random.default_rng(0)
  gammas, betas = map(np.float32, zip(*MC_CASES))
  got = np.asarray(ofd_margin(jnp.asarray(gammas), jnp.asarray(betas)))
  for (gamma, beta), margin in zip(MC_CASES, got):
    x = rng.normal(beta, abs(gamma), size=1_000_000)
    negative = x[x < 0]
    standard_error = negative.std() / math.sqrt(negative.size)
    assert abs(margin - negative.mean()) < 6 * standard_error + 1e-4, (
      gamma,
      beta,
    )
    assert margin < 0


def test_margin_matches_closed_form_on_both_sides_of_threshold():
  # Phi(-3) = 0.00135 > 0.001 keeps the formula; beta/|gamma| >= 3.1 falls back.
  cases = [
    (1.0, 3.0),
    (1.0, 3.1),
    (-2.0, 8.0),
    (0.1, 1.0),
    (3.0, -2.0),
    (1.0, -40.0),
  ]
  gammas, betas = map(np.float32, zip(*cases))
  got = ofd_margin(jnp.asarray(gammas), jnp.asarray(betas))
  expected = [np_margin(g, b) for g, b in cases]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1:4], [-3.0, -6.0, -0.3], rtol=1e-6)


def test_margin_gradients_are_finite_and_match_finite_differences():
  gammas = np.array([1.0, -1.5, 2.0, 1.0, 0.0, 0.0, 1e-3, 1.0], np.float32)
  betas = np.array([0.0, 0.5, 1.0, 5.0, -1.0, 1.0, -30.0, -40.0], np.float32)
  grad_gamma, grad_beta = jax.jit(
    jax.grad(lambda g, b: jnp.sum(losses.ofd_margin(g, b)), argnums=(0, 1))
  )(gammas, betas)
  assert np.all(np.isfinite(grad_gamma)) and np.all(np.isfinite(grad_beta))
  eps = 1e-5
  for i in range(3):  # formula branch, away from gamma = 0
    g, b = float(gammas[i]), float(betas[i])
    fd_beta = (np_margin(g, b + eps) - np_margin(g, b - eps)) / (2 * eps)
    fd_gamma = (np_margin(g + eps, b) - np_margin(g - eps, b)) / (2 * eps)
    np.testing.assert_allclose(grad_beta[i], fd_beta, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grad_gamma[i], fd_gamma, rtol=1e-3, atol=1e-5)
  # Fallback branch: d(-3|gamma|) = (-3 sign(gamma), 0).
  np.testing.assert_allclose([grad_gamma[3], grad_beta[3]], [-3.0, 0.0])


def np_ofd_distance(student, teacher, margin):
  """Element loop over the official distillation_loss, plus its student gradient."""
  total, grad = 0.0, np.zeros(student.shape)
  for idx in np.ndindex(*student.shape):
    target = max(float(teacher[idx]), float(margin[idx[-1]]))
    s = float(student[idx])
    if s > target or target > 0:
      total += (s - target) ** 2
      grad[idx] = 2 * (s - target)
  batch = student.shape[0]
  return total / batch, grad / batch


@pytest.fixture
def ofd_case():
  rng = np.random.default_rng(1)
  student = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  teacher = rng.normal(size=(3, 2, 2, 4)).astype(np.float32)
  margin = np.array([-0.5, -1.0, -0.2, -2.0], np.float32)
  # Pin down every case: teacher positive, teacher between margin and 0 with
  # the student above / below it, and teacher under the margin.
  teacher[0, 0, 0] = [1.0, -0.5, -0.1, -3.0]
  student[0, 0, 0] = [0.5, -0.8, 0.3, -1.5]
  return student, teacher, margin


def test_distance_matches_element_loop(ofd_case):
  student, teacher, margin = ofd_case
  expected, _ = np_ofd_distance(student, teacher, margin)
  np.testing.assert_allclose(
    ofd_distance(student, teacher, margin), expected, rtol=1e-5
  )


def test_distance_gradient_zero_on_masked_elements_and_teacher(ofd_case):
  student, teacher, margin = ofd_case
  grads = jax.jit(jax.grad(losses.ofd_distance, argnums=(0, 1, 2)))(
    student, teacher, margin
  )
  _, expected = np_ofd_distance(student, teacher, margin)
  np.testing.assert_allclose(grads[0], expected, rtol=1e-5, atol=1e-7)
  assert np.sum(expected == 0) > 0  # some elements are masked out
  np.testing.assert_array_equal(grads[0][expected == 0], 0.0)
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[2], 0.0)
  # The pinned row: positive teacher -> kept; student below margin'd teacher
  # at t = -0.5 -> masked; student above -> kept; teacher under the margin with
  # the student above it -> kept.
  np.testing.assert_array_equal(
    grads[0][0, 0, 0] != 0, [True, False, True, True]
  )


def test_distance_divides_by_batch_size(ofd_case):
  student, teacher, margin = ofd_case
  single = ofd_distance(student, teacher, margin)
  doubled = ofd_distance(
    np.concatenate([student] * 2), np.concatenate([teacher] * 2), margin
  )
  np.testing.assert_allclose(doubled, single, rtol=1e-6)


def test_distance_rejects_bad_margin(ofd_case):
  student, teacher, _ = ofd_case
  with pytest.raises(ValueError, match='margin'):
    ofd_distance(student, teacher, jnp.zeros((3,)))


def test_stage_weights_and_total():
  assert losses.ofd_stage_weights(3) == (0.25, 0.5, 1.0)
  rng = np.random.default_rng(2)
  shapes = [(2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 16)]
  student = [rng.normal(size=s).astype(np.float32) for s in shapes]
  teacher = [rng.normal(size=s).astype(np.float32) for s in shapes]
  margins = [-np.abs(rng.normal(size=s[-1])).astype(np.float32) for s in shapes]
  distances = [
    np_ofd_distance(s, t, m)[0] for s, t, m in zip(student, teacher, margins)
  ]
  weighted = distances[0] / 4 + distances[1] / 2 + distances[2]
  np.testing.assert_allclose(
    jax.jit(losses.ofd_feature_loss)(student, teacher, margins),
    weighted,
    rtol=1e-5,
  )
  logits = rng.normal(size=(2, 5)).astype(np.float32)
  labels = np.array([1, 3])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.mean(log_probs[np.arange(2), labels])
  total, terms = jax.jit(losses.ofd_total)(
    logits, labels, student, teacher, margins, 1e-3
  )
  np.testing.assert_allclose(total, ce + 1e-3 * weighted, rtol=1e-5)
  np.testing.assert_allclose(
    [terms[f'ofd/{i}'] for i in range(3)], distances, rtol=1e-5
  )
