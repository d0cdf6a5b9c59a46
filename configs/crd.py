r"""Contrastive representation distillation, CRD (Tian et al., ICLR 2020; docs/baselines.md).

  python -m kdjax.main --config=configs/crd.py:demo --workdir=/tmp/kdjax/crd_demo
  python -m kdjax.main --config=configs/crd.py:cifar100_resnet32x4_resnet8x4 --workdir=DIR \
      --config.teacher.checkpoint_dir=TEACHER_WORKDIR

Presets (RepDistiller's `--distill crd -r 1 -a 0 -b 0.8`: CE 1, no KD, CRD
0.8, 128-d embeddings, 16384 negatives, tau 0.07, bank momentum 0.5, on its
recipe: SGD 0.05, batch 64, 240 epochs; CIFAR-100 top-1 %, CRD paper Table 1
and the RepDistiller README, student alone in brackets):
  cifar100_resnet32x4_resnet8x4   75.51 (72.50)
  cifar100_wrn40_2_wrn16_2        75.48 (73.26)
  demo   resnet20 teacher trained in-process for 2 epochs -> resnet8,
         3 epochs on MNIST-5k, 1024 negatives (the bank has 4,000 rows)
CRD + KD (the paper's "CRD+KD", -a 1): --config.crd.kd_weight=1.
Every other RepDistiller pair: configs/benchmark.py:<pair>,crd.
"""

from kdjax import config_defaults as defaults
from kdjax.methods import crd

PAIRS = {
  'cifar100_resnet32x4_resnet8x4': ('resnet32x4', 'resnet8x4'),
  'cifar100_wrn40_2_wrn16_2': ('wrn40_2', 'wrn16_2'),
}
# CIFAR-100 top-1 % the pair presets target (CRD paper, Table 1).
REFERENCE = {
  'cifar100_resnet32x4_resnet8x4': 75.51,
  'cifar100_wrn40_2_wrn16_2': 75.48,
}
PRESETS = ('demo',) + tuple(PAIRS)
# mnist5k's train split has 4,000 digits: about a quarter of them as
# negatives, as 16384 is about a third of CIFAR's 50,000.
DEMO_NEGATIVES = 1024


def get_config(preset: str = 'demo'):
  if preset not in PRESETS:
    raise ValueError(f'Unknown crd preset {preset!r}; choose one of {PRESETS}')
  config = defaults.base_config('crd')
  config.crd = crd.default_section()
  if preset == 'demo':
    defaults.demo_recipe(config, epochs=3)
    config.teacher = defaults.model('resnet20', 'conv', pretrain_epochs=2)
    config.model = defaults.model('resnet8', 'conv')
    config.crd.num_negatives = DEMO_NEGATIVES
    return config
  teacher, student = PAIRS[preset]
  defaults.set_dataset(config, 'cifar100')
  defaults.repdistiller_recipe(config)
  config.teacher = defaults.model(teacher, 'conv')
  config.model = defaults.model(student, 'conv')
  return config
