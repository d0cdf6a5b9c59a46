"""Baselines from a frozen teacher: Hinton KD, optionally FitNets and AT (docs/baselines.md)."""

import jax

from kdjax import losses
from kdjax.models import connectors
from kdjax.methods import base


class KnowledgeDistillation(base.Method):
  """(1 - lambda) CE + lambda T^2 KL, plus optional hint (FitNets) and AT terms.

  config.kd: temperature, kd_weight (lambda), fitnet_weight and fitnet_stage
  (the stage whose pre-ReLU output is the hint), at_weight (0 disables;
  1000/2 per position in the paper).
  """

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.hint_stage = config.kd.get('fitnet_stage', -1)
    self.teacher = base.build_zoo_model(
      config.teacher, self.num_classes, self.image_shape
    )
    self.connectors = None
    if self._uses_hint():
      _, teacher_feats = self.abstract_outputs(self.teacher)
      hint = teacher_feats['stages'][self.hint_stage]['preact']
      self.connectors = connectors.StageConnectors('feature', (hint.shape[-1],))

  @classmethod
  def frozen_teacher_configs(cls, config):
    return [config.teacher]

  def _teacher_features(self, frozen, images):
    logits, feats, _ = base.run_model(
      self.teacher,
      frozen['teacher']['params'],
      frozen['teacher']['batch_stats'],
      images,
      False,
    )
    return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(feats)

  def frozen_teachers(self):
    return ((self.teacher, self.config.teacher),)

  def prepare_frozen(self, teacher_weights, images):
    del images
    (teacher,) = teacher_weights
    return {'teacher': teacher}

  def _uses_hint(self):
    return self.config.kd.get('fitnet_weight', 0.0) > 0

  def init(self, rng, images):
    model_rng, connector_rng = jax.random.split(rng)
    params, batch_stats = base.init_model(self.student, model_rng, images)
    student = {'model': params}
    stats = {'model': batch_stats}
    if self.connectors is not None:
      _, student_feats = self.student.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=False
      )
      student['connectors'], stats['connectors'] = base.init_module(
        self.connectors,
        connector_rng,
        (student_feats['stages'][self.hint_stage]['preact'],),
        train=False,
      )
    return {'student': student}, {'student': stats}

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, rng
    cfg = self.config.kd
    images, labels = batch['image'], batch['label']
    logits, feats, new_stats = self.student_logits(
      params, batch_stats, images, True
    )
    teacher_logits, teacher_feats = self._teacher_features(frozen, images)
    total, terms = losses.hinton_kd_total(
      logits,
      teacher_logits,
      labels,
      temperature=cfg.temperature,
      kd_weight=cfg.kd_weight,
    )
    metrics = {'loss/ce': terms['ce'], 'loss/kd': terms['kd']}
    new_batch_stats = {'model': new_stats}
    if self._uses_hint():
      (hint,), new_batch_stats['connectors'] = base.run_module(
        self.connectors,
        params['student']['connectors'],
        batch_stats['student']['connectors'],
        (feats['stages'][self.hint_stage]['preact'],),
        train=True,
      )
      fitnet = losses.fitnet_loss(
        hint, teacher_feats['stages'][self.hint_stage]['preact']
      )
      total = total + cfg.fitnet_weight * fitnet
      metrics['loss/fitnet'] = fitnet
    if cfg.get('at_weight', 0.0) > 0:
      at, _ = losses.attention_transfer_total(
        [s['preact'] for s in feats['stages']],
        [t['preact'] for t in teacher_feats['stages']],
        weight=cfg.at_weight,
      )
      total = total + at
      metrics['loss/at'] = at
    metrics['train_accuracy/student'] = base.accuracy(logits, labels)
    return total, ({'student': new_batch_stats}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      'teacher': self._teacher_features(frozen, images)[0],
    }
