"""What the trainer's tests share: the tiny run, its command line, readers.

The tiny run is configs/supervised.py:demo shrunk to a resnet8 on the first
256 embedded mnist5k digits, batch 8 on 2 of the 8 fake CPU devices. Tests
import these from here; no test module imports another.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax import config_defaults
from kdjax.methods import distill_terms
from kdjax.train import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_CLI = os.path.join(REPO, 'tests', 'fault_injection.py')
TIMEOUT = 300

# The run every test starts from, as command-line overrides of
# configs/supervised.py:demo and as the same config in-process.
TINY = {
  'model.name': 'resnet8',
  'batch_size': 8,
  'num_devices': 2,
  'eval_bn_recalibration_batches': 0,
  'dataset.train_split': 'train[:256]',  # 32 steps per epoch.
  'dataset.eval_split': 'test[:64]',
}
REFERENCE_STEPS = 6
FINISHED_RUN_STEPS = REFERENCE_STEPS
# Every term of the 'distill' method (kdjax/methods/distill.py).
# Every one-stage term (AB and FT train an initialization phase first; they
# have their own tests: tests/unit/methods/test_distill_init.py).
ALL_DISTILL_TERMS = tuple(
  t for t in distill_terms.TERMS if t not in distill_terms.TWO_STAGE_TERMS
)


def train_once(shared_tmp_root, name, train_fn):
  """(workdir, summary) of ``train_fn(workdir)``, trained once per session.

  The run lives in a directory shared by the pytest-xdist workers: whichever
  worker asks first trains it under a file lock, the others wait and read
  its summary. Tests read the run; one that changes it works on a copy.
  """
  import fcntl  # pylint: disable=g-import-not-at-top

  root = shared_tmp_root / 'kdjax_shared_runs'
  root.mkdir(exist_ok=True)
  workdir, result = root / name, root / f'{name}.json'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not result.exists():
      summary = train_fn(str(workdir))
      result.write_text(json.dumps(summary, default=str))
  return str(workdir), json.loads(result.read_text())


def tiny_config(mnist_dir, steps, **overrides):
  """configs/supervised.py:demo with TINY, `steps` steps and dotted-key overrides."""
  config = load_config_module('supervised').get_config('demo')
  for key, value in {
    **TINY,
    'max_steps': steps,
    'dataset.data_dir': mnist_dir,
    **overrides,
  }.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def finished_run_config(mnist_dir):
  """The config of conftest's shared `finished_run`."""
  return tiny_config(
    mnist_dir,
    FINISHED_RUN_STEPS,
    checkpoint_every_steps=2,
    keep_checkpoints=10,
    eval_bn_recalibration_batches=2,
  )


def get_config(name, preset='demo'):
  """configs/<name>.py's get_config(preset), as --config=configs/<name>.py:<preset>."""
  return load_config_module(name).get_config(preset)


def load_config_module(name):
  """configs/<name>.py as a module (configs/ is not a package)."""
  return config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{name}.py')
  )


def cli_command(workdir, mnist_dir, steps, *, faults=False, **overrides):
  """The tiny_config run as a command line (through fault_injection.py if `faults`)."""
  flags = {
    **TINY,
    'max_steps': steps,
    'dataset.data_dir': mnist_dir,
    **overrides,
  }
  entry = [FAULT_CLI] if faults else ['-m', 'kdjax.main']
  return [
    sys.executable,
    *entry,
    '--config=configs/supervised.py:demo',
    f'--workdir={workdir}',
  ] + [f'--config.{k}={v}' for k, v in flags.items()]


def cli_env(compile_cache, **extra):
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    TF_CPP_MIN_LOG_LEVEL='3',
    JAX_COMPILATION_CACHE_DIR=compile_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
    **extra,
  )


def run_cli(command, env):
  return subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT
  )


def checkpoint_steps(workdir):
  """Names in workdir/checkpoints (finished steps, and anything else left there)."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR)
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def restore_state(workdir, step):
  """(meta, state) of checkpoint `step` of a run, as NumPy arrays, read with orbax alone."""
  path = os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR, str(step))
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(os.path.join(path, 'state')).item_metadata.tree
    restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree
    )
    state = checkpointer.restore(
      os.path.join(path, 'state'),
      args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args),
    )
  with open(os.path.join(path, 'meta', 'metadata')) as f:
    meta = json.load(f)
  return meta, state


def assert_trees_equal(expected, actual):
  """Bit for bit, leaf by leaf."""
  flat_expected = jax.tree_util.tree_leaves_with_path(expected)
  flat_actual = jax.tree_util.tree_leaves_with_path(actual)
  assert [p for p, _ in flat_expected] == [p for p, _ in flat_actual]
  for (path, a), (_, b) in zip(flat_expected, flat_actual):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))


def trees_differ(a, b):
  return any(
    not np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def wait_for_line(process, needle, timeout=TIMEOUT):
  """Reads process.stdout until a line contains `needle`; returns the lines read."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = process.stdout.readline()
    if not line:
      break
    lines.append(line)
    if needle in line:
      return lines
  process.kill()
  raise AssertionError(
    f'never printed {needle!r}; stdout:\n{"".join(lines)[-3000:]}'
  )


def all_finite(tree):
  """Whether every leaf of `tree` is finite."""
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def copy_run(run, tmp_path):
  """A copy of the run directory `run` in tmp_path/run, for a test to change."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(run, workdir)
  return workdir


def convert_repdistiller_resnet8(path, num_classes, out, *flags):
  """python -m kdjax.convert on a RepDistiller resnet8 file; the exit code."""
  from kdjax.convert import __main__ as convert_cli  # pylint: disable=g-import-not-at-top

  return convert_cli.main(
    [
      '--format=repdistiller',
      '--model=resnet8',
      f'--checkpoint={path}',
      f'--num-classes={num_classes}',
      f'--out={out}',
      '--dataset=cifar10',
      *flags,
    ]
  )


def distill_tiny_config(terms=None, preset='demo_kd'):
  """A demo preset with 4-channel stages, every term at a distinct weight."""
  terms = ALL_DISTILL_TERMS if terms is None else terms
  config = load_config_module('distill').get_config(preset)
  config.distill = distill_terms.default_section(terms, ce_weight=0.7)
  for i, name in enumerate(terms):
    config.distill[name].weight = 0.5 + 0.25 * i
  for entry in (config.model, config.teacher):
    entry.kwargs.stage_widths = (4, 4, 4)
  config.teacher.name = 'resnet8'
  config.distill.dkd.warmup_epochs = 4
  config.distill.review_kd.warmup_epochs = 3
  return config


def crd_tiny_config(num_negatives=5, feat_dim=8):
  """configs/crd.py:demo with 4-channel resnet8s and a small bank setting."""
  config = load_config_module('crd').get_config('demo')
  for entry in (config.model, config.teacher):
    entry.kwargs.stage_widths = (4, 4, 4)
  config.teacher.name = 'resnet8'
  config.crd.update(num_negatives=num_negatives, feat_dim=feat_dim)
  return config
