r"""Runs the kdjax CLI with faults injected, for tests/test_faults.py.

  python tests/fault_injection.py --config=configs/supervised.py:demo --workdir=W ...

takes the flags of ``python -m kdjax.main`` and behaves the same, except for
what these environment variables ask for (all optional):

  KDJAX_FAULT_MARKERS=1     print 'KDJAX_FAULT batch <k> <digests>' before the
                            k-th (0-based) batch of this process is fed to the
                            devices: <digests> are short hashes of its examples
                            (image and label), comma-separated. Training
                            batches come first; eval batches follow at the end
                            of an epoch or of the run.
  KDJAX_FAULT_PAUSE_AT=k    at batch k, after printing its marker, wait until
                            the file KDJAX_FAULT_GO_FILE exists (at most 120 s),
                            so a test can send a signal at a known step.
  KDJAX_FAULT_KILL_IN_SAVE=<step>
                            SIGKILL this process in the middle of saving
                            checkpoint <step>: when orbax is about to commit
                            it (every file written into the temporary
                            directory, which is not yet renamed to <step>).

Nothing in kdjax is changed: the hooks wrap ``kdjax.train.mesh.to_global``
(called once per batch, in the loop's main thread) and orbax's atomic-rename
commit.
"""

import hashlib
import os
import runpy
import signal
import sys
import time

import numpy as np


def _install_hooks() -> None:
  from kdjax.train import mesh  # pylint: disable=g-import-not-at-top  (no backend init)

  markers = os.environ.get('KDJAX_FAULT_MARKERS') == '1'
  pause_at = int(os.environ.get('KDJAX_FAULT_PAUSE_AT', '-1'))
  go_file = os.environ.get('KDJAX_FAULT_GO_FILE', '')
  if markers or pause_at >= 0:
    original = mesh.to_global
    calls = {'train': 0}

    def to_global(batch, sharding):
      k = calls['train']
      calls['train'] += 1
      if markers:
        digests = ','.join(
          hashlib.md5(image.tobytes() + label.tobytes()).hexdigest()[:12]
          for image, label in zip(
            np.asarray(batch['image']), np.asarray(batch['label'])
          )
        )
        print(f'KDJAX_FAULT batch {k} {digests}', flush=True)
      if k == pause_at:
        deadline = time.time() + 120
        while (
          go_file and not os.path.exists(go_file) and time.time() < deadline
        ):
          time.sleep(0.02)
      return original(batch, sharding)

    mesh.to_global = to_global

  kill_in_save = os.environ.get('KDJAX_FAULT_KILL_IN_SAVE')
  if kill_in_save:
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top

    original_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      final = self.get_final()
      if final.name == kill_in_save:
        print(f'KDJAX_FAULT SIGKILL while committing {final}', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
      return await original_finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


if __name__ == '__main__':
  _install_hooks()
  sys.argv[0] = 'kdjax.main'
  runpy.run_module('kdjax.main', run_name='__main__', alter_sys=True)
