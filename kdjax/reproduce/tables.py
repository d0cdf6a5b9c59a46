"""The tables ``python -m kdjax.reproduce`` knows, as data (spec.py).

Every published number names its source beside it. Where a repository and
its paper disagree (AdderNet's README and the PKKD paper, CIFAR-100
VGG-small ANN), both are kept and the report says which one it compares
against (the paper's). Cells whose preset, method or model kdjax does not
have yet are listed as unavailable by the planner, naming what is missing.

Configs: the presets of configs/*.py, with overrides where a paper's cell is
a preset's run with another model (the recipes are the same, docs/recipes.md).
The RepDistiller methods other than KD, FitNet and AT come from
configs/benchmark.py's ``<pair>,<method>`` presets (REPDISTILLER_PRESET).
The embedded-digits study is defined by experiments/mnist5k_study
(EXTERNAL: it needs the repository checkout).
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Tuple

from kdjax.reproduce.spec import Cell, Published, Table

P = Published
SUPERVISED, KD, OFD = 'configs/supervised.py', 'configs/kd.py', 'configs/ofd.py'
PKKD, EKD, BENCH = 'configs/pkkd.py', 'configs/ekd.py', 'configs/benchmark.py'

# -- Sources ------------------------------------------------------------------

PKKD_PAPER = (
  'PKKD paper (Xu et al., NeurIPS 2020, arXiv:2009.13044), CIFAR results table'
)
PKKD_PAPER_IMAGENET = (
  'PKKD paper (Xu et al., NeurIPS 2020, arXiv:2009.13044), ImageNet table'
)
ADDERNET_README = (
  'huawei-noah/AdderNet README, PKKD results (commit not pinned here; an '
  'older README gives 74.58 for the CIFAR-100 VGG-small ANN, as the paper)'
)
OFD_README = (
  'clovaai/overhaul-distillation README @2f17f5e, CIFAR-100 experimental '
  'results (error %)'
)
OFD_README_IMAGENET = (
  'clovaai/overhaul-distillation README @2f17f5e, ImageNet experimental '
  'results (top-1 error %)'
)
EKD_PAPER = (
  'EKD paper (Asif, Tang, Harrer, ECAI 2020, arXiv:1909.08097), CIFAR-10 '
  'comparison'
)
REPDISTILLER_SAME = (
  'HobbitLong/RepDistiller README @0eb3a95, CIFAR-100 benchmark table 1 '
  '(same architecture type)'
)
REPDISTILLER_CROSS = (
  'HobbitLong/RepDistiller README @0eb3a95, CIFAR-100 benchmark table 2 '
  '(different architecture type)'
)

# -- PKKD ---------------------------------------------------------------------

# (dataset, arch, row) -> CNN, ANN, PKKD (paper); README where it lists them.
PKKD_CIFAR = {
  ('cifar10', 'resnet20'): ((92.93, 92.02, 92.96), (None, 92.02, 92.96)),
  ('cifar100', 'resnet20'): ((68.75, 67.60, 69.93), (None, 67.60, 69.93)),
  ('cifar10', 'resnet32'): ((93.59, 93.01, 93.62), (None, 93.01, 93.62)),
  ('cifar100', 'resnet32'): ((70.46, 69.17, 72.41), (None, 69.17, 72.41)),
  ('cifar10', 'vgg_small'): ((94.25, 93.72, 95.03), (None, 93.72, 95.03)),
  ('cifar100', 'vgg_small'): ((75.96, 74.58, 76.94), (None, 72.64, 76.94)),
}
PKKD_IMAGENET = {'resnet18': (69.8, 67.0, 68.8), 'resnet50': (76.2, 74.9, 76.8)}
# The AdderNet ImageNet recipe (configs/pkkd.py's) on the supervised
# ImageNet preset, whose own recipe is OFD's.
ADDERNET_IMAGENET = {
  'num_epochs': 150,
  'optimizer.schedule': 'cosine',
  'optimizer.nesterov': False,
  'optimizer.reset_momentum_at_boundaries': False,
}


def _published(paper, readme, paper_source, readme_source):
  out = () if paper is None else (P(paper, paper_source, 'paper'),)
  if readme is not None:
    out += (P(readme, readme_source, 'README'),)
  return out


def _pkkd_cifar() -> Table:
  cells = []
  names = {'resnet20': 'ResNet-20', 'resnet32': 'ResNet-32'}
  names['vgg_small'] = 'VGG-small'
  for (dataset, arch), (paper, readme) in PKKD_CIFAR.items():
    row = f'{dataset.upper().replace("CIFAR", "CIFAR-")} {names[arch]}'
    preset = f'{dataset}_{arch}'
    pub = [
      _published(p, r, PKKD_PAPER, ADDERNET_README)
      for p, r in zip(paper, readme)
    ]
    cells += [
      Cell(row, 'CNN', SUPERVISED, preset, published=pub[0]),
      Cell(
        row,
        'ANN',
        SUPERVISED,
        preset,
        {'model.conv_type': 'adder'},
        published=pub[1],
      ),
      Cell(row, 'PKKD ANN', PKKD, preset, published=pub[2], compare='paper'),
    ]
  return Table(
    name='pkkd_cifar',
    title='PKKD (Xu et al., NeurIPS 2020): CNN, ANN and PKKD-trained ANN '
    'of the same architecture, CIFAR-10 and CIFAR-100',
    metric='top-1 accuracy %',
    rule='mean_std',
    rule_source='the paper states no rule; mean ± sample std over seeds',
    cells=tuple(cells),
    notes=(
      'The CIFAR-100 VGG-small ANN is 74.58 in the paper and 72.64 in the '
      "current AdderNet README: the report compares against the paper's and "
      'lists the README number beside it.',
    ),
  )


def _pkkd_imagenet() -> Table:
  cells = []
  for arch, values in PKKD_IMAGENET.items():
    row = f'ImageNet {arch.replace("resnet", "ResNet-")}'
    base = dict(ADDERNET_IMAGENET, **{'model.name': arch})
    cells += [
      Cell(
        row,
        'CNN',
        SUPERVISED,
        'imagenet_resnet50',
        base,
        published=(P(values[0], PKKD_PAPER_IMAGENET),),
      ),
      Cell(
        row,
        'ANN',
        SUPERVISED,
        'imagenet_resnet50',
        dict(base, **{'model.conv_type': 'adder'}),
        published=(P(values[1], PKKD_PAPER_IMAGENET),),
      ),
      Cell(
        row,
        'PKKD ANN',
        PKKD,
        f'imagenet_{arch}',
        published=(P(values[2], PKKD_PAPER_IMAGENET),),
      ),
    ]
  return Table(
    name='pkkd_imagenet',
    title='PKKD (Xu et al., NeurIPS 2020): ImageNet ResNet-18 and ResNet-50',
    metric='top-1 accuracy %',
    rule='mean_std',
    rule_source='the paper states no rule; mean ± sample std over seeds',
    cells=tuple(cells),
    seeds=1,
    notes=(
      'The CNN and ANN baselines are configs/supervised.py:imagenet_resnet50 '
      "with the AdderNet ImageNet recipe of configs/pkkd.py's presets "
      '(150 epochs, cosine) and the model named in the row.',
    ),
  )


# -- OFD ----------------------------------------------------------------------

# setup -> (teacher cell, student, OFD preset or None, alone, OFD error %).
OFD_CIFAR = {
  '(a) WRN28-4 -> WRN16-4': ('wrn28_4', 'wrn16_4', 22.72, 20.89),
  '(b) WRN28-4 -> WRN28-2': ('wrn28_4', 'wrn28_2', 24.88, 21.98),
  '(c) WRN28-4 -> WRN16-2': ('wrn28_4', 'wrn16_2', 27.32, 24.08),
  '(d) WRN28-4 -> ResNet56': ('wrn28_4', 'resnet56', 27.68, 24.44),
  '(e) PyramidNet-200 -> WRN28-4': (
    'pyramidnet200_240',
    'wrn28_4',
    21.09,
    17.8,
  ),
  '(f) PyramidNet-200 -> PyramidNet-110': (
    'pyramidnet200_240',
    'pyramidnet110_84',
    22.58,
    18.89,
  ),
}


def _ofd_cifar100() -> Table:
  teachers = {
    'wrn28_4': Cell(
      'teachers',
      'WRN28-4',
      SUPERVISED,
      'cifar100_wrn28_4',
      published=(
        P(21.09, OFD_README + ', setup (e) "Original" (WRN28-4 alone)'),
      ),
      seeds=1,
    ),
    'pyramidnet200_240': Cell(
      'teachers',
      'PyramidNet-200 (240)',
      SUPERVISED,
      'cifar100_pyramidnet200_240',
      seeds=1,
      note='the README gives no number for the teacher itself',
    ),
  }
  cells = list(teachers.values())
  for row, (teacher, student, alone, ofd) in OFD_CIFAR.items():
    letter = row[1]
    config = OFD if letter in 'abcd' else BENCH
    preset = (
      f'cifar100_{teacher}_{student}'
      if letter in 'abcd'
      else f'ofd_{letter},ofd'
    )
    cells += [
      Cell(
        row,
        'student alone',
        SUPERVISED,
        f'cifar100_{student}',
        published=(P(alone, f'{OFD_README}, setup ({letter}) "Original"'),),
      ),
      Cell(
        row,
        'OFD',
        config,
        preset,
        teachers={'teacher.checkpoint_dir': teachers[teacher].id},
        published=(P(ofd, f'{OFD_README}, setup ({letter}) "Proposed"'),),
      ),
    ]
  return Table(
    name='ofd_cifar100',
    title='OFD (Heo et al., ICCV 2019): CIFAR-100 setups (a)-(f), error %',
    metric='top-1 error %',
    rule='median',
    rule_source='OFD (Heo et al., ICCV 2019) reports the median of 5 runs on '
    'CIFAR-100',
    cells=tuple(cells),
    notes=(
      "The README's results table labels setups (e) and (f) as (f) and (g); "
      'the rows follow its settings table. One teacher per setup (seed 0) '
      'serves every student seed, as the paper distils from one pre-trained '
      'teacher.',
    ),
  )


def _ofd_imagenet() -> Table:
  src = OFD_README_IMAGENET
  r152 = Cell(
    'teachers',
    'ResNet152',
    SUPERVISED,
    'imagenet_resnet152',
    published=(P(21.69, f'{src}, ResNet 50 table "Teacher"'),),
    seeds=1,
    note='top-5 error 5.95',
  )
  r50 = Cell(
    'teachers',
    'ResNet50',
    SUPERVISED,
    'imagenet_resnet50',
    published=(P(23.84, f'{src}, MobileNet table "Teacher"'),),
    seeds=1,
    note='top-5 error 7.14 (torchvision ResNet-50)',
  )
  cells = [
    r152,
    r50,
    Cell(
      'ResNet152 -> ResNet50',
      'student alone',
      SUPERVISED,
      'imagenet_resnet50',
      published=(P(23.72, f'{src}, ResNet 50 table "Original"'),),
      note='top-5 error 6.97',
    ),
    Cell(
      'ResNet152 -> ResNet50',
      'OFD',
      OFD,
      'imagenet_resnet152_resnet50',
      teachers={'teacher.checkpoint_dir': r152.id},
      published=(P(21.65, f'{src}, ResNet 50 table "Proposed"'),),
      note='top-5 error 5.83',
    ),
    Cell(
      'ResNet50 -> MobileNet',
      'student alone',
      SUPERVISED,
      'imagenet_mobilenet_v1',
      published=(P(31.13, f'{src}, MobileNet table "Original"'),),
      note='top-5 error 11.24',
    ),
    Cell(
      'ResNet50 -> MobileNet',
      'OFD',
      BENCH,
      'ofd_imagenet_b,ofd',
      teachers={'teacher.checkpoint_dir': r50.id},
      published=(P(28.75, f'{src}, MobileNet table "Proposed"'),),
      note='top-5 error 9.66',
    ),
  ]
  return Table(
    name='ofd_imagenet',
    title='OFD (Heo et al., ICCV 2019): ImageNet ResNet152 -> ResNet50 and '
    'ResNet50 -> MobileNet, top-1 error %',
    metric='top-1 error %',
    rule='median',
    rule_source='OFD reports one run on ImageNet; the median over seeds',
    cells=tuple(cells),
    seeds=1,
    notes=(
      'The paper distils from torchvision teachers; `python -m kdjax.convert` '
      'turns them into teacher workdirs (docs/interop.md) that can stand in '
      'for the teacher runs. kdjax reports top-1 only; top-5 errors are in '
      'the notes.',
    ),
  )


# -- EKD ----------------------------------------------------------------------


def _ekd_cifar() -> Table:
  cells = []
  for dataset in ('cifar10', 'cifar100'):
    name = dataset.upper().replace('CIFAR', 'CIFAR-')
    teachers = {}
    for i, arch in enumerate(('resnet110', 'resnet56', 'wrn40_2')):
      cell = Cell(
        f'teachers ({name})',
        arch,
        SUPERVISED,
        f'{dataset}_ekd_teachers',
        {'model.name': arch},
        seeds=1,
      )
      teachers[f'teachers.{i}.checkpoint_dir'] = cell.id
      cells.append(cell)
    for suffix, label in (('', 'all data'), ('_10pct', '10 % of the data')):
      row = f'{name}, {label}'
      published = ()
      if dataset == 'cifar10' and not suffix:
        published = (P(89.66, f'{EKD_PAPER} (7-branch ResNet-8 student)'),)
      cells.append(
        Cell(
          row,
          'EKD (ensemble)',
          EKD,
          dataset + suffix,
          teachers=teachers,
          published=published,
          note=''
          if published or dataset != 'cifar10'
          else (
            'the paper: beats ResNet-110 with 3x fewer parameters (no number)'
          ),
        )
      )
      if dataset == 'cifar10' and not suffix:
        cells += [
          Cell(
            row,
            'TAKD',
            'configs/takd.py',
            'cifar10_ekd',
            published=(P(88.01, EKD_PAPER),),
          ),
          Cell(
            row,
            'mutual learning',
            'configs/dml.py',
            'cifar10_ekd',
            published=(P(87.71, EKD_PAPER),),
          ),
        ]
  return Table(
    name='ekd_cifar',
    title='EKD (Asif et al., ECAI 2020): multi-branch student from 3 '
    'teachers, CIFAR-10 and CIFAR-100, all data and 10 %',
    metric='top-1 accuracy %',
    rule='mean_std',
    rule_source='the paper states no rule; mean ± sample std over seeds',
    cells=tuple(cells),
    notes=(
      'Which teachers the paper used is not confirmed (configs/ekd.py); the '
      'presets use ResNet-110, ResNet-56 and WRN-40-2, each trained once.',
    ),
  )


# -- RepDistiller ---------------------------------------------------------------

# (teacher, student, teacher %, student %, same architecture type).
REPDISTILLER_PAIRS = (
  ('wrn40_2', 'wrn16_2', 75.61, 73.26, True),
  ('wrn40_2', 'wrn40_1', 75.61, 71.98, True),
  ('resnet56', 'resnet20', 72.34, 69.06, True),
  ('resnet110', 'resnet20', 74.31, 69.06, True),
  ('resnet110', 'resnet32', 74.31, 71.14, True),
  ('resnet32x4', 'resnet8x4', 79.42, 72.50, True),
  ('vgg13', 'vgg8', 74.64, 70.36, True),
  ('vgg13', 'mobilenet_v2', 74.64, 64.60, False),
  ('resnet50_cifar', 'mobilenet_v2', 79.34, 64.60, False),
  ('resnet50_cifar', 'vgg8', 79.34, 70.36, False),
  ('resnet32x4', 'shufflenet_v1', 79.42, 70.50, False),
  ('resnet32x4', 'shufflenet_v2', 79.42, 71.82, False),
  ('wrn40_2', 'shufflenet_v1', 75.61, 70.50, False),
)
# Method -> the README's numbers, one per pair in REPDISTILLER_PAIRS' order
# (FSP has none for the different-architecture pairs; its wrn-40-1 cell is
# 0.00 in the README, kept as published).
REPDISTILLER_RESULTS = {
  'KD': '74.92 73.54 70.66 70.67 73.08 73.33 72.98 67.37 67.35 73.81 74.07 '
  '74.45 74.83',
  'FitNet': '73.58 72.24 69.21 68.99 71.06 73.50 71.02 64.14 63.16 70.69 '
  '73.59 73.54 73.73',
  'AT': '74.08 72.77 70.55 70.22 72.31 73.44 71.43 59.40 58.58 71.84 71.73 '
  '72.73 73.32',
  'SP': '73.83 72.43 69.67 70.04 72.69 72.94 72.68 66.30 68.08 73.34 73.48 '
  '74.56 74.52',
  'CC': '73.56 72.21 69.63 69.48 71.48 72.97 70.71 64.86 65.43 70.25 71.14 '
  '71.29 71.38',
  'VID': '74.11 73.30 70.38 70.16 72.61 73.09 71.23 65.56 67.57 70.30 73.38 '
  '73.40 73.61',
  'RKD': '73.35 72.22 69.61 69.25 71.82 71.90 71.48 64.52 64.43 71.50 72.28 '
  '73.21 72.21',
  'PKT': '74.54 73.45 70.34 70.25 72.61 73.64 72.88 67.13 66.52 73.01 74.10 '
  '74.69 73.89',
  'AB': '72.50 72.38 69.47 69.53 70.98 73.17 70.94 66.06 67.20 70.65 73.55 '
  '74.31 73.34',
  'FT': '73.25 71.59 69.84 70.22 72.37 72.86 70.58 61.78 60.99 70.29 71.75 '
  '72.50 72.03',
  'FSP': '72.91 0.00 69.95 70.11 71.89 72.62 70.23 - - - - - -',
  'NST': '73.68 72.24 69.60 69.53 71.96 73.30 71.53 58.16 64.96 71.28 74.12 '
  '74.68 74.89',
  'CRD': '75.48 74.14 71.16 71.46 73.48 75.51 73.94 69.73 69.11 74.30 75.11 '
  '75.65 76.05',
}
# Where configs/kd.py's presets give the method: the same RepDistiller
# recipe with the pair's models named.
KD_VARIANTS = {'KD': '', 'FitNet': '_fitnet', 'AT': '_at'}
# RepDistiller trains MobileNetV2 and ShuffleNet students with lr 0.01.
LOW_LR_STUDENTS = ('mobilenet_v2', 'shufflenet_v1', 'shufflenet_v2')


def repdistiller_preset(teacher: str, student: str, method: str) -> str:
  """configs/benchmark.py's preset of a pair and method: '<pair>,<method>'."""
  return f'cifar100_{teacher}_{student},{method.lower()}'


def _repdistiller_cifar100() -> Table:
  cells: List[Cell] = []
  teacher_cells: Dict[str, Cell] = {}
  for i, (teacher, student, t_acc, s_acc, same) in enumerate(
    REPDISTILLER_PAIRS
  ):
    source = REPDISTILLER_SAME if same else REPDISTILLER_CROSS
    if teacher not in teacher_cells:
      teacher_cells[teacher] = Cell(
        'teachers',
        teacher,
        SUPERVISED,
        'cifar100_resnet32x4',
        {'model.name': teacher},
        published=(P(t_acc, f'{source}, "Teacher"'),),
        seeds=1,
      )
      cells.append(teacher_cells[teacher])
    row = f'{teacher} -> {student}'
    lr = {'optimizer.learning_rate': 0.01} if student in LOW_LR_STUDENTS else {}
    cells.append(
      Cell(
        row,
        'student alone',
        SUPERVISED,
        'cifar100_resnet8x4',
        {'model.name': student, **lr},
        published=(P(s_acc, f'{source}, "Student"'),),
      )
    )
    link = {'teacher.checkpoint_dir': teacher_cells[teacher].id}
    for method, values in REPDISTILLER_RESULTS.items():
      value = values.split()[i]
      if value == '-':
        continue
      published = (P(float(value), f'{source}, {method}'),)
      if method in KD_VARIANTS:
        cell = Cell(
          row,
          method,
          KD,
          'cifar100_resnet32x4_resnet8x4' + KD_VARIANTS[method],
          {'teacher.name': teacher, 'model.name': student, **lr},
          teachers=link,
          published=published,
        )
      else:
        cell = Cell(
          row,
          method,
          BENCH,
          repdistiller_preset(teacher, student, method),
          teachers=link,
          published=published,
        )
      cells.append(cell)
  return Table(
    name='repdistiller_cifar100',
    title='RepDistiller (Tian et al., ICLR 2020): 13 teacher-student pairs x '
    '13 methods on CIFAR-100',
    metric='top-1 accuracy %',
    rule='mean_std',
    rule_source='the CRD paper reports the mean of several runs; mean ± '
    'sample std over seeds',
    cells=tuple(cells),
    notes=(
      'Teachers, students alone, KD, FitNet and AT are the RepDistiller-recipe '
      "presets of configs/supervised.py and configs/kd.py with the pair's "
      'models named (lr 0.01 for MobileNetV2 and ShuffleNet students, as '
      "RepDistiller); the other methods are configs/benchmark.py's "
      "'<pair>,<method>' presets. One teacher per architecture (seed 0) "
      'serves every pair and seed, as RepDistiller distils from one '
      'pre-trained teacher.',
    ),
  )


# -- Registry -------------------------------------------------------------------

BUILDERS = {
  'pkkd_cifar': _pkkd_cifar,
  'pkkd_imagenet': _pkkd_imagenet,
  'ofd_cifar100': _ofd_cifar100,
  'ofd_imagenet': _ofd_imagenet,
  'ekd_cifar': _ekd_cifar,
  'repdistiller_cifar100': _repdistiller_cifar100,
}
# Tables defined outside the package: name -> 'module:function'.
EXTERNAL = {'mnist5k_study': 'experiments.mnist5k_study.reproduce_table:table'}
# Tables a user adds in Python (tests): name -> Table.
REGISTERED: Dict[str, Table] = {}


def names() -> Tuple[str, ...]:
  return tuple(BUILDERS) + tuple(EXTERNAL) + tuple(REGISTERED)


def register(table: Table) -> None:
  """Makes ``table`` known to --table (for tables defined in Python)."""
  REGISTERED[table.name] = table


def get(name: str) -> Table:
  """The table called ``name``; ValueError names the known ones."""
  if name in REGISTERED:
    return REGISTERED[name]
  if name in BUILDERS:
    return BUILDERS[name]()
  if name in EXTERNAL:
    module, function = EXTERNAL[name].split(':')
    try:
      return getattr(importlib.import_module(module), function)()
    except ImportError as e:
      raise ValueError(
        f'table {name} is defined in {module}, which is not importable here '
        f'({e}): run from the root of a kdjax repository checkout.'
      ) from None
  raise ValueError(
    f'unknown table {name!r}; choose one of {", ".join(names())}'
  )
