"""Errors that carry a complete message for the person running kdjax.

`python -m kdjax.main` prints such an error as one paragraph, without a
traceback, and exits with its `exit_code` (`--traceback` shows the trace).
Any other exception is a bug or an environment problem and keeps its trace.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

# Exit codes of `python -m kdjax.main`. 75 is sysexits' EX_TEMPFAIL: the run
# was interrupted (SIGTERM, e.g. a Spot/preemptible VM) and resumes when the
# same command runs again; launch/common.sh retries on it.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75
# 128 + SIGINT, the shell's code for Ctrl-C: the run saved and resumes too.
EXIT_INTERRUPTED = 130


class KdjaxError(Exception):
  """Base class: the message says what is wrong and how to fix it."""

  exit_code = EXIT_USER_ERROR


class ConfigError(KdjaxError, ValueError):
  """A config value, flag or preset that cannot work."""


class WorkdirError(KdjaxError, OSError):
  """A workdir that cannot be used (a file, not writable, locked by a run)."""


class ConfigChangedError(ConfigError):
  """Resuming a workdir with a config that changes the result."""


def raised_by(exc: BaseException, roots: Iterable[str]) -> bool:
  """Whether the innermost frame of `exc`'s traceback lies under one of `roots`.

  Validation errors that kdjax (or a config file) raises itself are messages
  for the user; the same exception types raised inside a library are not.
  """
  tb = exc.__traceback__
  last: Optional[str] = None
  while tb is not None:
    last = tb.tb_frame.f_code.co_filename
    tb = tb.tb_next
  if last is None:
    return False
  last = os.path.realpath(last)
  return any(last.startswith(os.path.realpath(r) + os.sep) for r in roots if r)
