"""experiments/mnist5k_study/ does not rot: its plan, outputs and a real quick run.

The first test runs every study and cell of ``--quick`` with the trainer
replaced by a stand-in (each config is still turned into its method, so config
drift shows), two seeds so the claim checks compute: seconds. Another trains
for real, 2 steps a run with tiny models, on two cells that exercise a
supervised run, a frozen teacher restored into PKKD and the cost study, through
the documented command ``python -m experiments.mnist5k_study``. A real run of
every cell takes minutes (each run compiles its own step), too long for the
suite: ``python -m experiments.mnist5k_study --quick`` does that. The others
rebuild the committed results/study.md from results/study.json (in
experiments/mnist5k_study/), check the timing table
and its re-measurement, and that teachers only come from the plan.
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest

from experiments.conftest import suite_env

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]

PKKD_CELLS = [
  'cnn',
  'ann',
  'pkkd',
  'no_kernel_features',
  'frozen_teacher',
  'raw_features',
]
OFD_CELLS = ['teacher', 'alone', 'kd', 'fitnets', 'at', 'ofd']
EKD_CELLS = ['single', 'multi_alone', 'ekd']
PNGS = [
  'study_pkkd.png',
  'study_pkkd_curves.png',
  'study_ofd.png',
  'study_ofd_curves.png',
  'study_ekd.png',
  'study_ekd_curves.png',
  'study_cost.png',
]


def load_study():
  """The package experiments.mnist5k_study."""
  from experiments import mnist5k_study  # pylint: disable=g-import-not-at-top

  return mnist5k_study


def fake_train_and_evaluate(config, workdir):
  """Stands in for the trainer: checks the config, returns a plausible summary."""
  from kdjax.methods import build_method  # pylint: disable=g-import-not-at-top

  build_method(config, num_classes=10, image_shape=(28, 28, 1))
  teachers = []
  if config.method in ('kd', 'ofd') or (
    config.method == 'pkkd' and config.pkkd.teacher_mode == 'frozen'
  ):
    teachers = [config.teacher]
  elif config.method == 'ekd':
    teachers = list(config.teachers)
  for teacher in teachers:  # Dependencies ran first and left a summary.
    assert os.path.exists(
      os.path.join(teacher.checkpoint_dir, 'summary.json')
    ), teacher
    # And the trainer is not asked to pre-train one again.
    assert not teacher.get('pretrain_epochs', 0), teacher
  base = (
    0.5 + 0.01 * config.seed + 0.05 * config.get('pkkd', {}).get('beta', 0) / 5
  )
  heads = {'student': base}
  if config.method in ('pkkd', 'kd', 'ofd'):
    heads['teacher'] = 0.9
  if config.method == 'ekd':
    heads.update(
      {
        f'branch{k}': base - 0.02 * k
        for k in range(config.model.kwargs.num_branches)
      }
    )
    heads.update({f'teacher{t}': 0.9 for t in range(len(config.teachers))})
  history = [
    {
      'step': e + 1,
      'epoch': float(e + 1),
      **{k: v - 0.1 / (e + 1) for k, v in heads.items()},
    }
    for e in range(config.num_epochs)
  ]
  summary = {
    'method': config.method,
    'preempted': False,
    'steps': 2,
    'epochs': 1.0,
    'eval_accuracy': heads,
    'history': history,
    'wall_seconds': 0.1,
    'student_ops': {
      'multiplications': 1,
      'additions': 2,
      'parameters': 3,
      'energy_pj': 4.0,
    },
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f)
  return summary


def check_outputs(out, studies, seeds):
  result = json.loads((out / 'study.json').read_text())
  cells = result['cells']
  expected = []
  if 'pkkd' in studies:
    expected += [f'pkkd/full/{c}' for c in PKKD_CELLS]
  if 'ofd' in studies:
    expected += [f'ofd/full/{c}' for c in OFD_CELLS]
  if 'ekd' in studies:
    expected += [f'ekd/{r}/{c}' for r in ('full', '10pct') for c in EKD_CELLS]
  for key in expected:
    assert key in cells, key
    assert cells[key]['heads']['student']['n'] == seeds, key
  markdown = (out / 'study.md').read_text()
  for png in PNGS:
    assert (out / png).stat().st_size > 1000, png
  return result, markdown


def test_quick_plan_and_outputs_with_a_stand_in_trainer(tmp_path, monkeypatch):
  study = load_study()
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(kd_train, 'train_and_evaluate', fake_train_and_evaluate)
  out = tmp_path / 'results'
  result = study.main(
    ['--quick', '--seeds', '2', '--out', str(out), '--no-compile-cache']
  )
  saved, markdown = check_outputs(out, ('pkkd', 'ofd', 'ekd', 'cost'), seeds=2)
  assert saved['meta']['seeds_completed'] == 2
  assert result['meta']['quick']
  # Every (cell, seed) is a run; teachers once per seed and regime.
  assert len(saved['runs']) == 2 * (
    len(PKKD_CELLS) + len(OFD_CELLS) + 2 * len(EKD_CELLS)
  )
  labels = sorted({r['label'] for r in saved['teacher_runs']})
  # EKD teacher 0 is the OFD teacher run, shared; the 10 % regime uses the
  # full-data teachers by default.
  assert labels == ['ekd_teacher1_full', 'ekd_teacher2_full'], labels
  # Shared runs: the EKD single student (full data) is the PKKD CNN-alone run.
  for seed in (0, 1):
    single = [
      r
      for r in saved['runs']
      if r['cell'] == 'single' and r['regime'] == 'full' and r['seed'] == seed
    ]
    assert single[0]['workdir'].endswith(f'pkkd/cnn_s{seed}')
  # Claims are computed: beta = 5 beats beta = 0 by construction of the stand-in.
  ablation = saved['cells']['pkkd/full/no_kernel_features']['checks'][0]
  assert (
    ablation['verdict'] in ('yes', 'within noise')
    and ablation['difference'] > 0
  )
  ekd = saved['cells']['ekd/full/ekd']
  assert {
    'student',
    'branch0',
    'branch1',
    'branch2',
    'branch_mean',
    'teacher0',
  } <= set(ekd['heads'])
  assert ekd['curves']['student']['epoch'] == [1.0]
  assert saved['cost']['rows'][1]['conv_type'] == 'adder'
  assert (
    saved['cost']['rows'][1]['multiplications']
    < saved['cost']['rows'][0]['multiplications']
  )
  for title in (
    '1. PKKD',
    '2. OFD',
    '3. EKD',
    '4. ANN cost',
    'reproduces at this scale?',
    'ANN + PKKD',
    'FitNets',
    'branch mean',
    '10 %',
  ):
    assert title in markdown, title
  # Teachers trained on the 10 % subset instead: three more runs per seed.
  study.main(
    [
      '--quick',
      '--studies',
      'ekd',
      '--ekd-10pct-teachers',
      'subset',
      '--out',
      str(tmp_path / 'subset'),
      '--no-compile-cache',
    ]
  )
  subset = json.loads((tmp_path / 'subset' / 'study.json').read_text())
  assert sorted(r['label'] for r in subset['teacher_runs']) == sorted(
    f'ekd_teacher{i}_{r}' for i in range(3) for r in ('full', '10pct')
  )
  # A second invocation reuses the finished runs instead of training again.
  calls = []
  monkeypatch.setattr(
    kd_train,
    'train_and_evaluate',
    lambda c, w: calls.append(w) or fake_train_and_evaluate(c, w),
  )
  study.main(
    [
      '--quick',
      '--seeds',
      '2',
      '--studies',
      'pkkd',
      '--out',
      str(out),
      '--no-compile-cache',
    ]
  )
  assert calls == []


def test_plan_only(tmp_path, capsys):
  study = load_study()
  study.main(['--dry-run', '--out', str(tmp_path), '--no-compile-cache'])
  printed = capsys.readouterr().out
  assert 'plan:' in printed and 'seed 2:' in printed and 'estimated' in printed
  assert not (tmp_path / 'study.json').exists()
  # The package runs as a module too, with the same flags.
  usage = subprocess.run(
    [sys.executable, '-m', 'experiments.mnist5k_study', '--help'],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  for flag in (
    '--quick',
    '--dry-run',
    '--measure-step-seconds',
    '--report-from',
  ):
    assert flag in usage, flag


@pytest.mark.slow
def test_quick_real_runs(tmp_path):
  out = tmp_path / 'results'
  env = dict(os.environ)
  # One CPU device, as the study runs.
  env['XLA_FLAGS'] = suite_env.COMPILE_FLAGS
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.mnist5k_study',
      '--quick',
      '--studies',
      'pkkd,cost',
      '--cells',
      'cnn,frozen_teacher',
      '--out',
      str(out),
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'wall time' in proc.stdout
  result = json.loads((out / 'study.json').read_text())
  runs = {r['cell']: r for r in result['runs']}
  assert set(runs) == {'cnn', 'frozen_teacher'}
  assert runs['cnn']['steps'] == 2 and runs['frozen_teacher']['steps'] == 2
  assert set(runs['frozen_teacher']['accuracy']) == {'student', 'teacher'}
  assert len(runs['cnn']['history']) == 1
  for png in ('study_pkkd.png', 'study_pkkd_curves.png', 'study_cost.png'):
    assert (out / png).exists(), png
  table = (out / 'study.md').read_text()
  assert (
    '| CNN alone (' in table
    and '| ablation: fixed pretrained CNN teacher |' in table
  )
  assert 'ANN + PKKD' not in table  # Only the cells asked for are reported.


def test_report_rebuilds_the_committed_results(tmp_path):
  """results/study.md comes back, byte for byte, from results/study.json alone."""
  study = load_study()
  committed_json = HERE / 'results' / 'study.json'
  committed = json.loads(committed_json.read_text())
  result, written = study.rebuild(
    str(committed_json), str(tmp_path), plots=False
  )
  assert written == [str(tmp_path / 'study.md')]
  markdown = (tmp_path / 'study.md').read_text()
  assert markdown == (HERE / 'results' / 'study.md').read_text()
  # The statistics are recomputed from the runs, and agree with the record.
  for key in ('cells', 'cross_checks'):
    assert json.dumps(result[key], sort_keys=True) == json.dumps(
      committed[key], sort_keys=True
    ), key
  # Independent reference: mean and sample std of a cell's seeds.
  for study_name, regime, cell in (
    ('pkkd', 'full', 'cnn'),
    ('ofd', 'full', 'ofd'),
    ('ekd', '10pct', 'ekd'),
  ):
    values = [
      r['accuracy']['student']
      for r in committed['runs']
      if (r['study'], r['regime'], r['cell']) == (study_name, regime, cell)
    ]
    # Every cell runs on every completed seed (the study's rule, 3 at least).
    seeds = committed['meta']['seeds_completed']
    assert seeds >= 3 and len(values) == seeds
    row = (
      f'{100 * statistics.mean(values):.2f} ± '
      f'{100 * statistics.stdev(values):.2f} | {seeds} |'
    )
    assert row in markdown, (study_name, regime, cell, row)


def test_cost_model_reads_its_timing_table(tmp_path):
  study = load_study()
  table_path = HERE / 'step_seconds.json'
  table = json.loads(table_path.read_text())
  assert table['machine']['description'] and table['machine']['cpu_count']
  model = study.CostModel()
  for network in table['networks']:
    entry = (network['model'], network['kwargs'])
    assert model.step_s(entry, network['conv_type']) == network['seconds']
  assert (model.compile_s, model.compile_adder_s, model.overhead_warm_s) == (
    table['compile_s'],
    table['compile_adder_s'],
    table['overhead_warm_s'],
  )
  assert model.extra_step_s == table['method_extra_seconds']
  # An entry the cost model could never look up is an error, not ignored.
  table['networks'][0]['label'] = 'resnet8_typo'
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(table))
  with pytest.raises(ValueError, match='resnet8_typo'):
    study.load_step_table(str(bad))


def test_measure_step_seconds_rewrites_the_table(tmp_path, monkeypatch):
  """--measure-step-seconds with a stand-in trainer of known step times."""
  study = load_study()
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  default = HERE / 'step_seconds.json'
  original = default.read_text()
  table = json.loads(original)
  keep = {('resnet20', 'conv'), ('resnet8_w8', 'adder')}
  table['networks'] = [
    n for n in table['networks'] if (n['label'], n['conv_type']) in keep
  ]
  path = tmp_path / 'step_seconds.json'
  path.write_text(json.dumps(table))
  per_step = {'conv': 0.25, 'adder': 0.75}
  compile_s = {'conv': 30.0, 'adder': 50.0}
  calls = []

  def fake(config, workdir):
    conv_type = config.model.conv_type
    cold = (config.model.name, conv_type) not in {c[:2] for c in calls}
    calls.append((config.model.name, conv_type, config.max_steps))
    assert config.batch_size == 64 and config.method == 'supervised'
    wall = 5.0 + per_step[conv_type] * config.max_steps
    return {'wall_seconds': wall + (compile_s[conv_type] if cold else 0.0)}

  monkeypatch.setattr(kd_train, 'train_and_evaluate', fake)
  written = study.main(
    [
      '--measure-step-seconds',
      '--measure-steps',
      '8',
      '--step-seconds',
      str(path),
      '--no-compile-cache',
    ]
  )
  assert calls == [
    ('resnet8', 'adder', 2),
    ('resnet8', 'adder', 2),
    ('resnet8', 'adder', 10),
    ('resnet20', 'conv', 2),
    ('resnet20', 'conv', 2),
    ('resnet20', 'conv', 10),
  ]  # In the table's order: cold, warm, warm + 8 steps.
  saved = json.loads(path.read_text())
  assert saved == written
  # (5 + 10 s) - (5 + 2 s) over 8 steps; compile = cold - warm wall.
  assert {
    (n['label'], n['conv_type']): n['seconds'] for n in saved['networks']
  } == {
    ('resnet20', 'conv'): 0.25,
    ('resnet8_w8', 'adder'): 0.75,
  }
  assert saved['compile_s'] == 30.0 and saved['compile_adder_s'] == 20.0
  assert not any('note' in n for n in saved['networks'])  # Old notes go.
  assert saved['overhead_warm_s'] == table['overhead_warm_s']
  assert saved['method_extra_seconds'] == table['method_extra_seconds']
  assert saved['machine']['cpu_count'] == os.cpu_count()
  assert '8' in saved['machine']['method']
  assert default.read_text() == original  # Only --step-seconds was written.
  model = study.CostModel(study.load_step_table(str(path)))
  assert model.step_s(('resnet20', {}), 'conv') == 0.25


def test_teachers_come_only_from_the_plan(tmp_path):
  """A frozen teacher the trainer would pre-train, or that no job makes, is refused."""
  study = load_study()
  planner = study.Planner(
    study.quick_settings(), str(tmp_path), study.CostModel()
  )

  def pretrained_by_the_trainer(s, seed, deps):
    config = study.kd_config(s, seed, '')
    config.teacher.pretrain_epochs = 1
    return config

  cell = study.Cell('ofd', 'bad', 'bad', pretrained_by_the_trainer)
  with pytest.raises(ValueError, match='pretrain_epochs=1'):
    planner.add_cell(cell, {}, 0)
  elsewhere = str(tmp_path / 'elsewhere')
  cell = study.Cell(
    'ofd',
    'bad',
    'bad',
    lambda s, seed, deps: study.kd_config(s, seed, elsewhere),
  )
  with pytest.raises(ValueError, match='Cell.deps'):
    planner.add_cell(cell, {}, 0)
  assert not planner.jobs


def test_study_table_merges_split_runs(tmp_path):
  """Cells of several study.json files land in one column; a missing cell shows '-'."""

  def write(path, cells):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'cells': cells}))

  stats = lambda values: {
    'mean': sum(values) / len(values),
    'n': len(values),
    'std': (
      sum((v - sum(values) / len(values)) ** 2 for v in values)
      / (len(values) - 1)
    )
    ** 0.5,
  }
  write(
    tmp_path / 'a' / 'p1' / 'study.json',
    {'s/full/x': {'label': 'X', 'heads': {'student': stats([0.90, 0.92])}}},
  )
  write(
    tmp_path / 'a' / 'p2' / 'study.json',
    {
      's/full/y': {
        'label': 'Y',
        'heads': {'student': stats([0.5, 0.7]), 'teacher': stats([0.99, 0.97])},
      }
    },
  )
  write(
    tmp_path / 'b' / 'study.json',
    {'s/full/y': {'label': 'Y', 'heads': {'student': stats([0.8, 0.8])}}},
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.mnist5k_study.table',
      f'A={tmp_path}/a/*/study.json',
      f'B={tmp_path}/b/study.json',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  lines = proc.stdout.strip().splitlines()
  assert lines[0] == '| cell | A | B |'
  # std of (0.90, 0.92) is 0.01414 -> 1.41 %; of (0.5, 0.7) 0.1414 -> 14.14 %.
  assert lines[2] == '| X | 91.00 ± 1.41 (2) | - |'
  assert lines[3] == '| Y | 60.00 ± 14.14 (2) | 80.00 ± 0.00 (2) |'
  assert lines[4] == '| &nbsp;&nbsp;↳ its teacher | 98.00 ± 1.41 (2) | - |'
  assert len(lines) == 5


def test_a_stopped_run_stops_the_benchmark_and_resumes_on_rerun(
  tmp_path, monkeypatch
):
  """SIGTERM during a job: exit 75, nothing recorded; the rerun resumes it."""
  study = load_study()
  from kdjax import errors  # pylint: disable=g-import-not-at-top
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  config = study.supervised(study.quick_settings(), 0, ('resnet8', {}), 1)
  workdir = tmp_path / 'job'
  job = study.Job('g', 'cell', 0, config, 'key-1', str(workdir), 0.0)
  calls, logged = [], []

  def preempted(config, workdir):
    calls.append('preempted')
    (pathlib.Path(workdir) / 'checkpoint-of-step-3').write_text('state')
    summary = {'preempted': True, 'steps': 3, 'eval_accuracy': {}}
    (pathlib.Path(workdir) / 'summary.json').write_text(json.dumps(summary))
    return summary

  monkeypatch.setattr(kd_train, 'train_and_evaluate', preempted)
  with pytest.raises(SystemExit) as stopped:
    study.run_job(job, logged.append)
  assert stopped.value.code == errors.EXIT_PREEMPTED == 75
  assert 'preempted at step 3' in logged[-1] and 'rerun' in logged[-1]
  assert not any('done' in line for line in logged)

  def finishes(config, workdir):
    # The stopped run's checkpoint is still there for the trainer to resume.
    assert (pathlib.Path(workdir) / 'checkpoint-of-step-3').exists()
    calls.append('resumed')
    return fake_train_and_evaluate(config, workdir)

  monkeypatch.setattr(kd_train, 'train_and_evaluate', finishes)
  summary = study.run_job(job, logged.append)
  assert calls == ['preempted', 'resumed']
  assert summary['eval_accuracy'] == {'student': 0.5}
  # Now finished: reused without training; another key starts afresh.
  assert study.run_job(job, logged.append) == summary
  assert calls == ['preempted', 'resumed'] and 'reuse' in logged[-1]
  other = study.Job('g', 'cell', 0, config, 'key-2', str(workdir), 0.0)

  def fresh(config, workdir):
    assert not (pathlib.Path(workdir) / 'checkpoint-of-step-3').exists()
    calls.append('fresh')
    return fake_train_and_evaluate(config, workdir)

  monkeypatch.setattr(kd_train, 'train_and_evaluate', fresh)
  study.run_job(other, logged.append)
  assert calls[-1] == 'fresh'


def test_study_loader_flag_reaches_every_run(tmp_path, monkeypatch):
  study = load_study()
  from kdjax.train import train as kd_train  # pylint: disable=g-import-not-at-top

  loaders = []

  def fake(config, workdir):
    loaders.append(config.data.loader)
    return fake_train_and_evaluate(config, workdir)

  monkeypatch.setattr(kd_train, 'train_and_evaluate', fake)
  study.main(
    [
      '--quick',
      '--studies',
      'pkkd',
      '--loader',
      'numpy',
      '--out',
      str(tmp_path),
      '--no-compile-cache',
    ]
  )
  # 6 distinct runs: the frozen teacher is the CNN-alone run.
  assert len(loaders) == 6 and set(loaders) == {'numpy'}
  assert "loader='numpy'" in (tmp_path / 'study.md').read_text()
  # The loader is part of a run's identity (kdjax.train.run_config): a run
  # made with the other loader is not reused.
  config = study.supervised(study.quick_settings(), 0, ('resnet8', {}), 1)
  tfds_key = study.config_key(config)
  config.data.loader = 'numpy'
  assert study.config_key(config) != tfds_key
