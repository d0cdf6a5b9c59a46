"""What every distillation method provides to the trainer.

A method is an immutable object built once from its config. It decides which
networks exist, which of them are trained (parameter groups, each with its own
optimizer), which teachers are frozen, the training loss, and the heads
reported at evaluation. It does no I/O: the trainer restores the frozen
teachers it declares (``frozen_teachers``) and hands their weights to
``prepare_frozen``. Its ``init``, ``loss`` and ``predict`` are pure functions
of arrays, and ``loss`` receives the optimizer step, so a schedule (a ramp, a
warm-up) follows the trainer's step. The trainer owns everything else: mesh,
data, optimizers, checkpoints, the loop.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses, models
from kdjax.errors import ConfigError

PyTree = Any
Metrics = Dict[str, jax.Array]


def run_model(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  images: jax.Array,
  train: bool,
) -> Tuple[jax.Array, Dict[str, Any], PyTree]:
  """Applies a zoo model; returns (logits, features, new batch_stats).

  In train mode BN uses batch statistics and the running averages are updated;
  callers that must not update them (OFD's frozen teacher) drop the third value.
  """
  variables = {'params': params, 'batch_stats': batch_stats}
  if train:
    (logits, features), updates = model.apply(
      variables, images, train=True, mutable=['batch_stats']
    )
    logits, features = _as_float32((logits, features))
    return logits, features, updates['batch_stats']
  logits, features = model.apply(variables, images, train=False)
  logits, features = _as_float32((logits, features))
  return logits, features, batch_stats


def _as_float32(tree):
  # A bfloat16 model computes in bfloat16; every loss reads float32 values.
  return jax.tree.map(
    lambda x: (
      x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
    ),
    tree,
  )


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def init_model(
  model: nn.Module, rng: jax.Array, images: jax.Array
) -> Tuple[PyTree, PyTree]:
  variables = model.init(rng, images, train=False)
  return variables['params'], variables.get('batch_stats', {})


def build_zoo_model(
  model_config: ml_collections.ConfigDict,
  num_classes: int,
  image_shape: Tuple[int, ...],
) -> nn.Module:
  """Builds ``model_config.name`` and checks that ``image_shape`` fits it."""
  kwargs = dict(model_config.get('kwargs', None) or {})
  dtype = model_config.get('dtype', 'float32')
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(
      f'{model_config.name}: dtype={dtype!r}; use one of '
      f'{sorted(COMPUTE_DTYPES)} (activations and conv/adder inputs; '
      'parameters, BN statistics and losses stay float32).'
    )
  model = models.build_model(
    model_config.name,
    conv_type=model_config.get('conv_type', 'conv'),
    num_classes=num_classes,
    dtype=COMPUTE_DTYPES[dtype],
    **kwargs,
  )
  models.check_input_size(model_config.name, tuple(image_shape[:2]), **kwargs)
  return model


def teacher_entries(config: ml_collections.ConfigDict) -> list:
  """The frozen teachers' model entries: config.teachers, or [config.teacher]."""
  teachers = config.get('teachers')
  return list(teachers) if teachers else [config.teacher]


def mean_soft_target_logits(teacher_logits, temperature: float) -> jax.Array:
  """Logits whose softmax at ``temperature`` T is the teachers' mean one:

  z = T log(mean_t softmax(z_t / T))      (one teacher: z_1 itself)
  """
  if len(teacher_logits) == 1:
    return teacher_logits[0]
  probs = jnp.mean(
    jnp.stack([jax.nn.softmax(z / temperature) for z in teacher_logits]), 0
  )
  return temperature * jnp.log(probs)


def frozen_teacher_outputs(models, weights, images) -> list:
  """[(logits, features)] of each frozen teacher, eval mode, under stop_gradient.

  ``weights``: one {'params', 'batch_stats'} per model, as prepare_frozen got.
  """
  out = []
  for model, w in zip(models, weights):
    logits, feats, _ = run_model(
      model, w['params'], w['batch_stats'], images, False
    )
    out.append(jax.lax.stop_gradient((logits, feats)))
  return out


# How several frozen teachers combine (config.<method>.multi_teacher).
MULTI_TEACHER = ('mean_targets', 'sum_losses')


def check_multi_teacher(section: str, mode) -> None:
  """ConfigError unless ``mode`` is one of MULTI_TEACHER."""
  if mode not in MULTI_TEACHER:
    raise ConfigError(
      f'--config.{section}.multi_teacher={mode!r}: use one of {MULTI_TEACHER}.'
    )


def multi_teacher_kd_loss(
  student_logits, teacher_logits, temperature: float, mode: str
) -> jax.Array:
  """Hinton KD from several teachers: from their mean softened prediction
  ('mean_targets') or one term per teacher, summed ('sum_losses')."""
  if mode == 'sum_losses':
    return sum(
      losses.kd_loss(student_logits, z, temperature) for z in teacher_logits
    )
  mean = mean_soft_target_logits(teacher_logits, temperature)
  return losses.kd_loss(student_logits, mean, temperature)


def teacher_heads(teacher_logits) -> Dict[str, jax.Array]:
  """Eval heads: 'teacher' for one teacher, 'teacher0', 'teacher1', ... else."""
  if len(teacher_logits) == 1:
    return {'teacher': teacher_logits[0]}
  return {f'teacher{i}': z for i, z in enumerate(teacher_logits)}


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


class Method(abc.ABC):
  """Base class. Subclasses set ``groups`` and implement the abstract methods."""

  # Trainable parameter groups; each reads its optimizer from
  # ``config.optimizers[group]`` (falling back to ``config.optimizer``).
  groups: Tuple[str, ...] = ('student',)

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    image_shape: Tuple[int, ...],
    steps_per_epoch: int = 1,
    num_train_examples: Optional[int] = None,
  ):
    self.config = config
    self.num_classes = num_classes
    self.image_shape = tuple(image_shape)
    # The step passed to loss() over this gives the (fractional) epoch.
    self.steps_per_epoch = max(int(steps_per_epoch), 1)
    # Examples of the train split over all processes (None: not known); the
    # batches' 'index' lies in [0, num_train_examples) (kdjax.data).
    self.num_train_examples = (
      None if num_train_examples is None else int(num_train_examples)
    )
    self.student = build_zoo_model(config.model, num_classes, self.image_shape)

  def __setattr__(self, name, value):
    # Built once from the config: every submodule exists after __init__, and
    # init / prepare_frozen / loss / predict (traced under jit) change nothing.
    if getattr(self, '_sealed', False):
      raise AttributeError(
        f'{type(self).__name__} is immutable once built; set {name!r} in '
        '__init__ (from the config and abstract shapes).'
      )
    super().__setattr__(name, value)

  def __copy__(self):
    # A copy is the caller's to adjust (tests wrap a method's loss this way);
    # the sealed original is unchanged.
    clone = object.__new__(type(self))
    clone.__dict__.update(
      {k: v for k, v in self.__dict__.items() if k != '_sealed'}
    )
    return clone

  def seal(self) -> 'Method':
    """Forbids attribute changes from now on (build_method calls it)."""
    object.__setattr__(self, '_sealed', True)
    return self

  @classmethod
  def check_config(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for settings this method cannot train with.

    Called once, by kdjax.validation.validate, before any data or model is
    built; a subclass extends it with its own section of the config.
    """
    del config

  @classmethod
  def frozen_teacher_configs(cls, config: ml_collections.ConfigDict) -> list:
    """The model entries of the teachers this method restores, not trains."""
    del config
    return []

  @classmethod
  def init_phase_config(cls, config: ml_collections.ConfigDict):
    """The config of a run that must train first (an initialization phase).

    None: none. The trainer's plan runs it before this one, in its own
    workdir, and this run restores ``warm_start_parts`` from it.
    """
    del config
    return None

  def warm_start_parts(self) -> Tuple[str, ...]:
    """Which subtrees of the initialization run's params['student'] (and
    batch_stats['student']) this run restores, from ``warm_start_dir``; the
    trainer passes them to ``warm_start`` and in ``frozen['init_phase']``."""
    return ()

  def warm_start_dir(self):
    """The finished initialization run's workdir (``warm_start_parts``)."""
    return None

  def warm_start(
    self, params: PyTree, batch_stats: PyTree, frozen: PyTree
  ) -> Tuple[PyTree, PyTree]:
    """The fresh (params, batch_stats) with what the initialization run
    trained put in; called once, when a run starts from scratch."""
    del frozen
    return params, batch_stats

  def trainable_mask(self, params: PyTree):
    """Per group, a pytree of bools over params: False leaves are not updated
    (no gradient step, no weight decay). None: every leaf trains."""
    del params
    return None

  def frozen_teachers(self) -> Tuple[Tuple[nn.Module, Any], ...]:
    """(model, config entry) of each frozen teacher, as frozen_teacher_configs.

    The trainer restores each one's weights and passes them, in this order,
    to ``prepare_frozen``.
    """
    return ()

  def abstract_outputs(self, model: nn.Module):
    """Shapes of model's (logits, features) for one image, computing nothing."""
    images = jax.ShapeDtypeStruct((1,) + self.image_shape, jnp.float32)
    return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0],
      images,
    )

  # -- construction --------------------------------------------------------

  @abc.abstractmethod
  def init(self, rng: jax.Array, images: jax.Array) -> Tuple[PyTree, PyTree]:
    """Trainable (params, batch_stats), each a dict keyed by group."""

  def prepare_frozen(
    self, teacher_weights: Sequence[PyTree], images: jax.Array
  ) -> PyTree:
    """What ``loss`` and ``predict`` receive as ``frozen``.

    Args:
      teacher_weights: one {'params', 'batch_stats'} per ``frozen_teachers``
        entry, restored by the trainer.
      images: a sample batch, for constants computed from a forward pass.

    Returns:
      The frozen teachers and constants derived from them ({} without any).
    """
    del teacher_weights, images
    return {}

  def adder_masks(self, params: PyTree) -> Dict[str, PyTree]:
    """Per group, which leaves are adder kernels (for the AdderNet LR scaling)."""
    images_shape = (1,) + self.image_shape
    student_mask = models.adder_kernel_mask(self.student, images_shape)
    masks = {}
    for group in self.groups:
      group_mask = jax.tree.map(lambda _: False, params[group])
      if group == 'student':
        group_mask['model'] = student_mask
      masks[group] = group_mask
    return masks

  # -- the step ------------------------------------------------------------

  @abc.abstractmethod
  def loss(
    self,
    step: jax.Array,
    params: PyTree,
    batch_stats: PyTree,
    frozen: PyTree,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
  ) -> Tuple[jax.Array, Tuple[PyTree, Metrics]]:
    """Total loss to differentiate, and (new batch_stats, named loss terms).

    ``step`` is the optimizer step this update makes (0-based, an int32 array
    under jit); ``step / self.steps_per_epoch`` is the epoch.
    Gradients of the total w.r.t. each group must be that group's own loss:
    a co-trained teacher gets only its CE, because everything the student
    learns from the teacher is under stop_gradient.
    """

  @abc.abstractmethod
  def predict(
    self, params: PyTree, batch_stats: PyTree, frozen: PyTree, images: jax.Array
  ) -> Dict[str, jax.Array]:
    """Eval-mode logits per reported head, e.g. {'student': ..., 'teacher': ...}."""

  def head_label(self, head: str) -> str:
    """How the console names the eval head `head` (summary keys stay as they are)."""
    return head

  def student_logits(self, params, batch_stats, images, train):
    return run_model(
      self.student,
      params['student']['model'],
      batch_stats['student']['model'],
      images,
      train,
    )


def init_module(
  module: nn.Module, rng: jax.Array, *args, **kwargs
) -> Tuple[PyTree, PyTree]:
  variables = module.init(rng, *args, **kwargs)
  # A module of identities only (AB's connectors between equal maps) has none.
  return variables.get('params', {}), variables.get('batch_stats', {})


def run_module(
  module: nn.Module, params: PyTree, batch_stats: PyTree, *args, train: bool
):
  """Applies a connector module; returns (output, new batch_stats)."""
  variables = {'params': params, 'batch_stats': batch_stats}
  if train:
    out, updates = module.apply(
      variables, *args, train=True, mutable=['batch_stats']
    )
    return out, updates.get('batch_stats', {})
  return module.apply(variables, *args, train=False), batch_stats


class FrozenTeachers(Method):
  """A Method whose teachers are all frozen: ``config.teacher``, or several
  in ``config.teachers`` (kd, distill, crd). Builds them in ``__init__``
  (``self.teachers``; ``self.teacher`` is the first) and gives the trainer
  their entries; ``teacher_outputs`` runs them in eval mode."""

  # How check_config's error names the method.
  method_name = 'this method'

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    if 'teacher' not in config and not config.get('teachers'):
      raise ConfigError(
        f'method {cls.method_name!r} needs config.teacher (the frozen '
        "teacher's entry) or config.teachers (a list of them)."
      )

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.teachers = tuple(
      build_zoo_model(entry, self.num_classes, self.image_shape)
      for entry in teacher_entries(config)
    )
    self.teacher = self.teachers[0]

  @classmethod
  def frozen_teacher_configs(cls, config):
    return teacher_entries(config)

  def frozen_teachers(self):
    return tuple(zip(self.teachers, teacher_entries(self.config)))

  def prepare_frozen(self, teacher_weights, images):
    del images
    return {'teachers': tuple(teacher_weights)}

  def teacher_outputs(self, frozen, images) -> list:
    """[(logits, features)] per teacher, eval mode, under stop_gradient."""
    return frozen_teacher_outputs(self.teachers, frozen['teachers'], images)
