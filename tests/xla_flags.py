"""The XLA flags of the test suite: tests/conftest.py sets them before jax starts.

The suite compiles hundreds of small programs and runs most of them for a few
steps, so compilation dominates its time. LLVM optimization level 1 instead
of XLA's default 2 makes a CPU compile about a third cheaper (measured:
`tests/test_train.py -k test_pkkd_mnist5k`, empty compilation cache, 71 s of
CPU at the default, 46 s at level 1). The HLO passes are the same and fast
math stays off; no test compares its numbers with ones computed under other
flags.

`--xla_cpu_use_fusion_emitters=false` has XLA:CPU emit each fusion with its
older LLVM emitters instead of the MLIR fusion emitters, which build and lower
an MLIR module per fusion, the largest part of a small compile. With an empty
compilation cache on a 2-core AMD EPYC (jax 0.10.2, 2026-12-07), the unit
tier, `python -m pytest -q -n 2 -m "not integration"`, took 227 s with level
1 alone and 171 s with both; `.ci/run` in fresh clones spent 822 s in pytest
before the flag (baaee0b) and 561 s with it (db3c920), so the training runs
did not get slower either. Results move in the last bits only. Both flags
exist in the jax releases that requirements.txt allows; XLA stops at start-up
on a flag it does not know.
"""

COMPILE_FLAGS = (
  '--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false'
)


def with_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, with the suite's compile flags."""
  return f'--xla_force_host_platform_device_count={count} {COMPILE_FLAGS}'
