r"""EKD: several frozen teachers into a multi-branch student (Asif et al., ECAI 2020), docs/ekd.md.

  python -m kdjax.main --config=configs/ekd.py:demo --workdir=/tmp/kdjax/ekd_demo
  python -m kdjax.main --config=configs/ekd.py:cifar10 --workdir=DIR \
      --config.teachers.0.checkpoint_dir=T0 --config.teachers.1.checkpoint_dir=T1 ...

Presets:
  cifar10            7-branch ResNet-8 student, paper 89.66 % (TAKD 88.01, mutual learning 87.71)
  cifar10_10pct      the same with a class-balanced 10 % of the training set (paper: beats
                     ResNet-110 with 3x fewer parameters and 2.8x fewer FLOPs)
  cifar100 / cifar100_10pct   the same recipe on CIFAR-100 (no paper number)
  demo               3 branches for 2 epochs, 3 teachers of different architectures
                     (resnet20, wrn16-1, resnet8 at width 24) trained in-process for 1 epoch
                     each, MNIST-5k
Teachers: resnet110, resnet56, wrn40_2 by default (the paper's are high-capacity
CIFAR nets; which exactly is not confirmed: a knob).
"""

import ml_collections

from kdjax import config_defaults as defaults

PRESETS = ('demo', 'cifar10', 'cifar10_10pct', 'cifar100', 'cifar100_10pct')


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown ekd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('ekd')
  config.ekd = ml_collections.ConfigDict(
    dict(temperature=4.0, lambda_feat=1.0, lambda_kd=1.0)
  )
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=2)
    # Three different architectures, each about as cheap as the student, so
    # that pretraining all of them in-process fits the demo's 3 minutes.
    config.teachers = [
      defaults.model('resnet20', 'conv', pretrain_epochs=1),
      defaults.model('wrn16_2', 'conv', pretrain_epochs=1, widen_factor=1),
      defaults.model(
        'resnet8',
        'conv',
        pretrain_epochs=1,
        stem_width=24,
        stage_widths=(24, 48, 96),
      ),
    ]
    # Branches share the stem and the first stage, as in the study (a quarter fewer MACs).
    config.model = defaults.model(
      'ekd_student', 'conv', num_branches=3, shared_stages=1
    )
    return config
  dataset = preset.split('_')[0]
  defaults.set_dataset(config, dataset)
  if preset.endswith('_10pct'):
    config.dataset.train_fraction = 0.1
  defaults.repdistiller_recipe(config)
  config.teachers = [
    defaults.model(name, 'conv')
    for name in ('resnet110', 'resnet56', 'wrn40_2')
  ]
  config.model = defaults.model('ekd_student', 'conv', num_branches=7)
  return config
