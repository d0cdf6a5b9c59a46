"""Tests of kdjax.data: the mnist5k builder, the pipelines, the tfds mocks."""

import functools
import glob
import hashlib
import shutil
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import kdjax.data as kd
from kdjax.data import mnist5k
import tfds_mocks as data_testing


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
  """A tfds data_dir with mnist5k prepared once for the module."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  mnist5k.prepare(data_dir)
  return data_dir


@pytest.fixture
def no_network(monkeypatch):
  """Fails any attempt to open a network connection."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)


def _read_split(data_dir, split):
  builder = tfds.builder('mnist5k', data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  examples = list(tfds.as_numpy(ds.batch(5000)))[0]
  return examples['id'], examples['image'], examples['label']


def _epoch(source, epoch_index=0, start_step=0):
  return list(source.epoch(epoch_index, start_step=start_step))


def _example_hashes(batches):
  """Content hash of every real (mask 1) example: a unique id per image."""
  hashes = []
  for batch in batches:
    for image, label, mask in zip(
      batch['image'], batch['label'], batch['mask']
    ):
      if mask:
        hashes.append(
          hashlib.sha1(image.tobytes() + label.tobytes()).hexdigest()
        )
  return hashes


def _assert_same_batches(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# mnist5k builder -------------------------------------------------------------


def test_mnist5k_csv_is_pixels_then_label():
  images, labels = mnist5k.load_csv()
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  # Real digits: ink covers ~13% of the average pixel, borders are blank.
  assert 0.10 < images.mean() / 255 < 0.16
  assert images[:, 0, :, :].max() == 0


def test_mnist5k_builder_splits(mnist_dir):
  builder = tfds.builder('mnist5k', data_dir=mnist_dir)
  assert builder.info.splits['train'].num_examples == 4000
  assert builder.info.splits['test'].num_examples == 1000
  train_ids, train_images, train_labels = _read_split(mnist_dir, 'train')
  test_ids, test_images, test_labels = _read_split(mnist_dir, 'test')
  assert train_images.shape == (4000, 28, 28, 1)
  assert train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(train_labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test_labels), [100] * 10)
  # Deterministic and disjoint: the rows are those of the fixed-seed split.
  rows = mnist5k.split_rows(mnist5k.load_csv()[1])
  np.testing.assert_array_equal(np.sort(train_ids), rows['train'])
  np.testing.assert_array_equal(np.sort(test_ids), rows['test'])
  assert not set(train_ids) & set(test_ids)
  # Real, correctly labelled digits: nearest class mean gets most right.
  means = np.stack(
    [train_images[train_labels == c].mean(0) for c in range(10)]
  ).reshape(10, -1)
  flat = test_images.reshape(1000, -1).astype(np.float32)
  distances = ((flat[:, None, :] - means[None]) ** 2).sum(-1)
  assert (distances.argmin(1) == test_labels).mean() > 0.7


def test_train_fraction_is_class_balanced_and_split_over_processes(mnist_dir):
  def source(process_index, process_count):
    return kd.build_input(
      'mnist5k',
      'train',
      global_batch_size=40,
      train=True,
      seed=0,
      data_dir=mnist_dir,
      augment='none',
      train_fraction=0.1,
      process_index=process_index,
      process_count=process_count,
    )

  single = source(0, 1)
  assert single.num_examples == 400 and single.steps_per_epoch == 10
  batches = _epoch(single)
  labels = np.concatenate([b['label'] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels), [40] * 10)
  # Two processes share the same 400 examples, without overlap.
  hashes = [set(_example_hashes(_epoch(source(p, 2)))) for p in range(2)]
  assert len(hashes[0]) == len(hashes[1]) == 200
  assert not hashes[0] & hashes[1]
  assert hashes[0] | hashes[1] == set(_example_hashes(batches))


# Pipeline outputs ------------------------------------------------------------


def test_mnist5k_batches(mnist_dir):
  train = kd.build_input(
    'mnist5k',
    'train',
    global_batch_size=64,
    train=True,
    seed=0,
    data_dir=mnist_dir,
  )
  assert (train.num_examples, train.steps_per_epoch) == (4000, 62)
  assert train.image_shape == (28, 28, 1) and train.num_classes == 10
  batch = next(train.epoch(0))
  assert batch['image'].shape == (64, 28, 28, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['mask'], np.ones(64, np.float32))

  test = kd.build_input(
    'mnist5k',
    'test',
    global_batch_size=500,
    train=False,
    seed=0,
    data_dir=mnist_dir,
  )
  images = np.concatenate([b['image'] for b in test.epoch(0)])
  # Normalized with MNIST's mean/std: close to zero mean, unit variance.
  assert abs(images.mean()) < 0.05 and abs(images.std() - 1) < 0.05

  padded = kd.build_input(
    'mnist5k',
    'test',
    global_batch_size=8,
    train=False,
    seed=0,
    data_dir=mnist_dir,
    image_size=32,
  )
  image = next(padded.epoch(0))['image']
  assert image.shape == (8, 32, 32, 1)
  # 28 -> 32 pads 2 blank pixels per side.
  np.testing.assert_allclose(image[:, :2], -0.1307 / 0.3081, rtol=1e-5)


@pytest.mark.parametrize(
  'name, image_size',
  [('cifar10', None), ('cifar100', None), ('imagenet2012', 64)],
)
def test_mock_dataset_batches(name, image_size):
  spec = kd.DATASETS[name]
  side = image_size or spec.image_shape[0]
  with data_testing.mock_dataset(name):
    for split, train in [(spec.train_split, True), (spec.eval_split, False)]:
      source = kd.build_input(
        name,
        split,
        global_batch_size=16,
        train=train,
        seed=0,
        image_size=image_size,
      )
      assert source.num_classes == spec.num_classes
      assert source.image_shape == (side, side, 3)
      batches = _epoch(source)
      assert len(batches) == source.steps_per_epoch
      images = np.concatenate([b['image'] for b in batches])
      labels = np.concatenate([b['label'] for b in batches])
      assert images.shape[1:] == (side, side, 3) and images.dtype == np.float32
      assert labels.dtype == np.int32
      assert labels.min() >= 0 and labels.max() < spec.num_classes
      assert np.isfinite(images).all()
      if not train:  # (Training crops bring in black padding.)
        # Mock pixels are uniform in [0, 255]: mean (0.5 - mean) / std.
        expected = np.mean((0.5 - np.array(spec.mean)) / np.array(spec.std))
        assert abs(images.mean() - expected) < 0.15
      masks = np.concatenate([b['mask'] for b in batches])
      assert masks.sum() == (
        source.steps_per_epoch * 16 if train else source.num_examples
      )


def test_train_fraction_on_mock_cifar():
  with data_testing.mock_dataset('cifar10', {'train': 200}):
    source = kd.build_input(
      'cifar10',
      'train',
      global_batch_size=4,
      train=True,
      seed=0,
      train_fraction=0.5,
      process_index=0,
      process_count=1,
    )
    labels = kd.pipeline.split_labels(tfds.builder('cifar10'), 'train')
    expected = kd.class_balanced_subset(labels, 0.5, seed=0)
    assert source.num_examples == len(expected)
    assert 90 <= len(expected) <= 110


# Determinism and resumption --------------------------------------------------


@pytest.mark.parametrize(
  'name, augment',
  [
    ('mnist5k', 'default'),
    ('cifar10', 'cifar_reflect'),
    ('imagenet2012', 'default'),
  ],
)
def test_epochs_are_deterministic_and_resumable(mnist_dir, name, augment):
  # A 1,000-example slice of mnist5k keeps the test fast.
  split = 'train[:1000]' if name == 'mnist5k' else 'train'

  def build(seed):
    return kd.build_input(
      name,
      split,
      global_batch_size=16,
      train=True,
      seed=seed,
      data_dir=mnist_dir,
      augment=augment,
      process_index=0,
      process_count=1,
      image_size=32 if name == 'imagenet2012' else None,
    )

  def run():
    source = build(seed=7)
    first = _epoch(source, 1)
    # A fresh source (a restarted trainer) replays the same epoch.
    assert_same = _epoch(build(seed=7), 1)
    _assert_same_batches(first, assert_same)
    resumed = _epoch(source, 1, start_step=2)
    _assert_same_batches(first[2:], resumed)
    assert _epoch(source, 1, start_step=source.steps_per_epoch) == []
    other_epoch = _epoch(source, 2)
    other_seed = _epoch(build(seed=8), 1)
    for other in (other_epoch, other_seed):
      assert not np.array_equal(first[0]['image'], other[0]['image'])

  if name == 'mnist5k':
    run()
  else:
    with data_testing.mock_dataset(name, {'train': 64}):
      run()


def test_augmentation_changes_images_but_not_labels(mnist_dir):
  def first_batch(augment):
    source = kd.build_input(
      'mnist5k',
      'train',
      global_batch_size=32,
      train=True,
      seed=1,
      data_dir=mnist_dir,
      augment=augment,
      process_index=0,
      process_count=1,
    )
    return next(source.epoch(0))

  plain, shifted = first_batch('none'), first_batch('mnist')
  np.testing.assert_array_equal(plain['label'], shifted['label'])
  assert not np.array_equal(plain['image'], shifted['image'])

  # A shift moves ink but keeps nearly all of it: crops lose at most a
  # 2-pixel border, which is nearly always blank on MNIST.
  def ink(images):
    return (images * 0.3081 + 0.1307).sum()

  np.testing.assert_allclose(
    ink(plain['image']), ink(shifted['image']), rtol=0.02
  )


# Processes and evaluation ----------------------------------------------------


@pytest.mark.parametrize('name', ['mnist5k', 'cifar10'])
@pytest.mark.parametrize('train', [False, True])
def test_processes_read_disjoint_parts(mnist_dir, name, train):
  if train:  # (A slice keeps mnist5k fast and exercises sliced splits.)
    split = 'train[:1000]' if name == 'mnist5k' else 'train'
  else:
    split = kd.DATASETS[name].eval_split

  def hashes(process_index, process_count):
    source = kd.build_input(
      name,
      split,
      global_batch_size=64,
      train=train,
      seed=0,
      data_dir=mnist_dir,
      augment='none',
      process_index=process_index,
      process_count=process_count,
    )
    batches = _epoch(source)
    assert len(batches) == source.steps_per_epoch
    assert all(len(b['label']) == 64 // process_count for b in batches)
    return _example_hashes(batches)

  def check():
    parts = [hashes(p, 2) for p in range(2)]
    whole = hashes(0, 1)
    assert len(set(parts[0])) == len(parts[0])
    assert not set(parts[0]) & set(parts[1])
    if train:  # Each process drops its own remainder.
      assert len(parts[0]) == len(parts[1]) == len(whole) // 2
      every_example = _example_hashes(
        _epoch(
          kd.build_input(
            name,
            split,
            global_batch_size=64,
            train=False,
            seed=0,
            data_dir=mnist_dir,
            process_index=0,
            process_count=1,
          )
        )
      )
      assert set(parts[0]) | set(parts[1]) <= set(every_example)
    else:  # Evaluation covers the split exactly.
      assert sorted(parts[0] + parts[1]) == sorted(whole)

  if name == 'mnist5k':
    check()
  else:
    with data_testing.mock_dataset(name, {'train': 150, 'test': 100}):
      check()


def test_eval_mask_counts_every_example_once(mnist_dir):
  source = kd.build_input(
    'mnist5k',
    'test',
    global_batch_size=96,
    train=False,
    seed=0,
    data_dir=mnist_dir,
  )
  assert source.steps_per_epoch == 11  # ceil(1000 / 96)
  batches = _epoch(source)
  assert len(batches) == 11
  assert all(b['image'].shape[0] == 96 for b in batches)
  hashes = _example_hashes(batches)
  assert len(hashes) == len(set(hashes)) == 1000
  _, _, labels = _read_split(mnist_dir, 'test')
  real = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(np.sort(real), np.sort(labels))
  padding = batches[-1]['mask'] == 0
  assert padding.sum() == 11 * 96 - 1000
  assert not batches[-1]['image'][padding].any()


# Errors ----------------------------------------------------------------------


def test_unprepared_dataset_error(tmp_path, no_network):
  with pytest.raises(kd.DatasetNotPreparedError) as info:
    kd.build_input(
      'cifar10',
      'train',
      global_batch_size=8,
      train=True,
      seed=0,
      data_dir=str(tmp_path),
      process_index=0,
      process_count=1,
    )
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  assert "'cifar10'" in message and str(tmp_path) in message
  assert f'tfds build cifar10 --data_dir={tmp_path}' in message
  with pytest.raises(kd.DatasetNotPreparedError, match='--manual_dir'):
    kd.build_input(
      'imagenet2012',
      'train',
      global_batch_size=8,
      train=True,
      seed=0,
      data_dir=str(tmp_path),
      process_index=0,
      process_count=1,
    )


def test_argument_errors(mnist_dir):
  with pytest.raises(ValueError, match='multiple of the process count 4'):
    kd.build_input(
      'mnist5k',
      'train',
      global_batch_size=30,
      train=True,
      seed=0,
      data_dir=mnist_dir,
      process_index=0,
      process_count=4,
    )
  with pytest.raises(
    kd.UnknownDatasetError, match=r"Unknown dataset 'cifar1000'.*'synthetic'"
  ):
    kd.build_input(
      'cifar1000', 'train', global_batch_size=8, train=True, seed=0
    )
  with pytest.raises(ValueError, match='no split'):
    kd.build_input(
      'mnist5k',
      'validation',
      global_batch_size=8,
      train=False,
      seed=0,
      data_dir=mnist_dir,
      process_index=0,
      process_count=1,
    )
  with pytest.raises(ValueError, match='fewer than one global batch'):
    kd.build_input(
      'mnist5k',
      'test',
      global_batch_size=2048,
      train=True,
      seed=0,
      data_dir=mnist_dir,
      process_index=0,
      process_count=1,
    )
  source = kd.build_input(
    'mnist5k',
    'test',
    global_batch_size=8,
    train=False,
    seed=0,
    data_dir=mnist_dir,
    process_index=0,
    process_count=1,
  )
  with pytest.raises(ValueError, match='start_step'):
    source.epoch(0, start_step=source.steps_per_epoch + 1)


def _rewrite_record(data_dir, tmp_path, edit):
  """Copies mnist5k to tmp_path and edits record 10 of the test split."""
  copy = tmp_path / 'tfds'
  shutil.copytree(data_dir, copy)
  (path,) = glob.glob(str(copy / 'mnist5k' / '*' / 'mnist5k-test.tfrecord*'))
  data_testing.rewrite_record(path, 10, edit)
  return str(copy)


def _edit_example(**features):
  return functools.partial(data_testing.edit_example, **features)


def _read_all_test(data_dir):
  source = kd.build_input(
    'mnist5k',
    'test',
    global_batch_size=100,
    train=False,
    seed=0,
    data_dir=data_dir,
    process_index=0,
    process_count=1,
  )
  return _epoch(source)


def test_out_of_range_label_raises(mnist_dir, tmp_path):
  data_dir = _rewrite_record(mnist_dir, tmp_path, _edit_example(label=10))
  with pytest.raises(kd.InvalidRecordError, match='label >= num_classes 10'):
    _read_all_test(data_dir)


def test_misshaped_image_raises(mnist_dir, tmp_path):
  wrong = tf.io.encode_png(tf.zeros([30, 28, 1], tf.uint8)).numpy()
  data_dir = _rewrite_record(mnist_dir, tmp_path, _edit_example(image=wrong))
  with pytest.raises(kd.InvalidRecordError, match='image shape differs'):
    _read_all_test(data_dir)


def test_corrupt_record_raises(mnist_dir, tmp_path):
  copy = tmp_path / 'tfds'
  shutil.copytree(mnist_dir, copy)
  (path,) = glob.glob(str(copy / 'mnist5k' / '*' / 'mnist5k-test.tfrecord*'))
  with open(path, 'r+b') as f:  # Garble bytes mid-file: the CRC check fails.
    f.seek(5000)
    garbled = bytes(b ^ 0xFF for b in f.read(64))
    f.seek(5000)
    f.write(garbled)
  with pytest.raises(kd.InvalidRecordError, match='mnist5k/test'):
    _read_all_test(str(copy))


def test_datasets_defaults():
  assert set(kd.DATASETS) == {'cifar10', 'cifar100', 'imagenet2012', 'mnist5k'}
  for name, spec in kd.DATASETS.items():
    assert spec.augment in kd.AUGMENTATIONS, name
    assert len(spec.mean) == len(spec.std) == spec.image_shape[-1]
  assert kd.AUGMENTATIONS['cifar_reflect'].padding_mode == 'reflect'
  assert not kd.AUGMENTATIONS['mnist'].flip
