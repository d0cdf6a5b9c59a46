"""kdjax command line: ``python -m kdjax.main --config=configs/pkkd.py:demo --workdir=DIR``.

Flags:
  --config   an ml_collections config file, with an optional preset after ':'
             (configs/pkkd.py:cifar100_resnet20); override any field with
             --config.key=value (e.g. --config.num_epochs=10).
  --workdir  checkpoints, TensorBoard events (metrics.jsonl without tensorboard) and
             summary.json; a run resumes automatically from the newest checkpoint found here.
  --mode     train (default) or eval (restore the newest checkpoint, report accuracy).
"""

import json
import os
import sys
import tempfile

from absl import app
from etils import epath
from absl import flags
from absl import logging
from ml_collections import config_flags

# Before tensorflow (tf.data only) is first imported: no start-up lines from it.
from kdjax import console  # pylint: disable=g-import-not-at-top

os.environ.update(console.quiet_env(os.environ))

import jax  # pylint: disable=g-import-not-at-top

from kdjax import errors  # pylint: disable=g-import-not-at-top
from kdjax.check_config import describe_config_error  # pylint: disable=g-import-not-at-top
from kdjax.train import preemption  # pylint: disable=g-import-not-at-top
from kdjax.train import reporting  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file[:preset].', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, metrics, summary.'
)
_MODE = flags.DEFINE_enum(
  'mode', 'train', ['train', 'eval'], 'Train or evaluate.'
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume a workdir whose checkpoint was trained with another config; the '
  'change is recorded in summary.json and later checkpoints.',
)
_TRACEBACK = flags.DEFINE_bool(
  'traceback',
  False,
  'Show the full Python traceback of configuration and user errors too.',
)

# The roots whose own validation errors are messages for the user.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _want_traceback(argv) -> bool:
  return any(a in ('--traceback', '--traceback=true') for a in argv[1:])


def _fail(message: str, code: int = errors.EXIT_USER_ERROR):
  print(f'kdjax: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's flag parsing, with errors as one short paragraph (exit code 2)."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if _want_traceback(argv):
      raise
    _fail(
      describe_config_error(e, argv)
      + ' (--helpshort lists the flags; --traceback '
      'shows the trace.)'
    )
  for name in ('config', 'workdir'):
    if not flags.FLAGS[name].present and getattr(flags.FLAGS, name) is None:
      _fail(
        f'--{name} is required: python -m kdjax.main '
        '--config=configs/pkkd.py:demo --workdir=/tmp/kdjax/pkkd_demo'
      )
  return rest


def check_workdir(workdir: str, mode: str) -> None:
  """A workdir that is a file, or not writable, fails before any setup."""
  if not reporting.is_local(workdir):  # gs:// and the like: orbax checks them.
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.WorkdirError(
      f'--workdir={workdir} is a file, not a directory. Give a directory '
      '(it is created if missing).'
    )
  if mode == 'eval':
    return  # Eval only reads.
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  # Try it: permission bits do not tell for root or a read-only mount.
  try:
    probe = tempfile.NamedTemporaryFile(dir=existing, prefix='.kdjax-probe-')
    probe.close()
  except OSError as e:
    raise errors.WorkdirError(
      f'--workdir={workdir} is not writable ({existing}: {e.strerror}). '
      'Choose a directory you can write to.'
    ) from None


def initialize_distributed() -> None:
  """Joins a multi-host job when one is configured; a no-op on a single host.

  jax.distributed.initialize() raises on a single host without a coordinator,
  so it only runs where a coordinator is known (TPU pod slices, SLURM, or the
  JAX_COORDINATOR_ADDRESS variable).
  """
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
      coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
      num_processes=int(os.environ['JAX_NUM_PROCESSES']),
      process_id=int(os.environ['JAX_PROCESS_ID']),
    )
  elif _multi_host():
    jax.distributed.initialize()


def _multi_host() -> bool:
  return bool(os.environ.get('JAX_COORDINATOR_ADDRESS')) or (
    os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0
  )


def run(config, workdir: str, mode: str, allow_config_change: bool):
  """Trains or evaluates; returns (result dict, exit code)."""
  # pylint: disable=g-import-not-at-top
  from kdjax import validation
  from kdjax.data import loaders
  from kdjax.train import evaluation, plan, train

  # pylint: enable=g-import-not-at-top
  # The config's one validation first: a bad value fails in a second, not
  # after tensorflow's import and a distributed start-up.
  validation.validate(config)
  # tensorflow is needed by the tfds loader and by a remote workdir's event
  # files (gs://); importing it costs seconds, so the NumPy loader writing to
  # a local workdir does without.
  loader = loaders.config_loader(config)
  needs_tensorflow = loader == 'tfds' or not reporting.is_local(workdir)
  if needs_tensorflow:
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:  # The data loader's error says what to do.
      pass
    else:  # tf.data must not take GPU memory from JAX.
      tf.config.set_visible_devices([], 'GPU')
  initialize_distributed()
  logging.info(
    'JAX %s, %d devices on %d processes',
    jax.__version__,
    jax.device_count(),
    jax.process_count(),
  )
  if mode == 'eval':
    return evaluation.evaluate(config, workdir), errors.EXIT_OK
  if not reporting.is_local(workdir):  # A local one: the run's lock makes it.
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  summary = train.run_plan(
    plan.build(config, workdir), allow_config_change=allow_config_change
  )
  result = {
    k: summary.get(k)
    for k in ('method', 'steps', 'eval_accuracy', 'wall_seconds', 'preempted')
  }
  if summary.get('total_steps') is not None:
    result['total_steps'] = summary['total_steps']
  if summary.get('already_finished'):
    result['already_finished'] = True
  if summary.get('preempted'):
    if summary.get('stop_signal') == 'SIGINT':
      return result, errors.EXIT_INTERRUPTED
    return result, errors.EXIT_PREEMPTED
  return result, errors.EXIT_OK


def main(argv):
  del argv
  # Orbax logs every checkpoint step at INFO; --verbosity=0 brings that back.
  # (absl's app.run marks --verbosity as set, so look at the command line itself.)
  if not any(
    a.startswith(('--verbosity', '-v=', '--v=')) for a in sys.argv[1:]
  ):
    logging.set_verbosity(logging.WARNING)
  workdir, mode = _WORKDIR.value, _MODE.value
  try:
    config = _CONFIG.value
    config.get('method')  # A missing file fails on first use, not in parsing.
  except Exception as e:  # pylint: disable=broad-except
    if _TRACEBACK.value:
      raise
    _fail(
      f'{describe_config_error(e, sys.argv)} (--traceback shows the trace.)'
    )
  try:
    check_workdir(workdir, mode)
    result, code = run(config, workdir, mode, _ALLOW_CONFIG_CHANGE.value)
  except KeyboardInterrupt:  # The second Ctrl-C: the first asked to save.
    if _TRACEBACK.value:
      raise
    _fail(
      f'aborted by a second Ctrl-C before the save; the newest checkpoint in '
      f'{workdir} (if any) is kept, and the same command resumes from it.',
      errors.EXIT_INTERRUPTED,
    )
  except Exception as e:  # pylint: disable=broad-except
    if _TRACEBACK.value:
      raise
    user_error = isinstance(e, errors.KdjaxError) or (
      isinstance(e, (ValueError, KeyError, TypeError, FileNotFoundError))
      and errors.raised_by(e, [_PACKAGE_DIR, os.path.abspath('configs')])
    )
    if not user_error:
      raise  # A bug or an environment problem: keep the trace.
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    _fail(
      f'{message} (--traceback shows the trace.)',
      getattr(e, 'exit_code', errors.EXIT_USER_ERROR),
    )
  if jax.process_index() == 0:
    if code in (errors.EXIT_PREEMPTED, errors.EXIT_INTERRUPTED):
      what = 'Interrupted' if code == errors.EXIT_INTERRUPTED else 'Preempted'
      print(
        f'{what} before the end; rerun the same command to resume from '
        f'{workdir}. Exit code {code}.',
        file=sys.stderr,
      )
    print(json.dumps(result, indent=1, default=str))
  sys.exit(code)


if __name__ == '__main__':
  if not _multi_host():  # There jax.distributed's service owns SIGTERM.
    preemption.install()  # SIGTERM and Ctrl-C save before they stop.
  app.run(main, flags_parser=parse_flags)
