"""AB, FT and FSP's initialization phase (RepDistiller's ``init``).

Its modules against PyTorch definitions written from RepDistiller's
models/util.py, what one step of the phase changes (and what it must leave
bit for bit), its config (epochs, constant rate, RepDistiller's FT rate rule)
and the plan that runs it first. The whole chain through the trainer is in
tests/integration/test_distill_run.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from kdjax import methods
from kdjax.errors import ConfigError
from kdjax.methods import distill
from kdjax.methods import distill_terms
from kdjax.models import connectors
from kdjax.train import plan
from kdjax.train import setup as run_setup
from kdjax.train import step as run_step
from helpers import distill_tiny_config

IMAGE_SHAPE = (16, 16, 1)
NUM_CLASSES = 5


def _torch_paraphraser(channels, k=0.5):
  """RepDistiller models/util.py Paraphraser (use_bn=False), as (enc, dec)."""
  out = int(channels * k)
  act = lambda: tnn.LeakyReLU(0.1)
  encoder = tnn.Sequential(
    tnn.Conv2d(channels, channels, 3, 1, 1),
    act(),
    tnn.Conv2d(channels, out, 3, 1, 1),
    act(),
    tnn.Conv2d(out, out, 3, 1, 1),
    act(),
  )
  decoder = tnn.Sequential(
    tnn.ConvTranspose2d(out, out, 3, 1, 1),
    act(),
    tnn.ConvTranspose2d(out, channels, 3, 1, 1),
    act(),
    tnn.ConvTranspose2d(channels, channels, 3, 1, 1),
    act(),
  )
  return encoder, decoder


def _torch_translator(s_channels, t_channels, k=0.5):
  """RepDistiller models/util.py Translator (use_bn=True)."""
  out = int(t_channels * k)
  layers = []
  for cin, cout in ((s_channels, s_channels), (s_channels, out), (out, out)):
    layers += [tnn.Conv2d(cin, cout, 3, 1, 1), tnn.BatchNorm2d(cout)]
    layers.append(tnn.LeakyReLU(0.1))
  return tnn.Sequential(*layers)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paraphraser_and_translator_are_repdistillers():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
  encoder, decoder = _torch_paraphraser(16)
  paraphraser = connectors.Paraphraser(16, 0.5)
  params = paraphraser.init(jax.random.key(0), jnp.asarray(x))['params']
  torch_params = sum(p.numel() for p in encoder.parameters())
  torch_params += sum(p.numel() for p in decoder.parameters())
  assert _count(params) == torch_params
  # The encoder (the factor) with the PyTorch weights: equal values.
  convs = [m for m in encoder if isinstance(m, tnn.Conv2d)]
  params = dict(params)
  for i, conv in enumerate(convs):
    params[f'enc{i}'] = {
      'kernel': jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
      'bias': jnp.asarray(conv.bias.detach().numpy()),
    }
  factor, rebuilt = paraphraser.apply({'params': params}, jnp.asarray(x))
  with torch.no_grad():
    want = encoder(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(
    np.asarray(factor), want.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5
  )
  assert factor.shape == (2, 8, 8, 8) and rebuilt.shape == x.shape
  translator = connectors.Translator(12, 8)
  variables = translator.init(
    jax.random.key(1), jnp.zeros((2, 8, 8, 12)), train=False
  )
  reference = _torch_translator(12, 16)
  assert _count(variables['params']) == sum(
    p.numel() for p in reference.parameters()
  )


def _init_phase(terms, **options):
  """(config, its init-phase config, that run's method) for ``terms``."""
  config = distill_tiny_config(terms)
  if 'ab' in terms:  # Wider teacher stages: AB's connectors are convs.
    config.teacher.kwargs.stage_widths = (8, 8, 8)
  for name, opts in options.items():
    config.distill[name].update(opts)
  init = distill.Distill.init_phase_config(config)
  method = methods.build_method(
    init, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE, steps_per_epoch=3
  )
  return config, init, method


@pytest.mark.parametrize(
  'terms, options, trains_model, modules',
  [
    (('ab',), {}, True, ('ab',)),
    (('fsp',), {'fsp': dict(init_phase=True)}, True, ()),
    (('ft',), {}, False, ('paraphraser',)),
  ],
)
def test_one_init_step_trains_only_the_init_modules(
  terms, options, trains_model, modules
):
  config, init, method = _init_phase(terms, **options)
  assert init.method == 'distill_init'
  assert init.optimizer.schedule == 'constant'
  keys = jax.random.split(jax.random.key(3), 3)
  images = jax.random.normal(keys[0], (6,) + IMAGE_SHAPE)
  batch = {'image': images, 'label': jnp.arange(6) % NUM_CLASSES}
  t_vars = method.teacher.init(keys[1], images, train=False)
  frozen = method.prepare_frozen([dict(t_vars)], images)
  abstract = jax.eval_shape(lambda: method.init(keys[2], images)[0])
  optimizers = run_setup.build_optimizers(init, method, abstract, 3)
  # The step and its state jitted, as the trainer runs them: an eager step
  # compiles each of its hundreds of primitives on its own (3x slower).
  state = jax.jit(
    functools.partial(run_setup.init_state, init, method, optimizers)
  )(frozen, images)
  assert set(state.params['student']) == {'model', *modules}
  new, metrics = jax.jit(
    functools.partial(run_step.train_step, method, optimizers)
  )(state, frozen, batch)
  assert bool(metrics['finite'])
  name = terms[0]
  assert float(metrics[f'loss/init_{name}']) > 0
  old_model = state.params['student']['model']
  new_model = new.params['student']['model']
  # RepDistiller's init optimizer covers the feature layers, not the
  # classifier: no step, no weight decay.
  np.testing.assert_array_equal(
    new_model['classifier']['kernel'], old_model['classifier']['kernel']
  )
  old_leaves = jax.tree_util.tree_flatten_with_path(old_model)[0]
  new_leaves = jax.tree.leaves(new_model)
  moved = [
    not np.array_equal(a, b)
    for (path, a), b in zip(old_leaves, new_leaves)
    if 'classifier' not in jax.tree_util.keystr(path)
  ]
  assert any(moved) == trains_model and (all(moved) or not trains_model)
  for module in modules:
    changed = jax.tree.map(
      lambda a, b: not np.array_equal(a, b),
      state.params['student'][module],
      new.params['student'][module],
    )
    assert all(jax.tree.leaves(changed)), module


def test_init_phase_config_follows_repdistiller():
  config, init, _ = _init_phase(('ab',))
  assert init.num_epochs == distill_terms.INIT_EPOCHS == 30
  assert init.optimizer.learning_rate == config.optimizer.learning_rate
  assert (init.optimizer.momentum, init.optimizer.weight_decay) == (
    config.optimizer.momentum,
    config.optimizer.weight_decay,
  )
  # FT with a ResNet or WRN student: 0.01 (RepDistiller helper/pretrain.py).
  config = distill_tiny_config(('ft',))
  assert distill_terms.init_learning_rate(config) == 0.01
  config.model.name = 'vgg8'
  assert (
    distill_terms.init_learning_rate(config) == config.optimizer.learning_rate
  )
  config.distill.init_learning_rate = 0.3
  assert distill_terms.init_learning_rate(config) == 0.3
  # Without a two-stage term there is no initialization phase.
  assert (
    distill.Distill.init_phase_config(distill_tiny_config(('fsp',))) is None
  )
  config = distill_tiny_config(('ab',))
  config.distill.init_epochs = 0
  with pytest.raises(ConfigError, match='init_epochs'):
    distill.Distill.check_config(config)


def test_the_plan_runs_the_init_phase_between_teacher_and_student(tmp_path):
  config = distill_tiny_config(('ab', 'ft'))
  config.teacher.pretrain_epochs = 1
  runs = plan.build(config, str(tmp_path))
  assert [r.role for r in runs] == [
    'teacher 0 (resnet8)',
    'initialization phase',
    'student',
  ]
  teacher, init, student = runs
  assert init.workdir == str(tmp_path / 'init_phase')
  assert init.config.method == 'distill_init'
  assert init.config.teacher.checkpoint_dir == teacher.workdir
  assert student.config.distill.init_dir == init.workdir
  # The student resumes as the command gave it: no filled-in directory.
  assert student.record == plan.run_config.record(config)
  # A finished initialization run given by the user is not run again.
  config.distill.init_dir = '/elsewhere/init'
  assert [r.role for r in plan.build(config, str(tmp_path))] == [
    'teacher 0 (resnet8)',
    'student',
  ]


def test_several_teachers_get_their_own_init_modules():
  """sum_losses: AB's connectors and FT's paraphraser per teacher, each init
  loss the sum of its per-teacher losses; the student run restores every
  paraphraser."""
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top
  from kdjax import losses  # pylint: disable=g-import-not-at-top
  from kdjax.methods import base  # pylint: disable=g-import-not-at-top

  config = distill_tiny_config(('ab', 'ft'))
  config.teachers = [
    config_defaults.model('resnet8', 'conv', stage_widths=w)
    for w in ((4, 4, 4), (8, 8, 8))
  ]
  config.distill.multi_teacher = 'sum_losses'
  main = methods.build_method(
    config, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE
  )
  assert main.warm_start_parts() == (
    'model',
    'paraphraser_teacher0',
    'paraphraser_teacher1',
  )
  init = distill.Distill.init_phase_config(config)
  method = methods.build_method(
    init, num_classes=NUM_CLASSES, image_shape=IMAGE_SHAPE
  )
  keys = jax.random.split(jax.random.key(5), 4)
  images = jax.random.normal(keys[0], (6,) + IMAGE_SHAPE)
  params, stats = method.init(keys[1], images)
  assert set(params['student']) == {
    'model',
    'ab_teacher0',
    'ab_teacher1',
    'paraphraser_teacher0',
    'paraphraser_teacher1',
  }
  weights = [
    dict(model.init(k, images, train=False))
    for (model, _), k in zip(method.frozen_teachers(), keys[2:])
  ]
  frozen = method.prepare_frozen(weights, images)
  batch = {'image': images, 'label': jnp.arange(6) % NUM_CLASSES}
  _, (_, metrics) = method.loss(0, params, stats, frozen, batch, None)
  _, s_feats, _ = base.run_model(
    method.student,
    params['student']['model'],
    stats['student']['model'],
    images,
    True,
  )
  s_preacts = tuple(x['preact'] for x in s_feats['stages'])
  ab, ft = 0.0, 0.0
  for i, ((model, _), w) in enumerate(zip(method.frozen_teachers(), weights)):
    _, t_feats = model.apply(w, images, train=False)
    t_preacts = [x['preact'] for x in t_feats['stages']]
    connected = method.ab_connectors[i].apply(
      {
        'params': params['student'][f'ab_teacher{i}'],
        'batch_stats': stats['student'].get(f'ab_teacher{i}', {}),
      },
      s_preacts,
      train=True,
      mutable=['batch_stats'],
    )[0]
    ab += losses.activation_boundary_loss(connected, t_preacts)
    last = jax.nn.relu(t_preacts[-1])
    _, rebuilt = method.paraphrasers[i].apply(
      {'params': params['student'][f'paraphraser_teacher{i}']}, last
    )
    ft += jnp.mean(jnp.square(rebuilt - last))
  np.testing.assert_allclose(metrics['loss/init_ab'], ab, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/init_ft'], ft, rtol=1e-5)
