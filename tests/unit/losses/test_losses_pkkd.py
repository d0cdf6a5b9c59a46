"""PKKD kernels and losses against distances computed from explicitly extracted patches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kdjax import losses
from kdjax.models import connectors

DIMS = ('NHWC', 'HWIO', 'NHWC')


def np_patch_distances(x, f, stride, padding):
  """Squared L2 and L1 distances between every patch and every filter, by explicit loops.

  Returns two (B, Ho, Wo, O) float64 arrays.
  """
  x, f = np.asarray(x, np.float64), np.asarray(f, np.float64)
  kh, kw, _, out_channels = f.shape
  if padding == 'SAME':
    height, width = x.shape[1:3]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kh - height, 0)
    pad_w = max((out_w - 1) * stride + kw - width, 0)
    x = np.pad(
      x,
      (
        (0, 0),
        (pad_h // 2, pad_h - pad_h // 2),
        (pad_w // 2, pad_w - pad_w // 2),
        (0, 0),
      ),
    )
  else:
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
  filters = f.reshape(-1, out_channels).T  # (O, kh*kw*C)
  sq, l1 = (
    np.zeros((x.shape[0], out_h, out_w, out_channels)) for _ in range(2)
  )
  for b in range(x.shape[0]):
    for i in range(out_h):
      for j in range(out_w):
        patch = x[
          b, i * stride : i * stride + kh, j * stride : j * stride + kw
        ].reshape(-1)
        sq[b, i, j] = ((patch - filters) ** 2).sum(-1)
        l1[b, i, j] = np.abs(patch - filters).sum(-1)
  return sq, l1


def conv_pieces(x, f, stride, padding):
  """x . f and ||x_p||^2 by two lax convolutions, written here independently of kdjax."""
  conv = lambda a, k: lax.conv_general_dilated(
    a,
    k,
    (stride, stride),
    padding,
    dimension_numbers=DIMS,
    precision=lax.Precision.HIGHEST,
  )
  conv_out = conv(jnp.asarray(x), jnp.asarray(f))
  ones = jnp.ones(f.shape[:3] + (1,), jnp.float32)
  patch_energy = conv(jnp.square(jnp.asarray(x)), ones)
  return conv_out, patch_energy


@pytest.fixture
def small_conv():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  f = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  return x, f


@pytest.mark.parametrize('stride,padding', [(1, 'SAME'), (2, 'VALID')])
def test_gaussian_kernel_equals_patch_distance_kernel(
  small_conv, stride, padding
):
  x, f = small_conv
  sq, _ = np_patch_distances(x, f, stride, padding)
  conv_out, patch_energy = conv_pieces(x, f, stride, padding)
  filter_norm = (f.astype(np.float64) ** 2).reshape(-1, f.shape[-1]).sum(0)
  sigma = 3.0
  got = losses.gaussian_kernel_features(
    conv_out, patch_energy, filter_norm, sigma
  )
  np.testing.assert_allclose(
    got, np.exp(-sq / (2 * sigma**2)), rtol=1e-4, atol=1e-6
  )
  # The library's own patch / filter norms agree with the explicit patches.
  np.testing.assert_allclose(
    losses.patch_sq_norms(x, (3, 3), stride, padding), patch_energy, rtol=1e-5
  )
  np.testing.assert_allclose(losses.filter_sq_norms(f), filter_norm, rtol=1e-5)
  np.testing.assert_allclose(
    losses.gaussian_sq_distance(conv_out, patch_energy, filter_norm),
    sq,
    rtol=1e-4,
  )


@pytest.mark.parametrize('sigma_scale', [1.0, 2.0])
def test_gaussian_kernel_from_conv_uses_mean_distance_bandwidth(
  small_conv, sigma_scale
):
  x, f = small_conv
  sq, _ = np_patch_distances(x, f, 1, 'SAME')
  conv_out, _ = conv_pieces(x, f, 1, 'SAME')
  got = losses.gaussian_kernel_from_conv(
    x, f, conv_out, 1, 'SAME', sigma_scale=sigma_scale
  )
  np.testing.assert_allclose(
    got, np.exp(-sq / (sigma_scale * sq.mean())), rtol=1e-4
  )


def test_gaussian_distance_clamped_at_zero():
  # A patch equal to the filter: round-off may make the expanded form negative.
  d2 = losses.gaussian_sq_distance(
    jnp.array([[[[1.0000001]]]]), jnp.array([[[[1.0]]]]), jnp.array([1.0])
  )
  assert float(d2.min()) >= 0.0
  h = losses.gaussian_kernel_features(
    jnp.full((1, 1, 1, 1), 5.0), jnp.ones((1, 1, 1, 1)), jnp.ones((1,)), 1.0
  )
  np.testing.assert_allclose(h, 1.0)


def test_laplace_kernel_equals_patch_l1_kernel(small_conv):
  x, f = small_conv
  _, l1 = np_patch_distances(x, f, 1, 'SAME')
  adder_out = jnp.asarray(-l1, jnp.float32)
  np.testing.assert_allclose(
    losses.laplace_kernel_features(adder_out, 4.0), np.exp(-l1 / 4.0), rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.laplace_kernel_from_adder(adder_out, sigma_scale=2.0),
    np.exp(-l1 / (2.0 * l1.mean())),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    losses.laplace_kernel_sigma(adder_out, 2.0), 2.0 * l1.mean(), rtol=1e-5
  )


def test_default_sigma_keeps_kernels_inside_unit_interval_at_k_4608():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 512)).astype(np.float32)
  f = rng.normal(size=(3, 3, 512, 8)).astype(np.float32)
  sq, l1 = np_patch_distances(x, f, 1, 'SAME')
  # A fixed unit bandwidth underflows everywhere at this K; that is the problem solved here.
  assert np.all(np.exp(np.float32(-sq / 2)) == 0) and np.all(
    np.exp(np.float32(-l1)) == 0
  )
  conv_out, _ = conv_pieces(x, f, 1, 'SAME')
  gaussian = np.asarray(losses.gaussian_kernel_from_conv(x, f, conv_out))
  laplace = np.asarray(
    losses.laplace_kernel_from_adder(jnp.asarray(-l1, jnp.float32))
  )
  for values, dist in ((gaussian, sq), (laplace, l1)):
    assert np.all(np.isfinite(values))
    assert np.all(values > 1e-3) and np.all(values <= 1.0)
    assert values.std() > 0  # not a constant map
    # exp(-d / mean d): exactly e^-1 at the mean distance.
    np.testing.assert_allclose(values, np.exp(-dist / dist.mean()), rtol=1e-3)


def test_feature_loss_sums_layer_means_and_stops_teacher_gradient():
  rng = np.random.default_rng(2)
  student = {
    'stage1': rng.uniform(size=(2, 4, 4, 3)).astype(np.float32),
    'stage2': rng.uniform(size=(2, 2, 2, 5)).astype(np.float32),
  }
  teacher = {
    'stage1': rng.uniform(size=(2, 4, 4, 3)).astype(np.float32),
    'stage2': rng.uniform(size=(2, 2, 2, 5)).astype(np.float32),
  }
  expected = sum(
    np.mean((student[k].astype(np.float64) - teacher[k]) ** 2) for k in student
  )
  np.testing.assert_allclose(
    losses.pkkd_feature_loss(student, teacher), expected, rtol=1e-5
  )
  grad_student, grad_teacher = jax.grad(
    losses.pkkd_feature_loss, argnums=(0, 1)
  )(student, teacher)
  for k in student:
    np.testing.assert_array_equal(grad_teacher[k], 0.0)
    assert np.any(grad_student[k] != 0)
  with pytest.raises(ValueError):
    losses.pkkd_feature_loss(student, {'stage1': teacher['stage1']})


def test_pkkd_total_default_weights():
  rng = np.random.default_rng(3)
  s_logits, t_logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
  labels = np.array([0, 3, 6, 2])
  g = [rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)]
  h = [rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)]

  def log_softmax(z):
    z = z.astype(np.float64)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  ce = -np.mean(log_softmax(s_logits)[np.arange(4), labels])
  log_pt, log_ps = log_softmax(t_logits / 4), log_softmax(s_logits / 4)
  kd = 16 * np.mean((np.exp(log_pt) * (log_pt - log_ps)).sum(-1))
  feat = np.mean((g[0].astype(np.float64) - h[0]) ** 2)
  total, terms = losses.pkkd_total(s_logits, t_logits, labels, g, h)
  np.testing.assert_allclose(total, ce + 5 * kd + 5 * feat, rtol=1e-5)
  np.testing.assert_allclose(
    [terms['ce'], terms['kd'], terms['feat']], [ce, kd, feat], rtol=1e-5
  )


def test_student_gradient_reaches_adder_output_and_rho():
  """End to end on the student side: adder output -> Laplace kernel -> rho -> loss."""
  rng = np.random.default_rng(4)
  adder_out = -jnp.asarray(
    rng.uniform(1.0, 3.0, size=(2, 3, 3, 4)), jnp.float32
  )
  teacher_h = jnp.asarray(rng.uniform(size=(2, 3, 3, 4)), jnp.float32)
  rho = connectors.KernelTransform(features=4)
  params = rho.init(jax.random.key(0), adder_out)

  def loss_fn(params, adder_out):
    g = losses.laplace_kernel_from_adder(adder_out)
    return losses.pkkd_feature_loss([rho.apply(params, g)], [teacher_h])

  grad_params, grad_adder = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(
    params, adder_out
  )
  leaves = jax.tree.leaves(grad_params) + [grad_adder]
  assert all(np.all(np.isfinite(leaf)) and np.any(leaf != 0) for leaf in leaves)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(teacher_logits, student_logits, temperature):
  """mean_b KL(softmax(z_t/T) || softmax(z_s/T)), no T^2."""
  log_pt = np_log_softmax(np.asarray(teacher_logits) / temperature)
  log_ps = np_log_softmax(np.asarray(student_logits) / temperature)
  return np.mean((np.exp(log_pt) * (log_pt - log_ps)).sum(-1))


@pytest.mark.parametrize('t_squared', [True, False])
def test_pkkd_total_with_and_without_t_squared(t_squared):
  rng = np.random.default_rng(5)
  s_logits, t_logits = rng.normal(size=(2, 4, 7)).astype(np.float32) * 3
  labels = np.array([1, 3, 0, 2])
  g = [rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)]
  h = [rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)]
  temperature = 3.0
  ce = -np.mean(np_log_softmax(s_logits)[np.arange(4), labels])
  kd = np_kl(t_logits, s_logits, temperature) * (
    temperature**2 if t_squared else 1.0
  )
  feat = np.mean((g[0].astype(np.float64) - h[0]) ** 2)
  total, terms = losses.pkkd_total(
    s_logits,
    t_logits,
    labels,
    g,
    h,
    alpha=0.7,
    beta=2.0,
    temperature=temperature,
    kd_t_squared=t_squared,
  )
  np.testing.assert_allclose(terms['kd'], kd, rtol=1e-5)
  np.testing.assert_allclose(total, ce + 0.7 * kd + 2.0 * feat, rtol=1e-5)
  np.testing.assert_allclose(
    losses.soft_label_loss(s_logits, t_logits, temperature, t_squared),
    kd,
    rtol=1e-5,
  )


def test_grouped_patch_sq_norms_match_explicit_patches():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
  got = np.asarray(
    losses.patch_sq_norms(x, (3, 3), 2, 'SAME', feature_group_count=2)
  )
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((2, 3, 3, 2))
  for i in range(3):
    for j in range(3):
      patch = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
      for group in range(2):
        channels = patch[..., 2 * group : 2 * group + 2]
        expected[:, i, j, group] = (channels**2).sum((1, 2, 3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match='feature_group_count'):
    losses.patch_sq_norms(x, (3, 3), 1, 'SAME', feature_group_count=3)


def test_model_kernel_ingredients_are_the_patch_distances():
  """ConvOrAdder's (y, patch_energy, filter_sq_norm) give the explicit ||x_p - f_o||^2."""
  from kdjax import models  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  layer = models.ConvOrAdder(4, 3, 2, precision=lax.Precision.HIGHEST)
  params = layer.init(jax.random.key(0), x)
  y, energy, filter_norm = layer.apply(params, x, return_kernel_features=True)
  f = np.asarray(params['params']['kernel'])
  sq, _ = np_patch_distances(x, f, 2, 'SAME')
  np.testing.assert_allclose(
    losses.gaussian_sq_distance(y, energy, filter_norm), sq, rtol=1e-4
  )
  np.testing.assert_allclose(
    losses.gaussian_kernel_from_norms(y, energy, filter_norm, 2.0),
    np.exp(-sq / (2.0 * sq.mean())),
    rtol=1e-4,
  )


# ----------------------------------------------------------- the PKKD method


def _method(**knobs):
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top
  from kdjax.methods import build_method  # pylint: disable=g-import-not-at-top

  config = config_defaults.load_config_module('configs/pkkd.py').get_config()
  tiny = dict(stem_width=4, stage_widths=(4, 4, 8))
  config.model = config_defaults.model('resnet8', 'adder', **tiny)
  config.teacher = config_defaults.model('resnet8', 'conv', **tiny)
  # Explicit weights, whatever the preset's defaults are.
  config.pkkd.update(
    {
      **dict(
        alpha=5.0, beta=5.0, ramp_steps=0, ramp_fraction=0.0, kd_t_squared=True
      ),
      **knobs,
    }
  )
  return build_method(config, num_classes=10, image_shape=(8, 8, 1))


@pytest.fixture(scope='module')
def tiny_batch():
  rng = np.random.default_rng(8)
  return {
    'image': jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32),
    'label': jnp.asarray([0, 1, 2, 3], jnp.int32),
  }


def test_ramp_scales_alpha_and_beta_linearly_with_the_step(tiny_batch):
  method = _method(ramp_steps=4, alpha=2.0, beta=3.0, teacher_kd_weight=0.5)
  # Jitted: one compile instead of one per primitive of the two models.
  params, stats = jax.jit(method.init)(jax.random.key(0), tiny_batch['image'])
  loss = jax.jit(method.loss)
  for step, ramp in ((0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (9, 1.0)):
    total, (new_stats, m) = loss(
      jnp.int32(step), params, stats, {}, tiny_batch, jax.random.key(1)
    )
    # The ramp follows the trainer's step: batch_stats holds BN statistics only.
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    np.testing.assert_allclose(m['pkkd/ramp'], ramp, rtol=1e-6)
    expected = (
      m['loss/ce']
      + ramp * (2.0 * m['loss/kd'] + 3.0 * m['loss/feat'])
      + m['loss/teacher_ce']
      + 0.5 * ramp * m['loss/teacher_kd']
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)
  # With or without a ramp, the state is the same (checkpoints as before).
  _, plain_stats = jax.eval_shape(
    _method().init, jax.random.key(0), tiny_batch['image']
  )
  assert jax.tree.structure(plain_stats) == jax.tree.structure(stats)


def test_teacher_kd_weight_trains_only_the_teacher(tiny_batch):
  """The teacher's gradient is that of CE + w T^2 KL(sg(p_s) || p_t); the student's is unchanged."""
  from kdjax.methods import base  # pylint: disable=g-import-not-at-top

  weight, temperature = 0.8, 2.0
  mutual = _method(teacher_kd_weight=weight, temperature=temperature)
  plain = _method(temperature=temperature)
  params, stats = jax.jit(mutual.init)(jax.random.key(0), tiny_batch['image'])
  grad = lambda m: jax.jit(
    jax.grad(
      lambda p: m.loss(0, p, stats, {}, tiny_batch, jax.random.key(1))[0]
    )
  )(params)
  g_mutual, g_plain = grad(mutual), grad(plain)
  s_logits = jax.jit(
    lambda p, s, x: base.run_model(mutual.student, p, s, x, True)[0]
  )(params['student']['model'], stats['student']['model'], tiny_batch['image'])

  def teacher_reference(teacher_params):
    t_logits = base.run_model(
      mutual.teacher,
      teacher_params,
      stats['teacher'],
      tiny_batch['image'],
      True,
    )[0]
    log_pt = jax.nn.log_softmax(t_logits)
    ce = -jnp.mean(log_pt[jnp.arange(4), tiny_batch['label']])
    log_ps_t = jax.nn.log_softmax(jax.lax.stop_gradient(s_logits) / temperature)
    log_pt_t = jax.nn.log_softmax(t_logits / temperature)
    kl = jnp.mean(jnp.sum(jnp.exp(log_ps_t) * (log_ps_t - log_pt_t), -1))
    return ce + weight * temperature**2 * kl

  expected = jax.jit(jax.grad(teacher_reference))(params['teacher'])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
    g_mutual['teacher'],
    expected,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    g_mutual['student'],
    g_plain['student'],
  )
  # And the reference differs from CE alone: the term is really there.
  diff = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))),
    g_mutual['teacher'],
    g_plain['teacher'],
  )
  assert max(jax.tree.leaves(diff)) > 1e-4


def test_ramp_fraction_is_a_share_of_the_run_whatever_its_length():
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top
  from kdjax.methods import build_method  # pylint: disable=g-import-not-at-top

  config = config_defaults.load_config_module('configs/pkkd.py').get_config()
  assert config.pkkd.ramp_fraction == 0.5  # The demo's half-run ramp.
  tiny = dict(stem_width=4, stage_widths=(4, 4, 8))
  config.model = config_defaults.model('resnet8', 'adder', **tiny)
  config.teacher = config_defaults.model('resnet8', 'conv', **tiny)
  # num_epochs x steps per epoch x 0.5, rounded: 10 x 6 / 2 = 30, 3 x 7 / 2
  # = 10.5 -> 10 (round half to even), and never below one step.
  for epochs, steps_per_epoch, ramp_steps in (
    (10, 6, 30),
    (3, 7, 10),
    (1, 1, 1),
  ):
    config.num_epochs = epochs
    method = build_method(
      config,
      num_classes=10,
      image_shape=(8, 8, 1),
      steps_per_epoch=steps_per_epoch,
    )
    for step in (0, ramp_steps // 2, ramp_steps, 2 * ramp_steps + 5):
      np.testing.assert_allclose(
        method.ramp_factor(step), min(1.0, step / ramp_steps), rtol=1e-6
      )


def test_new_knobs_reject_bad_values():
  with pytest.raises(ValueError, match='ramp_steps'):
    _method(ramp_steps=-1)
  with pytest.raises(ValueError, match='ramp_fraction'):
    _method(ramp_fraction=1.5)
  with pytest.raises(ValueError, match='both set a ramp'):
    _method(ramp_steps=10, ramp_fraction=0.5)
  with pytest.raises(ValueError, match="teacher_mode='cotrained'"):
    _method(teacher_kd_weight=1.0, teacher_mode='frozen')
  with pytest.raises(ValueError, match='teacher_kd_weight'):
    _method(teacher_kd_weight=-1.0)
