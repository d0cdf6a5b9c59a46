"""Contrastive representation distillation (CRD; Tian et al., ICLR 2020).

RepDistiller's ``--distill crd`` (train_student.py, crd/criterion.py,
crd/memory.py) with one frozen teacher (eval mode, under stop_gradient):

    L = ce_weight * CE + kd_weight * KD(T) + weight * CRD

CRD = NCE(P^s) + NCE(P^t) (``kdjax.losses.crd_loss``) on the pooled
penultimate features (RepDistiller's feat[-1]) through two trainable heads,
``connectors.NormalizedEmbed`` (linear + L2 normalisation), one per side;
both train with the student's optimizer under ``params['student']['crd']``
(the teacher-side head learns from the loss, as in RepDistiller).

The memory bank (the ``CRDMemory`` tables of the student's and the teacher's
running embeddings, one row per training example, and the two normalisation
constants Z) lives in the training state, ``batch_stats['student']
['crd_memory']``: ``loss`` returns it updated for the batch's rows
(``batch['index']``) with the no-grad momentum update, so orbax checkpoints
and restores it with the rest of the state. Its leaves are not named
'mean'/'var', so precise-BN passes them through. The K negatives of each
example are ``crd_sample_indices(rng, batch['index'], N, K)`` with the
step's rng: uniform over the N rows, with replacement (RepDistiller's CIFAR
loader draws them from the other classes only; docs/baselines.md).

Several frozen teachers (``config.teachers``): one CRD term per teacher,
summed, each with its own teacher-side head, student-side head and memory
bank (``params['student']['crd_teacher<i>']``, ``batch_stats['student']
['crd_memory_teacher<i>']``), as the ``sum_losses`` of the distill method;
the KD term combines them as ``crd.multi_teacher`` says ('mean_targets':
the mean softened prediction; 'sum_losses': one KD term per teacher).
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses
from kdjax.errors import ConfigError
from kdjax.methods import base
from kdjax.losses import crd as crd_losses
from kdjax.models import connectors

# config.crd's keys and defaults: RepDistiller's CIFAR-100 setting
# (-r 1 -a 0 -b 0.8, --kd_T 4, --feat_dim 128, --nce_k 16384, --nce_t 0.07,
# --nce_m 0.5).
DEFAULTS: Dict[str, Any] = dict(
  ce_weight=1.0,
  kd_weight=0.0,
  kd_temperature=4.0,
  weight=0.8,
  feat_dim=128,
  num_negatives=crd_losses.DEFAULT_CRD_NEGATIVES,
  temperature=crd_losses.DEFAULT_CRD_TEMPERATURE,
  momentum=crd_losses.DEFAULT_CRD_MOMENTUM,
  multi_teacher='mean_targets',
)
# The bank's leaves in batch_stats['student']['crd_memory'] (CRDMemory's
# fields; none is 'mean' or 'var').
MEMORY_KEY = 'crd_memory'


def default_section(**overrides) -> ml_collections.ConfigDict:
  """``config.crd`` with RepDistiller's CIFAR-100 defaults, then ``overrides``."""
  section = ml_collections.ConfigDict(dict(DEFAULTS))
  section.update(overrides)
  return section


def _options(config) -> Dict[str, Any]:
  options = dict(DEFAULTS)
  options.update(dict(config.get('crd', None) or {}))
  return options


def _is_number(value, minimum, *, strict):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  return value > minimum if strict else value >= minimum


class CRD(base.FrozenTeachers):
  """gamma CE + alpha KD + beta CRD from frozen teachers (module docstring)."""

  method_name = 'crd'

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    if config.get('crd', None) is None:
      raise ConfigError(
        "method 'crd' needs config.crd (configs/crd.py builds it)."
      )
    options = _options(config)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
      raise ConfigError(
        f'--config.crd: unknown option(s) {unknown}; crd takes '
        f'{sorted(DEFAULTS)} (docs/baselines.md).'
      )
    for key in ('ce_weight', 'kd_weight', 'weight'):
      if not _is_number(options[key], 0, strict=False):
        raise ConfigError(
          f'--config.crd.{key}={options[key]!r}: must be a number >= 0.'
        )
    for key in ('kd_temperature', 'temperature'):
      if not _is_number(options[key], 0, strict=True):
        raise ConfigError(
          f'--config.crd.{key}={options[key]!r}: must be a number > 0.'
        )
    for key in ('feat_dim', 'num_negatives'):
      value = options[key]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
          f'--config.crd.{key}={value!r}: must be a positive integer.'
        )
    base.check_multi_teacher('crd', options['multi_teacher'])
    momentum = options['momentum']
    if not _is_number(momentum, 0, strict=False) or momentum >= 1:
      raise ConfigError(
        f'--config.crd.momentum={momentum!r}: must be in [0, 1) (the '
        "bank's share kept at each update; RepDistiller's --nce_m 0.5)."
      )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.options = _options(config)
    num_data = self.num_train_examples
    if num_data is None:
      raise ConfigError(
        "method 'crd' needs the number of training examples for its memory "
        'bank (one row per example): build it with '
        'build_method(..., num_train_examples=N), as the trainer does.'
      )
    negatives = self.options['num_negatives']
    if negatives >= num_data:
      raise ConfigError(
        f'--config.crd.num_negatives={negatives} must be below the '
        f"{num_data} training examples (the memory bank's rows); "
        "RepDistiller's 16384 is for CIFAR's 50,000. Lower it, e.g. "
        f'--config.crd.num_negatives={max(1, num_data // 4)}.'
      )
    self.embed = connectors.NormalizedEmbed(int(self.options['feat_dim']))

  def keys(self, teacher: int):
    """(heads key, bank key) of teacher ``teacher`` under params['student']
    and batch_stats['student']."""
    if len(self.teachers) == 1:
      return 'crd', MEMORY_KEY
    return f'crd_teacher{teacher}', f'{MEMORY_KEY}_teacher{teacher}'

  def init(self, rng, images):
    model_rng, *rngs = jax.random.split(rng, 1 + 3 * len(self.teachers))
    params, batch_stats = base.init_model(self.student, model_rng, images)
    student, stats = {'model': params}, {'model': batch_stats}
    # Shapes only: the teachers' weights are not known yet.
    s_pooled = self.abstract_outputs(self.student)[1]['pooled']
    for i, teacher in enumerate(self.teachers):
      s_rng, t_rng, memory_rng = rngs[3 * i : 3 * i + 3]
      t_pooled = self.abstract_outputs(teacher)[1]['pooled']
      heads_key, memory_key = self.keys(i)
      student[heads_key] = {
        'student_embed': base.init_module(
          self.embed, s_rng, jnp.zeros(s_pooled.shape, s_pooled.dtype)
        )[0],
        'teacher_embed': base.init_module(
          self.embed, t_rng, jnp.zeros(t_pooled.shape, t_pooled.dtype)
        )[0],
      }
      stats[memory_key] = losses.crd_memory_init(
        memory_rng, self.num_train_examples, int(self.options['feat_dim'])
      )._asdict()
    return {'student': student}, {'student': stats}

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step
    o = self.options
    images, labels = batch['image'], batch['label']
    s_logits, s_feats, s_stats = self.student_logits(
      params, batch_stats, images, True
    )
    teachers = self.teacher_outputs(frozen, images)
    smoothing = self.config.get('loss', {}).get('label_smoothing', 0.0)
    ce = losses.cross_entropy(s_logits, labels, label_smoothing=smoothing)
    # The same negatives for every teacher's bank (one draw a step).
    contrast = losses.crd_sample_indices(
      rng, batch['index'], self.num_train_examples, o['num_negatives']
    )
    new_stats = {'model': s_stats}
    crd = jnp.zeros((), jnp.float32)
    for i, (_, t_feats) in enumerate(teachers):
      heads_key, memory_key = self.keys(i)
      heads = params['student'][heads_key]
      es = self.embed.apply(
        {'params': heads['student_embed']}, s_feats['pooled']
      )
      et = self.embed.apply(
        {'params': heads['teacher_embed']}, t_feats['pooled']
      )
      value, memory = losses.crd_loss(
        es,
        et,
        losses.CRDMemory(**batch_stats['student'][memory_key]),
        batch['index'],
        contrast,
        temperature=o['temperature'],
        momentum=o['momentum'],
      )
      crd = crd + value
      new_stats[memory_key] = memory._asdict()
    total = o['ce_weight'] * ce + o['weight'] * crd
    metrics = {'loss/ce': ce, 'loss/crd': crd}
    if o['kd_weight'] > 0:
      kd = base.multi_teacher_kd_loss(
        s_logits,
        [z for z, _ in teachers],
        o['kd_temperature'],
        o['multi_teacher'],
      )
      total = total + o['kd_weight'] * kd
      metrics['loss/kd'] = kd
    metrics['train_accuracy/student'] = base.accuracy(s_logits, labels)
    return total, ({'student': new_stats}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    teachers = [z for z, _ in self.teacher_outputs(frozen, images)]
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      **base.teacher_heads(teachers),
    }
