"""Distilling on data kdjax does not build in: any tfds name, an image folder.

Fixtures: tests/fixtures/tfds/fashion_mnist (tfds metadata of a dataset that
is not built in, served with random records by tfds_mocks.mock_dataset) and
image folders of PNGs written here. Class k's images are filled with the value
40 * k (plus noise), so a label can be checked against its image.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kdjax import config_defaults
import kdjax.data as kd
from kdjax.data import custom
import cli_in_one_process
import tfds_mocks

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
FASHION = {'train': 32, 'test': 12}
CLASSES = ('cat', 'dog', 'emu')  # Written in this order, sorted already.


def write_folder(root, splits=(('train', 8), ('test', 3)), size=16, mode='RGB'):
  """An ImageFolder of PNGs: root/<split>/<class>/<i>.png; returns root."""
  rng = np.random.default_rng(0)
  channels = 3 if mode == 'RGB' else 1
  for split, count in splits:
    for k, name in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        pixels = 40 * k + rng.integers(0, 8, (size, size, channels))
        Image.fromarray(pixels.astype(np.uint8).squeeze(), mode).save(
          os.path.join(root, split, name, f'{i}.png')
        )
  return str(root)


def config(**dataset):
  c = config_defaults.base_config('supervised')
  c.batch_size = 8
  for key, value in dataset.items():
    c.dataset[key] = value
  return c


def build(c, process_index=0, process_count=1):
  return kd.build_inputs(
    c, process_index=process_index, process_count=process_count
  )


# Config checks ---------------------------------------------------------------


def test_config_check_needs_no_tensorflow():
  """A name that is not built in passes the fast check; TF stays unimported."""
  script = (
    'import sys\n'
    'from kdjax import config_defaults\n'
    'import kdjax.data as kd\n'
    "c = config_defaults.base_config('supervised')\n"
    "for name in ('fashion_mnist', 'imagenette/320px-v2', 'synthetic'):\n"
    '  c.dataset.name = name\n'
    '  kd.check_config(c)\n'
    "c.dataset.name = 'CIFAR-10'\n"
    'try:\n'
    '  kd.check_config(c)\n'
    'except ValueError as e:\n'
    '  print(e)\n'
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'\n"
  )
  process = subprocess.run(
    [sys.executable, '-c', script],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  message = process.stdout
  assert message.startswith("Unknown dataset 'CIFAR-10'.")
  for name in ('cifar10', 'cifar100', 'imagenet2012', 'mnist5k', 'synthetic'):
    assert repr(name) in message
  assert 'any tfds dataset name' in message
  assert 'dataset.image_folder' in message


def test_unknown_name_fails_at_the_builder_with_every_accepted_name(tmp_path):
  with pytest.raises(kd.UnknownDatasetError) as info:
    build(config(name='cifar1000', data_dir=str(tmp_path)))
  message = str(info.value)
  assert message.startswith(
    "Unknown dataset 'cifar1000'. Did you mean 'cifar100'"
  )
  assert "'synthetic'" in message and 'any tfds dataset name' in message
  assert '\n' not in message  # One paragraph, not tfds' list of 1,000 names.


def test_mnist_advice_leads_somewhere(tmp_path):
  """The numpy loader's refusal names a loader that does read 'mnist'."""
  c = config(name='mnist', data_dir=str(tmp_path))
  c.data.loader = 'numpy'
  with pytest.raises(ValueError, match='only serves') as info:
    kd.check_config(c)
  assert '--config.data.loader=tfds' in str(info.value)
  c.data.loader = 'tfds'
  kd.check_config(c)  # Accepted: 'mnist' is a tfds dataset ...
  # ... which has to be prepared first, and the error says how.
  with pytest.raises(kd.DatasetNotPreparedError, match='tfds build mnist'):
    build(c)


@pytest.mark.parametrize(
  'dataset, message',
  [
    (dict(image_folder='/no/such/dir'), 'is not a directory'),
    (dict(mean=(0.5,)), 'both dataset.mean and dataset.std'),
    (dict(name='synthetic', image_folder='.'), 'exclude each other'),
  ],
)
def test_config_errors(dataset, message):
  with pytest.raises(ValueError, match=message):
    kd.check_config(config(**dataset))


# Any tfds dataset ------------------------------------------------------------


def test_tfds_dataset_spec_from_info_and_recorded_statistics():
  with tfds_mocks.mock_dataset('fashion_mnist', FASHION) as data_dir:
    train, evaluation = build(config(name='fashion_mnist'))
    assert (train.num_classes, train.image_shape) == (10, (28, 28, 1))
    assert (train.split, evaluation.split) == ('train', 'test')
    assert (train.num_examples, evaluation.num_examples) == (32, 12)
    assert train.augment == kd.AUGMENTATIONS['cifar']
    # Mock pixels are uniform in [0, 255].
    mean, std = train.normalization['mean'], train.normalization['std']
    assert abs(mean[0] - 0.5) < 0.05 and abs(std[0] - 0.29) < 0.05
    path = os.path.join(data_dir, 'fashion_mnist', '3.0.1', custom.STATS_FILE)
    assert path in train.normalization['from']
    with open(path) as f:
      recorded = json.load(f)['image train']
    assert recorded['mean'] == mean and recorded['examples'] == 32
    # Once: the next build reads the file.
    with open(path, 'w') as f:
      json.dump({'image train': {'mean': [0.25], 'std': [0.5]}}, f)
    again, _ = build(config(name='fashion_mnist'))
    assert again.normalization['mean'] == [0.25]
    batches = list(evaluation.epoch(0))
    assert batches[0]['image'].shape == (8, 28, 28, 1)
    assert batches[-1]['mask'].sum() == 4

    # Every field from the info can be overridden.
    c = config(
      name='fashion_mnist',
      image_size=32,
      num_classes=12,
      mean=(0.5,),
      std=(0.25,),
      eval_split='train[:8]',
    )
    train, evaluation = build(c)
    assert (train.num_classes, train.image_shape) == (12, (32, 32, 1))
    assert train.normalization['from'].startswith('the config')
    assert evaluation.num_examples == 8
    image = next(evaluation.epoch(0))['image']
    assert abs(image.mean() - (0.5 - 0.5) / 0.25) < 0.3


# Image folders ---------------------------------------------------------------


def test_image_folder_classes_labels_and_shares(tmp_path):
  folder = write_folder(tmp_path / 'pets')
  c = config(image_folder=folder, augment='none', mean=(0, 0, 0), std=(1,) * 3)
  train, evaluation = build(c)
  assert train.num_classes == 3 and train.image_shape == (16, 16, 3)
  assert train.name == 'image_folder:pets'
  assert (train.num_examples, evaluation.num_examples) == (24, 9)
  for source in (train, evaluation):
    for batch in source.epoch(0):
      real = batch['mask'] > 0
      # Class k is the folder sorted k-th: its pixels are 40 * k + [0, 8).
      level = batch['image'][real].mean(axis=(1, 2, 3)) * 255
      np.testing.assert_array_equal(np.floor(level / 40), batch['label'][real])
  # Two processes read disjoint halves (split slices work on a folder).
  seen = []
  for index in range(2):
    _, part = build(c, process_index=index, process_count=2)
    seen.append(
      {
        bytes(image)
        for batch in part.epoch(0)
        for image, mask in zip(batch['image'], batch['mask'])
        if mask
      }
    )
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 9


def test_image_folder_statistics_and_split_fallback(tmp_path):
  folder = write_folder(
    tmp_path / 'gray', (('train', 4), ('validation', 2)), size=12, mode='L'
  )
  train, evaluation = build(config(image_folder=folder))
  assert evaluation.split == 'validation'  # No 'test': the default falls back.
  assert train.image_shape == (12, 12, 3)  # tfds's ImageFolder decodes RGB.
  # Levels 0, 40, 80 + [0, 8): mean (40 + 3.5) / 255.
  mean = np.array(train.normalization['mean'])
  np.testing.assert_allclose(mean, 43.5 / 255, atol=1e-3)
  assert os.path.exists(os.path.join(folder, custom.STATS_FILE))

  one = write_folder(tmp_path / 'one', (('train', 4),))
  with pytest.raises(ValueError) as info:
    build(config(image_folder=one))
  assert "--config.dataset.eval_split='train[90%:]'" in str(info.value)
  train, evaluation = build(
    config(
      image_folder=one, train_split='train[:75%]', eval_split='train[75%:]'
    )
  )
  assert (train.num_examples, evaluation.num_examples) == (9, 3)

  empty = tmp_path / 'empty'
  (empty / 'train').mkdir(parents=True)
  with pytest.raises(ValueError, match='has no images in the layout'):
    build(config(image_folder=str(empty)))


# End to end, through the command line ----------------------------------------

_TINY = [
  '--config.batch_size=8',
  '--config.eval_batch_size=8',
  '--config.num_devices=1',
  '--config.log_every_steps=1000',
  '--config.eval_bn_recalibration_batches=0',
  '--config.model.name=resnet8',
]


def _cli(args):
  result = cli_in_one_process.run_case(args)
  assert result['returncode'] == 0, result['stderr'][-3000:]
  return result


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def test_supervised_run_on_a_tfds_dataset(tmp_path):
  workdir = str(tmp_path / 'run')
  with tfds_mocks.mock_dataset('fashion_mnist', FASHION):
    _cli(
      [
        '--config=configs/supervised.py:demo',
        f'--workdir={workdir}',
        '--config.dataset.name=fashion_mnist',
        '--config.max_steps=2',
        *_TINY,
      ]
    )
  summary = _summary(workdir)
  assert summary['steps'] == 2
  # 12 eval examples: an accuracy of k / 12.
  assert round(summary['eval_accuracy']['student'] * 12, 4) % 1 == 0


def test_kd_run_on_an_image_folder(tmp_path):
  """configs/kd.py's demo, its teacher pretrained in-process, on a folder."""
  folder = write_folder(tmp_path / 'pets')
  workdir = str(tmp_path / 'run')
  _cli(
    [
      '--config=configs/kd.py:demo',
      f'--workdir={workdir}',
      f'--config.dataset.image_folder={folder}',
      '--config.max_steps=2',
      '--config.teacher.name=resnet8',
      '--config.teacher.pretrain_epochs=1',
      *_TINY,
    ]
  )
  summary = _summary(workdir)
  assert summary['steps'] == 2 and summary['method'] == 'kd'
  # The statistics computed from the folder's train split, as recorded.
  assert len(summary['normalization']['mean']) == 3
  assert round(summary['eval_accuracy']['student'] * 9, 4) % 1 == 0
