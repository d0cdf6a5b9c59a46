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
