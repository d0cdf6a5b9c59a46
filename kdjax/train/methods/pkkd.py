"""PKKD: a CNN teacher co-trained with an ANN student of the same architecture.

SPEC section 2, our reconstruction; every unconfirmed choice is a knob in
``config.pkkd``:
  stages          which stages' last conv/adder are distilled (default: all)
  features        'kernel' (Gaussian on the CNN side, Laplace on the ANN side)
                  or 'raw' (ablation: the raw outputs, each divided by its
                  stop-gradient batch mean magnitude, without kernels)
  teacher_mode    'cotrained' (progressive, the paper) or 'frozen' (ablation:
                  a fixed teacher restored from config.teacher.checkpoint_dir)
  sigma_scale_teacher / sigma_scale_student   bandwidth scale knobs
  alpha, beta, temperature                    CE + alpha KD + beta feature loss

Both networks see the same mini-batch and are updated in the same step, each
with its own optimizer ('student' and 'teacher' groups). The teacher's loss is
its CE alone: everything the student takes from it is under stop_gradient.
"""

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.train.methods import base
from kdjax.train.methods.teachers import restore_frozen_teacher

FEATURE_KINDS = ('kernel', 'raw')
TEACHER_MODES = ('cotrained', 'frozen')


def _scale_free(raw):
  """Raw outputs divided by their stop-gradient batch mean magnitude."""
  scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(raw.astype(jnp.float32))))
  return raw.astype(jnp.float32) / jnp.maximum(scale, 1e-12)


class PKKD(base.Method):
  """Progressive kernel-based KD into an adder student."""

  def __init__(self, config, **kwargs):
    super().__init__(config, **kwargs)
    cfg = config.pkkd
    if cfg.features not in FEATURE_KINDS:
      raise ValueError(
        f'pkkd.features must be one of {FEATURE_KINDS}, got {cfg.features!r}'
      )
    if cfg.teacher_mode not in TEACHER_MODES:
      raise ValueError(
        f'pkkd.teacher_mode must be one of {TEACHER_MODES}, '
        f'got {cfg.teacher_mode!r}'
      )
    self.cotrained = cfg.teacher_mode == 'cotrained'
    self.groups = ('student', 'teacher') if self.cotrained else ('student',)
    if self.cotrained:
      self.teacher = base.build_zoo_model(
        config.teacher, self.num_classes, self.image_shape
      )

  def load_frozen(self, images):
    if self.cotrained:
      return {}
    self.teacher, params, batch_stats = restore_frozen_teacher(
      self.config.teacher, self.num_classes, self.image_shape
    )
    return {'teacher': {'params': params, 'batch_stats': batch_stats}}

  def _stages(self, feats):
    stages = feats['stages']
    chosen = self.config.pkkd.get('stages', None)
    chosen = range(len(stages)) if chosen is None else chosen
    return [stages[i] for i in chosen]

  def _teacher_kernel_feats(self, teacher_feats):
    cfg = self.config.pkkd
    out = []
    for stage in self._stages(teacher_feats):
      if cfg.features == 'raw':
        out.append(_scale_free(stage['raw']))
      else:
        sq = losses.gaussian_sq_distance(
          stage['raw'], stage['patch_energy'], stage['filter_sq_norm']
        )
        sigma = losses.gaussian_kernel_sigma(sq, cfg.sigma_scale_teacher)
        out.append(
          losses.gaussian_kernel_features(
            stage['raw'], stage['patch_energy'], stage['filter_sq_norm'], sigma
          )
        )
    return tuple(jax.lax.stop_gradient(h) for h in out)

  def _student_kernel_feats(self, student_feats):
    cfg = self.config.pkkd
    out = []
    for stage in self._stages(student_feats):
      if cfg.features == 'raw':
        out.append(_scale_free(stage['raw']))
      else:
        sigma = losses.laplace_kernel_sigma(
          stage['raw'], cfg.sigma_scale_student
        )
        out.append(losses.laplace_kernel_features(stage['raw'], sigma))
    return tuple(out)

  def init(self, rng, images):
    student_rng, teacher_rng, rho_rng = jax.random.split(rng, 3)
    s_params, s_stats = base.init_model(self.student, student_rng, images)
    _, s_feats = self.student.apply(
      {'params': s_params, 'batch_stats': s_stats}, images, train=False
    )
    g = self._student_kernel_feats(s_feats)
    _, t_feats = jax.eval_shape(
      lambda: self.teacher.init_with_output(
        jax.random.key(0), images, train=False
      )[0]
    )
    teacher_channels = tuple(
      stage['raw'].shape[-1] for stage in self._stages(t_feats)
    )
    self.connectors = base.StageConnectors('kernel', teacher_channels)
    rho_params, rho_stats = base.init_module(
      self.connectors, rho_rng, g, train=False
    )
    params = {'student': {'model': s_params, 'connectors': rho_params}}
    stats = {'student': {'model': s_stats, 'connectors': rho_stats}}
    if self.cotrained:
      params['teacher'], stats['teacher'] = base.init_model(
        self.teacher, teacher_rng, images
      )
    return params, stats

  def _teacher_forward(self, params, batch_stats, frozen, images, train):
    if self.cotrained:
      return base.run_model(
        self.teacher, params['teacher'], batch_stats['teacher'], images, train
      )
    logits, feats, _ = base.run_model(
      self.teacher,
      frozen['teacher']['params'],
      frozen['teacher']['batch_stats'],
      images,
      False,
    )
    return logits, feats, None

  def loss(self, params, batch_stats, frozen, batch, rng):
    del rng
    cfg = self.config.pkkd
    images, labels = batch['image'], batch['label']
    t_logits, t_feats, t_stats = self._teacher_forward(
      params, batch_stats, frozen, images, True
    )
    s_logits, s_feats, s_stats = self.student_logits(
      params, batch_stats, images, True
    )
    g, rho_stats = base.run_module(
      self.connectors,
      params['student']['connectors'],
      batch_stats['student']['connectors'],
      self._student_kernel_feats(s_feats),
      train=True,
    )
    h = self._teacher_kernel_feats(t_feats)
    student_total, terms = losses.pkkd_total(
      s_logits,
      jax.lax.stop_gradient(t_logits),
      labels,
      g,
      h,
      alpha=cfg.alpha,
      beta=cfg.beta,
      temperature=cfg.temperature,
    )
    metrics = {
      'loss/ce': terms['ce'],
      'loss/kd': terms['kd'],
      'loss/feat': terms['feat'],
      'train_accuracy/student': base.accuracy(s_logits, labels),
    }
    new_stats = {'student': {'model': s_stats, 'connectors': rho_stats}}
    total = student_total
    if self.cotrained:
      teacher_ce = losses.cross_entropy(t_logits, labels)
      total = total + teacher_ce
      new_stats['teacher'] = t_stats
      metrics.update(
        {
          'loss/teacher_ce': teacher_ce,
          'train_accuracy/teacher': base.accuracy(t_logits, labels),
        }
      )
    return total, (new_stats, metrics)

  def predict(self, params, batch_stats, frozen, images):
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      'teacher': self._teacher_forward(
        params, batch_stats, frozen, images, False
      )[0],
    }
