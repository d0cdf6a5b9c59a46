"""Test setup: the suite's environment (tests/suite_env.py), set before jax
initializes its backend, and the fixtures that tests share."""

import os

import pytest
import suite_env

suite_env.set_environment()


def pytest_collection_modifyitems(items):
  """Marks every test under tests/integration (and experiments/) 'integration'.

  `pytest -m "not integration"` is then the unit tier: ops, models, losses,
  methods, data, optim, convert and the repository checks, no training run.
  """
  for item in items:
    parts = item.path.parts
    if 'integration' in parts or 'experiments' in parts:
      item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session):
  del session
  suite_env.make_gc_cheap()


@pytest.fixture(scope='session')
def shared_tmp_root(tmp_path_factory):
  """A temp directory common to all pytest-xdist workers of this session.

  For things built once under a file lock and reused by every worker.
  """
  base = tmp_path_factory.getbasetemp()
  # Under pytest-xdist every worker has its own basetemp inside the session's.
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def mnist_dir(shared_tmp_root):
  """A tfds data_dir with mnist5k prepared once per session (the build is locked)."""
  # Imported here so that the environment above is set before jax starts.
  from kdjax.data import mnist5k  # pylint: disable=g-import-not-at-top

  data_dir = shared_tmp_root / 'kdjax_mnist5k'
  data_dir.mkdir(exist_ok=True)
  mnist5k.prepare(str(data_dir))
  return str(data_dir)


@pytest.fixture(scope='session')
def compile_cache(shared_tmp_root):
  """A persistent XLA cache shared by the command-line runs of the tests."""
  path = shared_tmp_root / 'kdjax_fault_tests_xla_cache'
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture(scope='session')
def finished_run(shared_tmp_root, mnist_dir):
  """(workdir, config, summary): the one finished tiny run the trainer's tests share.

  helpers.tiny_config for FINISHED_RUN_STEPS steps, checkpoints at 2, 4 and
  6, precise-BN evaluation (so its final checkpoint holds recalibrated
  statistics). Trained once per session: the first pytest-xdist worker that
  asks trains it under a file lock, the others read it. Tests read it; one
  that changes it works on a copy.
  """
  import helpers  # pylint: disable=g-import-not-at-top
  from kdjax.train import train  # pylint: disable=g-import-not-at-top

  config = helpers.finished_run_config(mnist_dir)
  workdir, summary = helpers.train_once(
    shared_tmp_root,
    'finished_run',
    lambda workdir: train.train_and_evaluate(config, workdir),
  )
  assert summary['steps'] == helpers.FINISHED_RUN_STEPS
  return workdir, config, summary


@pytest.fixture
def reference(finished_run):
  """The shared finished run's workdir: checkpoints at 2, 4 and 6."""
  return finished_run[0]
