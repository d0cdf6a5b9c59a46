"""kdjax: knowledge distillation for image classifiers in JAX/Flax.

Sub-packages:
  ops      adder convolution with its AdderNet backward
  models   CNN / adder model zoo with named features
  losses   distillation losses as pure functions, plus their small connectors
  optim    AdderNet adaptive LR scaling and paper optimizers
  data     tfds input pipelines (CIFAR, ImageNet, embedded MNIST-5k), NumPy loader (MNIST-5k)
  train    the trainer behind ``python -m kdjax.main``
"""

__version__ = '0.1.0'
