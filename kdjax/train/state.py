"""Training state shared by every method."""

from typing import Any

import flax
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates, grouped by optimizer.

  ``params``, ``batch_stats`` and ``opt_state`` are dicts keyed by parameter
  group ('student', and 'teacher' when a teacher is co-trained as in PKKD).
  Each group has its own optimizer. Frozen teachers are not part of the state:
  they are restored from their own checkpoints.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array
