"""CNN / AdderNet model zoo with named distillation features.

Build models by name::

  model = kdjax.models.build_model('resnet20', conv_type='adder', num_classes=100)
  variables = model.init(rng, images, train=False)
  (logits, features), updates = model.apply(variables, images, train=True,
                                            mutable=['batch_stats'])
  logits, features = model.apply(variables, images, train=False)

Families (one definition each; ``available_models()`` lists the names):
  CIFAR ResNet   resnet8/14/20/32/44/56/110, resnet8x4/32x4 (cifar_resnet.py)
  Wide ResNet    wrn16_1/2/4, wrn28_2/4, wrn40_1/2          (wide_resnet.py)
  ImageNet ResNet resnet18/34/50/101/152, ``stride_in_1x1``   (imagenet_resnet.py)
  MobileNet-v1   mobilenet_v1                                (mobilenet.py)
  EKD student    ekd_student: shared stem, K branches        (ekd_student.py)
  VGG            vgg8/11/13/16/19 (RepDistiller, BN), vgg_small  (vgg.py)
  MobileNetV2    mobilenet_v2 (RepDistiller's mobile_half)   (mobilenet_v2.py)
  ShuffleNet     shufflenet_v1/v2 (RepDistiller)             (shufflenet.py)
  CIFAR ResNet-50 resnet50_cifar (RepDistiller's ResNet50)   (imagenet_resnet.py)
  PyramidNet     pyramidnet200_240, pyramidnet110_84 (OFD)   (pyramidnet.py)
docs/models.md lists each with its source, parameter count and feature points.

Every conv is a ``ConvOrAdder`` (layers.py). conv_type='adder' follows
AdderNet (docs/adder.md, "Architecture conventions"): stem conv and classifier
multiplicative, every other conv an N(0, 1) adder followed by BN, a BN over the
bias-free logits ('logit_bn'). conv_type='conv' is the reference CNN. Any input
of at least the model's total stride works (e.g. 28x28x1 MNIST with the CIFAR
ResNets); ``check_input_size`` tells.

Output contract of every model: ``(logits, features)``, ``logits`` (B,
num_classes), ``features`` a dict with exactly these keys:

  'stages': tuple, one dict per distillation stage (CIFAR ResNet, WRN,
      ShuffleNets, PyramidNets, vgg_small: 3; ImageNet and CIFAR ResNet-50:
      4 = layer1..4; MobileNet-v1: 4 = blocks 3, 5, 11, 13; VGG: 4 = blocks
      1..4; MobileNetV2: 4 = groups 2, 3, 5, 7; EKD student: one per shared
      trunk stage, possibly empty; the model files say which points).
      Each dict:
    'preact' (B, H, W, C): the pre-ReLU feature at the OFD position.
        Post-activation ResNets: the stage's last block output before its final
        ReLU, bn(conv) + shortcut. WRN: the next stage's first BN applied to
        the stage output, and the final BN for the last stage. MobileNet: the
        pointwise BN output.
    'bn_scale', 'bn_bias' (C,): scale and bias params of the BN that produces
        'preact' (ResNets: the last BN of the stage's last block, as OFD's
        get_bn_before_relu), for the OFD margins.
    'raw' (B, H, W, C'): pre-BN output of the stage's last conv/adder (PKKD);
        C' = C but for ShuffleNet V2 (C / 2) and PyramidNets, and vgg_small's
        is the map before its max-pool.
    'patch_energy' (B, H, W, 1) float32: ||x_p||^2 of that layer's input
        patches ((B, H, W, C), per output channel, where it is grouped).
    'filter_sq_norm' (C,) float32: ||f_o||^2 of that layer's filters.
  'pooled' (B, D): global-average-pooled penultimate features (vgg_small:
      its flattened last map, the classifier's input).
  EKD student only:
    'branch_logits' (K, B, num_classes), 'branch_pooled' (K, B, D_branch);
    logits = mean over branches; 'pooled' is the (B, K * D_branch)
    concatenation of the branches.

Unused features cost nothing under jit (dead-code elimination).

The learnable distillation modules that train beside a student (OFD/FitNets
connectors, PKKD's rho, EKD's adapters) are in ``connectors.py``.
"""

from kdjax.models import connectors
from kdjax.models.cifar_resnet import CifarResNet
from kdjax.models.connectors import (
  BranchAdapters,
  FeatureConnector,
  KernelTransform,
  StageConnectors,
)
from kdjax.models.ekd_student import EKDStudent
from kdjax.models.imagenet_resnet import ImageNetResNet
from kdjax.models.layers import CONV_TYPES, ConvOrAdder, adder_kernel_mask
from kdjax.models.mobilenet import MobileNetV1
from kdjax.models.mobilenet_v2 import MobileNetV2
from kdjax.models.pyramidnet import PyramidNet
from kdjax.models.registry import (
  available_models,
  build_model,
  check_input_size,
  min_image_size,
  model_spec,
)
from kdjax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kdjax.models.vgg import VGG, VGGSmall
from kdjax.models.wide_resnet import WideResNet

__all__ = [
  'BranchAdapters',
  'CONV_TYPES',
  'CifarResNet',
  'ConvOrAdder',
  'EKDStudent',
  'FeatureConnector',
  'ImageNetResNet',
  'KernelTransform',
  'MobileNetV1',
  'MobileNetV2',
  'PyramidNet',
  'ShuffleNetV1',
  'ShuffleNetV2',
  'StageConnectors',
  'VGG',
  'VGGSmall',
  'WideResNet',
  'adder_kernel_mask',
  'available_models',
  'build_model',
  'check_input_size',
  'connectors',
  'min_image_size',
  'model_spec',
]
