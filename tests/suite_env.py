"""The test suite's process settings, set before jax starts.

tests/conftest.py and experiments/conftest.py both call `set_environment()`
at import and `make_gc_cheap()` after collection, so `pytest experiments`
alone runs as the whole suite does. Tests that start a run in a subprocess
pass it `with_devices(n)` or `COMPILE_FLAGS`.

The suite compiles hundreds of small programs and runs most of them for a few
steps on tiny inputs, so compiling, not running, dominates its time. These
flags make an XLA:CPU compile cheaper at the cost of slower code:

- `--xla_backend_optimization_level=0`: no LLVM optimization passes (XLA's
  default is 2). The HLO passes, and so the fused programs, stay the same;
  fast math stays off. The code runs slower, which the tests' short runs
  do not notice.
- `--xla_cpu_use_fusion_emitters=false`: each fusion is emitted with XLA's
  older LLVM emitters instead of building and lowering an MLIR module per
  fusion, the largest part of a small compile.
- `--xla_cpu_parallel_codegen_split_count=1`: one LLVM module per program.
  At level 0 with the default split, two programs that differ only in a
  logged metric (tests/integration/test_nonfinite.py poisons one) computed a
  convolution's gradient differently in the last bits; with one module the
  shared computation compiles to the same bits, as it does at level 1. Tests
  compare such runs bit for bit.

Measured with an empty compilation cache on a 2-core AMD EPYC (jax 0.10.2,
2026-12-07): the unit tier, `python -m pytest -q -n 2 -m "not integration"`,
took 152-154 s with level 1 and the fusion emitters off (the flags before
these), 112 s with these; the whole suite, `python -m pytest -q -n 2`, 528-545
s (in `.ci/run`) and 382 s. Results move in the last bits only; no test
compares its numbers with ones computed under other flags. XLA stops at
start-up on a flag it does not know, so each of these must exist in every jax
release that requirements.txt allows.
"""

import gc
import getpass
import os
import tempfile

COMPILE_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
  ' --xla_cpu_parallel_codegen_split_count=1'
)


def with_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, with the suite's compile flags."""
  return f'--xla_force_host_platform_device_count={count} {COMPILE_FLAGS}'


def set_environment() -> None:
  """The suite's environment, where the caller has not set it already.

  Runs before jax initializes its backend; the runs tests start in
  subprocesses inherit it.
  """
  os.environ.setdefault('XLA_FLAGS', with_devices(8))
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # Non-partitionable threefry for every test and the runs they start: the
  # same generator with another bit layout, whose CPU compile is several times
  # cheaper (compiling the random init of a resnet8 took ~10 s with the
  # default, more than half of a short run). The trainer keeps jax's default;
  # no test compares its numbers with ones drawn under the other setting.
  os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', '0')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # Many tests train the same tiny models: XLA's persistent compilation cache
  # lets every worker and subprocess reuse a compiled step instead of spending
  # seconds compiling it again. It is keyed on the program, the jax version
  # and the flags, so a hit is the same executable a compile would give.
  os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), f'kdjax-tests-xla-{getpass.getuser()}'),
  )
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


def make_gc_cheap() -> None:
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
  gc.freeze()
  gc.set_threshold(100_000, 50, 100)
