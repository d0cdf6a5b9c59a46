"""python -m kdjax.reproduce plans every table: dry-runs, commands, reports, shards.

Every table's --dry-run runs here (no training): teachers come first, each
student waits for its teachers' workdirs, missing data is named with its
tfds build command, unavailable cells name what is missing, and the printed
kdjax.main command of a run loads the config the planner would train. The
report of a table with no runs shows every published number. Shards and the
cache run with a stand-in trainer.
"""

import io
import json
import os
import shlex

import pytest

from kdjax import reproduce
from kdjax.reproduce import cli, planner, tables
from kdjax.reproduce.spec import Cell, Published, Table

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
TABLES = (
  'pkkd_cifar',
  'pkkd_imagenet',
  'ofd_cifar100',
  'ofd_imagenet',
  'ekd_cifar',
  'repdistiller_cifar100',
  'mnist5k_study',
)


def run_cli(argv):
  out = io.StringIO()
  result = cli.main(argv, out=out)
  return result, out.getvalue()


def test_list_names_every_table():
  result, printed = run_cli(['--list'])
  for name in TABLES:
    assert name in result['tables'] and result['tables'][name], name
    assert printed.count(f'{name}:') == 1


@pytest.mark.parametrize('name', TABLES)
def test_dry_run(name, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_data'))
  root = tmp_path / 'runs'
  result, printed = run_cli([f'--table={name}', '--dry-run', f'--root={root}'])
  jobs = result['jobs']
  assert jobs, name
  phases = [j['phase'] for j in jobs]
  assert phases == sorted(phases), 'teachers first'
  seen = set()
  for job in jobs:
    assert job['workdir'].startswith(str(root)), job
    assert job['command'].startswith('python -m kdjax.'), job
    assert job['steps'] > 0 and job['device_hours'] > 0, job
    assert all(w in seen for w in job['waits_for']), job
    assert (job['state'] == 'to run') == (not job['waits_for']), job
    seen.add(job['workdir'])
  assert result['totals']['runs'] == len(jobs)
  assert 'device-hours' in printed and 'estimate:' in printed
  for cell_id, why in result['unavailable'].items():
    assert why and f'unavailable: {cell_id}: {why}' in printed
  datasets = {m[0] for m in result['missing_data']}
  if name.startswith(('pkkd_cifar', 'ofd_cifar', 'ekd', 'repdistiller')):
    assert 'tfds build cifar' in printed and datasets <= {'cifar10', 'cifar100'}
  elif 'imagenet' in name:
    assert 'tfds build imagenet2012' in printed and '--manual_dir' in printed
  else:
    assert not result['missing_data']  # mnist5k prepares itself.
  assert not root.exists()  # Trains nothing, writes nothing.


def test_dry_run_commands_load_the_planned_configs(monkeypatch):
  """The kdjax.main line of a run gives the config the planner trains."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(REPO)
  plan = planner.plan_table(tables.get('repdistiller_cifar100'), '/tmp/r', 2)
  picked = {}
  for job in plan.jobs:  # A teacher, a student alone and a KD run, seed 1.
    kind = job.config.method + ('_t' if job.phase == 0 else '')
    if job.command.startswith('python -m kdjax.main') and job.seed == 1:
      picked.setdefault(kind, job)
  picked.setdefault('teacher', plan.jobs[0])
  assert {'supervised', 'kd', 'teacher'} <= set(picked), sorted(picked)
  for job in picked.values():
    argv = shlex.split(job.command)[3:]
    args = ['check'] + [a for a in argv if not a.startswith('--workdir=')]
    values = flags.FlagValues()
    flag = config_flags.DEFINE_config_file(
      'config', None, '', flag_values=values, sys_argv=args
    )
    values(args)
    config = flag.value
    assert planner.config_key(config, job.deps) == job.key, job.command


def test_unavailable_cells_name_what_is_missing():
  plan = planner.plan_table(tables.get('ekd_cifar'), '/tmp/r', 1)
  # EKD's baselines are presets now (configs/takd.py, configs/dml.py).
  assert 'CIFAR-10, all data/TAKD' not in plan.unavailable
  assert 'CIFAR-10, all data/mutual learning' not in plan.unavailable
  # A cell that configs/benchmark.py cannot run says why.
  rd = planner.plan_table(tables.get('repdistiller_cifar100'), '/tmp/r', 1)
  assert 'same channels' in rd.unavailable['wrn40_2 -> wrn40_1/FSP']
  # AB, FT (initialization phase) and CRD (memory bank) run now.
  for method in ('AB', 'FT', 'CRD'):
    assert f'wrn40_2 -> wrn16_2/{method}' not in rd.unavailable
  ofd = planner.plan_table(tables.get('ofd_cifar100'), '/tmp/r', 1)
  assert not ofd.unavailable  # PyramidNet setups (e) and (f) included.
  # A method or model kdjax lacks is named.
  bad = Table(
    'bad',
    'bad',
    'top-1 accuracy %',
    'median',
    '-',
    (
      Cell('r', 'a', 'configs/supervised.py', 'demo', {'model.name': 'nope'}),
      Cell('r', 'b', 'configs/supervised.py', 'demo', {'method': 'nope'}),
      Cell('r', 'c', 'configs/supervised.py', 'demo', {'no.such': 1}),
    ),
  )
  bad_plan = planner.plan_table(bad, '/tmp/r', 1)
  assert "model 'nope'" in bad_plan.unavailable['r/a']
  assert "method 'nope'" in bad_plan.unavailable['r/b']
  assert 'override no.such' in bad_plan.unavailable['r/c']


def test_report_without_runs_shows_every_published_number(tmp_path):
  for name in ('ofd_cifar100', 'pkkd_cifar', 'repdistiller_cifar100'):
    table = tables.get(name)
    result, printed = run_cli(
      [f'--table={name}', '--report', f'--root={tmp_path / name}']
    )
    markdown = result['markdown']
    for cell in table.cells:
      for p in cell.published:
        assert f'{p.value:.2f}' in markdown, (name, cell.id)
        assert p.source in markdown
    assert all(
      r['status'] in ('missing', 'unavailable') for r in result['cells']
    )
    assert (tmp_path / name / 'report.md').read_text() == markdown
  # Paper and README disagree: both kept, the paper's compared.
  assert '74.58 (paper) [1]; 72.64 (README) [2]' in (
    (tmp_path / 'pkkd_cifar' / 'report.md').read_text()
  )


def test_every_published_number_names_its_source():
  for name in TABLES:
    for cell in tables.get(name).cells:
      for p in cell.published:
        assert p.source and isinstance(p.value, float), (name, cell.id)
      if len(cell.published) > 1:
        assert cell.reference is not None


def fake_train(config, workdir):
  """Stands in for the trainer: a finished summary with the run's config."""
  from kdjax.train import run_config  # pylint: disable=g-import-not-at-top

  if config.method == 'kd':
    assert os.path.exists(
      os.path.join(config.teacher.checkpoint_dir, 'summary.json')
    )
  summary = {
    'method': config.method,
    'preempted': False,
    'steps': 2,
    'eval_accuracy': {'student': 0.5 + 0.1 * config.seed},
    'history': [],
    'config': run_config.record(config),
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f)
  return summary


def tiny_table():
  base = {'dataset.name': 'synthetic', 'max_steps': 2}
  teacher = Cell('teachers', 'resnet20', 'configs/supervised.py', 'demo', base)
  teacher = Cell(**{**vars(teacher), 'seeds': 1})
  return Table(
    'tiny_fake',
    'a tiny table',
    'top-1 error %',
    'median',
    'a test',
    (
      Cell(
        'r',
        'kd',
        'configs/kd.py',
        'demo',
        dict(base, **{'teacher.pretrain_epochs': 0}),
        teachers={'teacher.checkpoint_dir': teacher.id},
        published=(Published(40.0, 'made up'),),
      ),
      teacher,
    ),
    seeds=3,
  )


def test_shards_wait_for_teachers_of_other_shards(tmp_path, monkeypatch):
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(
    kd_train,
    'train_and_evaluate',
    lambda c, w: calls.append(w) or fake_train(c, w),
  )
  monkeypatch.chdir(REPO)
  reproduce.register(tiny_table())
  root = str(tmp_path / 'runs')
  args = ['--table=tiny_fake', f'--root={root}']
  plan = planner.plan_table(tables.get('tiny_fake'), root)
  assert [j.cell for j in plan.jobs] == ['teachers/resnet20'] + ['r/kd'] * 3
  # Shard 1 of 2 has kd seeds 0 and 2: their teacher is shard 0's.
  first, _ = run_cli(args + ['--shard=1/2'])
  assert first['ran'] == [] and len(first['waiting']) == 2
  second, _ = run_cli(args + ['--shard=0/2'])  # The teacher, kd seed 1.
  assert len(second['ran']) == 2 and not second['waiting']
  third, _ = run_cli(args + ['--shard=1/2'])
  assert len(third['ran']) == 2
  assert len(calls) == 4
  again, _ = run_cli(args)  # Everything finished: nothing trains.
  assert again['ran'] == [] and len(again['skipped']) == 4 and len(calls) == 4
  report, _ = run_cli(args + ['--report'])
  kd = report['cells'][0]
  # Error % of accuracies 0.5, 0.6, 0.7: median 40, published 40.
  assert kd['status'] == 'done' and kd['value'] == pytest.approx(40.0)
  assert kd['difference'] == pytest.approx(0.0)
  dry, printed = run_cli(args + ['--dry-run'])
  assert {j['state'] for j in dry['jobs']} == {'finished'}
  assert 'left: 0 runs' in printed
