"""OFD: overhaul of feature distillation (Heo et al., ICCV 2019), docs/ofd.md.

The frozen teacher runs with train-mode BN (batch statistics, paper Table 8)
and its running averages are left untouched. Margins come once, at start-up,
from the scale and bias of the BN that produces each pre-ReLU teacher feature.
Student connectors (1x1 conv + BN) are trained with the student.
"""

import jax

from kdjax import losses
from kdjax.models import connectors
from kdjax.methods import base


class OFD(base.Method):
  """CE + alpha * sum_i d_p(margin_relu(F_t^i), r_i(F_s^i)) / 2^(N-i-1) / B."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.teacher = base.build_zoo_model(
      config.teacher, self.num_classes, self.image_shape
    )
    _, teacher_feats = self.abstract_outputs(self.teacher)
    _, student_feats = self.abstract_outputs(self.student)
    teacher_channels = tuple(
      s['preact'].shape[-1] for s in teacher_feats['stages']
    )
    if len(student_feats['stages']) != len(teacher_channels):
      raise ValueError(
        'OFD pairs stages one to one: the student has '
        f'{len(student_feats["stages"])} and the teacher '
        f'{len(teacher_channels)}'
      )
    self.connectors = connectors.StageConnectors('feature', teacher_channels)

  @classmethod
  def frozen_teacher_configs(cls, config):
    return [config.teacher]

  def frozen_teachers(self):
    return ((self.teacher, self.config.teacher),)

  def prepare_frozen(self, teacher_weights, images):
    (teacher,) = teacher_weights
    _, feats = self.teacher.apply(teacher, images, train=False)
    margins = tuple(
      losses.ofd_margin(s['bn_scale'], s['bn_bias']) for s in feats['stages']
    )
    return {'teacher': teacher, 'margins': margins}

  def init(self, rng, images):
    model_rng, connector_rng = jax.random.split(rng)
    params, batch_stats = base.init_model(self.student, model_rng, images)
    _, feats = self.student.apply(
      {'params': params, 'batch_stats': batch_stats}, images, train=False
    )
    c_params, c_stats = base.init_module(
      self.connectors,
      connector_rng,
      tuple(s['preact'] for s in feats['stages']),
      train=False,
    )
    return (
      {'student': {'model': params, 'connectors': c_params}},
      {'student': {'model': batch_stats, 'connectors': c_stats}},
    )

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, rng
    images, labels = batch['image'], batch['label']
    logits, feats, new_stats = self.student_logits(
      params, batch_stats, images, True
    )
    connected, c_stats = base.run_module(
      self.connectors,
      params['student']['connectors'],
      batch_stats['student']['connectors'],
      tuple(s['preact'] for s in feats['stages']),
      train=True,
    )
    _, t_feats, _ = base.run_model(
      self.teacher,
      frozen['teacher']['params'],
      frozen['teacher']['batch_stats'],
      images,
      True,
    )
    t_feats = jax.lax.stop_gradient(t_feats)
    total, terms = losses.ofd_total(
      logits,
      labels,
      connected,
      [s['preact'] for s in t_feats['stages']],
      frozen['margins'],
      alpha=self.config.ofd.alpha,
    )
    metrics = {
      'loss/ce': terms['ce'],
      'loss/ofd': terms['ofd'],
      'train_accuracy/student': base.accuracy(logits, labels),
    }
    return total, (
      {'student': {'model': new_stats, 'connectors': c_stats}},
      metrics,
    )

  def predict(self, params, batch_stats, frozen, images):
    teacher_logits, _, _ = base.run_model(
      self.teacher,
      frozen['teacher']['params'],
      frozen['teacher']['batch_stats'],
      images,
      False,
    )
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      'teacher': teacher_logits,
    }
