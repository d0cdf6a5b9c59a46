r"""The benchmark tables as presets: a pair table times a method table.

  python -m kdjax.main --config=configs/benchmark.py:cifar100_resnet32x4_resnet8x4,dkd \
      --workdir=DIR --config.teacher.checkpoint_dir=TEACHER_WORKDIR
  python -m kdjax.main --config=configs/benchmark.py:ofd_e,ofd --workdir=DIR \
      --config.teacher.checkpoint_dir=TEACHER_WORKDIR
  python -m kdjax.reproduce --table=repdistiller_cifar100 --dry-run   # every cell

A preset is '<pair>,<method>'. The teacher is a frozen checkpoint: a
supervised run of the pair's teacher (configs/supervised.py with
--config.model.name=<teacher>) or a converted PyTorch one (python -m
kdjax.convert --format=repdistiller|ofd).

Pairs (PAIRS below), each with its source's recipe (docs/recipes.md):
  cifar100_<teacher>_<student>  RepDistiller's 13 CIFAR-100 pairs (CRD paper,
                                Tian et al. ICLR 2020; the README's table): 240
                                epochs, SGD lr 0.05 (0.01 for MobileNetV2 and
                                ShuffleNet students), x0.1 at 150/180/210,
                                batch 64, weight decay 5e-4
  ofd_a ... ofd_f               OFD's CIFAR-100 setups (a) WRN28-4 -> WRN16-4,
                                (b) -> WRN28-2, (c) -> WRN16-2, (d) -> ResNet56,
                                (e) PyramidNet-200 (240) -> WRN28-4, (f)
                                PyramidNet-200 -> PyramidNet-110 (84): OFD's
                                CIFAR recipe, 200 epochs, batch 128
  ofd_imagenet_a / ofd_imagenet_b
                                ResNet152 -> ResNet50, ResNet50 -> MobileNet
                                (v1): OFD's ImageNet recipe
Methods (METHODS below; weights as RepDistiller's README / each paper):
  kd fitnet at                  configs/kd.py's terms: KD (CE 0.1, KD 0.9,
                                T 4), FitNet hint 100, AT 1000
  ofd                           alpha 1e-3 on CIFAR, 1e-4 on ImageNet
  dkd dist logit_std sp cc rkd pkt nst fsp vid review_kd ab ft
                                configs/distill.py's rows (docs/baselines.md);
                                fsp, ab and ft train an initialization phase
                                first (a run of its own in the plan)
  crd                           configs/crd.py's method: CE 1, CRD 0.8, 16384
                                negatives (RepDistiller -r 1 -a 0 -b 0.8)
A cell kdjax cannot run says why: fsp on pairs of other widths, and ofd on
pairs whose maps differ in size.
The numbers each cell targets are in kdjax.reproduce's tables (repdistiller
and ofd), each with its source; the student alone is the supervised preset of
the student (configs/supervised.py).
"""

import os

import ml_collections

from kdjax import config_defaults as defaults
from kdjax.methods import crd

# (teacher, student), in the README's order.
REPDISTILLER = (
  ('wrn40_2', 'wrn16_2'),
  ('wrn40_2', 'wrn40_1'),
  ('resnet56', 'resnet20'),
  ('resnet110', 'resnet20'),
  ('resnet110', 'resnet32'),
  ('resnet32x4', 'resnet8x4'),
  ('vgg13', 'vgg8'),
  ('vgg13', 'mobilenet_v2'),
  ('resnet50_cifar', 'mobilenet_v2'),
  ('resnet50_cifar', 'vgg8'),
  ('resnet32x4', 'shufflenet_v1'),
  ('resnet32x4', 'shufflenet_v2'),
  ('wrn40_2', 'shufflenet_v1'),
)
OFD_CIFAR = {
  'ofd_a': ('wrn28_4', 'wrn16_4'),
  'ofd_b': ('wrn28_4', 'wrn28_2'),
  'ofd_c': ('wrn28_4', 'wrn16_2'),
  'ofd_d': ('wrn28_4', 'resnet56'),
  'ofd_e': ('pyramidnet200_240', 'wrn28_4'),
  'ofd_f': ('pyramidnet200_240', 'pyramidnet110_84'),
}
OFD_IMAGENET = {
  'ofd_imagenet_a': ('resnet152', 'resnet50'),
  'ofd_imagenet_b': ('resnet50', 'mobilenet_v1'),
}
PAIRS = {
  **{f'cifar100_{t}_{s}': (t, s, 'repdistiller') for t, s in REPDISTILLER},
  **{k: (t, s, 'ofd_cifar') for k, (t, s) in OFD_CIFAR.items()},
  **{k: (t, s, 'ofd_imagenet') for k, (t, s) in OFD_IMAGENET.items()},
}
# RepDistiller trains these students with lr 0.01 instead of 0.05.
LOW_LR_STUDENTS = ('mobilenet_v2', 'shufflenet_v1', 'shufflenet_v2')
# configs/kd.py's method with one of its terms; weights as RepDistiller's.
KD_TERMS = {
  'kd': dict(kd_weight=0.9),
  'fitnet': dict(kd_weight=0.0, fitnet_weight=100.0),
  'at': dict(kd_weight=0.0, at_weight=1000.0),
}
# FSP matches Gram matrices stage by stage, so it needs the same channels on
# both sides: RepDistiller reports it for the same-family pairs only (and
# 0.00 for wrn40_2 -> wrn40_1, whose widths differ).
FSP_PAIRS = tuple(f'cifar100_{t}_{s}' for t, s in REPDISTILLER[:7])
FSP_PAIRS = tuple(p for p in FSP_PAIRS if p != 'cifar100_wrn40_2_wrn40_1')
# Where the stage maps of teacher and student differ in size, FitNets
# resamples in its regressor and AT pools the larger map (as RepDistiller's
# ConvReg and at_loss); OFD's partial L2 compares maps of one size (its
# official code distils between same-size stages only).
RESAMPLING_NEEDED = {
  pair: ('ofd',)
  for pair in (
    'cifar100_vgg13_mobilenet_v2',
    'cifar100_resnet50_cifar_mobilenet_v2',
    'cifar100_resnet50_cifar_vgg8',
    'cifar100_resnet32x4_shufflenet_v1',
    'cifar100_resnet32x4_shufflenet_v2',
    'cifar100_wrn40_2_shufflenet_v1',
  )
}
# Baselines kdjax does not have yet, and what they need.
MISSING = {}


def _distill_module():
  return defaults.load_config_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distill.py')
  )


# configs/distill.py's rows; its 'kd' row is configs/kd.py's KD, above.
DISTILL_METHODS = tuple(m for m in _distill_module().METHODS if m != 'kd')
METHODS = (
  tuple(KD_TERMS) + ('ofd',) + DISTILL_METHODS + ('crd',) + tuple(MISSING)
)
PRESETS = tuple(
  f'{pair},{method}'
  for pair, (_, _, recipe) in PAIRS.items()
  for method in METHODS
  # OFD's own tables compare OFD with the classic baselines only.
  if recipe == 'repdistiller' or method in (*KD_TERMS, 'ofd')
)


def _recipe(config, recipe: str, student: str) -> None:
  if recipe == 'repdistiller':
    defaults.set_dataset(config, 'cifar100')
    defaults.repdistiller_recipe(config)
    if student in LOW_LR_STUDENTS:
      config.optimizer.learning_rate = 0.01
  elif recipe == 'ofd_cifar':
    defaults.set_dataset(config, 'cifar100', augment='cifar_reflect')
    defaults.ofd_cifar_recipe(config)
  else:
    defaults.set_dataset(config, 'imagenet2012')
    defaults.ofd_imagenet_recipe(config)


def get_config(preset: str = 'cifar100_resnet32x4_resnet8x4,kd'):
  pair, _, method = preset.partition(',')
  if method in MISSING and pair in PAIRS:
    raise ValueError(f'benchmark preset {preset!r}: {MISSING[method]}.')
  if method in RESAMPLING_NEEDED.get(pair, ()):
    raise ValueError(
      f"benchmark preset {preset!r}: the teacher's and the student's stage "
      'maps differ in size, and OFD compares maps of one size (its official '
      'code distils between same-size stages only).'
    )
  if method == 'fsp' and pair in PAIRS and pair not in FSP_PAIRS:
    raise ValueError(
      f'benchmark preset {preset!r}: FSP needs the same channels stage by '
      'stage in teacher and student, and RepDistiller reports no FSP number '
      f'for this pair; FSP pairs: {FSP_PAIRS}.'
    )
  if preset not in PRESETS:
    raise ValueError(
      f"Unknown benchmark preset {preset!r}: use '<pair>,<method>' with a "
      f'pair of {sorted(PAIRS)} and a method of {sorted(METHODS)} '
      "(OFD's pairs take kd, fitnet, at and ofd)."
    )
  teacher, student, recipe = PAIRS[pair]
  if method in KD_TERMS:
    config = defaults.base_config('kd')
    config.kd = defaults.kd_section(**{'kd_weight': 0.0, **KD_TERMS[method]})
  elif method == 'crd':
    config = defaults.base_config('crd')
    config.crd = crd.default_section()
  elif method == 'ofd':
    config = defaults.base_config('ofd')
    alpha = 1e-4 if recipe == 'ofd_imagenet' else 1e-3
    config.ofd = ml_collections.ConfigDict(dict(alpha=alpha))
  else:
    distill = _distill_module()
    config = defaults.base_config('distill')
    ce_weight, terms = distill.METHODS[method]
    distill._apply(config, ce_weight, terms)  # pylint: disable=protected-access
  _recipe(config, recipe, student)
  config.teacher = defaults.model(teacher, 'conv')
  config.model = defaults.model(student, 'conv')
  return config
