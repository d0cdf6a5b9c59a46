"""The plan of runs a config asks for: teachers first, nothing edited in place."""

import copy

from helpers import load_config_module
from kdjax.train import plan


def test_a_pretrained_teacher_is_a_supervised_run_before_the_student():
  config = load_config_module('kd').get_config('demo')
  before = copy.deepcopy(config.to_dict())
  runs = plan.build(config, '/w')
  assert [r.role for r in runs] == ['teacher 0 (resnet20)', 'student']
  teacher, student = runs
  assert teacher.config.method == 'supervised' and teacher.workdir == (
    '/w/teachers/0_resnet20'
  )
  assert teacher.config.num_epochs == config.teacher.pretrain_epochs
  assert student.config.teacher.checkpoint_dir == teacher.workdir
  # The student's record is the config as given, so the same command resumes.
  assert student.record['teacher']['checkpoint_dir'] is None
  assert config.to_dict() == before


def test_takd_is_a_chain_of_runs_each_feeding_the_next():
  config = load_config_module('takd').get_config('demo')
  before = copy.deepcopy(config.to_dict())
  runs = plan.build(config, '/w')
  assert [(r.config.method, r.config.model.name) for r in runs] == [
    ('supervised', 'resnet20'),
    ('kd', 'resnet14'),
    ('kd', 'resnet8'),
  ]
  teacher, assistant, student = runs
  assert teacher.workdir == '/w/teachers/0_resnet14/teachers/0_resnet20'
  assert assistant.workdir == '/w/teachers/0_resnet14'
  assert assistant.config.teacher.checkpoint_dir == teacher.workdir
  assert student.config.teacher.checkpoint_dir == assistant.workdir
  # The assistant distils with the student's KD settings, and its model entry
  # no longer names a teacher of its own.
  assert assistant.config.kd.to_dict() == config.kd.to_dict()
  assert 'distill_from' not in assistant.config.model
  assert teacher.role == 'teacher 0 (resnet14), teacher 0 (resnet20)'
  assert config.to_dict() == before


def test_the_command_lines_locked_config_plans_too():
  """python -m kdjax.main locks its config; the plan works on copies."""
  config = load_config_module('takd').get_config('demo')
  config.lock()
  runs = plan.build(config, '/w')
  assert len(runs) == 3 and config.is_locked
