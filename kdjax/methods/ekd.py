"""EKD: several frozen teachers into a multi-branch student (Asif et al., ECAI 2020).

docs/ekd.md, our design: branch k learns from teacher k mod T through a
linear adapter on its pooled features and soft labels; the ensemble is the mean
of branch logits. Knobs in ``config.ekd``: temperature, lambda_feat, lambda_kd.
"""

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.models import connectors
from kdjax.methods import base


class EKD(base.Method):
  """Multi-branch student, K frozen teachers, ensemble of branch logits."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    self.teachers = tuple(
      base.build_zoo_model(t, self.num_classes, self.image_shape)
      for t in config.teachers
    )
    widths = tuple(
      self.abstract_outputs(t)[1]['pooled'].shape[-1] for t in self.teachers
    )
    self.adapters = connectors.BranchAdapters(widths)

  @classmethod
  def frozen_teacher_configs(cls, config):
    return list(config.teachers)

  def frozen_teachers(self):
    return tuple(zip(self.teachers, self.config.teachers))

  def prepare_frozen(self, teacher_weights, images):
    del images
    return {'teachers': tuple(teacher_weights)}

  def _teacher_outputs(self, frozen, images):
    logits, pooled = [], []
    for model, variables in zip(self.teachers, frozen['teachers']):
      z, feats, _ = base.run_model(
        model, variables['params'], variables['batch_stats'], images, False
      )
      logits.append(z)
      pooled.append(feats['pooled'])
    return jax.lax.stop_gradient(jnp.stack(logits)), jax.lax.stop_gradient(
      tuple(pooled)
    )

  def init(self, rng, images):
    model_rng, adapter_rng = jax.random.split(rng)
    params, batch_stats = base.init_model(self.student, model_rng, images)
    _, feats = self.student.apply(
      {'params': params, 'batch_stats': batch_stats}, images, train=False
    )
    adapter_params = self.adapters.init(adapter_rng, feats['branch_pooled'])[
      'params'
    ]
    return (
      {'student': {'model': params, 'adapters': adapter_params}},
      {'student': {'model': batch_stats}},
    )

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, rng
    cfg = self.config.ekd
    images, labels = batch['image'], batch['label']
    _, feats, new_stats = self.student_logits(params, batch_stats, images, True)
    adapted = self.adapters.apply(
      {'params': params['student']['adapters']}, feats['branch_pooled']
    )
    teacher_logits, teacher_pooled = self._teacher_outputs(frozen, images)
    total, terms = losses.ekd_loss(
      feats['branch_logits'],
      labels,
      adapted,
      teacher_logits,
      teacher_pooled,
      temperature=cfg.temperature,
      lambda_feat=cfg.lambda_feat,
      lambda_kd=cfg.lambda_kd,
    )
    metrics = {
      f'loss/{k}': terms[k] for k in ('ce_ensemble', 'ce', 'feat', 'kd')
    }
    metrics['train_accuracy/ensemble'] = base.accuracy(
      jnp.mean(feats['branch_logits'], 0), labels
    )
    return total, ({'student': {'model': new_stats}}, metrics)

  def head_label(self, head):
    # The student's logits are the mean of its branches: the ensemble.
    return 'ensemble' if head == 'student' else head

  def predict(self, params, batch_stats, frozen, images):
    logits, feats, _ = self.student_logits(params, batch_stats, images, False)
    heads = {'student': logits}
    for k in range(feats['branch_logits'].shape[0]):
      heads[f'branch{k}'] = feats['branch_logits'][k]
    teacher_logits, _ = self._teacher_outputs(frozen, images)
    for t in range(teacher_logits.shape[0]):
      heads[f'teacher{t}'] = teacher_logits[t]
    return heads
