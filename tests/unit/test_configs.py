"""Tests for configs/*.py: every preset builds, names what exists, and follows docs/recipes.md.

The expected numbers are the recipes of docs/recipes.md, written here
independently of kdjax.config_defaults. Nothing is compiled or trained.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from kdjax import config_defaults
from kdjax import data as kd_data
from kdjax import models

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
METHODS = ('supervised', 'kd', 'pkkd', 'ofd', 'ekd', 'distill', 'dml')


def load(name):
  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{name}.py')
  )


ALL_PRESETS = [
  (name, preset) for name in METHODS for preset in load(name).PRESETS
]


def _model_entries(config):
  """(role, model entry) of the student and of every teacher."""
  entries = [('student', config.model)]
  if 'teacher' in config:
    entries.append(('teacher', config.teacher))
  for i, teacher in enumerate(config.get('teachers', None) or []):
    entries.append((f'teacher{i}', teacher))
  return entries


@pytest.mark.parametrize('name', METHODS)
def test_unknown_preset(name):
  with pytest.raises(
    ValueError, match=rf"Unknown {name} preset 'nope'; choose one of .*demo"
  ):
    load(name).get_config('nope')


@pytest.mark.parametrize('name', METHODS)
def test_default_preset_is_demo_on_mnist5k(name):
  module = load(name)
  assert 'demo' in module.PRESETS
  config = module.get_config()
  assert config.method == name
  assert (
    config.dataset.name == 'mnist5k'
  )  # The one dataset that is always there.


@pytest.mark.parametrize('name,preset', ALL_PRESETS)
def test_preset_builds_and_names_what_exists(name, preset):
  config = load(name).get_config(preset)
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.method == name
  assert config.dataset.name in kd_data.DATASETS
  spec = kd_data.DATASETS[config.dataset.name]
  image_size = config.dataset.image_size or spec.image_shape[0]
  for role, entry in _model_entries(config):
    assert entry.name in models.available_models(), (role, entry.name)
    assert entry.conv_type in ('conv', 'adder'), (role, entry.conv_type)
    kwargs = dict(entry.kwargs)
    models.build_model(
      entry.name,
      conv_type=entry.conv_type,
      num_classes=spec.num_classes,
      **kwargs,
    )
    models.check_input_size(entry.name, image_size, **kwargs)
  # The batch shards over the usual device counts.
  for devices in (1, 2, 8):
    assert config.batch_size % devices == 0
  assert config.num_epochs >= 1 and config.max_steps == -1
  # Frozen teachers come from a checkpoint or an in-process pre-training, never neither,
  # except where the user must pass --config.teacher(s).checkpoint_dir (documented presets).
  if preset == 'demo' and name in ('kd', 'ofd', 'ekd'):
    for role, entry in _model_entries(config)[1:]:
      assert entry.pretrain_epochs > 0, role


@pytest.mark.parametrize('preset', load('pkkd').PRESETS)
def test_pkkd_presets_follow_spec(preset):
  config = load('pkkd').get_config(preset)
  # alpha = beta = 5 (the paper), except the demo's measured alpha = beta = 0.5
  # with a half-run ramp and no T^2 (docs/pkkd.md); CNN teacher of the same
  # architecture, co-trained.
  demo = preset == 'demo'
  assert (
    config.pkkd.alpha,
    config.pkkd.beta,
    config.pkkd.temperature,
    config.pkkd.kd_t_squared,
    config.pkkd.ramp_steps,
    config.pkkd.ramp_fraction,
  ) == (
    (0.5, 0.5, 4.0, False, 0, 0.5) if demo else (5.0, 5.0, 4.0, True, 0, 0.0)
  )
  assert config.pkkd.teacher_mode == 'cotrained'
  assert config.pkkd.teacher_kd_weight == 0.0
  assert (config.model.conv_type, config.teacher.conv_type) == ('adder', 'conv')
  assert config.model.name == config.teacher.name
  # The teacher has its own optimizer, without the adder LR scaling.
  assert config.optimizers.teacher.adder_eta is None
  assert config.optimizer.adder_eta == pytest.approx(0.2)
  if preset.startswith('demo'):
    return
  dataset, arch = preset.split('_', 1)
  assert arch == config.model.name
  opt = config.optimizer
  assert (opt.learning_rate, opt.momentum, opt.schedule) == (0.1, 0.9, 'cosine')
  assert config.batch_size == 256
  if dataset == 'imagenet':
    assert config.dataset.name == 'imagenet2012'
    assert (config.num_epochs, opt.weight_decay) == (150, 1e-4)
  else:
    assert config.dataset.name == dataset
    assert (config.num_epochs, opt.weight_decay) == (400, 5e-4)


@pytest.mark.parametrize('preset', load('ofd').PRESETS)
def test_ofd_presets_follow_spec(preset):
  config = load('ofd').get_config(preset)
  if preset == 'demo':
    return
  opt = config.optimizer
  assert opt.nesterov and opt.momentum == 0.9 and opt.learning_rate == 0.1
  assert opt.schedule == 'step' and opt.decay_factor == 0.1
  if preset.startswith('imagenet'):
    assert config.ofd.alpha == pytest.approx(1e-4)
    assert (config.batch_size, config.num_epochs, opt.weight_decay) == (
      256,
      100,
      1e-4,
    )
    assert (config.teacher.name, config.model.name) == ('resnet152', 'resnet50')
  else:
    assert config.ofd.alpha == pytest.approx(1e-3)
    assert (config.batch_size, config.num_epochs, opt.weight_decay) == (
      128,
      200,
      5e-4,
    )
    assert tuple(opt.decay_epochs) == (100, 150)
    assert config.dataset.name == 'cifar100'
    assert config.dataset.augment == 'cifar_reflect'
    assert config.teacher.name == 'wrn28_4'


@pytest.mark.parametrize('preset', load('kd').PRESETS)
def test_kd_presets_follow_spec(preset):
  config = load('kd').get_config(preset)
  assert config.kd.temperature == 4.0
  if preset == 'demo':
    return
  opt = config.optimizer
  # RepDistiller recipe (docs/baselines.md).
  assert (config.batch_size, config.num_epochs, opt.learning_rate) == (
    64,
    240,
    0.05,
  )
  assert tuple(opt.decay_epochs) == (150, 180, 210) and opt.weight_decay == 5e-4
  assert config.dataset.name == 'cifar100'
  pairs = {
    'cifar100_resnet32x4_resnet8x4': ('resnet32x4', 'resnet8x4'),
    'cifar100_wrn40_2_wrn16_2': ('wrn40_2', 'wrn16_2'),
  }
  base = preset.replace('_fitnet', '').replace('_at', '')
  assert (config.teacher.name, config.model.name) == pairs[base]
  assert (config.kd.fitnet_weight > 0) == preset.endswith('_fitnet')
  assert config.kd.at_weight == (500.0 if preset.endswith('_at') else 0.0)


@pytest.mark.parametrize('preset', load('ekd').PRESETS)
def test_ekd_presets_follow_spec(preset):
  config = load('ekd').get_config(preset)
  assert config.model.name == 'ekd_student'
  teachers = list(config.teachers)
  assert len(teachers) >= 2
  assert len({t.name for t in teachers}) == len(teachers)  # Different teachers.
  if preset == 'demo':
    return
  assert (
    config.model.kwargs.num_branches == 7
  )  # The paper's 7-branch ResNet-8 student.
  assert config.dataset.train_fraction == (
    0.1 if preset.endswith('_10pct') else 1.0
  )
  assert config.dataset.name == preset.split('_')[0]


@pytest.mark.parametrize('preset', load('ofd').PRESETS)
def test_ofd_pairs_have_as_many_stages(preset):
  """OFD distils stage i of the teacher into stage i of the student."""
  config = load('ofd').get_config(preset)
  spec = kd_data.DATASETS[config.dataset.name]
  size = config.dataset.image_size or spec.image_shape[0]
  images = jax.ShapeDtypeStruct(
    (1, size, size, spec.image_shape[-1]), jnp.float32
  )
  stages = []
  for entry in (config.teacher, config.model):
    model = models.build_model(
      entry.name,
      conv_type=entry.conv_type,
      num_classes=spec.num_classes,
      **dict(entry.kwargs),
    )
    _, features = jax.eval_shape(
      lambda x, m=model: m.init_with_output(jax.random.key(0), x, train=False)[
        0
      ],
      images,
    )
    stages.append(len(features['stages']))
  assert stages[0] == stages[1] == (4 if preset.startswith('imagenet') else 3)
