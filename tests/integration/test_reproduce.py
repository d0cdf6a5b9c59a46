"""A tiny table end to end through python -m kdjax.reproduce: run, report, resume.

Two methods (supervised and KD from a teacher of the plan), two seeds, on
synthetic data for 2 steps a run: the CLI in-process trains the teacher
first, then every cell; --report gives the table beside its published
numbers; the same command again skips every finished run; a changed config
is refused as kdjax.main refuses it.
"""

import io
import json
import os

import pytest

from kdjax import errors, reproduce
from kdjax.reproduce import cli
from kdjax.reproduce.spec import Cell, Published, Table

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
TINY = {
  'dataset.name': 'synthetic',
  'dataset.synthetic.train_examples': 32,
  'dataset.synthetic.eval_examples': 16,
  'batch_size': 8,
  'num_devices': 1,
  'max_steps': 2,
  'num_epochs': 1,
  'eval_bn_recalibration_batches': 0,
  'log_every_steps': 1000,
  'model.name': 'resnet8',
}


def tiny_table(kd_overrides=None) -> Table:
  teacher = Cell(
    'teachers', 'resnet8', 'configs/supervised.py', 'demo', TINY, seeds=1
  )
  kd = dict(TINY, **{'teacher.name': 'resnet8', 'teacher.pretrain_epochs': 0})
  return Table(
    'tiny',
    'a tiny table: supervised and KD on synthetic data',
    'top-1 accuracy %',
    'mean_std',
    'the test',
    (
      teacher,
      Cell(
        'tiny',
        'supervised',
        'configs/supervised.py',
        'demo',
        TINY,
        published=(Published(10.0, 'made up for the test'),),
      ),
      Cell(
        'tiny',
        'KD',
        'configs/kd.py',
        'demo',
        dict(kd, **(kd_overrides or {})),
        teachers={'teacher.checkpoint_dir': teacher.id},
        published=(Published(12.5, 'made up too'),),
      ),
    ),
    seeds=2,
  )


def run_cli(argv):
  out = io.StringIO()
  return cli.main(argv, out=out), out.getvalue()


def test_tiny_table_runs_reports_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  reproduce.register(tiny_table())
  root = tmp_path / 'runs'
  args = ['--table=tiny', f'--root={root}']
  plan, _ = run_cli(args + ['--dry-run'])
  # Supervised seed 0 is the teacher run: 3 runs, the teacher first.
  assert [j['cell'] for j in plan['jobs']] == [
    'teachers/resnet8',
    'tiny/supervised',
    'tiny/KD',
    'tiny/KD',
  ]
  done, printed = run_cli(args)
  assert len(done['ran']) == 4 and not done['waiting'], printed
  report, _ = run_cli(args + ['--report'])
  cells = {r['cell']: r for r in report['cells']}
  for cell_id in ('tiny/supervised', 'tiny/KD'):
    assert cells[cell_id]['status'] == 'done', cells[cell_id]
    assert cells[cell_id]['finished_seeds'] == 2
    assert 0 <= cells[cell_id]['value'] <= 100
  kd = cells['tiny/KD']
  assert kd['difference'] == pytest.approx(kd['value'] - 12.5)
  markdown = (root / 'report.md').read_text()
  assert '| tiny | KD | ' in markdown and '12.50 [2]' in markdown
  assert json.loads((root / 'report.json').read_text())['cells']
  summary = json.loads(
    (root / 'tiny' / 'kd' / 'seed1' / 'summary.json').read_text()
  )
  assert summary['config']['teacher']['checkpoint_dir'] == str(
    root / 'teachers' / 'resnet8' / 'seed0'
  )
  # Again: every run is finished, nothing trains.
  again, _ = run_cli(args)
  assert again['ran'] == [] and len(again['skipped']) == 4
  # A changed config is refused before any work, as kdjax.main refuses it.
  reproduce.register(tiny_table({'kd.temperature': 2.0}))
  with pytest.raises(errors.ConfigChangedError, match='kd.temperature'):
    run_cli(args)
