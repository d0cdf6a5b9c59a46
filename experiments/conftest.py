"""Test setup of the experiments' tests: the suite's environment.

The same settings as tests/conftest.py (whose comments give the reasons), set
before jax initializes: 8 fake CPU devices, XLA's cheaper CPU compile flags,
non-partitionable threefry, and the suite's persistent compilation cache, so
that `pytest experiments` alone runs as the whole suite does.
"""

import gc
import getpass
import os
import tempfile

# tests/xla_flags.py's COMPILE_FLAGS: the flags a test passes to a run it
# starts in a subprocess (one CPU device, as the experiments run).
COMPILE_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
  ' --xla_cpu_parallel_codegen_split_count=1'
)

os.environ.setdefault(
  'XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {COMPILE_FLAGS}'
)
for name, value in (
  ('JAX_PLATFORMS', 'cpu'),
  ('JAX_THREEFRY_PARTITIONABLE', '0'),
  ('TF_CPP_MIN_LOG_LEVEL', '3'),
  (
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), f'kdjax-tests-xla-{getpass.getuser()}'),
  ),
  ('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0'),
  ('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0'),
):
  os.environ.setdefault(name, value)


def pytest_collection_finish(session):
  """Python's GC as tests/conftest.py sets it after collection (and why)."""
  del session
  gc.freeze()
  gc.set_threshold(100_000, 50, 100)
