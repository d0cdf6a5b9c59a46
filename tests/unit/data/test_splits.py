"""kdjax.data.splits: the split rules both loaders follow, checked against tfds.

tfds' own split parser (`AbstractSplit.from_spec(...).to_absolute`) and
`tfds.split_for_jax_process` are the references for the split syntax and the
per-process shares; class counts and fit geometry are written out here.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax.data import splits

SIZES = {'train': 4000, 'test': 1000, 'validation': 7}
SPLITS = [
  'train',
  'test[:64]',
  'test[10%:30%]',
  'train[:33%]',
  'test[12.5%:]',
  'train[-7:]',
  'train[-7:]+test[:5]',
  'validation+test[990:]',
  'validation[2:-2]',
  'validation[:50%]',
  'validation[25%:75%]',
]


def tfds_split_dict():
  return tfds.core.SplitDict(
    [
      tfds.core.SplitInfo(name=name, shard_lengths=[size], num_bytes=0)
      for name, size in SIZES.items()
    ]
  )


def tfds_ranges(instruction):
  """tfds' absolute read instructions as [(name, start, stop)]."""
  absolute = instruction.to_absolute(tfds_split_dict())
  return [
    (
      i.splitname,
      0 if i.from_ is None else i.from_,
      SIZES[i.splitname] if i.to is None else i.to,
    )
    for i in absolute
  ]


@pytest.mark.parametrize('split', SPLITS)
def test_parse_split_reads_what_tfds_reads(split):
  expected = tfds_ranges(tfds.core.splits.AbstractSplit.from_spec(split))
  assert splits.parse_split(split, SIZES) == expected


def test_parse_split_closed_forms():
  assert splits.parse_split('test[10%:30%]', SIZES) == [('test', 100, 300)]
  assert splits.parse_split('train[-7:]', SIZES) == [('train', 3993, 4000)]
  assert splits.split_string(
    [('train', 3993, 4000), ('test', 5, 5), ('test', 0, 5)]
  ) == ('train[3993:4000]+test[0:5]')


@pytest.mark.parametrize(
  'split, message',
  [
    ('valid', "no split 'valid'"),
    ('test[:2000]', 'outside the 1000 examples'),
    ('train[::2]', 'Unrecognized split'),
  ],
)
def test_parse_split_errors(split, message):
  with pytest.raises(ValueError, match=message):
    splits.parse_split(split, SIZES)


@pytest.mark.parametrize('split', SPLITS)
@pytest.mark.parametrize('process_count', [1, 2, 3, 8])
def test_process_shares_are_split_for_jax_process(split, process_count):
  total = sum(b - a for _, a, b in splits.parse_split(split, SIZES))
  seen = []
  for process in range(process_count):
    share = splits.process_share(
      split, SIZES, process_index=process, process_count=process_count
    )
    reference = tfds.split_for_jax_process(
      split, process_index=process, process_count=process_count
    )
    expected = [r for r in tfds_ranges(reference) if r[2] > r[1]]
    assert [r for r in share.read_ranges if r[2] > r[1]] == expected
    assert share.keep is None and share.num_examples == total
    # Indices number the processes' examples one after the other.
    assert share.index_offset == len(seen)
    seen.extend(share.indices.tolist())
  assert seen == list(range(total))


def test_fraction_share_is_class_balanced_and_dealt_out():
  labels = np.repeat(np.arange(10), 400)[
    np.random.default_rng(0).permutation(4000)
  ]

  def shares(process_count, seed=3):
    return [
      splits.process_share(
        'train',
        SIZES,
        process_index=p,
        process_count=process_count,
        train_fraction=0.1,
        fraction_seed=seed,
        labels=lambda: labels,
      )
      for p in range(process_count)
    ]

  (single,) = shares(1)
  assert single.read_ranges == [('train', 0, 4000)]
  assert single.num_examples == 400 and single.index_offset == 0
  np.testing.assert_array_equal(np.bincount(labels[single.keep]), [40] * 10)
  assert np.all(np.diff(single.keep) > 0)
  # Any process count: the same 400 examples, disjoint contiguous parts of
  # sizes 134, 133, 133, and every process reads the whole split.
  parts = shares(3)
  assert [len(s.keep) for s in parts] == [134, 133, 133]
  np.testing.assert_array_equal(
    np.concatenate([s.keep for s in parts]), single.keep
  )
  assert all(s.read_ranges == [('train', 0, 4000)] for s in parts)
  np.testing.assert_array_equal(parts[1].indices, parts[1].keep)
  np.testing.assert_array_equal(shares(1)[0].keep, single.keep)
  assert not np.array_equal(shares(1, seed=4)[0].keep, single.keep)


def test_fraction_share_needs_labels():
  with pytest.raises(ValueError, match='labels'):
    splits.process_share(
      'train', SIZES, process_index=0, process_count=1, train_fraction=0.5
    )


def test_epoch_seeds_depend_on_seed_and_epoch_only():
  seeds = {(s, e): splits.epoch_seeds(s, e) for s in (0, 1) for e in (0, 1, 2)}
  assert seeds[(1, 2)] == splits.epoch_seeds(1, 2)
  flat = [x for pair in seeds.values() for x in pair]
  assert len(set(flat)) == len(flat)  # Shuffle and augment seeds differ.
  assert all(0 <= x < 2**63 for x in flat)


def test_fit_plan():
  assert splits.fit_plan(28, 28, 28, 'pad').kind == 'keep'
  assert splits.fit_plan(28, 28, 32, 'pad').pads == ((2, 2), (2, 2))
  assert splits.fit_plan(27, 28, 32, 'pad').pads == ((2, 3), (2, 2))
  assert splits.fit_plan(28, 28, 20, 'pad').kind == 'resize'
  assert splits.fit_plan(32, 32, 64, 'resize').kind == 'resize'
