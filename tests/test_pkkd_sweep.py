"""Rot check of benchmarks/pkkd_sweep.py: --quick runs every new PKKD knob end to end."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def sweep_module():
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  try:
    import pkkd_sweep  # pylint: disable=g-import-not-at-top

    yield pkkd_sweep
  finally:
    sys.path.remove(os.path.join(REPO, 'benchmarks'))


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
