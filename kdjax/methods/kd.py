"""Baselines from frozen teachers: Hinton KD, optionally FitNets and AT (docs/baselines.md)."""

import jax

from kdjax import losses
from kdjax.methods import base
from kdjax.models import connectors


def _pooled_to_common_sizes(student_maps, teacher_maps):
  """Each pair's larger map average-pooled to the smaller's size.

  As RepDistiller's attention transfer between architectures (its at_loss
  pools the larger feature map before the attention map); maps of equal
  size are left as they are.
  """
  pooled_s, pooled_t = [], []
  for s, t in zip(student_maps, teacher_maps):
    size = (min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2]))
    pooled_s.append(
      s if s.shape[1:3] == size else losses.adaptive_avg_pool(s, size)
    )
    pooled_t.append(
      t if t.shape[1:3] == size else losses.adaptive_avg_pool(t, size)
    )
  return pooled_s, pooled_t


class KnowledgeDistillation(base.FrozenTeachers):
  """(1 - lambda) CE + lambda T^2 KL, plus optional hint (FitNets) and AT terms.

  config.kd: temperature, kd_weight (lambda), fitnet_weight and fitnet_stage
  (the stage whose pre-ReLU output is the hint), at_weight (0 disables;
  1000/2 per position in the paper).

  One frozen teacher (config.teacher) or several (config.teachers, a list of
  model entries). With several, config.kd.multi_teacher says how they
  combine: 'mean_targets' (default) distils from the mean of the teachers'
  softened predictions, T^2 KL(mean_t p_t^T || p_s^T); 'sum_losses' adds one
  KD term per teacher, T^2 sum_t KL(p_t^T || p_s^T). The FitNets and AT
  terms always add one term per teacher (a hint connector each).
  """

  method_name = 'kd'

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    base.check_multi_teacher(
      'kd', config.kd.get('multi_teacher', 'mean_targets')
    )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.hint_stage = config.kd.get('fitnet_stage', -1)
    self.connectors = None
    if self._uses_hint():
      hints = [
        self.abstract_outputs(t)[1]['stages'][self.hint_stage]['preact']
        for t in self.teachers
      ]
      # Where the teacher's hint map has another size than the student's,
      # the regressor resamples it (FeatureConnector, after RepDistiller's
      # ConvReg).
      self.connectors = connectors.StageConnectors(
        'feature',
        tuple(h.shape[-1] for h in hints),
        tuple(tuple(h.shape[1:3]) for h in hints),
      )

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
      hint = student_feats['stages'][self.hint_stage]['preact']
      student['connectors'], stats['connectors'] = base.init_module(
        self.connectors,
        connector_rng,
        (hint,) * len(self.teachers),
        train=False,
      )
    return {'student': student}, {'student': stats}

  def _soft_targets_logits(self, teacher_logits):
    """Logits whose softmax at T is the mean of the teachers' at T."""
    return base.mean_soft_target_logits(
      teacher_logits, self.config.kd.temperature
    )

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, rng
    cfg = self.config.kd
    images, labels = batch['image'], batch['label']
    logits, feats, new_stats = self.student_logits(
      params, batch_stats, images, True
    )
    teachers = self.teacher_outputs(frozen, images)
    teacher_logits = [z for z, _ in teachers]
    if cfg.get('multi_teacher', 'mean_targets') == 'sum_losses':
      ce = losses.cross_entropy(logits, labels)
      kd = base.multi_teacher_kd_loss(
        logits, teacher_logits, cfg.temperature, 'sum_losses'
      )
      total = (1.0 - cfg.kd_weight) * ce + cfg.kd_weight * kd
      terms = {'ce': ce, 'kd': kd}
    else:
      total, terms = losses.hinton_kd_total(
        logits,
        self._soft_targets_logits(teacher_logits),
        labels,
        temperature=cfg.temperature,
        kd_weight=cfg.kd_weight,
      )
    metrics = {'loss/ce': terms['ce'], 'loss/kd': terms['kd']}
    new_batch_stats = {'model': new_stats}
    if self._uses_hint():
      hints, new_batch_stats['connectors'] = base.run_module(
        self.connectors,
        params['student']['connectors'],
        batch_stats['student']['connectors'],
        (feats['stages'][self.hint_stage]['preact'],) * len(teachers),
        train=True,
      )
      fitnet = sum(
        losses.fitnet_loss(hint, t_feats['stages'][self.hint_stage]['preact'])
        for hint, (_, t_feats) in zip(hints, teachers)
      )
      total = total + cfg.fitnet_weight * fitnet
      metrics['loss/fitnet'] = fitnet
    if cfg.get('at_weight', 0.0) > 0:
      at = sum(
        losses.attention_transfer_total(
          *_pooled_to_common_sizes(
            [s['preact'] for s in feats['stages']],
            [t['preact'] for t in t_feats['stages']],
          ),
          weight=cfg.at_weight,
        )[0]
        for _, t_feats in teachers
      )
      total = total + at
      metrics['loss/at'] = at
    metrics['train_accuracy/student'] = base.accuracy(logits, labels)
    return total, ({'student': new_batch_stats}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    heads = {
      'student': self.student_logits(params, batch_stats, images, False)[0]
    }
    teachers = self.teacher_outputs(frozen, images)
    heads.update(base.teacher_heads([z for z, _ in teachers]))
    return heads
