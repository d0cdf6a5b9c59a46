"""Rot check of ``python -m experiments.baselines_demo --quick``.

One method of the table (2 steps of tiny networks on synthetic data, after
the shared teacher's 2) through the same code as the full comparison, and
the table's rows for every method the full run trains.
"""

import json

from experiments.baselines_demo import cli


def test_every_method_has_a_row_and_a_config():
  table = cli.rows()
  assert {'student alone', 'kd', 'fitnet', 'at', 'dkd', 'review_kd'} <= set(
    table
  )
  for name, (_, build) in table.items():
    config = build()
    assert config.dataset.name == 'mnist5k', name
    assert ('teacher' in config) == (name != 'student alone'), name


def test_quick_run_writes_the_table(tmp_path):
  assert cli.run(['--quick', '--only', 'dkd', '--workdir', str(tmp_path)]) == 0
  results = json.loads((tmp_path / 'results.json').read_text())
  (row,) = results['results']
  assert row['method'] == 'dkd' and row['steps'] == 2
  assert row['teacher'] is not None and results['meta']['quick']
  table = (tmp_path / 'table.md').read_text()
  assert '| dkd | `configs/distill.py:demo_dkd` |' in table
