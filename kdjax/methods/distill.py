"""Frozen-teacher distillation with a configured list of loss terms.

One method for the baselines of docs/baselines.md: the student and a frozen
teacher (eval mode, under stop_gradient) see the same batch, and the loss is

    L = ce_weight * CE + sum_{term in terms} weight_term * factor_term * term

``config.distill``: ``ce_weight``, ``terms`` (names of ``TERMS``), and one
section per term with its ``weight`` and options (``TERMS`` holds the
defaults: RepDistiller's CIFAR-100 weights, or the paper's). ``factor`` is 1
except for DKD and ReviewKD, whose warm-up min(e / warmup_epochs, 1) follows
the trainer's step, e = step // steps_per_epoch + 1 the 1-based epoch
(mdistiller's count). Where a term reads a feature:
  logits               kd, dkd, dist, logit_std
  stage outputs        sp (config stages), nst, fsp, vid: relu('preact'), the
                       ResNets' stage output (RepDistiller's feat[1:-1])
  pooled features      cc (through the embeddings), rkd, pkt (feat[-1])
  preact + pooled      review_kd (mdistiller: student stage outputs and pooled,
                       teacher pre-ReLU stages and pooled)
Learnable modules (kdjax.models.connectors) train with the student, under
``params['student'][term]``: CC's two embeddings (the teacher-side one learns
from the loss, as in RepDistiller), VID's regressors and variances,
ReviewKD's fusion.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import losses
from kdjax.errors import ConfigError
from kdjax.methods import base
from kdjax.models import connectors

# Every term's defaults: weight first, then its options.
TERMS: Dict[str, Dict[str, Any]] = {
  # Logits.
  'kd': dict(weight=0.9, temperature=4.0),
  'dkd': dict(
    weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20
  ),
  'dist': dict(weight=2.0, beta=1.0, gamma=1.0, temperature=4.0),
  'logit_std': dict(weight=9.0, temperature=2.0),
  # Relational.
  'sp': dict(weight=3000.0, stages=(-1,)),
  'cc': dict(weight=0.02, feat_dim=128),
  'rkd': dict(weight=1.0, distance_weight=25.0, angle_weight=50.0),
  'pkt': dict(weight=30000.0),
  # Feature maps.
  'nst': dict(weight=50.0),
  'fsp': dict(weight=50.0),
  'vid': dict(weight=1.0, init_pred_var=5.0, eps=1e-5),
  'review_kd': dict(weight=5.0, warmup_epochs=20, max_mid_channels=512),
}
# Terms with a learnable module under params['student'][term].
MODULE_TERMS = ('cc', 'vid', 'review_kd')
WARMUP_TERMS = ('dkd', 'review_kd')


def default_section(
  terms=('kd',), ce_weight: float = 1.0
) -> ml_collections.ConfigDict:
  """``config.distill`` with every term's defaults (so any can be overridden)."""
  section = ml_collections.ConfigDict()
  section.ce_weight = ce_weight
  section.terms = tuple(terms)
  for name, defaults in TERMS.items():
    section[name] = ml_collections.ConfigDict(dict(defaults))
  return section


def term_options(config, name: str) -> Dict[str, Any]:
  """The term's defaults, updated with what config.distill[name] sets."""
  options = dict(TERMS[name])
  options.update(dict(config.distill.get(name, None) or {}))
  return options


def warmup_factor(step, steps_per_epoch: int, warmup_epochs) -> jax.Array:
  """min(e / warmup_epochs, 1), e = step // steps_per_epoch + 1 (1-based epoch).

  mdistiller multiplies DKD's and ReviewKD's loss by min(epoch / 20, 1) with
  its 1-based epoch; here the epoch comes from the optimizer step, so the
  warm-up resumes where it stopped. warmup_epochs <= 0: no warm-up.
  """
  if not warmup_epochs or warmup_epochs <= 0:
    return jnp.ones((), jnp.float32)
  epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch + 1
  return jnp.minimum(epoch.astype(jnp.float32) / warmup_epochs, 1.0)


class _Views(NamedTuple):
  """What a term reads of one side (student or teacher)."""

  logits: jax.Array
  stages: tuple  # relu('preact') per stage: the stage outputs.
  preacts: tuple
  pooled: jax.Array


def _views(logits, feats) -> _Views:
  preacts = tuple(s['preact'] for s in feats['stages'])
  return _Views(
    logits, tuple(jax.nn.relu(p) for p in preacts), preacts, feats['pooled']
  )


class Distill(base.Method):
  """CE plus the configured baseline terms from one frozen teacher."""

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    if 'teacher' not in config:
      raise ConfigError(
        "method 'distill' needs config.teacher (the frozen teacher's entry)."
      )
    cfg = config.get('distill', None)
    if cfg is None:
      raise ConfigError(
        "method 'distill' needs config.distill (configs/distill.py builds it)."
      )
    terms = tuple(cfg.get('terms', ()) or ())
    unknown = [t for t in terms if t not in TERMS]
    if unknown:
      raise ConfigError(
        f'--config.distill.terms: unknown {unknown}; choose from '
        f'{sorted(TERMS)} (docs/baselines.md).'
      )
    if len(set(terms)) != len(terms):
      raise ConfigError(f'--config.distill.terms={terms!r} repeats a term.')
    ce_weight = cfg.get('ce_weight', 1.0)
    if not isinstance(ce_weight, (int, float)) or ce_weight < 0:
      raise ConfigError(
        f'--config.distill.ce_weight={ce_weight!r}: must be a number >= 0.'
      )
    for name in terms:
      options = term_options(config, name)
      unknown = sorted(set(options) - set(TERMS[name]))
      if unknown:
        raise ConfigError(
          f'--config.distill.{name}: unknown option(s) {unknown}; '
          f'{name} takes {sorted(TERMS[name])}.'
        )
      weight = options['weight']
      if not isinstance(weight, (int, float)) or weight < 0:
        raise ConfigError(
          f'--config.distill.{name}.weight={weight!r}: must be a number >= 0.'
        )
      if name in WARMUP_TERMS and options['warmup_epochs'] < 0:
        raise ConfigError(
          f'--config.distill.{name}.warmup_epochs must be >= 0 (0: none).'
        )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.terms = tuple(config.distill.terms)
    self.options = {t: term_options(config, t) for t in self.terms}
    self.teacher = base.build_zoo_model(
      config.teacher, self.num_classes, self.image_shape
    )
    _, s_feats = self.abstract_outputs(self.student)
    _, t_feats = self.abstract_outputs(self.teacher)
    s_stages = [s['preact'].shape for s in s_feats['stages']]
    t_stages = [s['preact'].shape for s in t_feats['stages']]
    self.modules = {}
    if any(t in self.terms for t in ('nst', 'fsp', 'vid', 'review_kd')):
      if len(s_stages) != len(t_stages):
        raise ConfigError(
          f'{sorted(set(self.terms) & {"nst", "fsp", "vid", "review_kd"})} '
          f'pair stages one to one: the student has {len(s_stages)}, the '
          f'teacher {len(t_stages)}.'
        )
    if 'fsp' in self.terms and [s[-1] for s in s_stages] != [
      t[-1] for t in t_stages
    ]:
      raise ConfigError(
        'fsp needs equal channels stage by stage: student '
        f'{[s[-1] for s in s_stages]}, teacher {[t[-1] for t in t_stages]}.'
      )
    if 'cc' in self.terms:
      dim = int(self.options['cc']['feat_dim'])
      self.modules['cc'] = connectors.LinearEmbed(dim)
    if 'vid' in self.terms:
      opts = self.options['vid']
      self.modules['vid'] = tuple(
        connectors.VIDRegressor(
          t[-1], t[-1], float(opts['init_pred_var']), float(opts['eps'])
        )
        for t in t_stages
      )
    if 'review_kd' in self.terms:
      s_pooled = s_feats['pooled'].shape[-1]
      self.modules['review_kd'] = connectors.ReviewFusion(
        features=tuple(t[-1] for t in t_stages)
        + (t_feats['pooled'].shape[-1],),
        out_sizes=tuple(t[1] for t in t_stages) + (1,),
        mid_features=min(
          int(self.options['review_kd']['max_mid_channels']), s_pooled
        ),
      )

  @classmethod
  def frozen_teacher_configs(cls, config):
    return [config.teacher]

  def frozen_teachers(self):
    return ((self.teacher, self.config.teacher),)

  def prepare_frozen(self, teacher_weights, images):
    del images
    (teacher,) = teacher_weights
    return {'teacher': teacher}

  # -- modules -------------------------------------------------------------

  def _module_inputs(self, name, s: _Views, t: _Views):
    """The arguments each learnable module is applied to."""
    if name == 'cc':
      return (s.pooled, jax.lax.stop_gradient(t.pooled))
    if name == 'vid':
      return tuple(_vid_input(x, y) for x, y in zip(s.stages, t.stages))
    if name == 'review_kd':
      return s.stages + (s.pooled[:, None, None, :],)
    raise KeyError(name)

  def _init_module(self, name, rng, s: _Views, t: _Views):
    inputs = self._module_inputs(name, s, t)
    module = self.modules[name]
    if name == 'cc':
      rs, rt = jax.random.split(rng)
      ps, _ = base.init_module(module, rs, inputs[0])
      pt, _ = base.init_module(module, rt, inputs[1])
      return {'student_embed': ps, 'teacher_embed': pt}, {}
    if name == 'vid':
      rngs = jax.random.split(rng, len(module))
      params = {
        f'stage{i}': base.init_module(m, r, x)[0]
        for i, (m, r, x) in enumerate(zip(module, rngs, inputs))
      }
      return params, {}
    return base.init_module(module, rng, inputs, train=False)

  def init(self, rng, images):
    model_rng, module_rng = jax.random.split(rng)
    params, batch_stats = base.init_model(self.student, model_rng, images)
    student = {'model': params}
    stats = {'model': batch_stats}
    if self.modules:
      s_logits, s_feats = self.student.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=False
      )
      s = _views(s_logits, s_feats)
      # Shapes only: the teacher's weights are not known yet.
      t_logits, t_feats = jax.eval_shape(
        functools.partial(self.teacher.init_with_output, train=False),
        jax.random.key(0),
        images,
      )[0]
      t = jax.tree.map(
        lambda x: jnp.zeros(x.shape, x.dtype), (t_logits, t_feats)
      )
      t = _views(*t)
      for name, r in zip(
        sorted(self.modules), jax.random.split(module_rng, len(self.modules))
      ):
        p, bs = self._init_module(name, r, s, t)
        student[name] = p
        if bs:
          stats[name] = bs
    return {'student': student}, {'student': stats}

  # -- the step ------------------------------------------------------------

  def _teacher(self, frozen, images):
    logits, feats, _ = base.run_model(
      self.teacher,
      frozen['teacher']['params'],
      frozen['teacher']['batch_stats'],
      images,
      False,
    )
    return jax.lax.stop_gradient(logits), jax.lax.stop_gradient(feats)

  def _term(self, name, step, params, batch_stats, s, t, labels):
    """(unweighted value, new batch_stats of its module or None)."""
    o = self.options[name]
    if name == 'kd':
      return losses.kd_loss(s.logits, t.logits, o['temperature']), None
    if name == 'dkd':
      return losses.dkd_loss(
        s.logits,
        t.logits,
        labels,
        alpha=o['alpha'],
        beta=o['beta'],
        temperature=o['temperature'],
      ), None
    if name == 'dist':
      return losses.dist_loss(
        s.logits,
        t.logits,
        beta=o['beta'],
        gamma=o['gamma'],
        temperature=o['temperature'],
      ), None
    if name == 'logit_std':
      return losses.logit_std_kd_loss(
        s.logits, t.logits, temperature=o['temperature']
      ), None
    if name == 'sp':
      return _sum(
        losses.sp_loss(s.stages[i], t.stages[i]) for i in o['stages']
      ), None
    if name == 'rkd':
      return losses.rkd_loss(
        s.pooled,
        t.pooled,
        distance_weight=o['distance_weight'],
        angle_weight=o['angle_weight'],
      ), None
    if name == 'pkt':
      return losses.pkt_loss(s.pooled, t.pooled), None
    if name == 'nst':
      return _sum(map(losses.nst_loss, s.stages, t.stages)), None
    if name == 'fsp':
      return losses.fsp_loss(s.stages, t.stages), None
    p = params['student'][name]
    inputs = self._module_inputs(name, s, t)
    if name == 'cc':
      module = self.modules['cc']
      es = module.apply({'params': p['student_embed']}, inputs[0])
      et = module.apply({'params': p['teacher_embed']}, inputs[1])
      return losses.cc_loss(es, et, train_teacher_embedding=True), None
    if name == 'vid':
      total = []
      for i, (module, x) in enumerate(zip(self.modules['vid'], inputs)):
        mu, log_scale = module.apply({'params': p[f'stage{i}']}, x)
        total.append(losses.vid_loss(mu, log_scale, t.stages[i], eps=o['eps']))
      return _sum(total), None
    if name == 'review_kd':
      fused, new_stats = base.run_module(
        self.modules['review_kd'],
        p,
        batch_stats['student'][name],
        inputs,
        train=True,
      )
      targets = t.preacts + (t.pooled[:, None, None, :],)
      return losses.review_kd_hcl_loss(fused, targets), new_stats
    raise KeyError(name)

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del rng
    cfg = self.config.distill
    images, labels = batch['image'], batch['label']
    s_logits, s_feats, s_stats = self.student_logits(
      params, batch_stats, images, True
    )
    s = _views(s_logits, s_feats)
    t = _views(*self._teacher(frozen, images))
    smoothing = self.config.get('loss', {}).get('label_smoothing', 0.0)
    ce = losses.cross_entropy(s_logits, labels, label_smoothing=smoothing)
    total = cfg.get('ce_weight', 1.0) * ce
    metrics = {'loss/ce': ce}
    new_stats = {'model': s_stats}
    for name in self.terms:
      value, module_stats = self._term(
        name, step, params, batch_stats, s, t, labels
      )
      weight = self.options[name]['weight']
      if name in WARMUP_TERMS:
        factor = warmup_factor(
          step, self.steps_per_epoch, self.options[name]['warmup_epochs']
        )
        metrics[f'distill/{name}_warmup'] = factor
        weight = weight * factor
      total = total + weight * value
      metrics[f'loss/{name}'] = value
      if module_stats is not None:
        new_stats[name] = module_stats
    metrics['train_accuracy/student'] = base.accuracy(s_logits, labels)
    return total, ({'student': new_stats}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      'teacher': self._teacher(frozen, images)[0],
    }


def _vid_input(student_stage, teacher_stage):
  """RepDistiller pools a larger student map to the teacher's size first."""
  if student_stage.shape[1] > teacher_stage.shape[1]:
    return losses.adaptive_avg_pool(student_stage, teacher_stage.shape[1:3])
  return student_stage


def _sum(values):
  return functools.reduce(
    lambda a, b: a + b, values, jnp.zeros((), jnp.float32)
  )
