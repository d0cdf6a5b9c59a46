"""PyTorch reference networks for tests/test_convert.py, written from the
public architectures that the converter's formats name (state-dict names and
shapes as in those definitions, code of our own):

  * torchvision ResNet-18..152 (torchvision/models/resnet.py): conv1, bn1,
    maxpool, layer1..4 of BasicBlock/Bottleneck (stride in the 3x3, projection
    'downsample' = Sequential(conv1x1, BN)), fc Linear.
  * AdderNet (huawei-noah/AdderNet resnet20.py / resnet50.py, adder.py): the
    same ResNets with every conv but the stem an ``adder2d`` (parameter
    'adder', output -sum |x - w| over each patch), and a 1x1 conv classifier
    'fc' (resnet50: with a bias) followed by BatchNorm 'bn2' over the logits.
  * RepDistiller CIFAR ResNets (models/resnet.py ResNet(depth, num_filters)):
    conv1/bn1 stem of num_filters[0], three stages, fc Linear. OFD's
    CIFAR-100/models/ResNet.py has the same state-dict layout (its block-ending
    ReLU moved to the start of the next block is the same function).
  * Wide ResNets (RepDistiller models/wrn.py, OFD CIFAR-100/models/WideResNet.py,
    one state-dict layout): conv1 stem, block1..3.layer.<i> pre-activation
    blocks (bn1, conv1, bn2, conv2, and 'convShortcut' of relu(bn1(x)) when
    the widths differ), final bn1, fc Linear.
"""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class Adder2d(nn.Module):
  """AdderNet layer: y[n, o, i, j] = -sum_{c, u, v} |x_patch - w[o]| (+ b)."""

  def __init__(self, cin, cout, kernel_size, stride=1, padding=0, bias=False):
    super().__init__()
    self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
    self.adder = nn.Parameter(torch.randn(cout, cin, kernel_size, kernel_size))
    self.has_bias = bias
    if bias:
      self.b = nn.Parameter(torch.rand(cout))

  def forward(self, x):
    n, _, h, w = x.shape
    k, s, p = self.kernel_size, self.stride, self.padding
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = F.unfold(x, k, padding=p, stride=s)  # (N, C*k*k, L)
    weights = self.adder.reshape(self.adder.shape[0], -1)  # (O, C*k*k)
    out = -(cols[:, None, :, :] - weights[None, :, :, None]).abs().sum(2)
    out = out.reshape(n, -1, ho, wo)
    if self.has_bias:
      out = out + self.b[None, :, None, None]
    return out


def _conv(adder, cin, cout, k, stride=1):
  if adder:
    return Adder2d(cin, cout, k, stride, (k - 1) // 2)
  return nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)


class Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, width, stride, adder):
    super().__init__()
    self.conv1 = _conv(adder, cin, width, 3, stride)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv(adder, width, width, 3)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = None
    if stride != 1 or cin != width:
      self.downsample = nn.Sequential(
        _conv(adder, cin, width, 1, stride), nn.BatchNorm2d(width)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(out + shortcut)


class Bottle(nn.Module):
  expansion = 4

  def __init__(self, cin, width, stride, adder):
    super().__init__()
    cout = width * 4
    self.conv1 = _conv(adder, cin, width, 1)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv(adder, width, width, 3, stride)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = _conv(adder, width, cout, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(
        _conv(adder, cin, cout, 1, stride), nn.BatchNorm2d(cout)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return F.relu(out + shortcut)


class ResNet(nn.Module):
  """Post-activation ResNet; ``imagenet`` picks the 7x7/2 + maxpool stem.

  ``adder`` makes every conv but the stem an Adder2d and the classifier a 1x1
  conv (with a bias when ``fc_bias``) followed by BN 'bn2', as AdderNet.
  """

  def __init__(
    self,
    block,
    blocks,
    widths,
    stem,
    num_classes,
    *,
    imagenet,
    adder=False,
    fc_bias=False,
  ):
    super().__init__()
    self.imagenet, self.adder = imagenet, adder
    if imagenet:
      self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    else:
      self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    cin = stem
    for i, (n, width) in enumerate(zip(blocks, widths)):
      stage = []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        stage.append(block(cin, width, stride, adder))
        cin = width * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*stage))
    self.num_stages = len(blocks)
    if adder:
      self.fc = nn.Conv2d(cin, num_classes, 1, bias=fc_bias)
      self.bn2 = nn.BatchNorm2d(num_classes)
    else:
      self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if self.imagenet:
      x = F.max_pool2d(x, 3, 2, 1)
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    x = x.mean(dim=(2, 3), keepdim=True)
    if self.adder:
      return self.bn2(self.fc(x)).flatten(1)
    return self.fc(x.flatten(1))


def torchvision_resnet(depth, num_classes):
  blocks = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
  }[depth]
  block = Basic if depth < 50 else Bottle
  return ResNet(
    block, blocks, (64, 128, 256, 512), 64, num_classes, imagenet=True
  )


def addernet_resnet20(num_classes, blocks=3):
  return ResNet(
    Basic,
    (blocks,) * 3,
    (16, 32, 64),
    16,
    num_classes,
    imagenet=False,
    adder=True,
  )


def addernet_resnet50(num_classes):
  return ResNet(
    Bottle,
    (3, 4, 6, 3),
    (64, 128, 256, 512),
    64,
    num_classes,
    imagenet=True,
    adder=True,
    fc_bias=True,
  )


def repdistiller_resnet(depth, num_classes, filters=(16, 16, 32, 64)):
  n = (depth - 2) // 6
  return ResNet(
    Basic, (n,) * 3, filters[1:], filters[0], num_classes, imagenet=False
  )


class WideBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.same_width = cin == cout
    if not self.same_width:
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

  def forward(self, x):
    activated = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
    return out + (x if self.same_width else self.convShortcut(activated))


class WideStage(nn.Module):
  def __init__(self, n, cin, cout, stride):
    super().__init__()
    self.layer = nn.Sequential(
      *[
        WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
        for i in range(n)
      ]
    )

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth, widen_factor, num_classes):
    super().__init__()
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.block1 = WideStage(n, widths[0], widths[1], 1)
    self.block2 = WideStage(n, widths[1], widths[2], 2)
    self.block3 = WideStage(n, widths[2], widths[3], 2)
    self.bn1 = nn.BatchNorm2d(widths[3])
    self.fc = nn.Linear(widths[3], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    x = F.relu(self.bn1(x)).mean(dim=(2, 3))
    return self.fc(x)


def randomize(net, images, seed=0):
  """Random weights and non-trivial BN statistics, in place; returns net.eval().

  Affine BN parameters are random; each BN's running statistics are the
  statistics of ``images`` flowing through the net (so activations stay in a
  useful range, also after adders), then perturbed: mean shifted by 0.3 std,
  variance scaled by exp(N(0, 0.3^2)). Linear/conv biases are random.
  """
  generator = torch.Generator().manual_seed(seed)

  def normal(shape, std=1.0):
    return torch.randn(shape, generator=generator) * std

  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.copy_(
          0.5 + torch.rand(module.weight.shape, generator=generator)
        )
        module.bias.copy_(normal(module.bias.shape, 0.2))
        module.momentum = 1.0  # The running stats become this batch's.
      elif isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(normal(module.weight.shape, (2.0 / fan_in) ** 0.5))
        if module.bias is not None:
          module.bias.copy_(normal(module.bias.shape, 0.5))
      elif isinstance(module, Adder2d):
        module.adder.copy_(normal(module.adder.shape))
        if module.has_bias:
          module.b.copy_(normal(module.b.shape))
    net.train()
    net(images)
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        std = module.running_var.sqrt()
        module.running_mean.add_(0.3 * std * normal(std.shape))
        module.running_var.mul_(torch.exp(normal(std.shape, 0.3)))
        module.momentum = 0.1
        module.num_batches_tracked.fill_(1234)
  return net.eval()


def random_images(shape, seed=0):
  """N(0, 1) float32 images as a torch tensor (NCHW)."""
  return torch.from_numpy(
    np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  )


def assert_close_relative(actual, expected, rtol=1e-4):
  """max |actual - expected| <= rtol * max |expected|, on non-trivial outputs."""
  expected = np.asarray(expected)
  scale = np.max(np.abs(expected))
  # Logits that differ between images: a constant output would hide errors.
  assert np.mean(np.std(expected, axis=0)) > 1e-3 * scale
  assert np.max(np.abs(np.asarray(actual) - expected)) <= rtol * scale
