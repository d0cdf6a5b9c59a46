r"""OFD: overhaul of feature distillation (Heo et al., ICCV 2019), docs/ofd.md.

  python -m kdjax.main --config=configs/ofd.py:demo --workdir=/tmp/kdjax/ofd_demo
  python -m kdjax.main --config=configs/ofd.py:cifar100_wrn28_4_wrn16_4 --workdir=DIR \
      --config.teacher.checkpoint_dir=TEACHER_WORKDIR

Presets (CIFAR-100 error %, student alone -> OFD; teacher WRN28-4 21.09):
  cifar100_wrn28_4_wrn16_4      22.72 -> 20.89
  cifar100_wrn28_4_wrn28_2      24.88 -> 21.98
  cifar100_wrn28_4_wrn16_2      27.32 -> 24.08
  cifar100_wrn28_4_resnet56     27.68 -> 24.44
  imagenet_resnet152_resnet50   top-1/5 error 23.72/6.97 -> 21.65/5.83 (teacher 21.69/5.95)
  demo   resnet20 teacher trained in-process for 2 epochs -> resnet8, MNIST-5k
alpha = 1e-3 on CIFAR, 1e-4 on ImageNet.
"""

import ml_collections

from kdjax import config_defaults as defaults

PAIRS = {
  'cifar100_wrn28_4_wrn16_4': ('wrn28_4', 'wrn16_4'),
  'cifar100_wrn28_4_wrn28_2': ('wrn28_4', 'wrn28_2'),
  'cifar100_wrn28_4_wrn16_2': ('wrn28_4', 'wrn16_2'),
  'cifar100_wrn28_4_resnet56': ('wrn28_4', 'resnet56'),
  'imagenet_resnet152_resnet50': ('resnet152', 'resnet50'),
}
PRESETS = ('demo',) + tuple(PAIRS)


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown ofd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('ofd')
  config.ofd = ml_collections.ConfigDict(dict(alpha=1e-3))
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    config.teacher = defaults.model('resnet20', 'conv', pretrain_epochs=2)
    config.model = defaults.model('resnet8', 'conv')
    return config
  teacher, student = PAIRS[preset]
  if preset.startswith('imagenet'):
    defaults.set_dataset(config, 'imagenet2012')
    defaults.ofd_imagenet_recipe(config)
    config.ofd.alpha = 1e-4
  else:
    defaults.set_dataset(config, 'cifar100', augment='cifar_reflect')
    defaults.ofd_cifar_recipe(config)
  config.teacher = defaults.model(teacher, 'conv')
  config.model = defaults.model(student, 'conv')
  return config
