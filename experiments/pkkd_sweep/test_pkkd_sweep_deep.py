"""Rot check of the sweep's deep grid (experiments/pkkd_sweep/deep.py): the
issue's ResNet-20 cell, its --quick run and its tables."""

import json
import os

import pytest

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


@pytest.fixture(scope='module')
def sweep_module():
  from experiments import pkkd_sweep  # pylint: disable=g-import-not-at-top

  return pkkd_sweep


def test_deep_grid_builds_the_issue_cell_and_runs_quick(sweep_module, tmp_path):
  from experiments.pkkd_sweep import deep  # pylint: disable=g-import-not-at-top

  # Every arm of the full plan: the issue's cell (ResNet-20 student and
  # teacher, 10 % of the digits, 10 epochs) with the demo's run settings.
  runs = deep.deep_runs(quick=False, phase='select')
  assert {r.seed for r in runs} == set(deep.SELECT_SEEDS)
  assert not set(deep.SELECT_SEEDS) & set(deep.CONFIRM_SEEDS)
  names = [r.cell.split('/')[1] for r in runs]
  assert names[: 2 * len(deep.SELECT_SEEDS)] == ['ann'] * 5 + ['cnn'] * 5
  assert set(names) == set(deep.arm_names())
  for run in runs:
    config = run.config
    if callable(config):  # KD from this seed's CNN alone, run before it.
      assert run.deps == (run.cell.split('/')[0] + '/cnn',)
      assert (run.deps[0], run.seed) in [
        (r.cell, r.seed) for r in runs[: runs.index(run)]
      ]
      config = config(teacher_dir='/runs/cnn')
      assert config.teacher.checkpoint_dir == '/runs/cnn'
      assert config.teacher.conv_type == 'conv'
    assert config.seed == run.seed
    assert config.dataset.train_fraction == 0.1
    assert config.model.name == 'resnet20' and not config.model.kwargs.to_dict()
    assert (config.data.loader, config.eval_batch_size) == ('numpy', 512)
    # The ANN alone's knob arms change one run setting each, and only that.
    name = run.cell.split('/')[1]
    changes = dict(
      {'eval_bn_recalibration_batches': 4, 'optimizer.adder_eta': 0.2},
      **{k: v for k, v in deep.arm(name)[2].items() if k != 'conv_type'},
    )
    assert (
      config.eval_bn_recalibration_batches
      == (changes['eval_bn_recalibration_batches'])
    )
    assert config.optimizer.adder_eta == changes['optimizer.adder_eta']
    if config.method == 'supervised':
      assert config.model.conv_type == ('conv' if name == 'cnn' else 'adder')
    assert config.batch_size == 64
    label = run.cell.split('/')[0]
    assert config.num_epochs == {c[0]: c[2] for c in deep.CELLS}[label]
    if config.method == 'pkkd':
      assert config.teacher.name == 'resnet20'
      # The co-trained CNN never takes the student's adder scaling.
      assert config.optimizers.teacher.adder_eta is None
      if name.endswith('_eta0.5'):
        assert deep.baseline(name) == 'ann_eta0.5'
        assert config.pkkd.alpha == (0.0 if name.startswith('alpha0') else 0.5)
      if run.cell.endswith('/today'):  # The issue's fixed 62-step ramp.
        assert (config.pkkd.ramp_steps, config.pkkd.ramp_fraction) == (62, 0)
      if run.cell.endswith('/paper'):
        assert (config.pkkd.alpha, config.pkkd.beta) == (5.0, 5.0)
  # The confirmation: the baselines, the issue's knobs and the winner (the
  # selection's leader, or --winner), on the fresh seeds only.
  for winner in (None, 'beta0', 'alpha0_eta0.5'):
    confirm = deep.deep_runs(quick=False, phase='confirm', winner=winner)
    assert {r.seed for r in confirm} == set(deep.CONFIRM_SEEDS)
    assert {r.cell.split('/')[1] for r in confirm if '_e10_' in r.cell} == {
      'ann',
      'cnn',
      'today',
      winner or deep.WINNER,
      deep.baseline(winner or deep.WINNER),  # The ANN alone it is paired with.
    }
  out = str(tmp_path / 'deep')
  document = sweep_module.main(['--grid', 'deep', '--quick', '--out', out])
  arms = [r['cell'].split('/')[1] for r in document['runs']]
  assert arms == ['cnn', 'ramp_half', 'kd_frozen']
  assert all(r['steps'] == 2 for r in document['runs'])
  table = document['summary']['resnet20_e10_f10']['select']
  assert set(table) == {'cnn', 'ramp_half', 'kd_frozen'}
  with open(os.path.join(out, 'deep.md')) as f:
    assert '| kd_frozen |' in f.read()
  # --with-recorded: the recorded runs are taken, not trained again (no run
  # directory is made for them), and the new tables hold them.
  again = str(tmp_path / 'again')
  recorded = os.path.join(out, 'deep.json')
  retaken = sweep_module.main(
    ['--grid', 'deep', '--quick', '--out', again, '--with-recorded', recorded]
  )
  assert not [n for n in os.listdir(os.path.join(again, 'runs')) if '_s0' in n]
  assert [
    {k: v for k, v in r.items() if k != 'recorded_earlier'}
    for r in retaken['runs']
  ] == json.loads(json.dumps(document['runs']))
  assert all(r['recorded_earlier'] for r in retaken['runs'])
  with open(os.path.join(again, 'deep.md')) as f:
    assert '3 of them taken from' in f.read()
  # From two documents: each run from the first that records it; the header
  # and the document name both, and --tables-from says so again.
  with open(recorded) as f:
    whole = json.load(f)
  first, second = str(tmp_path / 'first.json'), str(tmp_path / 'second.json')
  for path, part in ((first, whole['runs'][:1]), (second, whole['runs'][1:])):
    with open(path, 'w') as f:
      json.dump(dict(whole, runs=part), f)
  both = str(tmp_path / 'both')
  argv = ['--grid', 'deep', '--quick', '--out', both]
  argv += ['--with-recorded', first, '--with-recorded', second]
  from_two = sweep_module.main(argv)
  assert all(r['recorded_earlier'] for r in from_two['runs'])
  assert len(from_two['runs']) == 3
  assert from_two['with_recorded'] == [
    os.path.relpath(p, REPO) for p in (first, second)
  ]
  rebuilt = str(tmp_path / 'rebuilt')
  sweep_module.main(
    ['--grid', 'deep', '--quick', '--out', rebuilt]
    + ['--tables-from', os.path.join(both, 'deep.json')]
  )
  with open(os.path.join(rebuilt, 'deep.md')) as f:
    header = f.read().split('\n')[2]
  assert f'--with-recorded {os.path.relpath(second, REPO)}' in header
  assert '3 of them taken from' in header
  # Runs of another regime are not these runs.
  with open(recorded) as f:
    other = json.load(f)
  other['regime']['batch_size'] = 128
  with open(recorded, 'w') as f:
    json.dump(other, f)
  with pytest.raises(SystemExit) as refused:  # Two sources of runs.
    sweep_module.main(
      ['--grid', 'deep', '--with-recorded', recorded, '--tables-from', recorded]
    )
  assert refused.value.code == 2
  # A path that is not a document: one clear line, before anything trains.
  for bad in (str(tmp_path / 'missing.json'), os.path.join(out, 'deep.md')):
    with pytest.raises(SystemExit, match='not a document this runner wrote'):
      sweep_module.main(
        ['--grid', 'deep', '--quick', '--out', again, '--with-recorded', bad]
      )
  with pytest.raises(SystemExit, match='another regime'):
    sweep_module.main(
      ['--grid', 'deep', '--quick', '--out', again, '--with-recorded', recorded]
    )


def test_deep_cells_keep_the_named_cell_and_arms():
  from experiments.pkkd_sweep import deep  # pylint: disable=g-import-not-at-top

  runs = deep.deep_runs(False, 'select', None, 'resnet20_e40_f10,today')
  assert [r.cell for r in runs] == [
    f'resnet20_e40_f10/{arm}'
    for arm in ('ann', 'cnn', 'today')
    for _ in range(5)
  ]
  assert [r.seed for r in runs] == list(deep.SELECT_SEEDS) * 3
  both = deep.deep_runs(False, 'select', None, 'today')
  assert {r.cell.split('/')[0] for r in both} == {c[0] for c in deep.CELLS}
  with pytest.raises(SystemExit, match='its cells'):
    deep.deep_runs(False, 'select', None, 'resnet20_e80_f10')
  # The ANN alone's knobs run on the short cell, beside its ANN and CNN alone.
  knobs = deep.deep_runs(
    False, 'select', None, 'resnet20_e10_f10,ann_eta0.5,ann_bn0'
  )
  assert [r.cell for r in knobs] == [
    f'resnet20_e10_f10/{arm}'
    for arm in ('ann', 'cnn', 'ann_eta0.5', 'ann_bn0')
    for _ in range(5)
  ]
  assert knobs[10].config.optimizer.adder_eta == 0.5
  assert knobs[15].config.eval_bn_recalibration_batches == 0
  # A PKKD arm on the eta-0.5 student brings the ANN alone at eta 0.5.
  fast = deep.deep_runs(False, 'select', None, 'resnet20_e10_f10,today_eta0.5')
  assert [r.cell.split('/')[1] for r in fast[::5]] == [
    'ann',
    'cnn',
    'ann_eta0.5',
    'today_eta0.5',
  ]
  today = fast[15].config
  assert (today.optimizer.adder_eta, today.pkkd.ramp_steps) == (0.5, 62)


def test_deep_tables_pair_each_arm_with_the_ann_of_its_seed():
  from experiments.pkkd_sweep import deep  # pylint: disable=g-import-not-at-top

  def record(arm, seed, student, teacher=None):
    accuracy = {'student': student}
    if teacher is not None:
      accuracy['teacher'] = teacher
    return dict(
      cell=f'resnet20_e10_f10/{arm}',
      seed=seed,
      accuracy=accuracy,
      wall_seconds=10.0,
    )

  ann = {0: 0.60, 1: 0.70, 2: 0.50, 5: 0.80, 6: 0.90}
  beta0 = {0: 0.70, 1: 0.65, 2: 0.62, 5: 0.83, 6: 0.88}
  records = [record('ann', s, a) for s, a in ann.items()]
  records += [record('beta0', s, a, 0.9) for s, a in beta0.items()]
  records += [record('paper', s, ann[s] - 0.2, 0.9) for s in (0, 1, 2)]
  # A knob of the ANN alone is no PKKD candidate, however far ahead.
  records += [record('ann_eta0.5', s, ann[s] + 0.3) for s in (0, 1, 2)]
  # An arm on the eta-0.5 student is paired with the ANN alone at eta 0.5.
  records += [
    record('alpha0_eta0.5', s, ann[s] + 0.3 + d, 0.9)
    for s, d in ((0, 0.01), (1, 0.02), (2, 0.03))
  ]
  summary, lines = deep.summarize_deep(records)
  select = summary['resnet20_e10_f10']['select']
  gains = [0.10, -0.05, 0.12]  # beta0 - ann on seeds 0, 1, 2
  mean = sum(gains) / 3
  std = (sum((g - mean) ** 2 for g in gains) / 2) ** 0.5
  assert select['beta0']['gain_vs_ann']['mean'] == pytest.approx(mean)
  assert select['beta0']['gain_vs_ann']['std'] == pytest.approx(std)
  assert select['beta0']['misses'] == 1
  assert select['paper']['misses'] == 3
  assert select['leader'] == 'beta0'
  assert select['ann_eta0.5']['gain_vs_ann']['mean'] == pytest.approx(0.3)
  fast = select['alpha0_eta0.5']
  assert fast['paired_with'] == 'ann_eta0.5'
  assert fast['gain_vs_ann']['values'] == pytest.approx([0.01, 0.02, 0.03])
  confirm = summary['resnet20_e10_f10']['confirm']
  assert confirm['beta0']['gain_vs_ann']['values'] == pytest.approx(
    [0.03, -0.02]
  )
  assert '| beta0 |' in '\n'.join(lines)
