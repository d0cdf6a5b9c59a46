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
  demo                embedded MNIST-5k, ResNet-8, 3 epochs: about 2 minutes
                      on 2 CPU cores; measured loss weights (below)
  demo_paper          the demo with the paper-literal weights (PAPER_KNOBS)

Recipes follow AdderNet (docs/recipes.md); the kernel features are our
reconstruction (docs/pkkd.md). Loss weights:

  PAPER_KNOBS     alpha = beta = 5 (reported for ResNet-20 on CIFAR-100),
                  T = 4 with T^2 (ours: the paper states neither), no ramp,
                  the teacher on CE alone. The cifar* / imagenet* presets,
                  which target the paper's numbers, keep them.
  DEMO_KNOBS      ours, measured: alpha = beta = 0.5 instead of 5, both
                  ramped up linearly from 0 over the first half of the run
                  (ramp_steps = 93 of 186). Chosen on seeds 0-2 of
                  benchmarks/pkkd_sweep.py (mnist5k proxy regime: adder
                  ResNet-8 at quarter width, 62 steps; +7.2 points over the
                  ANN alone there, the paper setting -32), then run on fresh
                  seeds 3-7: results/pkkd_sweep/sweep.md, docs/pkkd.md.

To run any preset with the other weights, override them, e.g. the paper's:
  --config.pkkd.alpha=5 --config.pkkd.beta=5 --config.pkkd.ramp_steps=0
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
  'imagenet_resnet18',
  'imagenet_resnet50',
)

# The paper's weights (alpha, beta) and our reconstruction's other choices.
PAPER_KNOBS = dict(
  alpha=5.0,
  beta=5.0,
  temperature=4.0,
  kd_t_squared=True,
  ramp_steps=0,
  teacher_kd_weight=0.0,
)
DEMO_EPOCHS = 3
DEMO_STEPS_PER_EPOCH = 62  # 4,000 mnist5k digits in batches of 64
# Ours, measured (docs/pkkd.md): alpha = beta = 0.5, both ramped up over the
# first half of the run, as the sweep's winner (its run: 62 steps, ramp 31).
DEMO_KNOBS = dict(
  PAPER_KNOBS,
  alpha=0.5,
  beta=0.5,
  ramp_steps=DEMO_EPOCHS * DEMO_STEPS_PER_EPOCH // 2,
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
