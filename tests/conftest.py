"""Test setup: 8 fake CPU devices, set before jax initializes its backend."""

import gc
import getpass
import os
import tempfile

import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

os.environ.setdefault('XLA_FLAGS', xla_flags.with_devices(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Non-partitionable threefry for every test and the runs they start: the same
# generator with another bit layout, whose CPU compile is several times
# cheaper (compiling the random init of a resnet8 took ~10 s with the default,
# more than half of a short run). The trainer keeps jax's default; no test
# compares its numbers with ones drawn under the other setting.
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Many tests train the same tiny models: XLA's persistent compilation cache
# lets every worker and subprocess reuse a compiled step instead of spending
# seconds compiling it again. It is keyed on the program, the jax version and
# the flags, so a hit is the same executable a compile would give.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  os.path.join(tempfile.gettempdir(), f'kdjax-tests-xla-{getpass.getuser()}'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  """Makes Python's cyclic GC cheap for the rest of the session.

  Collecting has imported jax, TensorFlow, torch and kdjax: millions of
  objects that live as long as the process. gc.freeze() takes them out of the
  collector, which scanned them again at every full collection. Tracing also
  allocates fast, mostly objects that reference counting frees, so a young
  collection every 100,000 allocations instead of 700 loses little. Measured
  with an empty compilation cache, `python -m pytest -q -n 2 -m "not
  integration"` took 150 s with both, 160 s with the freeze alone and 168-171
  s with neither; with a warm cache 88, 96-98 and 99 s, at the same peak
  memory (2-core AMD EPYC, 2026-12-07, at 6a90536's XLA flags: LLVM level 1).
  """
  del session
  gc.freeze()
  gc.set_threshold(100_000, 50, 100)


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
