"""A converted PyTorch teacher scores, in kdjax runs (KD, OFD, --mode=eval),
the accuracy the PyTorch network has on the same eval images."""

import os

import numpy as np
import pytest
import torch

import tfds_mocks
import torch_reference_models as ref
from kdjax import config_defaults, convert
from kdjax.convert import layouts
from kdjax.data import specs
from kdjax.train import checkpointing, train
from helpers import REPO, convert_repdistiller_resnet8


def _tiny_config(method):
  """configs/<method>.py:demo shrunk to 2 steps of batch 8 on mock CIFAR-10."""
  module = config_defaults.load_config_module(
    os.path.join(REPO, 'configs', f'{method}.py')
  )
  config = module.get_config('demo')
  config_defaults.set_dataset(config, 'cifar10')
  config.batch_size = 8
  config.eval_batch_size = 8
  config.max_steps = 2
  config.num_devices = 1
  config.log_every_steps = 1000
  config.eval_bn_recalibration_batches = 0
  config.model = config_defaults.model('resnet8', 'conv')
  return config


def _eval_split(config):
  """(images NCHW, labels, mask) of the eval split as kdjax reads it."""
  from kdjax import data as kd_data  # pylint: disable=g-import-not-at-top

  source = kd_data.build_input(
    config.dataset.name,
    config.dataset.eval_split,
    global_batch_size=config.eval_batch_size,
    train=False,
    seed=config.seed,
  )
  batches = list(source.epoch(0))
  images = np.concatenate([np.asarray(b['image']) for b in batches])
  return (
    torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
    np.concatenate([np.asarray(b['label']) for b in batches]),
    np.concatenate([np.asarray(b['mask']) for b in batches]) > 0,
  )


def test_converted_teacher_drives_kd_ofd_and_eval(tmp_path, capsys):
  teacher_dir = str(tmp_path / 'teacher')
  with tfds_mocks.mock_dataset('cifar10', {'train': 32, 'test': 12}):
    images, labels, mask = _eval_split(_tiny_config('kd'))
    # BN statistics of these images: the net's predictions vary over them.
    net = ref.randomize(ref.repdistiller_resnet(8, 10), images, seed=5)
    # The CLI adapts the stem to kdjax's CIFAR std (RepDistiller trained with
    # other stds): the kdjax teacher then computes net(images * fed / trained).
    trained = np.array(
      layouts.TRAINING_NORMALIZATION['repdistiller']['cifar'][1]
    )
    fed = np.array(specs.DATASETS['cifar10'].std)
    with torch.no_grad():
      scaled = images * torch.tensor(fed / trained).float()[None, :, None, None]
      predicted = net(scaled).argmax(1).numpy()[mask]
    assert len(set(predicted.tolist())) > 1  # Not a constant's accuracy.
    expected = float(np.mean(predicted == labels[mask]))
    path = str(tmp_path / 'r8.pth')
    torch.save({'model': net.state_dict(), 'epoch': 240}, path)
    assert convert_repdistiller_resnet8(path, 10, teacher_dir) == 0
    out = capsys.readouterr().out
    assert f'--config.teacher.checkpoint_dir={teacher_dir}' in out

    for method in ('kd', 'ofd'):
      config = _tiny_config(method)
      config.teacher = config_defaults.model(
        'resnet8', 'conv', checkpoint_dir=teacher_dir
      )
      summary = train.train_and_evaluate(config, str(tmp_path / method))
      assert summary['steps'] == 2
      assert summary['eval_accuracy']['teacher'] == pytest.approx(expected)
    # --mode=eval of the teacher directory itself, as a supervised run.
    result = train.evaluate(_tiny_config('supervised'), teacher_dir)
    assert result['eval_accuracy']['student'] == pytest.approx(expected)

  with pytest.raises(convert.ConversionError, match='already holds'):
    convert.write_teacher(
      teacher_dir,
      {},
      model='resnet8',
      conv_type='conv',
      num_classes=10,
      source={},
    )
  # A teacher of another architecture is refused by the trainer's checks.
  with pytest.raises(checkpointing.CheckpointError, match='trained as'):
    checkpointing.restore_teacher_checkpoint(
      teacher_dir,
      {'model': 'resnet20', 'conv_type': 'conv', 'num_classes': 10},
      None,
      None,
    )
