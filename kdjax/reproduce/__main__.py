"""``python -m kdjax.reproduce``: plan, run and report a paper's table."""

import sys

from kdjax import console

if __name__ == '__main__':
  import os  # pylint: disable=g-import-not-at-top

  os.environ.update(console.quiet_env(os.environ))
  from kdjax.reproduce import cli  # pylint: disable=g-import-not-at-top
  from kdjax.train import preemption  # pylint: disable=g-import-not-at-top

  if not os.environ.get('TPU_WORKER_HOSTNAMES', '').count(','):
    preemption.install()  # SIGTERM and Ctrl-C save before they stop.
  sys.exit(cli.run())
