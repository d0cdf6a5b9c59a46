"""kdjax command line: ``python -m kdjax.main --config=configs/pkkd.py:demo --workdir=DIR``.

Flags:
  --config   an ml_collections config file, with an optional preset after ':'
             (configs/pkkd.py:cifar100_resnet20); override any field with
             --config.key=value (e.g. --config.num_epochs=10).
  --workdir  checkpoints, TensorBoard events (metrics.jsonl without tensorflow/clu) and
             summary.json; a run resumes automatically from the newest checkpoint found here.
  --mode     train (default) or eval (restore the newest checkpoint, report accuracy).
"""

import json
import os
import sys

from absl import app
from etils import epath
from absl import flags
from absl import logging
from ml_collections import config_flags

# Before tensorflow (tf.data only) is first imported: no start-up lines from it.
from kdjax import console  # pylint: disable=g-import-not-at-top

os.environ.update(console.quiet_env(os.environ))

import jax  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file[:preset].', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, metrics, summary.'
)
_MODE = flags.DEFINE_enum(
  'mode', 'train', ['train', 'eval'], 'Train or evaluate.'
)
flags.mark_flags_as_required(['config', 'workdir'])


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
  elif os.environ.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0:
    jax.distributed.initialize()


def main(argv):
  del argv
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:  # Runs without it use --config.data.loader=numpy.
    pass
  else:  # tf.data must not take GPU memory from JAX.
    tf.config.set_visible_devices([], 'GPU')
  initialize_distributed()
  from kdjax.train import train  # pylint: disable=g-import-not-at-top

  # Orbax logs every checkpoint step at INFO; --verbosity=0 brings that back.
  # (absl's app.run marks --verbosity as set, so look at the command line itself.)
  if not any(
    a.startswith(('--verbosity', '-v=', '--v=')) for a in sys.argv[1:]
  ):
    logging.set_verbosity(logging.WARNING)
  config, workdir = _CONFIG.value, _WORKDIR.value
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Also gs:// paths.
  logging.info(
    'JAX %s, %d devices on %d processes',
    jax.__version__,
    jax.device_count(),
    jax.process_count(),
  )
  if _MODE.value == 'eval':
    result = train.evaluate(config, workdir)
  else:
    result = train.train_and_evaluate(config, workdir)
    result = {
      k: result[k] for k in ('method', 'steps', 'eval_accuracy', 'wall_seconds')
    }
  if jax.process_index() == 0:
    print(json.dumps(result, indent=1, default=str))


if __name__ == '__main__':
  app.run(main)
