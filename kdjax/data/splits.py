"""Which examples a process reads, in which order: the rules both loaders follow.

`parse_split` (tfds split strings), `process_share` (this process's part and
example indices), `class_balanced_subset` (train_fraction), `epoch_seeds`
(shuffle and augmentation seeds of an epoch) and `fit_plan` (image size).
Both loaders take them from here, so they serve the same examples
(docs/trainer.md, "Data"). Nothing here imports TensorFlow.
"""

import dataclasses
import re
from typing import Callable, Mapping

import numpy as np

# A split as absolute ranges: [(split name, start, stop)], stop exclusive.
Ranges = list[tuple[str, int, int]]

_SUBSPLIT = re.compile(
  r'^(?P<name>[\w-]+)(\[(?P<start>-?[\d.]+%?)?:(?P<stop>-?[\d.]+%?)?\])?$'
)


def parse_split(split: str, sizes: Mapping[str, int]) -> Ranges:
  """[(split name, start, stop)] that a tfds split string selects.

  The tfds slicing rules: 'train', 'train[:1000]', 'test[-100:]', 'train[:90%]'
  (percent boundaries rounded to the closest example, tfds' default) and sums
  joined with '+'. ``sizes``: examples of each named split. Raises ValueError
  for an unknown split name, a slice outside the split or another syntax.
  """
  ranges = []
  for part in re.split(r'\s*\+\s*', str(split).strip()):
    match = _SUBSPLIT.match(part)
    if not match:
      raise ValueError(
        f'Unrecognized split {split!r}; kdjax reads '
        "'name', 'name[a:b]' or 'name[a%:b%]', joined by '+'."
      )
    name = match['name']
    if name not in sizes:
      raise ValueError(
        f'There is no split {name!r}; available: {sorted(sizes)}.'
      )
    size = sizes[name]
    bounds = [match['start'], match['stop']]
    percent = any(b and b.endswith('%') for b in bounds)
    for i, (bound, default) in enumerate(zip(bounds, (0, size))):
      if not bound:
        bounds[i] = default
        continue
      if percent:
        value = int(round(float(bound.rstrip('%')) * size / 100.0))
      else:
        value = int(bound)
      if abs(value) > size:
        raise ValueError(
          f'Slice {part!r} is outside the {size} examples of {name!r}.'
        )
      bounds[i] = value + size if value < 0 else value
    ranges.append((name, bounds[0], max(bounds[0], bounds[1])))
  return ranges


def split_string(ranges: Ranges) -> str:
  """Absolute ranges back to a tfds split string: 'train[0:1000]+test[0:5]'.

  Empty ranges are left out (tfds rejects an empty slice); '' if all are.
  """
  return '+'.join(
    f'{name}[{start}:{stop}]' for name, start, stop in ranges if stop > start
  )


def even_parts(length: int, count: int) -> list[tuple[int, int]]:
  """[(start, stop)] of `count` contiguous parts of `length` examples.

  tfds.split_for_jax_process's even split (and np.array_split's): the first
  `length % count` parts are one example longer.
  """
  small, extra = divmod(length, count)
  bounds, start = [], 0
  for part in range(count):
    stop = start + small + (part < extra)
    bounds.append((start, stop))
    start = stop
  return bounds


def class_balanced_subset(
  labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
  """Sorted indices of a stratified random `fraction` of each class.

  Each class keeps round(fraction * its count) examples (at least one), so a
  balanced split keeps the same number per class: 10% of mnist5k's train split
  is 40 per class. Depends only on (labels, fraction, seed).
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'fraction must be in (0, 1], got {fraction}.')
  rng = np.random.default_rng(seed)
  kept = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = max(1, int(round(fraction * len(members))))
    kept.append(rng.permutation(members)[:count])
  return np.sort(np.concatenate(kept))


@dataclasses.dataclass(frozen=True)
class ProcessShare:
  """The examples of a split that one process reads.

  Attributes:
    read_ranges: what the process reads, in this order: its own part of every
      range (train_fraction 1), or the whole split (train_fraction < 1, where
      the subset is chosen on the whole split).
    keep: None (keep everything read), or the sorted positions, in the
      concatenation of `read_ranges`, of the examples kept.
    index_offset: example index = index_offset + position in the read. Indices
      are unique over processes and key the augmentation.
    num_examples: examples of the split over all processes (after
      train_fraction).
    row_offset: the row (`rows`) of this process's first kept example.
  """

  read_ranges: Ranges
  keep: np.ndarray | None
  index_offset: int
  num_examples: int
  row_offset: int

  @property
  def read_split(self) -> str:
    return split_string(self.read_ranges)

  @property
  def num_read(self) -> int:
    return sum(stop - start for _, start, stop in self.read_ranges)

  @property
  def positions(self) -> np.ndarray:
    """Positions in the read of the examples kept, in read order."""
    if self.keep is None:
      return np.arange(self.num_read, dtype=np.int64)
    return self.keep

  @property
  def indices(self) -> np.ndarray:
    """Example index of every kept example, in read order."""
    return self.index_offset + self.positions

  @property
  def rows(self) -> np.ndarray:
    """Each kept example's row, in read order: what batches carry as 'index'.

    The example's rank among the split's `num_examples` examples, processes
    in order: with train_fraction 1 its example index (`indices`: its
    position in the split); below 1 its rank in the sorted class-balanced
    subset. A permutation of range(num_examples) over the processes, the same
    every epoch (a memory bank's row, e.g. CRD's).
    """
    return self.row_offset + np.arange(self.local_num_examples, dtype=np.int64)

  @property
  def local_num_examples(self) -> int:
    return len(self.positions)


def process_share(
  split: str,
  sizes: Mapping[str, int],
  *,
  process_index: int,
  process_count: int,
  train_fraction: float = 1.0,
  fraction_seed: int = 0,
  labels: Callable[[], np.ndarray] | None = None,
) -> ProcessShare:
  """This process's share of `split`.

  Args:
    split: a tfds split string (`parse_split`).
    sizes: number of examples of each named split.
    process_index, process_count: this process and the number of processes.
    train_fraction: < 1 keeps a class-balanced random subset of the split
      (`class_balanced_subset`), chosen on the whole split, so it is the same
      for any process count, and dealt out in contiguous parts.
    fraction_seed: seed of that subset.
    labels: returns the labels of the whole split in read order; called only
      when train_fraction < 1.
  """
  ranges = parse_split(split, sizes)
  if train_fraction == 1.0:
    # Every range is cut into process_count parts; this process reads its
    # part of each, numbered after the examples of lower process indices.
    local_ranges, offset = [], 0
    for name, begin, end in ranges:
      parts = even_parts(end - begin, process_count)
      lo, hi = parts[process_index]
      local_ranges.append((name, begin + lo, begin + hi))
      offset += sum(b - a for a, b in parts[:process_index])
    return ProcessShare(
      read_ranges=local_ranges,
      keep=None,
      index_offset=offset,
      num_examples=sum(end - begin for _, begin, end in ranges),
      row_offset=offset,
    )
  if labels is None:
    raise ValueError('process_share: train_fraction < 1 needs the labels.')
  subset = class_balanced_subset(labels(), train_fraction, fraction_seed)
  parts = np.array_split(subset, process_count)
  return ProcessShare(
    read_ranges=ranges,
    keep=parts[process_index].astype(np.int64),
    index_offset=0,
    num_examples=len(subset),
    row_offset=sum(len(part) for part in parts[:process_index]),
  )


# Epoch order ------------------------------------------------------------------

SHUFFLE_STREAM, AUGMENT_STREAM = 0, 1


def derive_seed(seed: int, epoch: int, stream: int) -> int:
  """A 63-bit seed for one (seed, epoch, purpose) triple."""
  state = np.random.SeedSequence([int(seed) % 2**64, int(epoch), stream])
  return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
  """(shuffle seed, augmentation seed) of one epoch.

  The shuffle of an epoch depends on these alone, and an example's
  augmentation on the augmentation seed and its example index, so a loader
  that skips `start_step` batches yields exactly the rest of the epoch.
  """
  return (
    derive_seed(seed, epoch, SHUFFLE_STREAM),
    derive_seed(seed, epoch, AUGMENT_STREAM),
  )


# Input size -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitPlan:
  """How a fixed-size image becomes (size, size).

  Attributes:
    kind: 'keep' (already that size), 'pad' (centered on a zero canvas) or
      'resize' (bilinear, antialiased).
    pads: ((top, bottom), (left, right)) for 'pad'.
  """

  kind: str
  pads: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))


def fit_plan(height: int, width: int, size: int, method: str) -> FitPlan:
  """The rule of `DatasetSpec.fit`: 'pad' (MNIST 28 -> 32, the LeNet convention)
  pads when growing and falls back to resizing when shrinking; 'resize'
  resizes.
  """
  if (height, width) == (size, size):
    return FitPlan('keep')
  if method == 'pad' and height <= size and width <= size:
    top, left = (size - height) // 2, (size - width) // 2
    return FitPlan(
      'pad', ((top, size - height - top), (left, size - width - left))
    )
  return FitPlan('resize')
