"""batch['index']: each example's stable row, from every loader.

Over one train epoch the indices are a permutation of range(num_examples),
an index names the same image in every epoch, processes hold disjoint
indices, and a train_fraction subset is numbered 0..subset size - 1
(docs/trainer.md, "Data"; CRD's memory bank rows).
"""

import hashlib

import numpy as np
import pytest

import kdjax.data as kd
from kdjax.data import synthetic

LOADERS = ('numpy', 'tfds')


def _source(loader, mnist_dir, split='train[:256]', **kwargs):
  args = dict(
    global_batch_size=64,
    train=True,
    seed=3,
    augment='none',
    process_index=0,
    process_count=1,
  )
  args.update(kwargs)
  if loader == 'tfds':
    args['data_dir'] = mnist_dir
  return kd.build_input('mnist5k', split, loader=loader, **args)


def _index_to_image(batches):
  """{index: hash of its image and label} over the real examples of batches."""
  out = {}
  for batch in batches:
    assert batch['index'].dtype == np.int32
    for image, label, mask, index in zip(
      batch['image'], batch['label'], batch['mask'], batch['index']
    ):
      if mask:
        digest = hashlib.sha1(image.tobytes() + label.tobytes()).hexdigest()
        assert out.setdefault(int(index), digest) == digest
  return out


def _indices(batches):
  return np.concatenate([b['index'] for b in batches])


@pytest.mark.parametrize('loader', LOADERS)
def test_an_epoch_is_a_permutation_and_an_index_is_one_image(loader, mnist_dir):
  source = _source(loader, mnist_dir)
  first, second = list(source.epoch(0)), list(source.epoch(1))
  for batches in (first, second):
    np.testing.assert_array_equal(np.sort(_indices(batches)), np.arange(256))
  # Shuffled differently, but every index names the same image.
  assert not np.array_equal(_indices(first), _indices(second))
  assert _index_to_image(first) == _index_to_image(second)
  # Eval numbers the same examples alike; its padding carries -1.
  evaluation = list(_source(loader, mnist_dir, train=False).epoch(0))
  assert _index_to_image(evaluation) == _index_to_image(first)
  pad = _source(loader, mnist_dir, 'train[:250]', train=False)
  padded = list(pad.epoch(0))[-1]
  np.testing.assert_array_equal(padded['index'][padded['mask'] == 0], -1)


@pytest.mark.parametrize('loader', LOADERS)
def test_resumed_epochs_and_augmentation_keep_the_indices(loader, mnist_dir):
  source = _source(loader, mnist_dir, augment='default')
  whole = list(source.epoch(2))
  rest = list(source.epoch(2, start_step=2))
  np.testing.assert_array_equal(_indices(whole[2:]), _indices(rest))
  labels = {
    int(i): int(y)
    for b in whole
    for i, y in zip(b['index'], b['label'], strict=True)
  }
  plain = _source(loader, mnist_dir)
  for batch in plain.epoch(0):
    for i, y in zip(batch['index'], batch['label'], strict=True):
      assert labels[int(i)] == int(y)


@pytest.mark.parametrize('loader', LOADERS)
@pytest.mark.parametrize('fraction', [1.0, 0.1])
def test_processes_hold_disjoint_rows_of_the_split(loader, fraction, mnist_dir):
  """Two processes: their indices are the single process's, split in two."""
  split = 'train' if fraction < 1 else 'train[:256]'
  kwargs = dict(global_batch_size=40, train_fraction=fraction)
  single = _source(loader, mnist_dir, split, **kwargs)
  expected = 400 if fraction < 1 else 256
  assert single.num_examples == expected
  every = _source(loader, mnist_dir, split, train=False, **kwargs)
  every = _index_to_image(every.epoch(0))
  assert sorted(every) == list(range(expected))
  whole = _index_to_image(single.epoch(0))
  assert whole.items() <= every.items()
  parts = [
    _index_to_image(
      _source(
        loader, mnist_dir, split, process_index=p, process_count=2, **kwargs
      ).epoch(0)
    )
    for p in range(2)
  ]
  assert not set(parts[0]) & set(parts[1])
  assert {**parts[0], **parts[1]}.items() <= every.items()
  if fraction < 1:  # 400 divides by the batch: every row is seen.
    assert sorted(whole) == sorted({**parts[0], **parts[1]}) == sorted(every)
  else:  # 6 batches of 40: 16 left out, a different 16 each epoch.
    assert len(whole) == 240
    assert max(parts[0]) < 128 <= min(parts[1])  # Contiguous parts.


def test_synthetic_indices_number_the_epoch_alike_in_every_epoch():
  def source(process_index, process_count, train=True):
    return synthetic.SyntheticSource(
      image_shape=(4, 4, 1),
      num_classes=3,
      num_examples=20 if train else 10,
      global_batch_size=8,
      train=train,
      seed=0,
      process_index=process_index,
      process_count=process_count,
    )

  single = source(0, 1)
  first, second = list(single.epoch(0)), list(single.epoch(1))
  np.testing.assert_array_equal(np.sort(_indices(first)), np.arange(16))
  assert _index_to_image(first) == _index_to_image(second)
  halves = [_indices(source(p, 2).epoch(0)) for p in range(2)]
  np.testing.assert_array_equal(np.sort(np.concatenate(halves)), np.arange(16))
  evaluation = list(source(0, 1, train=False).epoch(0))
  np.testing.assert_array_equal(
    _indices(evaluation), list(range(10)) + [-1] * 6
  )
