"""Tests for kdjax.optim: AdderNet LR scaling and the PyTorch-SGD-equivalent chain."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import optim


def _params():
  return {
    'stem': {'kernel': jnp.full((3, 3, 1, 2), 0.5)},
    'adder1': {'kernel': jnp.arange(8.0).reshape(2, 2, 1, 2) - 3.0},
    'bn': {'scale': jnp.ones((2,)), 'bias': jnp.zeros((2,))},
  }


ADDER_ONLY = {
  'stem': {'kernel': False},
  'adder1': {'kernel': True},
  'bn': {'scale': False, 'bias': False},
}


# ----------------------------------------------------------------- adder LR ---


def test_scale_layer_gradient_hand_computed():
  # ||[3, 4]|| = 5, k = 2: 0.2 * sqrt(2) / 5 = 0.0565685...
  np.testing.assert_allclose(
    optim.scale_layer_gradient(jnp.array([3.0, 4.0])),
    [0.16970563, 0.22627417],
    rtol=1e-6,
  )
  # ||[[1, 2], [2, 4]]|| = 5, k = 4: 0.2 * 2 / 5 = 0.08.
  np.testing.assert_allclose(
    optim.scale_layer_gradient(jnp.array([[1.0, 2.0], [2.0, 4.0]])),
    [[0.08, 0.16], [0.16, 0.32]],
    rtol=1e-6,
  )
  # eta = 1, k = 2: sqrt(2) * [3, 4] / 5.
  np.testing.assert_allclose(
    optim.scale_layer_gradient(jnp.array([3.0, 4.0]), eta=1.0),
    [0.84852814, 1.13137085],
    rtol=1e-6,
  )


def test_scaled_norm_is_eta_sqrt_k():
  g = jax.random.normal(jax.random.key(0), (3, 3, 4, 5)) * 37.0
  scaled = optim.scale_layer_gradient(g, eta=0.2)
  np.testing.assert_allclose(
    jnp.linalg.norm(scaled), 0.2 * math.sqrt(180), rtol=1e-5
  )


def test_zero_gradient_is_safe():
  scaled = optim.scale_layer_gradient(jnp.zeros((3, 3, 2, 2)))
  np.testing.assert_array_equal(scaled, 0.0)
  tx = optim.scale_by_adder_lr(mask=ADDER_ONLY)
  zeros = jax.tree.map(jnp.zeros_like, _params())
  updates, _ = jax.jit(tx.update)(zeros, tx.init(zeros))
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  np.testing.assert_array_equal(updates['adder1']['kernel'], 0.0)


def test_only_masked_leaves_change():
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  tx = optim.scale_by_adder_lr(0.2, mask=ADDER_ONLY)
  updates, _ = tx.update(grads, tx.init(params))
  # k = 8 all-2 gradient: norm 2 sqrt(8), so every entry becomes 0.2 * sqrt(8) * 2 / (2 sqrt(8)).
  np.testing.assert_allclose(
    updates['adder1']['kernel'], np.full((2, 2, 1, 2), 0.2), rtol=1e-6
  )
  for path in (('stem', 'kernel'), ('bn', 'scale'), ('bn', 'bias')):
    np.testing.assert_array_equal(
      updates[path[0]][path[1]], grads[path[0]][path[1]]
    )


def test_prefix_callable_and_optax_masked_agree():
  params = _params()
  grads = jax.tree.map(lambda p: p * 3.0 + 1.0, params)
  full, _ = optim.scale_by_adder_lr(mask=ADDER_ONLY).update(
    grads, optax.EmptyState()
  )
  prefix_mask = {'stem': False, 'adder1': True, 'bn': False}
  prefix, _ = optim.scale_by_adder_lr(mask=prefix_mask).update(
    grads, optax.EmptyState()
  )
  tx_fn = optim.scale_by_adder_lr(
    mask=lambda tree: optim.adder_kernel_mask(tree)
  )
  from_fn, _ = tx_fn.update(grads, tx_fn.init(params))
  tx_masked = optax.masked(optim.scale_by_adder_lr(), ADDER_ONLY)
  masked, _ = tx_masked.update(grads, tx_masked.init(params))
  for other in (prefix, from_fn, masked):
    jax.tree.map(np.testing.assert_array_equal, other, full)


def test_every_layer_scaled_separately():
  grads = {
    'adder_a': {'kernel': jnp.array([3.0, 4.0])},
    'adder_b': {'kernel': jnp.array([[1.0, 2.0], [2.0, 4.0]])},
  }
  updates, _ = optim.scale_by_adder_lr().update(grads, optax.EmptyState())
  np.testing.assert_allclose(
    updates['adder_a']['kernel'], [0.16970563, 0.22627417], rtol=1e-6
  )
  np.testing.assert_allclose(
    updates['adder_b']['kernel'], [[0.08, 0.16], [0.16, 0.32]], rtol=1e-6
  )


def test_bfloat16_gradient_keeps_dtype():
  scaled = optim.scale_layer_gradient(jnp.array([3.0, 4.0], jnp.bfloat16))
  assert scaled.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    scaled.astype(jnp.float32), [0.16970563, 0.22627417], rtol=1e-2
  )


def test_bad_eta():
  with pytest.raises(ValueError, match='eta'):
    optim.scale_by_adder_lr(0.0)


def test_adder_kernel_mask_default_and_custom_predicate():
  params = flax.core.freeze(
    {
      'params': {
        'stem_conv': {'kernel': jnp.zeros((3, 3, 3, 4))},
        'block0': {
          'adder1': {'kernel': jnp.zeros((3, 3, 4, 4))},
          'bn1': {'scale': jnp.ones(4)},
        },
        'AdderConv_0': {'kernel': jnp.zeros((1, 1, 4, 4))},
        'adder_bias_like': {'bias': jnp.zeros(4)},
        'head': [{'kernel': jnp.zeros((4, 10))}],
      }
    }
  )
  mask = flax.core.unfreeze(optim.adder_kernel_mask(params))['params']
  assert mask == {
    'stem_conv': {'kernel': False},
    'block0': {'adder1': {'kernel': True}, 'bn1': {'scale': False}},
    'AdderConv_0': {'kernel': True},
    'adder_bias_like': {'bias': False},
    'head': [{'kernel': False}],
  }
  seen = []
  custom = optim.adder_kernel_mask(
    params,
    lambda names, leaf: seen.append(names) or names[-2:] == ('0', 'kernel'),
  )
  assert ('params', 'head', '0', 'kernel') in seen
  assert flax.core.unfreeze(custom)['params']['head'] == [{'kernel': True}]
  assert not flax.core.unfreeze(custom)['params']['block0']['adder1']['kernel']


# ---------------------------------------------------------------- schedules ---


def _config(**overrides):
  config = optim.default_config()
  config.update(overrides)
  return config


def _lrs(config, steps_per_epoch, n):
  schedule = optim.build_schedule(config, steps_per_epoch)
  return np.array([float(schedule(t)) for t in range(n)])


def test_cosine_schedule_closed_form():
  # T = 2 epochs x 2 steps = 4: 0.05 * (1 + cos(pi t / 4)), then 0.
  lrs = _lrs(_config(learning_rate=0.1, schedule='cosine', epochs=2), 2, 6)
  np.testing.assert_allclose(
    lrs, [0.1, 0.08535534, 0.05, 0.01464466, 0.0, 0.0], atol=1e-7
  )
  jitted = jax.jit(
    optim.build_schedule(_config(learning_rate=0.1, epochs=2), 2)
  )
  np.testing.assert_allclose(jitted(jnp.int32(1)), 0.08535534, rtol=1e-6)


def test_step_schedule_closed_form():
  # PyTorch MultiStepLR: the drop happens at the first step of the boundary epoch.
  config = _config(
    learning_rate=0.1, schedule='step', decay_epochs=(1, 2), decay_factor=0.1
  )
  np.testing.assert_allclose(
    _lrs(config, 2, 6), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
  )


def test_constant_warmup_and_per_epoch_schedules():
  np.testing.assert_allclose(
    _lrs(_config(learning_rate=0.3, schedule='constant'), 5, 3),
    [0.3] * 3,
    rtol=1e-7,
  )
  # Warm-up over 1 epoch of 2 steps, then cosine over the remaining 4 steps.
  warm = _config(
    learning_rate=0.1, schedule='cosine', epochs=3, warmup_epochs=1
  )
  np.testing.assert_allclose(
    _lrs(warm, 2, 7),
    [0.05, 0.1, 0.1, 0.08535534, 0.05, 0.01464466, 0.0],
    atol=1e-7,
  )
  per_epoch = _config(
    learning_rate=0.1, schedule='cosine', epochs=2, lr_per_epoch=True
  )
  np.testing.assert_allclose(
    _lrs(per_epoch, 2, 5), [0.1, 0.1, 0.05, 0.05, 0.0], atol=1e-7
  )
  per_epoch_warm = _config(
    learning_rate=0.1,
    schedule='step',
    decay_epochs=(3,),
    warmup_epochs=2,
    lr_per_epoch=True,
  )
  np.testing.assert_allclose(
    _lrs(per_epoch_warm, 2, 8),
    [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01],
    rtol=1e-6,
  )


def test_schedule_errors():
  with pytest.raises(
    ValueError, match="Unknown learning-rate schedule 'linear'"
  ):
    optim.build_schedule(_config(schedule='linear'), 10)
  with pytest.raises(ValueError, match='must exceed warmup'):
    optim.build_schedule(_config(epochs=2, warmup_epochs=2), 10)
  with pytest.raises(ValueError, match='steps_per_epoch'):
    optim.build_schedule(_config(), 0)


# --------------------------------------------------------- the SGD chain ---


def reference_torch_sgd(
  params,
  grads_per_step,
  lrs,
  *,
  momentum,
  nesterov,
  weight_decay,
  adder_keys=(),
  eta=None,
  reset_steps=(),
):
  """torch.optim.SGD(dampening=0) step by step, with AdderNet scaling in front.

  The torch code path, per parameter p with gradient g:
    d = g + wd * p
    buf = d on the first step (or after a reset), else mu * buf + d
    d = d + mu * buf if nesterov else buf
    p -= lr * d
  """
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  bufs = {k: None for k in params}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs)):
    for k in params:
      g = np.asarray(grads[k], np.float64)
      if k in adder_keys and eta is not None:
        norm = np.sqrt(np.sum(g * g))
        g = eta * np.sqrt(g.size) * g / norm if norm > 0 else g
      d = g + weight_decay * params[k]
      if momentum:
        if t in reset_steps or bufs[k] is None:
          bufs[k] = d.copy()
        else:
          bufs[k] = momentum * bufs[k] + d
        d = d + momentum * bufs[k] if nesterov else bufs[k]
      params[k] = params[k] - lr * d
  return params


def _flat_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    'adder': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
    'conv': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
    'bias': rng.normal(size=(4,)).astype(np.float32),
  }


def _grad_sequence(n, seed=1):
  rng = np.random.default_rng(seed)
  shapes = {k: v.shape for k, v in _flat_params().items()}
  grads = [
    {k: (rng.normal(size=s) * 10).astype(np.float32) for k, s in shapes.items()}
    for _ in range(n)
  ]
  grads[2]['adder'] = np.zeros_like(
    grads[2]['adder']
  )  # exercises the zero guard in-chain
  return grads


def _run_chain(config, steps_per_epoch, n, adder_mask=None):
  params = jax.tree.map(jnp.asarray, _flat_params())
  tx = optim.build_optimizer(
    config, params, steps_per_epoch=steps_per_epoch, adder_mask=adder_mask
  )
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in _grad_sequence(n):
    params, state = step(params, state, grads)
  return params


CHAIN_CASES = {
  'momentum_cosine_wd': dict(
    momentum=0.9, nesterov=False, weight_decay=5e-4, schedule='cosine', epochs=3
  ),
  'nesterov_step_wd': dict(
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule='step',
    decay_epochs=(1, 2),
    decay_factor=0.1,
    epochs=3,
  ),
  'plain_sgd_constant': dict(
    momentum=0.0, nesterov=False, weight_decay=0.0, schedule='constant'
  ),
  'nesterov_step_reset': dict(
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-2,
    schedule='step',
    decay_epochs=(1, 2),
    decay_factor=0.5,
    epochs=3,
    reset_momentum_at_boundaries=True,
  ),
  'momentum_warmup_cosine': dict(
    momentum=0.8,
    nesterov=False,
    weight_decay=1e-3,
    schedule='cosine',
    epochs=3,
    warmup_epochs=1,
  ),
}


@pytest.mark.parametrize('with_adder', [False, True], ids=['no_adder', 'adder'])
@pytest.mark.parametrize('case', sorted(CHAIN_CASES))
def test_chain_matches_torch_sgd_loop(case, with_adder):
  steps_per_epoch, n = 3, 9
  config = _config(learning_rate=0.1, adder_eta=0.2, **CHAIN_CASES[case])
  adder_mask = (
    {'adder': True, 'conv': False, 'bias': False} if with_adder else None
  )
  got = _run_chain(config, steps_per_epoch, n, adder_mask)

  lrs = [
    float(optim.build_schedule(config, steps_per_epoch)(t)) for t in range(n)
  ]
  reset_steps = (
    optim.decay_boundary_steps(config, steps_per_epoch)
    if config.reset_momentum_at_boundaries
    else ()
  )
  want = reference_torch_sgd(
    _flat_params(),
    _grad_sequence(n),
    lrs,
    momentum=config.momentum,
    nesterov=config.nesterov,
    weight_decay=config.weight_decay,
    adder_keys=('adder',) if with_adder else (),
    eta=0.2,
    reset_steps=reset_steps,
  )
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_reset_actually_changes_the_trajectory():
  base = dict(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    schedule='step',
    decay_epochs=(1,),
    epochs=3,
  )
  kept = _run_chain(_config(**base), 3, 6)
  reset = _run_chain(_config(reset_momentum_at_boundaries=True, **base), 3, 6)
  assert not np.allclose(kept['conv'], reset['conv'])


def test_adder_eta_none_disables_scaling():
  config = _config(
    learning_rate=0.1,
    momentum=0.0,
    weight_decay=0.0,
    schedule='constant',
    adder_eta=None,
  )
  got = _run_chain(
    config, 3, 4, adder_mask={'adder': True, 'conv': False, 'bias': False}
  )
  plain = _run_chain(config, 3, 4)
  np.testing.assert_array_equal(got['adder'], plain['adder'])


def test_callable_adder_mask_resolved_from_params():
  config = _config(learning_rate=0.1, schedule='constant')
  by_fn = _run_chain(
    config,
    3,
    4,
    adder_mask=lambda p: jax.tree.map_with_path(
      lambda path, _: optim.path_names(path)[0] == 'adder', p
    ),
  )
  by_tree = _run_chain(
    config, 3, 4, adder_mask={'adder': True, 'conv': False, 'bias': False}
  )
  jax.tree.map(np.testing.assert_array_equal, by_fn, by_tree)


def test_builder_errors():
  params = jax.tree.map(jnp.asarray, _flat_params())
  with pytest.raises(ValueError, match="Unknown optimizer 'adagrad'"):
    optim.build_optimizer(_config(name='adagrad'), params, steps_per_epoch=3)
  with pytest.raises(ValueError, match='Unknown learning-rate schedule'):
    optim.build_optimizer(_config(schedule='poly'), params, steps_per_epoch=3)
  with pytest.raises(ValueError, match='Nesterov'):
    optim.build_optimizer(
      _config(momentum=0.0, nesterov=True), params, steps_per_epoch=3
    )
  with pytest.raises(ValueError, match='reset_momentum_at_boundaries'):
    optim.build_optimizer(
      _config(reset_momentum_at_boundaries=True), params, steps_per_epoch=3
    )
  with pytest.raises(ValueError, match='adder_mask does not match'):
    optim.build_optimizer(
      _config(), params, steps_per_epoch=3, adder_mask={'other': True}
    )


def test_chain_matches_torch_when_available():
  torch = pytest.importorskip('torch')
  config = _config(
    learning_rate=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule='step',
    decay_epochs=(1, 2),
    decay_factor=0.1,
    adder_eta=None,
  )
  steps_per_epoch, n = 3, 9
  got = _run_chain(config, steps_per_epoch, n)
  torch_params = {
    k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
    for k, v in _flat_params().items()
  }
  opt = torch.optim.SGD(
    list(torch_params.values()),
    lr=0.1,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
  )
  sched = torch.optim.lr_scheduler.MultiStepLR(
    opt, milestones=[3, 6], gamma=0.1
  )
  for grads in _grad_sequence(n):
    for k, p in torch_params.items():
      p.grad = torch.tensor(grads[k], dtype=torch.float64)
    opt.step()
    sched.step()  # stepped per update here, so milestones are in steps
  for k, p in torch_params.items():
    np.testing.assert_allclose(
      got[k], p.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=k
    )
