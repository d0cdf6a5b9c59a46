"""Logit and hint losses: cross-entropy, Hinton KD, FitNets, attention transfer.

Expected values come from NumPy re-implementations or closed forms written
here, never from the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses

# Compiled once per input shape (temperature, weights and smoothing are traced):
# far cheaper than dispatching op by op.
cross_entropy = jax.jit(losses.cross_entropy)
kd_loss = jax.jit(losses.kd_loss)
kd_grad = jax.jit(jax.grad(losses.kd_loss, argnums=(0, 1)))
attention_transfer_loss = jax.jit(losses.attention_transfer_loss)


def np_log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_softmax(x, axis=-1):
  return np.exp(np_log_softmax(x, axis))


def np_cross_entropy(logits, labels, smoothing=0.0):
  num_classes = logits.shape[-1]
  targets = (
    np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes
  )
  return np.mean(-(targets * np_log_softmax(logits)).sum(-1))


def np_kd(student, teacher, temperature):
  p = np_softmax(teacher / temperature)
  kl = (
    p
    * (
      np_log_softmax(teacher / temperature)
      - np_log_softmax(student / temperature)
    )
  ).sum(-1)
  return temperature**2 * kl.mean()


@pytest.fixture
def logits():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(6, 10)).astype(np.float32) * 3
  teacher = rng.normal(size=(6, 10)).astype(np.float32) * 3
  labels = rng.integers(0, 10, size=(6,))
  return student, teacher, labels


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_cross_entropy_matches_numpy(logits, smoothing):
  student, _, labels = logits
  got = cross_entropy(student, labels, label_smoothing=smoothing)
  np.testing.assert_allclose(
    got, np_cross_entropy(student, labels, smoothing), rtol=1e-5
  )


def test_cross_entropy_rejects_mismatched_labels(logits):
  student, _, labels = logits
  with pytest.raises(ValueError, match='labels'):
    cross_entropy(student, labels[:3])


def test_kd_zero_at_equal_logits(logits):
  student, _, _ = logits
  np.testing.assert_allclose(kd_loss(student, student, 4.0), 0.0, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 2.0, 4.0])
def test_kd_matches_numpy_with_t_squared(logits, temperature):
  student, teacher, _ = logits
  got = kd_loss(student, teacher, temperature)
  np.testing.assert_allclose(
    got, np_kd(student, teacher, temperature), rtol=1e-5
  )
  # The T^2 factor: with logits scaled by T, KL at temperature T equals KL at 1.
  np.testing.assert_allclose(
    kd_loss(student * temperature, teacher * temperature, temperature),
    temperature**2 * np_kd(student, teacher, 1.0),
    rtol=1e-4,
  )


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_kd_student_gradient_closed_form(logits, temperature):
  student, teacher, _ = logits
  grad, _ = kd_grad(student, teacher, temperature)
  expected = (
    temperature
    * (np_softmax(student / temperature) - np_softmax(teacher / temperature))
    / student.shape[0]
  )
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_kd_teacher_gets_no_gradient(logits):
  student, teacher, _ = logits
  _, grad = kd_grad(student, teacher, 4.0)
  np.testing.assert_array_equal(grad, 0.0)


def test_kd_finite_for_large_logits():
  student = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
  teacher = jnp.array([[-1e4, 1e4, 0.0], [-1e4, 1e4, -5.0]])
  value = kd_loss(student, teacher, 4.0)
  grad, _ = kd_grad(student, teacher, 4.0)
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(
    value, np_kd(np.asarray(student), np.asarray(teacher), 4.0), rtol=1e-5
  )


def test_hinton_kd_total_combines_terms(logits):
  student, teacher, labels = logits
  total, terms = jax.jit(losses.hinton_kd_total)(
    student, teacher, labels, 4.0, 0.9
  )
  expected = 0.1 * np_cross_entropy(student, labels) + 0.9 * np_kd(
    student, teacher, 4.0
  )
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert set(terms) == {'ce', 'kd', 'total'}


def test_fitnet_loss_is_elementwise_mean():
  rng = np.random.default_rng(1)
  student = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
  teacher = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
  np.testing.assert_allclose(
    losses.fitnet_loss(student, teacher),
    np.mean((student.astype(np.float64) - teacher) ** 2),
    rtol=1e-5,
  )
  grad_teacher = jax.jit(jax.grad(losses.fitnet_loss, argnums=1))(
    student, teacher
  )
  np.testing.assert_array_equal(grad_teacher, 0.0)
  with pytest.raises(ValueError, match='same shape'):
    losses.fitnet_loss(student, teacher[..., :4])


def np_attention_map(feat):
  q = (np.asarray(feat, np.float64) ** 2).mean(-1).reshape(feat.shape[0], -1)
  return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def test_attention_transfer_matches_numpy_across_channel_counts():
  rng = np.random.default_rng(2)
  student = rng.normal(size=(3, 5, 5, 4)).astype(np.float32)
  teacher = rng.normal(size=(3, 5, 5, 16)).astype(np.float32)
  expected = np.mean(
    (np_attention_map(student) - np_attention_map(teacher)) ** 2
  )
  np.testing.assert_allclose(
    attention_transfer_loss(student, teacher), expected, rtol=1e-5
  )
  np.testing.assert_allclose(
    np.linalg.norm(losses.attention_map(student), axis=-1), 1.0, rtol=1e-6
  )
  grad_teacher = jax.jit(jax.grad(losses.attention_transfer_loss, argnums=1))(
    student, teacher
  )
  np.testing.assert_array_equal(grad_teacher, 0.0)


def test_attention_transfer_rejects_spatial_mismatch():
  with pytest.raises(ValueError, match='spatial'):
    losses.attention_transfer_loss(
      jnp.ones((2, 8, 8, 4)), jnp.ones((2, 4, 4, 4))
    )


def test_attention_transfer_zero_feature_has_finite_gradient():
  grad = jax.jit(jax.grad(losses.attention_transfer_loss))(
    jnp.zeros((2, 3, 3, 4)), jnp.ones((2, 3, 3, 4))
  )
  assert np.all(np.isfinite(grad))


def test_attention_transfer_total_weights_each_position():
  rng = np.random.default_rng(3)
  student = [rng.normal(size=(2, 6, 6, 4)), rng.normal(size=(2, 3, 3, 8))]
  teacher = [rng.normal(size=(2, 6, 6, 8)), rng.normal(size=(2, 3, 3, 16))]
  total, terms = jax.jit(losses.attention_transfer_total)(student, teacher)
  per_position = [
    np.mean((np_attention_map(s) - np_attention_map(t)) ** 2)
    for s, t in zip(student, teacher)
  ]
  np.testing.assert_allclose(total, 500.0 * sum(per_position), rtol=1e-5)
  np.testing.assert_allclose(
    [terms['at/0'], terms['at/1']], per_position, rtol=1e-5
  )
