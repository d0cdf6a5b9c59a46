"""The XLA flags of the test suite: tests/conftest.py sets them before jax starts.

The suite compiles hundreds of small programs and runs most of them for a few
steps, so compilation dominates its time. LLVM optimization level 1 instead
of XLA's default 2 makes a CPU compile about a third cheaper (measured:
`tests/test_train.py -k test_pkkd_mnist5k`, empty compilation cache, 71 s of
CPU at the default, 46 s at level 1). The HLO passes are the same and fast
math stays off; no test compares its numbers with ones computed under other
flags.
"""

COMPILE_FLAGS = '--xla_backend_optimization_level=1'


def with_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, with the suite's compile flags."""
  return f'--xla_force_host_platform_device_count={count} {COMPILE_FLAGS}'
