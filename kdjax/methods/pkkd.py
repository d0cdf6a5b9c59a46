"""PKKD: a CNN teacher co-trained with an ANN student of the same architecture.

Our reconstruction (docs/pkkd.md); every unconfirmed choice is a knob in
``config.pkkd``:
  stages          which stages' last conv/adder are distilled (default: all)
  features        'kernel' (Gaussian on the CNN side, Laplace on the ANN side)
                  or 'raw' (ablation: the raw outputs, each divided by its
                  stop-gradient batch mean magnitude, without kernels)
  teacher_mode    'cotrained' (progressive, the paper) or 'frozen' (ablation:
                  a fixed teacher restored from config.teacher.checkpoint_dir)
  sigma_scale_teacher / sigma_scale_student   bandwidth scale knobs
  alpha, beta, temperature                    CE + alpha KD + beta feature loss
  kd_t_squared    whether the soft-label term carries Hinton's T^2
  ramp_fraction   alpha and beta grow linearly from 0 over this fraction
                  of the run (num_epochs x steps per epoch; 0: constant from
                  the start); the ramp follows the trainer's step, so it
                  resumes where it stopped
  ramp_steps      the same ramp as a fixed number of optimizer steps, for
                  runs that need one whatever their length; at most one of
                  the two may be non-zero
  teacher_kd_weight  w: a co-trained teacher's loss is
                  CE + w * soft-label term from the (stop-gradient) student

Both networks see the same mini-batch and are updated in the same step, each
with its own optimizer ('student' and 'teacher' groups). With
teacher_kd_weight = 0 the teacher's loss is its CE alone: everything the
student takes from it is under stop_gradient, and vice versa.
"""

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import ConfigError
from kdjax.methods import base
from kdjax.models import connectors

FEATURE_KINDS = ('kernel', 'raw')
TEACHER_MODES = ('cotrained', 'frozen')


def _scale_free(raw):
  """Raw outputs divided by their stop-gradient batch mean magnitude."""
  scale = jax.lax.stop_gradient(jnp.mean(jnp.abs(raw.astype(jnp.float32))))
  return raw.astype(jnp.float32) / jnp.maximum(scale, 1e-12)


class PKKD(base.Method):
  """Progressive kernel-based KD into an adder student."""

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    cfg = config.pkkd
    if cfg.features not in FEATURE_KINDS:
      raise ConfigError(
        f'pkkd.features must be one of {FEATURE_KINDS}, got {cfg.features!r}'
      )
    if cfg.teacher_mode not in TEACHER_MODES:
      raise ConfigError(
        f'pkkd.teacher_mode must be one of {TEACHER_MODES}, '
        f'got {cfg.teacher_mode!r}'
      )
    ramp_steps = cfg.get('ramp_steps', 0) or 0
    if int(ramp_steps) != ramp_steps or ramp_steps < 0:
      raise ConfigError(
        f'pkkd.ramp_steps must be a non-negative integer (0: no ramp), got '
        f'{ramp_steps!r}'
      )
    ramp_fraction = cfg.get('ramp_fraction', 0.0) or 0.0
    if not 0.0 <= float(ramp_fraction) <= 1.0:
      raise ConfigError(
        'pkkd.ramp_fraction is the fraction of the run over which alpha and '
        f'beta ramp up, from 0 (no ramp) to 1, got {ramp_fraction!r}'
      )
    if ramp_steps and ramp_fraction:
      raise ConfigError(
        f'pkkd.ramp_steps={ramp_steps} and pkkd.ramp_fraction={ramp_fraction} '
        'both set a ramp; set one of them to 0 (the presets use '
        'ramp_fraction, a share of the run that follows num_epochs).'
      )
    teacher_kd_weight = float(cfg.get('teacher_kd_weight', 0.0) or 0.0)
    if teacher_kd_weight < 0:
      raise ConfigError(
        f'pkkd.teacher_kd_weight must be >= 0, got {teacher_kd_weight!r}'
      )
    if teacher_kd_weight and cfg.teacher_mode != 'cotrained':
      raise ConfigError(
        "pkkd.teacher_kd_weight > 0 trains the teacher on the student's soft "
        "labels, so it needs teacher_mode='cotrained'; a frozen teacher is not "
        'trained. Set pkkd.teacher_kd_weight=0 or teacher_mode=cotrained.'
      )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.cotrained = config.pkkd.teacher_mode == 'cotrained'
    self.groups = ('student', 'teacher') if self.cotrained else ('student',)
    # Co-trained or frozen, the teacher's definition comes from the config;
    # a frozen one gets its weights from the trainer (prepare_frozen).
    self.teacher = base.build_zoo_model(
      config.teacher, self.num_classes, self.image_shape
    )
    _, t_feats = self.abstract_outputs(self.teacher)
    teacher_channels = tuple(
      stage['raw'].shape[-1] for stage in self._stages(t_feats)
    )
    self.connectors = connectors.StageConnectors('kernel', teacher_channels)

  @classmethod
  def frozen_teacher_configs(cls, config):
    if config.pkkd.get('teacher_mode', 'cotrained') == 'frozen':
      return [config.teacher]
    return []

  def frozen_teachers(self):
    return () if self.cotrained else ((self.teacher, self.config.teacher),)

  def prepare_frozen(self, teacher_weights, images):
    del images
    if self.cotrained:
      return {}
    (teacher,) = teacher_weights
    return {'teacher': teacher}

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
        out.append(
          losses.gaussian_kernel_from_norms(
            stage['raw'],
            stage['patch_energy'],
            stage['filter_sq_norm'],
            cfg.sigma_scale_teacher,
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
        out.append(
          losses.laplace_kernel_from_adder(
            stage['raw'], cfg.sigma_scale_student
          )
        )
    return tuple(out)

  def _ramp_steps(self):
    """The ramp's length in optimizer steps (0: no ramp)."""
    cfg = self.config.pkkd
    fraction = float(cfg.get('ramp_fraction', 0.0) or 0.0)
    if fraction:
      # The run as the schedules see it: a max_steps cut does not move it.
      run_steps = self.config.num_epochs * self.steps_per_epoch
      return max(1, int(round(fraction * run_steps)))
    return int(cfg.get('ramp_steps', 0) or 0)

  def ramp_factor(self, step):
    """min(1, t / ramp_steps) at step t (0-based); 1 when there is no ramp."""
    ramp_steps = self._ramp_steps()
    if not ramp_steps:
      return jnp.ones((), jnp.float32)
    return jnp.minimum(jnp.asarray(step, jnp.float32) / ramp_steps, 1.0)

  def init(self, rng, images):
    student_rng, teacher_rng, rho_rng = jax.random.split(rng, 3)
    s_params, s_stats = base.init_model(self.student, student_rng, images)
    _, s_feats = self.student.apply(
      {'params': s_params, 'batch_stats': s_stats}, images, train=False
    )
    g = self._student_kernel_feats(s_feats)
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

  def loss(self, step, params, batch_stats, frozen, batch, rng):
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
    ramp = self.ramp_factor(step)
    student_total, terms = losses.pkkd_total(
      s_logits,
      jax.lax.stop_gradient(t_logits),
      labels,
      g,
      h,
      alpha=cfg.alpha * ramp,
      beta=cfg.beta * ramp,
      temperature=cfg.temperature,
      kd_t_squared=cfg.get('kd_t_squared', True),
    )
    metrics = {
      'loss/ce': terms['ce'],
      'loss/kd': terms['kd'],
      'loss/feat': terms['feat'],
      'train_accuracy/student': base.accuracy(s_logits, labels),
    }
    new_stats = {'student': {'model': s_stats, 'connectors': rho_stats}}
    if self._ramp_steps():
      metrics['pkkd/ramp'] = ramp
    total = student_total
    if self.cotrained:
      teacher_ce = losses.cross_entropy(t_logits, labels)
      teacher_total = teacher_ce
      teacher_kd_weight = float(cfg.get('teacher_kd_weight', 0.0) or 0.0)
      if teacher_kd_weight:
        # The other direction: the teacher learns from the student's current
        # soft labels (one reading of "progressive"); the student's logits
        # are under stop_gradient, so this term trains the teacher only.
        teacher_kd = losses.soft_label_loss(
          t_logits,
          jax.lax.stop_gradient(s_logits),
          cfg.temperature,
          cfg.get('kd_t_squared', True),
        )
        teacher_total = teacher_ce + teacher_kd_weight * ramp * teacher_kd
        metrics['loss/teacher_kd'] = teacher_kd
      total = total + teacher_total
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
