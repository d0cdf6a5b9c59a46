"""Start-up settings that keep TensorFlow's import lines off the console.

`quiet_startup()` (or ``os.environ.update(quiet_env(os.environ))``, as
kdjax.main does before its other imports) must run before tensorflow is
imported. It only sets environment variables the user has not set, so
``TF_ENABLE_ONEDNN_OPTS=1`` or ``TF_CPP_MIN_LOG_LEVEL=0`` on the command line
still win.
"""

import os
from typing import Dict, Mapping

# What each variable silences, and why that hides no real warning:
QUIET_ENV = {
  # TensorFlow's C++ INFO/WARNING lines (e.g. "This TensorFlow binary is
  # optimized to use available CPU instructions"). Level 3 still prints FATAL.
  'TF_CPP_MIN_LOG_LEVEL': '3',
  # On CPUs with AVX-512 VNNI / AMX, TensorFlow turns on its oneDNN kernels and
  # announces it twice (once per shared library) with a "WARNING: All log
  # messages before absl::InitializeLog()" line each: 4 lines that
  # TF_CPP_MIN_LOG_LEVEL does not reach. kdjax's tf.data ops (decode, crop,
  # flip, pad, resize, normalize) give the same bits either way; the models
  # run in JAX, which this does not touch.
  'TF_ENABLE_ONEDNN_OPTS': '0',
}


def quiet_env(environ: Mapping[str, str]) -> Dict[str, str]:
  """The QUIET_ENV settings that `environ` does not set already."""
  return {k: v for k, v in QUIET_ENV.items() if k not in environ}


def quiet_startup() -> None:
  """Sets QUIET_ENV's variables that are not already set in os.environ."""
  os.environ.update(quiet_env(os.environ))
