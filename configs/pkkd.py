r"""PKKD: CNN teacher co-trained with an ANN student of the same architecture.

  python -m kdjax.main --config=configs/pkkd.py:demo --workdir=/tmp/kdjax/pkkd_demo
  python -m kdjax.main --config=configs/pkkd.py:cifar100_resnet20 --workdir=gs://BUCKET/pkkd_c100

Presets (paper top-1 %, Xu et al. NeurIPS 2020, CNN / ANN / PKKD-ANN):
  cifar10_resnet20    92.93 / 92.02 / 92.96
  cifar100_resnet20   68.75 / 67.60 / 69.93
  cifar10_resnet32    93.59 / 93.01 / 93.62
  cifar100_resnet32   70.46 / 69.17 / 72.41
  cifar10_vgg_small   94.25 / 93.72 / 95.03
  cifar100_vgg_small  75.96 / 74.58 / 76.94 (the AdderNet README gives the
                      ANN 72.64; kdjax.reproduce's pkkd_cifar keeps both)
  imagenet_resnet18   69.8  / 67.0  / 68.8
  imagenet_resnet50   76.2  / 74.9  / 76.8
  demo                embedded MNIST-5k, ResNet-8, 2 epochs (no paper number)
  demo_paper          the demo with the paper's weights (no paper number)

Loss weights, which preset uses which, and why (the one place this is said):
  PAPER_KNOBS  cifar*, imagenet* and demo_paper: alpha = beta = 5, the
               paper's (reported for ResNet-20 on CIFAR-100); T = 4 with T^2
               and no ramp, ours (the paper states neither). These presets
               target the paper's numbers.
  DEMO_KNOBS   demo: alpha = beta = 0.5, both ramped up from 0 over the first
               half of the run, T = 4 without T^2. Ours, chosen on the
               embedded digits (experiments/pkkd_sweep/README.md), where the
               paper's weights put the student below the ANN trained alone.
Recipes follow AdderNet (docs/recipes.md); the kernel features are our
reconstruction (docs/pkkd.md). Either weighting is one override away, e.g.
  --config.pkkd.alpha=5 --config.pkkd.beta=5 --config.pkkd.ramp_fraction=0 \
  --config.pkkd.kd_t_squared=True
"""

import ml_collections

from kdjax import config_defaults as defaults

PRESETS = (
  'demo',
  'demo_paper',
  'cifar10_resnet20',
  'cifar100_resnet20',
  'cifar10_resnet32',
  'cifar100_resnet32',
  'cifar10_vgg_small',
  'cifar100_vgg_small',
  'imagenet_resnet18',
  'imagenet_resnet50',
)

# The paper's weights (alpha, beta) and our reconstruction's other choices.
PAPER_KNOBS = dict(
  alpha=5.0,
  beta=5.0,
  temperature=4.0,
  kd_t_squared=True,
  ramp_fraction=0.0,
  ramp_steps=0,
  teacher_kd_weight=0.0,
)
DEMO_EPOCHS = 2
DEMO_STEPS_PER_EPOCH = 62  # 4,000 mnist5k digits in batches of 64
# The demo's run settings on top of the shared demo recipe (the same for its
# ANN-alone baseline): the in-memory NumPy loader (no tf.data
# pipeline; the same digits, other augmentation draws), precise-BN over 4
# train batches instead of 10, and the 1,000 test digits in 2 eval batches
# (512: divisible by any power-of-two device count; the last is padded).
DEMO_SETTINGS = {
  'data.loader': 'numpy',
  'eval_bn_recalibration_batches': 4,
  'eval_batch_size': 512,
}
# Ours, for the demo only: why, in the module docstring.
DEMO_KNOBS = dict(
  PAPER_KNOBS,
  alpha=0.5,
  beta=0.5,
  kd_t_squared=False,
  ramp_fraction=0.5,
)


def get_config(preset: str = 'demo') -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f'Unknown pkkd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('pkkd')
  config.pkkd = ml_collections.ConfigDict(
    dict(
      features='kernel',
      teacher_mode='cotrained',
      sigma_scale_teacher=1.0,
      sigma_scale_student=1.0,
      stages=ml_collections.config_dict.placeholder(tuple),
      **(DEMO_KNOBS if preset == 'demo' else PAPER_KNOBS),
    )
  )

  if preset.startswith('demo'):
    defaults.demo_recipe(config, epochs=DEMO_EPOCHS)
    for key, value in DEMO_SETTINGS.items():
      node, *rest = key.split('.')
      if rest:
        config[node][rest[0]] = value
      else:
        config[key] = value
    arch = 'resnet8'
  else:
    dataset, arch = preset.split('_', 1)
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
