"""Tests for kdjax.opcount against closed-form counts and the papers' figures."""

import json
import math

import pytest

from kdjax import models, opcount


def cifar_resnet20_macs(size=32, num_classes=100):
  """(stem, body, classifier) MACs of ResNet-20, layer by layer: H*W*K*K*Cin*Cout."""
  stem = size * size * 3 * 3 * 3 * 16
  body, in_channels = 0, 16
  for stage, width in enumerate((16, 32, 64)):
    for block in range(3):
      strides = 2 if stage > 0 and block == 0 else 1
      size = math.ceil(size / strides)
      body += size * size * 3 * 3 * in_channels * width  # conv1
      body += size * size * 3 * 3 * width * width  # conv2
      if strides != 1 or in_channels != width:
        body += size * size * 1 * 1 * in_channels * width  # projection shortcut
      in_channels = width
  return stem, body, 64 * num_classes


def resnet50_macs(stride_in_1x1, size=224, num_classes=1000):
  """(stem, body, classifier) MACs of ResNet-50 at 224 in either layout."""
  size //= 2
  stem = size * size * 7 * 7 * 3 * 64
  size //= 2  # max pool
  body, in_channels = 0, 64
  for stage, (blocks, width) in enumerate(
    zip((3, 4, 6, 3), (64, 128, 256, 512))
  ):
    for block in range(blocks):
      strides = 2 if stage > 0 and block == 0 else 1
      out_size = size // strides
      size_1x1 = out_size if stride_in_1x1 else size
      body += size_1x1**2 * in_channels * width
      body += out_size**2 * 9 * width * width
      body += out_size**2 * width * 4 * width
      if block == 0:
        body += out_size**2 * in_channels * 4 * width
      in_channels, size = 4 * width, out_size
  return stem, body, 2048 * num_classes


def test_resnet20_closed_form():
  stem, body, fc = cifar_resnet20_macs()
  ann = opcount.count_ops(
    models.build_model('resnet20', conv_type='adder', num_classes=100),
    (32, 32, 3),
  )
  assert ann['multiply_accumulates'] == dict(
    conv=stem, dense=fc, adder=body, total=stem + body + fc
  )
  assert ann['multiplications'] == stem + fc
  assert ann['additions'] == stem + fc + 2 * body
  assert ann['multiplications'] < 1e6
  assert 80e6 < ann['additions'] < 83e6  # AdderNet: ~82M
  assert ann['layers'] == dict(conv=1, dense=1, adder=20)
  cnn = opcount.count_ops(
    models.build_model('resnet20', conv_type='conv', num_classes=100),
    (1, 32, 32, 3),
  )
  assert cnn['multiplications'] == cnn['additions'] == stem + body + fc
  assert cnn['multiply_accumulates']['adder'] == 0
  # ResNet-20 with a 100-way classifier: 0.27M weights + BN + classifier bias.
  assert 0.27e6 < cnn['parameters'] < 0.28e6
  assert cnn['energy_pj'] == pytest.approx(
    3.7 * cnn['multiplications'] + 0.9 * cnn['additions']
  )
  assert ann['energy_pj'] < cnn['energy_pj'] / 2


@pytest.mark.parametrize('stride_in_1x1', [True, False])
def test_resnet50_closed_form_and_paper_ranges(stride_in_1x1):
  stem, body, fc = resnet50_macs(stride_in_1x1)
  ann = opcount.count_ops(
    models.build_model(
      'resnet50',
      conv_type='adder',
      num_classes=1000,
      stride_in_1x1=stride_in_1x1,
    ),
    (224, 224, 3),
  )
  cnn = opcount.count_ops(
    models.build_model(
      'resnet50',
      conv_type='conv',
      num_classes=1000,
      stride_in_1x1=stride_in_1x1,
    ),
    (224, 224, 3),
  )
  assert ann['multiplications'] == stem + fc
  assert ann['additions'] == stem + fc + 2 * body
  assert cnn['multiplications'] == cnn['additions'] == stem + body + fc
  assert 0.1e9 <= ann['multiplications'] <= 0.13e9
  assert cnn['parameters'] == 25_557_032  # torchvision's resnet50
  if stride_in_1x1:
    assert 7.55e9 <= ann['additions'] <= 7.75e9  # paper: 7.6-7.7G
    assert 3.8e9 <= cnn['multiplications'] <= 3.95e9  # paper: 3.9G
    assert 'v1' in cnn['layout']
  else:
    assert cnn['multiplications'] == pytest.approx(4.09e9, rel=0.005)
    assert 'torchvision' in cnn['layout']


def test_depthwise_counts_mobilenet():
  cnn = opcount.count_ops(
    models.build_model('mobilenet_v1', num_classes=1000), (224, 224, 3)
  )
  # MobileNet paper, Table 1 / 8: 569M mult-adds, 4.2M parameters.
  assert cnn['multiplications'] == pytest.approx(569e6, rel=0.005)
  assert cnn['parameters'] == pytest.approx(4.23e6, rel=0.005)
  ann = opcount.count_ops(
    models.build_model('mobilenet_v1', conv_type='adder', num_classes=1000),
    (224, 224, 3),
  )
  stem_and_fc = 112 * 112 * 27 * 32 + 1024 * 1000
  assert ann['multiplications'] == stem_and_fc
  assert ann['additions'] == 2 * cnn['additions'] - stem_and_fc


def test_cli_prints_json(capsys):
  opcount.main(
    ['--model=resnet20', '--conv=adder', '--image-size=32', '--num-classes=100']
  )
  result = json.loads(capsys.readouterr().out)
  for key in (
    'multiplications',
    'additions',
    'multiply_accumulates',
    'parameters',
    'energy_pj',
    'layout',
    'convention',
  ):
    assert key in result
  assert result['model'] == 'resnet20' and result['conv_type'] == 'adder'
  assert 'BatchNorm' in result['convention']
  stem, body, fc = cifar_resnet20_macs()
  assert result['additions'] == stem + fc + 2 * body


def test_cli_rejects_bad_arguments(capsys):
  with pytest.raises(SystemExit):
    opcount.main(['--model=resnet21'])
  assert 'valid choices' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    opcount.main(['--model=resnet20', '--stride-in-1x1'])
  with pytest.raises(SystemExit):
    opcount.main(['--model=resnet50', '--image-size=16'])
  assert 'at least 32' in capsys.readouterr().err
