"""Rot check of experiments/pkkd_sweep/: --quick runs every new PKKD knob end to end."""

import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope='module')
def sweep_module():
  from experiments import pkkd_sweep  # pylint: disable=g-import-not-at-top

  return pkkd_sweep


def test_variants_resolve_to_one_factor_changes(sweep_module):
  knobs = sweep_module.knobs_of
  assert knobs('paper') == sweep_module.PAPER
  variants = sweep_module.VARIANTS + sweep_module.LATE_VARIANTS
  for name, base, changes in variants[1:]:
    differs = {k for k, v in knobs(name).items() if knobs(base)[k] != v}
    assert differs == set(changes), name
  # Selection and confirmation seeds never overlap.
  assert not set(sweep_module.SELECT_SEEDS) & set(sweep_module.CONFIRM_SEEDS)
  assert sweep_module.WINNER in {v[0] for v in sweep_module.VARIANTS}


def test_quick_sweep_writes_tables_and_reuses_runs(sweep_module, tmp_path):
  out = str(tmp_path / 'sweep')
  document = sweep_module.main(['--quick', '--out', out])
  cells = [r['cell'] for r in document['runs']]
  assert cells == ['ann', 'cnn', 'quick']
  quick = document['summary']['select']['quick']
  assert quick['knobs']['ramp_steps'] == 1
  assert quick['knobs']['teacher_kd_weight'] == 1.0
  assert quick['knobs']['kd_t_squared'] is False
  for run in document['runs']:
    assert run['steps'] == 2
    assert 0.0 <= run['accuracy']['student'] <= 1.0
  assert 'teacher' in document['runs'][2]['accuracy']
  with open(os.path.join(out, 'sweep.json')) as f:
    assert json.load(f)['summary'] == json.loads(
      json.dumps(document['summary'], default=str)
    )
  with open(os.path.join(out, 'sweep.md')) as f:
    table = f.read()
  assert '| quick |' in table and '| ann |' in table
  # A rerun trains nothing: every run is reused with the same result.
  again = sweep_module.main(['--quick', '--out', out])
  assert [r['accuracy'] for r in again['runs']] == [
    r['accuracy'] for r in document['runs']
  ]
  assert all(r['elapsed_seconds'] < 5 for r in again['runs'])
  # The premise grids' quick checks are made of the same configs: they reuse
  # those runs (the same keys), and write their own tables.
  premise = sweep_module.main(['--grid', 'premise', '--quick', '--out', out])
  assert [r['cell'] for r in premise['runs']] == [
    'resnet8_w4_e2_f50/ann',
    'resnet8_w4_e2_f50/cnn',
  ]
  accuracy = {r['cell']: r['accuracy'] for r in document['runs']}
  assert [r['accuracy'] for r in premise['runs']] == [
    accuracy['ann'],
    accuracy['cnn'],
  ]
  cell = premise['summary']['resnet8_w4_e2_f50']
  assert cell['steps'] == [2] and cell['premise'] == 'n/a (< 2 seeds)'
  with open(os.path.join(out, 'premise.md')) as f:
    assert '| resnet8_w4_e2_f50 | 2 |' in f.read()
  held = sweep_module.main(['--grid', 'premise_pkkd', '--quick', '--out', out])
  assert [r['cell'] for r in held['runs']] == ['ann', 'cnn', 'quick']
  assert [r['accuracy'] for r in held['runs']] == [
    r['accuracy'] for r in document['runs']
  ]
  assert all(r['elapsed_seconds'] < 5 for r in premise['runs'] + held['runs'])
  with open(os.path.join(out, 'premise_pkkd.md')) as f:
    whole = f.read()
  assert '| quick |' in whole
  # --cells: a part of the grid (reused runs here) gets tables of its own and
  # leaves the whole grid's tables as they were.
  part = sweep_module.main(
    ['--grid', 'premise_pkkd', '--quick', '--cells', 'quick', '--out', out]
  )
  assert [r['cell'] for r in part['runs']] == ['ann', 'cnn', 'quick']
  with open(os.path.join(out, 'premise_pkkd_cells.md')) as f:
    assert '--cells quick' in f.read()
  with open(os.path.join(out, 'premise_pkkd.md')) as f:
    assert f.read() == whole
  # --tables-from rebuilds the same tables from the recorded runs, training
  # nothing, and refuses another grid's file.
  rebuilt_out = str(tmp_path / 'rebuilt')
  recorded = os.path.join(out, 'sweep.json')
  with open(recorded) as f:
    recorded_runs = json.load(f)['runs']
  rebuilt = sweep_module.main(
    ['--quick', '--out', rebuilt_out, '--tables-from', recorded]
  )
  assert rebuilt['runs'] == recorded_runs
  with open(os.path.join(out, 'sweep.md')) as f:
    first = f.read().splitlines()
  with open(os.path.join(rebuilt_out, 'sweep.md')) as f:
    second = f.read().splitlines()
  assert first[3:] == second[3:] and '--tables-from' in second[2]
  with pytest.raises(SystemExit, match="holds --grid 'sweep' runs"):
    sweep_module.main(
      [
        '--grid',
        'demo',
        '--quick',
        '--out',
        rebuilt_out,
        '--tables-from',
        recorded,
      ]
    )


def test_sweep_table_calls_a_student_level_with_the_ann_within_noise(
  sweep_module,
):
  # Seeds 0-2: the ANN alone at 90, 92, 94 (sample std 2); one variant 0.5
  # above it seed by seed, one 5 above, one 5 below. The pooled std with the
  # variant's own std (2 as well) is 2, so only +-5 is more than the noise.
  records = []
  for seed, ann in zip((0, 1, 2), (0.90, 0.92, 0.94)):
    records.append(dict(cell='ann', seed=seed, accuracy={'student': ann}))
    for cell, gain in (('level', 0.005), ('above', 0.05), ('below', -0.05)):
      records.append(
        dict(cell=cell, seed=seed, accuracy={'student': ann + gain})
      )
  for r in records:
    r['wall_seconds'] = 1.0
  summary, lines = sweep_module.summarize_sweep(
    records, describe=lambda name: name, knobs=lambda name: {}
  )
  verdicts = {c: e.get('verdict') for c, e in summary['select'].items()}
  assert verdicts == {
    'ann': None,
    'level': 'within noise',
    'above': 'yes',
    'below': 'no (reversed)',
  }
  assert any('more than the pooled std' in line for line in lines)


def test_premise_grids_cover_the_issue_and_build_their_configs(
  sweep_module, tmp_path
):
  grid = {label: rest for label, *rest in sweep_module.PREMISE_GRID}
  depths = {entry[0] for entry, _, _ in grid.values()}
  assert depths == {'resnet8', 'resnet20', 'resnet32'}
  fractions = {fraction for _, _, fraction in grid.values()}
  assert {0.1, 0.25, 1.0} <= fractions
  assert len({epochs for _, epochs, _ in grid.values()}) >= 3
  # Every label states its depth, width, epochs and fraction.
  for label, (entry, epochs, fraction) in grid.items():
    depth, width, e, f = label.split('_')
    assert depth == entry[0] and e == f'e{epochs}'
    assert f == f'f{round(100 * fraction)}'
    widths = entry[1].get('stage_widths', (16, 32, 64))
    assert width == ('full' if widths == (16, 32, 64) else f'w{widths[0]}')
  # PKKD in the premise regime: the cell's network, budget and data, the
  # ANN and CNN alone in that cell's run directories, ramp over half the run.
  regime = sweep_module.premise_pkkd_regime(quick=False)
  entry, epochs, fraction = grid[sweep_module.PREMISE_PKKD_CELL]
  assert (regime['model'], regime['epochs'], regime['fraction']) == (
    entry,
    epochs,
    fraction,
  )
  s = sweep_module.settings_for(regime, 'numpy')
  runs = sweep_module.premise_pkkd_runs(s, regime, quick=False)
  main_variants = dict(sweep_module.PREMISE_PKKD_VARIANTS)
  late_variants = dict(sweep_module.PREMISE_PKKD_LATE_VARIANTS)
  all_variants = {**main_variants, **late_variants}
  # 4,000 train digits x fraction in batches of 32, epochs times; the
  # committed runs of this grid trained that many steps.
  total = int(4000 * fraction) // 32 * epochs
  assert sweep_module.premise_pkkd_total_steps(s, regime) == total
  with open(os.path.join(HERE, 'results', 'premise_pkkd.json')) as f:
    assert {r['steps'] for r in json.load(f)['runs']} == {total}
  for run in runs:
    config = run.config
    if callable(config):  # A frozen teacher: this seed's CNN alone.
      assert run.deps == ('cnn',) and run.seed in sweep_module.SELECT_SEEDS
      config = config(teacher_dir=str(tmp_path / 'cnn'))
      assert config.pkkd.teacher_mode == 'frozen'
      assert config.teacher.checkpoint_dir == str(tmp_path / 'cnn')
    assert config.num_epochs == epochs
    assert config.dataset.train_fraction == fraction
    assert config.model.name == entry[0]
    assert config.model.kwargs.to_dict() == dict(entry[1])
    if run.cell in ('ann', 'cnn'):
      assert run.workdir_name == f'{sweep_module.PREMISE_PKKD_CELL}/{run.cell}'
      assert config.method == 'supervised'
    else:
      assert config.method == 'pkkd' and config.teacher.name == entry[0]
      knobs = all_variants[run.cell]
      want = total // 2 if knobs['ramp_steps'] == 'half' else 0
      assert config.pkkd.ramp_steps == want
      for key in ('alpha', 'beta', 'temperature', 'kd_t_squared', 'features'):
        assert config.pkkd[key] == knobs[key], (run.cell, key)
  assert set(main_variants) == {'measured', 'paper'}
  assert {r.cell for r in runs} == {'ann', 'cnn'} | set(all_variants)
  # Each late variant changes one knob of `measured`.
  for name, knobs in late_variants.items():
    changed = {k for k in knobs if knobs[k] != main_variants['measured'][k]}
    assert len(changed) == 1 or changed == {
      'sigma_scale_teacher',
      'sigma_scale_student',
    }, (name, changed)
  # In order: the selection on seeds 0-2 (baselines, measured, paper); the
  # confirmation on the fresh seeds (baselines and the winner chosen from that
  # selection, then the paper setting); the late variants on seeds 0-2.
  select, confirm = sweep_module.SELECT_SEEDS, sweep_module.CONFIRM_SEEDS
  winner = sweep_module.PREMISE_PKKD_WINNER
  assert winner in main_variants
  cells = [(r.cell, r.seed) for r in runs]
  confirm_only = sweep_module.premise_pkkd_runs(s, regime, False, 'confirm')
  confirm_cells = [(r.cell, r.seed) for r in confirm_only]
  assert {seed for _, seed in confirm_cells} == set(confirm)
  assert {c for c, _ in confirm_cells} == {'ann', 'cnn', winner, 'paper'}
  first = 6 + 3 * len(main_variants)
  assert all(seed in select for _, seed in cells[:first])
  assert cells[first : first + len(confirm_cells)] == confirm_cells
  late = cells[first + len(confirm_cells) :]
  assert late == [(n, seed) for n in late_variants for seed in select]
  select_only = sweep_module.premise_pkkd_runs(s, regime, False, 'select')
  assert [(r.cell, r.seed) for r in select_only] == cells[:first] + late
  # --winner: a late variant (chosen on seeds 0-2) takes the winner's place
  # on the fresh seeds, seed by seed after its baselines; a frozen one
  # restores that seed's CNN alone.
  frozen = sweep_module.premise_pkkd_runs(
    s, regime, False, 'confirm', 'm_frozen'
  )
  assert [(r.cell, r.seed, r.deps) for r in frozen][:3] == [
    ('ann', confirm[0], ()),
    ('cnn', confirm[0], ()),
    ('m_frozen', confirm[0], ('cnn',)),
  ]
  assert {r.cell for r in frozen} == {'ann', 'cnn', 'm_frozen', 'paper'}
  with pytest.raises(SystemExit):
    sweep_module.parse_args(['--grid', 'premise', '--winner', 'm_frozen'])
  with pytest.raises(SystemExit):
    sweep_module.parse_args(['--grid', 'premise_pkkd', '--winner', 'm_T9'])


def test_demo_grid_runs_the_demo_presets(sweep_module, tmp_path):
  # The demo regime's cells are the presets themselves: the PKKD runs are
  # configs/pkkd.py:demo with the variant's knobs, the baselines
  # configs/supervised.py:demo with the demo's network, epochs and settings.
  from kdjax import config_defaults  # pylint: disable=g-import-not-at-top

  demo = config_defaults.load_config_module(
    os.path.join(REPO, 'configs', 'pkkd.py')
  )
  preset = demo.get_config('demo')
  runs = sweep_module.demo_runs(quick=False)
  cells = [(r.cell, r.seed) for r in runs]
  select, confirm = sweep_module.SELECT_SEEDS, sweep_module.CONFIRM_SEEDS
  assert cells[:3] == [('ann', s) for s in select]
  winner = sweep_module.DEMO_WINNER
  assert [(winner, s) for s in confirm] == [
    c for c in cells if c[0] == winner and c[1] in confirm
  ]
  assert [('ann', s) for s in confirm] == [
    c for c in cells if c[0] == 'ann' and c[1] in confirm
  ]
  # The paper-literal setting is confirmed beside the winner, after it.
  assert [c for c in cells if c[0] == 'paper' and c[1] in confirm] == [
    ('paper', s) for s in confirm
  ]
  # The CNN alone of a seed runs before any cell that it teaches.
  for name, seed in cells:
    if name == 'd_frozen':
      assert ('cnn', seed) in cells[: cells.index((name, seed))]
  for run in runs:
    config = run.config
    if callable(config):  # A frozen teacher: built with its run directory.
      assert run.deps == ('cnn',) and run.cell == 'd_frozen'
      config = config(teacher_dir='/runs/cnn_s0')
      assert config.teacher.checkpoint_dir == '/runs/cnn_s0'
      assert config.pkkd.teacher_mode == 'frozen'
    assert config.seed == run.seed
    assert config.num_epochs == preset.num_epochs == demo.DEMO_EPOCHS
    assert config.model.name == 'resnet8' and not config.model.kwargs.to_dict()
    assert config.batch_size == preset.batch_size == 64
    assert config.data.loader == preset.data.loader
    for key in ('eval_bn_recalibration_batches', 'eval_batch_size'):
      assert config[key] == preset[key]
    assert config.optimizer.to_dict() == preset.optimizer.to_dict()
    if run.cell in ('ann', 'cnn'):
      assert config.method == 'supervised'
      assert config.model.conv_type == (
        'adder' if run.cell == 'ann' else 'conv'
      )
    else:
      assert config.method == 'pkkd'
      assert config.model.conv_type == 'adder'
      assert config.teacher.conv_type == 'conv'
  # The winner's knobs are the preset's DEMO_KNOBS (the default is measured).
  total = demo.DEMO_EPOCHS * demo.DEMO_STEPS_PER_EPOCH
  knobs = sweep_module.demo_knobs(winner, total)
  for key, value in demo.DEMO_KNOBS.items():
    if key.startswith('ramp_'):
      continue
    assert preset.pkkd[key] == value == knobs[key], key
  # The grid's ramp is a step count (half of the demo's steps), the preset's
  # the same ramp as a share of the run.
  assert knobs['ramp_steps'] == demo.DEMO_KNOBS['ramp_fraction'] * total == 62
  assert preset.pkkd.ramp_steps == 0
  # Each late variant changes only the knobs it names from the winner's, and
  # the paper cell is the demo_paper preset's weights.
  for name, changes in sweep_module.DEMO_LATE_VARIANTS:
    late = sweep_module.demo_knobs(name, total)
    assert {k for k in late if late[k] != knobs[k]} == set(changes), name
  # --winner confirms another demo variant, seed by seed after its teacher.
  assert sweep_module.parse_args(['--grid', 'demo', '--winner', 'd_T2']).winner
  with pytest.raises(SystemExit):
    sweep_module.parse_args(['--grid', 'demo', '--winner', 'm_frozen'])
  frozen = sweep_module.demo_runs(False, 'confirm', 'd_frozen')
  assert [(r.cell, r.seed) for r in frozen[:3]] == [
    ('ann', 3),
    ('cnn', 3),
    ('d_frozen', 3),
  ]
  # Beside another winner, the current default and the paper setting run on
  # the same fresh seeds.
  confirmed = [(r.cell, r.seed) for r in frozen]
  for name in (winner, 'paper', 'd_frozen'):
    assert [c for c in confirmed if c[0] == name] == [
      (name, s) for s in confirm
    ]
  paper = sweep_module.demo_knobs('paper', total)
  paper_preset = demo.get_config('demo_paper').pkkd
  for key in ('alpha', 'beta', 'temperature', 'kd_t_squared', 'ramp_steps'):
    assert paper[key] == paper_preset[key], key
  # Quick: one seed, 2 steps a run, a tiny network; tables written.
  out = str(tmp_path / 'demo')
  document = sweep_module.main(['--grid', 'demo', '--quick', '--out', out])
  assert [r['cell'] for r in document['runs']] == ['ann', 'base', 'cnn']
  assert all(r['steps'] == 2 for r in document['runs'])
  assert 'teacher' in document['runs'][1]['accuracy']
  with open(os.path.join(out, 'demo.md')) as f:
    assert '| base |' in f.read()
  # A selection table names its own leader beside the default winner (the
  # runs above are reused: nothing trains).
  sweep_module.main(
    ['--grid', 'demo', '--quick', '--phase', 'select'] + ['--out', out]
  )
  with open(os.path.join(out, 'demo_select.md')) as f:
    text = f.read()
  gain = document['summary']['select']['base']['gain_vs_ann']['mean']
  assert (
    f'Largest mean paired gain on the selection seeds: `base` '
    f'({100 * gain:+.2f} points)' in text
  )
  assert (
    f'runs by default (chosen on earlier selection runs): `{winner}`' in text
  )


def test_only_cells_keeps_the_named_cells_and_their_baselines(sweep_module):
  Run = sweep_module.Run
  runs = [
    Run(cell, seed, None)
    for seed in (0, 1)
    for cell in ('ann', 'cnn', 'measured', 'm_T8', 'm_frozen')
  ]
  kept = sweep_module.only_cells(runs, 'm_T8,m_frozen')
  assert [(r.cell, r.seed) for r in kept] == [
    (cell, seed)
    for seed in (0, 1)
    for cell in ('ann', 'cnn', 'm_T8', 'm_frozen')
  ]
  assert sweep_module.only_cells(runs, None) == runs
  # A misspelt cell stops before anything trains, naming the grid's cells.
  with pytest.raises(SystemExit, match=r'm_T9 not in this grid.*m_T8'):
    sweep_module.only_cells(runs, 'm_T9')


def test_premise_cells_table_has_only_the_cells_asked_for(
  sweep_module, tmp_path
):
  # The committed full-width ResNet-8 runs (--cells on the premise grid): the
  # rebuilt table has that cell's row and no "not run" rows for the others,
  # and keeps the machine the runs ran on.
  recorded = os.path.join(HERE, 'results', 'intel_xeon', 'premise_cells.json')
  cells = 'resnet8_full_e4_f100/ann,resnet8_full_e4_f100/cnn'
  document = sweep_module.main(
    ['--grid', 'premise', '--cells', cells, '--tables-from', recorded]
    + ['--out', str(tmp_path)]
  )
  assert list(document['summary']) == ['resnet8_full_e4_f100']
  table = (tmp_path / 'premise_cells.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| resnet')]
  assert len(rows) == 1 and rows[0].startswith('| resnet8_full_e4_f100 | 500 |')
  with open(recorded) as f:
    assert json.load(f)['machine'] in table
  assert not (tmp_path / 'runs').exists()


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
