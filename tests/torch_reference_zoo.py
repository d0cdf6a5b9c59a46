"""PyTorch reference networks of the benchmark zoo, for tests/test_*_zoo.py.

Written from the public architectures (state-dict names and shapes as in
those definitions, code of our own; tests/torch_reference_models.py has the
ResNets and WRNs and ``randomize``):

  * RepDistiller models/vgg.py ``vgg*_bn``: block0..4 Sequentials of
    Conv2d(bias) / BN / ReLU (the last ReLU dropped), max-pools before
    blocks 1-3 (and 4 for 64-pixel inputs), global average, 'classifier'.
  * RepDistiller models/mobilenetv2.py ``mobile_half`` (T = 6, width 0.5):
    conv1 Sequential, blocks[g][j].conv Sequential of 8 modules, conv2
    Sequential, classifier Sequential(Linear).
  * RepDistiller ShuffleNetv1.py / ShuffleNetv2.py (ShuffleV1, ShuffleV2).
  * RepDistiller resnetv2.py ``ResNet50``: CIFAR stem, 'shortcut' Sequential,
    'linear'.
  * OFD CIFAR-100/models/PyramidNet.py and ImageNet/models/MobileNet.py.
  * VGG-small (LQ-Nets / IR-Net): conv0..5 without bias, bn0..5, 'fc' on the
    flattened 4x4x512 map (parameter count only).

Each net records, in ``self.preact`` during forward, the features RepDistiller
returns with ``is_feat=True, preact=True`` (OFD's ``extract_feature(preReLU=
True)`` for its nets), from the first pre-ReLU stage on, and names the BNs of
``get_bn_before_relu`` in ``bn_before_relu()``. Final pools are global means:
the references' fixed-size pools are global at 32x32.
"""

import torch
from torch import nn
import torch.nn.functional as F


def _cbr(cin, cout, k, stride=1, groups=1, relu=True, bias=False):
  mods = [
    nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=bias),
    nn.BatchNorm2d(cout),
  ]
  return mods + [nn.ReLU()] if relu else mods


def _shuffle(x, groups):
  n, c, h, w = x.shape
  return (
    x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
  )


class RepVGG(nn.Module):
  """RepDistiller's vgg{8,11,13,16,19}_bn."""

  WIDTHS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
  }

  def __init__(self, depth, num_classes):
    super().__init__()
    cin = 3
    for b, widths in enumerate(self.WIDTHS[depth]):
      mods = []
      for width in widths:
        mods += _cbr(cin, width, 3, bias=True)
        cin = width
      setattr(self, f'block{b}', nn.Sequential(*mods[:-1]))
    self.classifier = nn.Linear(512, num_classes)

  def bn_before_relu(self):
    return [getattr(self, f'block{b}')[-1] for b in (1, 2, 3, 4)]

  def forward(self, x):
    height, self.preact = x.shape[2], []
    for b in range(5):
      if b in (1, 2, 3) or (b == 4 and height == 64):
        x = F.max_pool2d(x, 2)
      x = getattr(self, f'block{b}')(x)
      if b:
        self.preact.append(x)
      x = F.relu(x)
    return self.classifier(x.mean((2, 3)))


class VGGSmall(nn.Module):
  """VGG-small: 128, 128, M, 256, 256, M, 512, 512, M, flattened into fc."""

  def __init__(self, num_classes, image_size=32):
    super().__init__()
    widths = [3, 128, 128, 256, 256, 512, 512]
    for i in range(6):
      setattr(
        self,
        f'conv{i}',
        nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False),
      )
      setattr(self, f'bn{i}', nn.BatchNorm2d(widths[i + 1]))
    self.fc = nn.Linear(512 * (image_size // 8) ** 2, num_classes)

  def forward(self, x):
    for i in range(6):
      x = getattr(self, f'conv{i}')(x)
      if i % 2:
        x = F.max_pool2d(x, 2)
      x = F.relu(getattr(self, f'bn{i}')(x))
    return self.fc(x.flatten(1))


class _InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = cin * t
    self.use_res = stride == 1 and cin == cout
    self.conv = nn.Sequential(
      *_cbr(cin, hidden, 1),
      *_cbr(hidden, hidden, 3, stride, groups=hidden),
      *_cbr(hidden, cout, 1, relu=False),
    )

  def forward(self, x):
    return x + self.conv(x) if self.use_res else self.conv(x)


class MobileHalf(nn.Module):
  """RepDistiller's mobile_half: MobileNetV2 with T = 6, width 0.5."""

  SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
  ]

  def __init__(self, num_classes, width=0.5):
    super().__init__()
    cin = int(32 * width)
    self.conv1 = nn.Sequential(*_cbr(3, cin, 3, 2))
    self.blocks = nn.ModuleList()
    for t, c, n, s in self.SETTINGS:
      cout, group = int(c * width), []
      for j in range(n):
        group.append(_InvertedResidual(cin, cout, s if j == 0 else 1, t))
        cin = cout
      self.blocks.append(nn.Sequential(*group))
    self.conv2 = nn.Sequential(*_cbr(cin, 1280, 1))
    self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

  def bn_before_relu(self):
    return [self.blocks[g][-1].conv[-1] for g in (1, 2, 4, 6)]

  def forward(self, x):
    x, self.preact = self.conv1(x), []
    for g, group in enumerate(self.blocks):
      x = group(x)
      if g in (1, 2, 4, 6):
        self.preact.append(x)
    x = self.conv2(x).mean((2, 3))
    return self.classifier(x)


class _ShuffleV1Unit(nn.Module):
  def __init__(self, cin, cout, stride, groups):
    super().__init__()
    mid, self.stride = cout // 4, stride
    self.g1 = 1 if cin == 24 else groups
    self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)

  def forward(self, x):
    y = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
    y = self.bn3(self.conv3(self.bn2(self.conv2(y))))
    if self.stride == 2:
      return torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1)
    return y + x


class ShuffleV1(nn.Module):
  def __init__(self, num_classes, widths=(240, 480, 960), blocks=(4, 8, 4)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for i, (width, n) in enumerate(zip(widths, blocks)):
      units = []
      for j in range(n):
        units.append(
          _ShuffleV1Unit(
            cin, width - (cin if j == 0 else 0), 2 if j == 0 else 1, 3
          )
        )
        cin = width
      setattr(self, f'layer{i + 1}', nn.Sequential(*units))
    self.linear = nn.Linear(cin, num_classes)

  def bn_before_relu(self):
    return [getattr(self, f'layer{i}')[-1].bn3 for i in (1, 2, 3)]

  def forward(self, x):
    x, self.preact = F.relu(self.bn1(self.conv1(x))), []
    for i in (1, 2, 3):
      for unit in getattr(self, f'layer{i}'):
        x = unit(x)
        pre, x = x, F.relu(x)
      self.preact.append(pre)
    return self.linear(x.mean((2, 3)))


class _ShuffleV2Down(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    mid = cout // 2
    self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = F.relu(self.bn3(self.conv3(x)))
    right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
    return _shuffle(torch.cat([left, right], 1), 2), None


class _ShuffleV2Basic(nn.Module):
  def __init__(self, channels):
    super().__init__()
    c = channels // 2
    self.conv1 = nn.Conv2d(c, c, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = nn.Conv2d(c, c, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    c = x.shape[1] // 2
    kept, y = x[:, :c], x[:, c:]
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(y)))))
    pre = self.bn3(self.conv3(y))
    out = _shuffle(torch.cat([kept, F.relu(pre)], 1), 2)
    return out, torch.cat([kept, pre], 1)


class ShuffleV2(nn.Module):
  def __init__(self, num_classes, widths=(116, 232, 464), blocks=(3, 7, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for i, (width, n) in enumerate(zip(widths, blocks)):
      units = [_ShuffleV2Down(cin, width)]
      units += [_ShuffleV2Basic(width) for _ in range(n)]
      setattr(self, f'layer{i + 1}', nn.ModuleList(units))
      cin = width
    self.conv2 = nn.Conv2d(cin, 1024, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(1024)
    self.linear = nn.Linear(1024, num_classes)

  def forward(self, x):
    x, self.preact = F.relu(self.bn1(self.conv1(x))), []
    for i in (1, 2, 3):
      for unit in getattr(self, f'layer{i}'):
        x, pre = unit(x)
      self.preact.append(pre)
    x = F.relu(self.bn2(self.conv2(x)))
    return self.linear(x.mean((2, 3)))


class _CifarBottleneck(nn.Module):
  def __init__(self, cin, planes, stride):
    super().__init__()
    cout = 4 * planes
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
      )

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    return self.bn3(self.conv3(y)) + self.shortcut(x)


class RepResNet50(nn.Module):
  """RepDistiller's resnetv2.ResNet50 (CIFAR stem, no max-pool)."""

  def __init__(self, num_classes, blocks=(3, 4, 6, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
      units = []
      for j in range(n):
        units.append(_CifarBottleneck(cin, planes, 2 if i and not j else 1))
        cin = 4 * planes
      setattr(self, f'layer{i + 1}', nn.Sequential(*units))
    self.linear = nn.Linear(cin, num_classes)

  def bn_before_relu(self):
    return [getattr(self, f'layer{i}')[-1].bn3 for i in (1, 2, 3, 4)]

  def forward(self, x):
    x, self.preact = F.relu(self.bn1(self.conv1(x))), []
    for i in (1, 2, 3, 4):
      for unit in getattr(self, f'layer{i}'):
        pre = unit(x)
        x = F.relu(pre)
      self.preact.append(pre)
    return self.linear(x.mean((2, 3)))


class _PyramidUnit(nn.Module):
  def __init__(self, cin, planes, stride, bottleneck):
    super().__init__()
    self.stride, self.bottleneck = stride, bottleneck
    self.bn1 = nn.BatchNorm2d(cin)
    if bottleneck:
      self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
      self.bn4 = nn.BatchNorm2d(4 * planes)
    else:
      self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes)

  def entry(self, x):
    """OFD's pre-ReLU feature of this (first) unit of a stage."""
    if self.bottleneck:
      return self.bn2(self.conv1(self.bn1(x)))
    return self.bn1(x)

  def forward(self, x):
    y = self.bn2(self.conv1(self.bn1(x)))
    y = self.bn3(self.conv2(F.relu(y)))
    if self.bottleneck:
      y = self.bn4(self.conv3(F.relu(y)))
    shortcut = x
    if self.stride != 1:
      shortcut = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    zeros = y.new_zeros(y.shape[0], y.shape[1] - x.shape[1], *y.shape[2:])
    return y + torch.cat([shortcut, zeros], 1)


class PyramidNet(nn.Module):
  """OFD's CIFAR PyramidNet(depth, alpha, num_classes, bottleneck)."""

  def __init__(self, depth, alpha, num_classes, bottleneck):
    super().__init__()
    n = (depth - 2) // (9 if bottleneck else 6)
    ratio, rate = (4 if bottleneck else 1), alpha / (3 * n)
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    cin, dim = 16, 16
    for i in range(3):
      units = []
      for j in range(n):
        dim += rate
        units.append(
          _PyramidUnit(
            cin, int(round(dim)), 2 if i and not j else 1, bottleneck
          )
        )
        cin = int(round(dim)) * ratio
      setattr(self, f'layer{i + 1}', nn.Sequential(*units))
    self.bn_final = nn.BatchNorm2d(cin)
    self.fc = nn.Linear(cin, num_classes)

  def bn_before_relu(self):
    first = [self.layer2[0], self.layer3[0]]
    bns = [u.bn2 if u.bottleneck else u.bn1 for u in first]
    return bns + [self.bn_final]

  def forward(self, x):
    x = self.bn1(self.conv1(x))
    feats = [self.layer1(x)]
    feats.append(self.layer2(feats[0]))
    feats.append(self.layer3(feats[1]))
    self.preact = [
      self.layer2[0].entry(feats[0]),
      self.layer3[0].entry(feats[1]),
      self.bn_final(feats[2]),
    ]
    return self.fc(F.relu(self.preact[-1]).mean((2, 3)))


class OFDMobileNet(nn.Module):
  """OFD's ImageNet MobileNet (v1): model.0 conv_bn, model.1..13 conv_dw, fc."""

  def __init__(self, num_classes=1000):
    super().__init__()
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    plan += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    mods, cin = [nn.Sequential(*_cbr(3, 32, 3, 2))], 32
    for cout, stride in plan:
      mods.append(
        nn.Sequential(
          *_cbr(cin, cin, 3, stride, groups=cin), *_cbr(cin, cout, 1)
        )
      )
      cin = cout
    self.model = nn.Sequential(*mods)
    self.fc = nn.Linear(1024, num_classes)

  def bn_before_relu(self):
    return [self.model[i][-2] for i in (3, 5, 11, 13)]

  def forward(self, x):
    self.preact = []
    for i, module in enumerate(self.model):
      if i in (3, 5, 11, 13):
        x = module[:-1](x)
        self.preact.append(x)
        x = F.relu(x)
      else:
        x = module(x)
    return self.fc(x.mean((2, 3)))
