r"""PKKD: CNN teacher co-trained with an ANN student of the same architecture.

  python -m kdjax.main --config=configs/pkkd.py:demo --workdir=/tmp/kdjax/pkkd_demo
  python -m kdjax.main --config=configs/pkkd.py:cifar100_resnet20 --workdir=gs://BUCKET/pkkd_c100

Presets (paper top-1 %, Xu et al. NeurIPS 2020, CNN / ANN / PKKD-ANN):
  cifar10_resnet20    92.93 / 92.02 / 92.96
  cifar100_resnet20   68.75 / 67.60 / 69.93
  cifar10_resnet32    93.59 / 93.01 / 93.62
  cifar100_resnet32   70.46 / 69.17 / 72.41
  imagenet_resnet18   69.8  / 67.0  / 68.8
  imagenet_resnet50   76.2  / 74.9  / 76.8
  demo                embedded MNIST-5k, ResNet-8, a couple of minutes on 2 CPU cores

Recipes follow AdderNet (SPEC section 1); alpha = beta = 5 (reported for
ResNet-20 on CIFAR-100); kernel details are our reconstruction (SPEC section 2).
"""

import ml_collections

from kdjax import config_defaults as defaults

PRESETS = (
  'demo',
  'cifar10_resnet20',
  'cifar100_resnet20',
  'cifar10_resnet32',
  'cifar100_resnet32',
  'imagenet_resnet18',
  'imagenet_resnet50',
)


def get_config(preset: str = 'demo') -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f'Unknown pkkd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('pkkd')
  config.pkkd = ml_collections.ConfigDict(
    dict(
      alpha=5.0,
      beta=5.0,
      temperature=4.0,
      features='kernel',
      teacher_mode='cotrained',
      sigma_scale_teacher=1.0,
      sigma_scale_student=1.0,
      stages=ml_collections.config_dict.placeholder(tuple),
      kd_t_squared=True,
      ramp_steps=0,
      teacher_kd_weight=0.0,
    )
  )

  if preset == 'demo':
    defaults.demo_recipe(config, epochs=4)
    arch = 'resnet8'
  else:
    dataset, arch = preset.split('_')
    if dataset == 'imagenet':
      defaults.set_dataset(config, 'imagenet2012')
      defaults.addernet_imagenet_recipe(config)
    else:
      defaults.set_dataset(config, dataset)
      defaults.addernet_cifar_recipe(config)
  config.model = defaults.model(arch, 'adder')
  config.teacher = defaults.model(arch, 'conv')
  # The teacher trains with the same recipe, without the adder LR scaling.
  config.optimizers.teacher = ml_collections.ConfigDict(
    config.optimizer.to_dict()
  )
  config.optimizers.teacher.adder_eta = None
  return config
