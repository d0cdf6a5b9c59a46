"""The XLA flags of the test suite: tests/conftest.py sets them before jax starts.

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

COMPILE_FLAGS = (
  '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
  ' --xla_cpu_parallel_codegen_split_count=1'
)


def with_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, with the suite's compile flags."""
  return f'--xla_force_host_platform_device_count={count} {COMPILE_FLAGS}'
