"""The study as a table of ``python -m kdjax.reproduce``: ``--table=mnist5k_study``.

The same cells and teachers as the study's default plan (Settings(): the
CPU, 1x budget), built by the study's own builders, planned and run by
kdjax.reproduce's planner under --root, and reported beside the study's
committed numbers (results/study.json: mean over its 5 seeds) as the
"published" ones. The cost study is not a table cell (it trains nothing).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Dict

from kdjax.reproduce.spec import Cell, Published, Table

from .cells import select_cells
from .costs import STEP_SECONDS_FILE
from .settings import RESULTS, Settings

SOURCE = (
  'experiments/mnist5k_study/results/study.md (CPU, 1x budget, 5 seeds, '
  'mean; the committed study.json)'
)


def _build(builder, settings, seed, dirs):
  return builder(settings, seed, dirs)


def _step_seconds() -> Dict[str, float]:
  """Seconds per step by model name (+ '/adder'), from step_seconds.json."""
  with open(STEP_SECONDS_FILE) as f:
    networks = json.load(f)['networks']
  out = {}
  for n in networks:
    key = n['model'] + ('/adder' if n['conv_type'] == 'adder' else '')
    out.setdefault(key, n['seconds'])
  return out


def table() -> Table:
  settings = Settings()
  cells, deps = select_cells(settings, ('pkkd', 'ofd', 'ekd'))
  committed_file = os.path.join(RESULTS, 'study.json')
  with open(committed_file) as f:
    committed = json.load(f)['cells']
  used = sorted({d for c in cells for d in c.deps})
  teachers = {
    name: Cell(
      'teachers',
      name,
      'experiments/mnist5k_study/cells.py',
      name,
      build=functools.partial(_build, deps[name].build, settings),
      note=deps[name].label,
    )
    for name in used
  }
  out = list(teachers.values())
  for c in cells:
    stats = committed.get(f'{c.study}/{c.regime}/{c.name}', {})
    student = stats.get('heads', {}).get('student')
    published = (Published(100 * student['mean'], SOURCE),) if student else ()
    out.append(
      Cell(
        f'{c.study}/{c.regime}',
        c.name,
        'experiments/mnist5k_study/cells.py',
        c.name,
        build=functools.partial(_build, c.build, settings),
        teachers={d: teachers[d].id for d in c.deps},
        published=published,
        note=c.label,
      )
    )
  return Table(
    name='mnist5k_study',
    title='The embedded-digits study (experiments/mnist5k_study): PKKD, OFD '
    'and EKD cells on MNIST-5k, CPU budget',
    metric='top-1 accuracy %',
    rule='mean_std',
    rule_source='the study reports mean ± sample std over seeds',
    cells=tuple(out),
    seeds=5,
    step_seconds=_step_seconds(),
    step_seconds_source='experiments/mnist5k_study/step_seconds.json: '
    'seconds per step measured on a 2-core CPU',
    notes=(
      'Teachers train once per seed, as in the study; '
      '`python -m experiments.mnist5k_study` runs the same configs with its '
      'claim checks and plots.',
    ),
  )
