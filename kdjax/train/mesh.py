"""The device mesh and what crosses to it: batch placement and prefetch.

The same code runs on one CPU, 8 fake CPU devices, a GPU and a multi-host TPU
pod: a 1-D 'data' mesh over every device, parameters replicated, batches split
along the batch axis. Under plain ``jax.jit`` the compiler inserts the
collectives, so BN statistics and gradients are over the global batch.
"""

from __future__ import annotations

import collections
from typing import Dict

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from kdjax.errors import ConfigError

DATA_AXIS = 'data'


def mesh_devices(config: ml_collections.ConfigDict):
  """All devices, or the first ``config.num_devices`` (single-process runs only)."""
  devices = jax.devices()
  wanted = config.get('num_devices', 0) or len(devices)
  if wanted > len(devices) or (
    wanted != len(devices) and jax.process_count() > 1
  ):
    raise ConfigError(
      f'config.num_devices={wanted}, but {len(devices)} devices are visible '
      f'to {jax.process_count()} process(es); use 0 for all of them.'
    )
  return devices[:wanted]


def make_mesh(devices) -> jax.sharding.Mesh:
  return jax.make_mesh(
    (len(devices),),
    (DATA_AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices,
  )


def check_batch_size(
  global_batch: int, devices: int, what: str = 'batch_size'
) -> None:
  processes = jax.process_count()
  if global_batch % devices:
    raise ConfigError(
      f'config.{what}={global_batch} is not divisible by the {devices} devices '
      f'of the mesh; use a multiple of {devices}.'
    )
  if global_batch % processes:
    raise ConfigError(
      f'config.{what}={global_batch} is not divisible by the {processes} '
      'processes.'
    )


def to_global(
  batch: Dict[str, np.ndarray], sharding: NamedSharding
) -> Dict[str, jax.Array]:
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in batch.items()
  }


def prefetch_to_devices(batches, sharding, size: int = 1):
  """Yields global batches; while the caller's step runs, the next are copied.

  Up to `size` batches are put on the devices after the caller has dispatched
  its step (dispatch is asynchronous), so reading and transferring the next
  input overlaps the current step's compute, and a stop requested during the
  step is seen before any batch after it is fed.
  """
  iterator = iter(batches)
  queue = collections.deque()
  first = next(iterator, None)
  if first is not None:
    queue.append(to_global(first, sharding))
  while queue:
    yield queue.popleft()
    while len(queue) < size:
      batch = next(iterator, None)
      if batch is None:
        break
      queue.append(to_global(batch, sharding))
