r"""One CNN or ANN trained alone: baselines, and the teachers of kd/ofd/ekd runs.

  python -m kdjax.main --config=configs/supervised.py:demo --workdir=/tmp/kdjax/teacher
  python -m kdjax.main --config=configs/supervised.py:cifar100_wrn28_4 --workdir=DIR

Presets:
  demo                     resnet20 CNN on the embedded MNIST-5k digits
  cifar10_resnet20 / cifar100_resnet20 / cifar10_resnet32 / cifar100_resnet32
  cifar10_vgg_small / cifar100_vgg_small
                           AdderNet CIFAR recipe (docs/recipes.md); --config.model.conv_type=adder
                           gives the ANN baselines (paper CNN/ANN columns in configs/pkkd.py)
  cifar100_wrn28_4         OFD CIFAR-100 teacher (error 21.09 %), OFD recipe (docs/recipes.md)
  cifar100_pyramidnet200_240 / cifar100_pyramidnet110_84
                           OFD's teacher of setups (e) and (f), and (f)'s
                           student alone (error 22.58 %), OFD recipe
  cifar100_wrn16_4 / cifar100_wrn28_2 / cifar100_wrn16_2 / cifar100_resnet56
                           OFD students alone (errors 22.72 / 24.88 / 27.32 / 27.68 %)
  cifar100_resnet32x4 / cifar100_wrn40_2
                           RepDistiller teachers; resnet8x4 / wrn16_2 students alone
                           (72.50 / 73.26 %) via cifar100_resnet8x4 / cifar100_wrn16_2_rd
  imagenet_resnet152 / imagenet_resnet50
                           OFD ImageNet teachers (ResNet-50 alone: 23.72 / 6.97 top-1/5 error)
  imagenet_mobilenet_v1    OFD MobileNet student alone (31.13 / 11.24)
  cifar10_ekd_teachers / cifar100_ekd_teachers
                           resnet110 (teacher 0); other EKD teachers with --config.model.name
"""

from kdjax import config_defaults as defaults

PRESETS = (
  'demo',
  'cifar10_resnet20',
  'cifar100_resnet20',
  'cifar10_resnet32',
  'cifar100_resnet32',
  'cifar10_vgg_small',
  'cifar100_vgg_small',
  'cifar100_pyramidnet200_240',
  'cifar100_pyramidnet110_84',
  'cifar100_wrn28_4',
  'cifar100_wrn16_4',
  'cifar100_wrn28_2',
  'cifar100_wrn16_2',
  'cifar100_resnet56',
  'cifar100_resnet32x4',
  'cifar100_wrn40_2',
  'cifar100_resnet8x4',
  'cifar100_wrn16_2_rd',
  'imagenet_resnet152',
  'imagenet_resnet50',
  'imagenet_mobilenet_v1',
  'cifar10_ekd_teachers',
  'cifar100_ekd_teachers',
)


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(
      f'Unknown supervised preset {preset!r}; choose one of {PRESETS}'
    )
  config = defaults.base_config('supervised')
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    config.model = defaults.model('resnet20', 'conv')
    return config
  dataset, arch = preset.split('_', 1)
  if dataset == 'imagenet':
    defaults.set_dataset(config, 'imagenet2012')
    defaults.ofd_imagenet_recipe(config)
  else:
    defaults.set_dataset(config, dataset)
  if arch in ('resnet20', 'resnet32', 'vgg_small'):
    defaults.addernet_cifar_recipe(config)
  elif arch in ('resnet32x4', 'wrn40_2', 'resnet8x4', 'wrn16_2_rd'):
    defaults.repdistiller_recipe(config)
    arch = arch.replace('_rd', '')
  elif arch == 'ekd_teachers':
    defaults.repdistiller_recipe(config)
    arch = 'resnet110'
  elif dataset != 'imagenet':
    defaults.ofd_cifar_recipe(config)
    defaults.set_dataset(config, dataset, augment='cifar_reflect')
  config.model = defaults.model(arch, 'conv')
  return config
