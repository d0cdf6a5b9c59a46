r"""Deep mutual learning: N networks trained together, each from the others (docs/baselines.md).

  python -m kdjax.main --config=configs/dml.py:demo --workdir=/tmp/kdjax/dml_demo
  python -m kdjax.main --config=configs/dml.py:cifar100_resnet32x2 --workdir=DIR

Presets:
  demo                  two resnet8 CNNs on the embedded MNIST-5k digits, 3 epochs
  cifar100_resnet32x2   two resnet32 CNNs, RepDistiller recipe (docs/recipes.md):
                        DML's own CIFAR-100 setting with the recipe kdjax's
                        other CIFAR-100 baselines use. No number is targeted:
                        the DML paper's recipe differs, and the EKD paper's
                        mutual-learning figure (87.71 % on CIFAR-10) is for
                        its own student.
  cifar10_ekd           two resnet8 on CIFAR-10, the same recipe: the EKD
                        paper's mutual-learning baseline, 87.71 % for a
                        ResNet-8 student (its peers and recipe are not
                        stated; ours)
An adder peer: --config.peers.0.conv_type=adder (any model, any number of
peers: config.peers is a list of model entries).
"""

import ml_collections

from kdjax import config_defaults as defaults

PRESETS = ('demo', 'cifar100_resnet32x2', 'cifar10_ekd')


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown dml preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('dml')
  # The paper's weights: KL at temperature 1, weight 1.
  config.dml = ml_collections.ConfigDict(dict(temperature=1.0, kd_weight=1.0))
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    config.model = defaults.model('resnet8', 'conv')
    config.peers = [defaults.model('resnet8', 'conv')]
    return config
  dataset, arch = (
    ('cifar10', 'resnet8')
    if preset == 'cifar10_ekd'
    else ('cifar100', 'resnet32')
  )
  defaults.set_dataset(config, dataset)
  defaults.repdistiller_recipe(config)
  config.model = defaults.model(arch, 'conv')
  config.peers = [defaults.model(arch, 'conv')]
  return config
