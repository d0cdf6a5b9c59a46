"""configs/benchmark.py: every '<pair>,<method>' preset builds its method, or
says in one sentence why it cannot; the tables' recipes reach the config."""

import jax
import jax.numpy as jnp
import pytest

from helpers import load_config_module
from kdjax.methods import build_method

BENCH = load_config_module('benchmark')


def test_the_presets_are_the_pair_table_times_the_method_table():
  pairs = {p.split(',')[0] for p in BENCH.PRESETS}
  assert pairs == set(BENCH.PAIRS) and len(BENCH.REPDISTILLER) == 13
  repdistiller = [p for p in BENCH.PRESETS if p.startswith('cifar100_')]
  assert len(repdistiller) == 13 * len(BENCH.METHODS)
  assert len(set(BENCH.PRESETS)) == len(BENCH.PRESETS)
  ofd = [p for p in BENCH.PRESETS if p.startswith('ofd_')]
  assert len(ofd) == 8 * 4  # (a)-(f) and two ImageNet setups x 4 methods.


@pytest.mark.parametrize(
  'preset, reason',
  [
    ('cifar100_wrn40_2_shufflenet_v1,fsp', 'same channels'),
    ('cifar100_resnet32x4_shufflenet_v2,ofd', 'maps of one size'),
    ('ofd_a,dkd', "'<pair>,<method>'"),
  ],
)
def test_a_cell_kdjax_cannot_run_says_why(preset, reason):
  with pytest.raises(ValueError, match=reason):
    BENCH.get_config(preset)


def test_recipes_and_methods_reach_the_config():
  config = BENCH.get_config('cifar100_vgg13_mobilenet_v2,kd')
  assert (config.batch_size, config.num_epochs) == (64, 240)
  assert config.optimizer.learning_rate == 0.01  # RepDistiller's MobileNetV2.
  assert config.kd.kd_weight == 0.9 and config.teacher.name == 'vgg13'
  config = BENCH.get_config('ofd_e,ofd')
  assert config.teacher.name == 'pyramidnet200_240' and config.ofd.alpha == 1e-3
  assert config.batch_size == 128
  config = BENCH.get_config('ofd_imagenet_b,ofd')
  assert config.model.name == 'mobilenet_v1' and config.ofd.alpha == 1e-4
  config = BENCH.get_config('cifar100_wrn40_2_wrn16_2,pkt')
  assert config.method == 'distill' and config.distill.terms == ('pkt',)
  config = BENCH.get_config('cifar100_vgg13_mobilenet_v2,crd')
  assert config.method == 'crd' and config.crd.weight == 0.8
  assert config.crd.num_negatives == 16384
  assert config.optimizer.learning_rate == 0.01


@pytest.mark.parametrize(
  'preset',
  [
    'cifar100_vgg13_mobilenet_v2,fitnet',
    'cifar100_resnet50_cifar_mobilenet_v2,fitnet',
    'cifar100_resnet32x4_shufflenet_v1,at',
    'cifar100_resnet32x4_shufflenet_v1,review_kd',
    'cifar100_resnet56_resnet20,at',
    'cifar100_resnet32x4_shufflenet_v2,crd',
    'ofd_d,ofd',
  ],
)
def test_cross_architecture_cells_trace(preset):
  """The loss of a cell that is offered traces: its shapes agree."""
  config = BENCH.get_config(preset)
  method = build_method(
    config,
    num_classes=100,
    image_shape=(32, 32, 3),
    num_train_examples=50000,
  )
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  params, stats = jax.eval_shape(method.init, jax.random.key(0), images)
  weights = [
    jax.eval_shape(
      lambda m=model: m.init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
    )
    for model, _ in method.frozen_teachers()
  ]
  frozen = jax.eval_shape(method.prepare_frozen, weights, images)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  batch = {'image': images, 'label': labels, 'index': labels}
  total, _ = jax.eval_shape(
    lambda p, s, f, b: method.loss(0, p, s, f, b, jax.random.key(1)),
    params,
    stats,
    frozen,
    batch,
  )
  assert total.shape == ()


def test_two_stage_cells_plan_their_initialization_phase():
  """AB, FT and FSP cells run RepDistiller's 30-epoch init phase first."""
  from kdjax.train import plan  # pylint: disable=g-import-not-at-top

  for method in ('ab', 'ft', 'fsp'):
    config = BENCH.get_config(f'cifar100_resnet32x4_resnet8x4,{method}')
    config.teacher.checkpoint_dir = '/teacher'
    runs = plan.build(config, '/work')
    assert [r.role for r in runs] == ['initialization phase', 'student']
    init = runs[0].config
    assert (init.method, init.num_epochs) == ('distill_init', 30)
    assert init.optimizer.schedule == 'constant'
    # FT with a ResNet student initializes at 0.01, the others at the run's.
    assert init.optimizer.learning_rate == (0.01 if method == 'ft' else 0.05)
