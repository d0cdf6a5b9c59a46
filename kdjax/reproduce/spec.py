"""What a table is, as data: cells, published numbers and their sources.

A table (kdjax/reproduce/tables.py holds them) is a list of cells. A cell is
one measured number: a config file and preset plus overrides, or a builder
function (the embedded-digits study), the eval head it reports, the
published number(s) it is compared against, each with its source, and which
other cells it restores as frozen teachers (``teachers``: override key ->
cell id; the planner sets the key to that cell's workdir). Cells are listed
as unavailable, naming what is missing, when their config file, preset,
method or model does not exist (planner.check_cell).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

# How a table aggregates its seeds, as its paper does.
RULES = ('median', 'mean_std')
METRICS = ('top-1 accuracy %', 'top-1 error %')


@dataclasses.dataclass(frozen=True)
class Published:
  """A published number of a cell and where it comes from.

  Attributes:
    value: in the table's metric (accuracy or error, in %).
    source: paper and table, or repository README and commit.
    label: which one, where a cell has several ('paper', 'README').
  """

  value: float
  source: str
  label: str = ''


@dataclasses.dataclass(frozen=True)
class Cell:
  """One measured number of a table.

  Attributes:
    row: the table's row ('(a) WRN28-4 -> WRN16-4').
    column: the table's column ('OFD').
    config: a config file, relative to the repository root.
    preset: its preset.
    overrides: dotted config keys -> values, applied after the preset.
    teachers: dotted config key -> id of the cell whose run is that frozen
      teacher ('teacher.checkpoint_dir' -> 'teachers/WRN28-4'); those cells
      run first, and their workdir is the key's value.
    head: the eval head measured ('student', 'teacher', 'ensemble', ...).
    published: the published numbers; the report compares against the first
      (``compare`` names another by its label) and lists the others.
    seeds: None: the cell runs on every seed of the table; k: on seeds
      0..k-1 only (a teacher shared by every student seed: seed s of a
      student restores seed min(s, k - 1) of it).
    build: instead of config and preset, build(seed, teacher_dirs) returns
      the config (teacher_dirs: the keys of ``teachers`` -> workdirs);
      config and preset then only say where it is defined.
    note: shown beside the cell in the report.
  """

  row: str
  column: str
  config: str = ''
  preset: str = ''
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  teachers: Mapping[str, str] = dataclasses.field(default_factory=dict)
  head: str = 'student'
  published: Tuple[Published, ...] = ()
  compare: str = ''
  seeds: Optional[int] = None
  build: Optional[Callable[[int, Dict[str, str]], Any]] = None
  note: str = ''

  @property
  def id(self) -> str:
    return f'{self.row}/{self.column}'

  @property
  def reference(self) -> Optional[Published]:
    """The published number the report compares against."""
    for p in self.published:
      if p.label == self.compare or not self.compare:
        return p
    return None

  @property
  def source(self) -> str:
    """`configs/ofd.py:preset`, or where a builder cell is defined."""
    if self.build is not None and not self.config:
      return getattr(self.build, '__qualname__', 'a builder')
    return f'{self.config}:{self.preset}'


@dataclasses.dataclass(frozen=True)
class Table:
  """A paper's table, as the cells that reproduce it.

  Attributes:
    name: what --table takes.
    title: the paper and table, in words.
    metric: one of METRICS; summaries give accuracies, errors are 100 - it.
    rule: how seeds are aggregated (RULES), as the paper does.
    rule_source: where the rule comes from.
    cells: teachers may come in any order; the planner runs them first.
    seeds: the default --seeds.
    step_seconds: model name (+ '/adder' for adder networks) -> assumed
      seconds per training step at the preset's batch: the device-hour
      estimate (estimate.py); models missing here use estimate's defaults.
    step_seconds_source: what those numbers are.
    notes: paragraphs of the report and of --dry-run.
  """

  name: str
  title: str
  metric: str
  rule: str
  rule_source: str
  cells: Tuple[Cell, ...]
  seeds: int = 5
  step_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
  step_seconds_source: str = ''
  notes: Tuple[str, ...] = ()

  def __post_init__(self):
    if self.rule not in RULES:
      raise ValueError(f'table {self.name}: rule {self.rule!r} not in {RULES}')
    if self.metric not in METRICS:
      raise ValueError(
        f'table {self.name}: metric {self.metric!r} not in {METRICS}'
      )
    ids = [c.id for c in self.cells]
    if len(set(ids)) != len(ids):
      raise ValueError(f'table {self.name}: duplicate cell ids')
    for cell in self.cells:
      for key, other in cell.teachers.items():
        if other not in ids:
          raise ValueError(
            f'table {self.name}: cell {cell.id} restores {key} from '
            f'{other!r}, which is not a cell of the table'
          )

  def cell(self, cell_id: str) -> Cell:
    return {c.id: c for c in self.cells}[cell_id]


def slug(text: str) -> str:
  """A path-safe name: '(a) WRN28-4 -> WRN16-4' -> 'a_wrn28_4_wrn16_4'."""
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_') or 'x'
