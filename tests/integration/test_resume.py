"""Resuming a workdir: a changed config stops before any work with the list
of keys (old -> new), neutral keys resume, a finished run writes nothing,
and an allowed change is recorded."""

import copy
import json
import os
import pytest

from kdjax.train import train
from kdjax import errors
from kdjax.train import run_config
from helpers import (
  FINISHED_RUN_STEPS,
  copy_run,
  restore_state,
)

STEPS = FINISHED_RUN_STEPS  # Of conftest's shared finished_run.


# ----------------------------------------------------------------------------
# A changed config on a workdir.


def test_config_diff_lists_result_keys_and_ignores_neutral_ones():
  old = {
    'num_epochs': 1,
    'log_every_steps': 50,
    'optimizer': {'learning_rate': 0.1},
    'teachers': [{'name': 'a'}, {'name': 'b'}],
  }
  new = {
    'num_epochs': 2,
    'log_every_steps': 5,
    'optimizer': {'learning_rate': 0.1},
    'teachers': [{'name': 'a'}, {'name': 'c'}],
    'extra': True,
  }
  assert run_config.diff(old, new) == {
    'extra': ['<absent>', True],
    'num_epochs': [1, 2],
    'teachers.1.name': ['b', 'c'],
  }
  assert 'log_every_steps' in run_config.RESULT_NEUTRAL_KEYS


def test_a_changed_config_stops_before_any_work(finished_run, tmp_path):
  run, config, summary = finished_run
  workdir = copy_run(run, tmp_path)
  before = sorted(os.listdir(workdir))
  changed = copy.deepcopy(config)
  changed.optimizer.learning_rate = 0.05
  changed.seed = 7
  with pytest.raises(errors.ConfigChangedError) as e:
    train.train_and_evaluate(changed, workdir)
  message = str(e.value)
  assert 'optimizer.learning_rate: 0.1 -> 0.05' in message
  assert 'seed: 0 -> 7' in message or 'seed: ' in message
  assert '--allow_config_change' in message and 'new --workdir' in message
  assert sorted(os.listdir(workdir)) == before  # Nothing written.
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['config']['optimizer']['learning_rate'] == 0.1


def test_neutral_keys_resume_and_a_finished_run_writes_nothing(
  finished_run, tmp_path, capsys
):
  run, config, summary = finished_run
  workdir = copy_run(run, tmp_path)
  files = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs
  )
  same = copy.deepcopy(config)
  same.log_every_steps = 1
  same.keep_checkpoints = 2
  capsys.readouterr()
  again = train.train_and_evaluate(same, workdir)
  out = capsys.readouterr().out
  assert again['already_finished'] and again['steps'] == STEPS
  assert again['eval_accuracy'] == summary['eval_accuracy']
  assert f'already finished at step {STEPS}' in out and 'new --workdir' in out
  after = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(workdir) for f in fs
  )
  assert after == files  # No event file, checkpoint or summary written.


def test_allowed_config_change_is_recorded(finished_run, tmp_path, capsys):
  run, config, _ = finished_run
  workdir = copy_run(run, tmp_path)
  longer = copy.deepcopy(config)
  longer.max_steps = STEPS + 2  # Neutral: the schedule does not see it...
  longer.optimizer.learning_rate = 0.05  # ...but this changes the result.
  capsys.readouterr()
  summary = train.train_and_evaluate(longer, workdir, allow_config_change=True)
  assert f'Config changed at step {STEPS}' in capsys.readouterr().out
  assert summary['steps'] == STEPS + 2
  assert summary['config_changes'] == [
    {'step': STEPS, 'changes': {'optimizer.learning_rate': [0.1, 0.05]}}
  ]
  assert summary['config']['optimizer']['learning_rate'] == 0.05
  meta, _ = restore_state(workdir, STEPS + 2)
  assert meta['config']['optimizer']['learning_rate'] == 0.05
  assert meta['config_changes'] == summary['config_changes']
