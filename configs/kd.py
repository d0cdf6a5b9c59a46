r"""Baselines from a frozen teacher: Hinton KD, plus FitNets and AT as options (docs/baselines.md).

  python -m kdjax.main --config=configs/kd.py:demo --workdir=/tmp/kdjax/kd_demo
  python -m kdjax.main --config=configs/kd.py:cifar100_resnet32x4_resnet8x4 --workdir=DIR \
      --config.teacher.checkpoint_dir=TEACHER_WORKDIR [--config.kd.fitnet_weight=100]

Presets (RepDistiller recipe; CIFAR-100 top-1 %, KD / FitNet / AT, student alone):
  cifar100_resnet32x4_resnet8x4   73.33 / 73.50 / 73.44 (72.50)
  cifar100_wrn40_2_wrn16_2        74.92 / 73.58 / 74.08 (73.26)
  demo   resnet20 teacher trained in-process for 2 epochs -> resnet8, MNIST-5k
Several frozen teachers: set config.teachers (a list of model entries) and
--config.kd.multi_teacher=mean_targets|sum_losses (docs/baselines.md).
The fitnet / at presets are the same runs with the hint or AT term switched on:
  cifar100_resnet32x4_resnet8x4_fitnet, cifar100_resnet32x4_resnet8x4_at, and the wrn pair alike.
"""

from kdjax import config_defaults as defaults

PAIRS = {
  'cifar100_resnet32x4_resnet8x4': ('resnet32x4', 'resnet8x4'),
  'cifar100_wrn40_2_wrn16_2': ('wrn40_2', 'wrn16_2'),
}
PRESETS = ('demo',) + tuple(
  p + v for p in PAIRS for v in ('', '_fitnet', '_at')
)


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown kd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('kd')
  config.kd = defaults.kd_section()
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    config.teacher = defaults.model('resnet20', 'conv', pretrain_epochs=2)
    config.model = defaults.model('resnet8', 'conv')
    return config
  variant = 'plain'
  for suffix in ('_fitnet', '_at'):
    if preset.endswith(suffix):
      preset, variant = preset[: -len(suffix)], suffix[1:]
  teacher, student = PAIRS[preset]
  defaults.set_dataset(config, 'cifar100')
  defaults.repdistiller_recipe(config)
  config.teacher = defaults.model(teacher, 'conv')
  config.model = defaults.model(student, 'conv')
  # The quoted FitNet / AT numbers are CE plus the feature term alone, without KD.
  if variant == 'fitnet':
    config.kd.update(
      kd_weight=0.0, fitnet_weight=100.0
    )  # RepDistiller's hint weight.
  elif variant == 'at':
    config.kd.update(kd_weight=0.0, at_weight=1000.0 / 2.0)
  return config
