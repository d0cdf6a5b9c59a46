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
ReviewKD's fusion, FT's translator.

Several frozen teachers (``config.teachers``, a list of model entries, as
the kd method's) combine as ``distill.multi_teacher`` says: 'mean_targets'
gives the logit terms kd, dkd and dist the mean of the teachers' softened
predictions at the term's temperature, 'sum_losses' adds every term once per
teacher, each with its own learnable module (params['student'] key
'<term>_teacher<i>'), the initialization phase's included (AB's connectors
and FT's paraphraser per teacher, their init losses summed over teachers).

Initialization phase (RepDistiller's ``init``) for AB, FT and FSP with
``fsp.init_phase``: a run of its own before this one, method ``distill_init``
(kdjax.methods.distill_init). Every term's defaults and the config section:
kdjax.methods.distill_terms.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import ConfigError
from kdjax.methods import base
from kdjax.methods.distill_terms import (
  INIT_EPOCHS,
  MEAN_TARGET_TERMS,
  TERMS,
  WARMUP_TERMS,
  init_learning_rate,
  init_phase_terms,
  term_options,
  warmup_factor,
)
from kdjax.models import connectors


class Views(NamedTuple):
  """What a term reads of one side (student or teacher)."""

  logits: jax.Array
  stages: tuple  # relu('preact') per stage: the stage outputs.
  preacts: tuple
  pooled: jax.Array


def views(logits, feats) -> Views:
  preacts = tuple(s['preact'] for s in feats['stages'])
  return Views(
    logits, tuple(jax.nn.relu(p) for p in preacts), preacts, feats['pooled']
  )


class Distill(base.FrozenTeachers):
  method_name = 'distill'

  """CE plus the configured baseline terms from one frozen teacher."""

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
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
    init_terms = init_phase_terms(config)
    mode = cfg.get('multi_teacher', 'mean_targets')
    base.check_multi_teacher('distill', mode)
    if len(base.teacher_entries(config)) > 1:
      if mode == 'mean_targets':
        unfit = [t for t in terms if t not in MEAN_TARGET_TERMS]
        why = (
          "'mean_targets' distils from the mean of the teachers' softened "
          f'predictions, which only {MEAN_TARGET_TERMS} read'
        )
      else:
        unfit = []
        why = ''  # Every term adds once per teacher, a module each.
      if unfit:
        raise ConfigError(
          f'--config.distill.terms: {unfit} with {len(base.teacher_entries(config))} '
          f'teachers and multi_teacher={mode!r}: {why}. Use one teacher, or '
          "the other multi_teacher mode ('sum_losses' for feature terms)."
        )
    epochs = cfg.get('init_epochs', INIT_EPOCHS)
    if init_terms and (not isinstance(epochs, int) or epochs < 1):
      raise ConfigError(
        f'--config.distill.init_epochs={epochs!r}: {list(init_terms)} train in '
        'an initialization phase first (RepDistiller: 30 epochs), so it must '
        'be a whole number >= 1.'
      )
    rate = cfg.get('init_learning_rate', None)
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
      raise ConfigError(
        f'--config.distill.init_learning_rate={rate!r}: must be > 0 (or None: '
        "the run's learning rate; 0.01 for FT with a ResNet or WRN student)."
      )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.terms = tuple(config.distill.terms)
    self.options = {t: term_options(config, t) for t in self.terms}
    self.init_terms = init_phase_terms(config)
    # AB and an initialized FSP train only in the initialization phase.
    self.loop_terms = tuple(
      t
      for t in self.terms
      if t != 'ab' and not (t == 'fsp' and 'fsp' in self.init_terms)
    )
    _, s_feats = self.abstract_outputs(self.student)
    t_feats_all = [self.abstract_outputs(t)[1] for t in self.teachers]
    # One module per term and teacher: key = the term, or with several
    # teachers (sum_losses) '<term>_teacher<i>'.
    self.modules = {}
    for i, t_feats in enumerate(t_feats_all):
      for name, module in self._term_modules(s_feats, t_feats).items():
        self.modules[self.module_key(name, i)] = module
    # The two-stage terms: per teacher, AB's connectors, FT's paraphraser
    # (trained in the initialization phase) and translator (a module above).
    s_maps = [tuple(s['preact'].shape[1:]) for s in s_feats['stages']]
    self.ab_connectors, self.paraphrasers = [], []
    for t_feats in t_feats_all:
      t_maps = [tuple(s['preact'].shape[1:]) for s in t_feats['stages']]
      if 'ab' in self.terms:
        if len(s_maps) != len(t_maps):
          raise ConfigError(
            f'ab pairs stages one to one: the student has {len(s_maps)}, the '
            f'teacher {len(t_maps)}.'
          )
        self.ab_connectors.append(
          connectors.ABConnectors(tuple(s_maps), tuple(t_maps))
        )
      if 'ft' in self.terms:
        rate = float(self.options['ft']['rate'])
        self.paraphrasers.append(connectors.Paraphraser(t_maps[-1][2], rate))
    self.ab_connectors = tuple(self.ab_connectors)
    self.paraphrasers = tuple(self.paraphrasers)

  def module_key(self, name: str, teacher: int) -> str:
    """Where term ``name``'s module for teacher ``teacher`` lives in
    params['student'] (and batch_stats['student'])."""
    return name if len(self.teachers) == 1 else f'{name}_teacher{teacher}'

  def _term_modules(self, s_feats, t_feats) -> Dict[str, Any]:
    """The learnable modules of cc, vid and review_kd for one teacher, after
    the checks of the terms that pair stages."""
    s_stages = [s['preact'].shape for s in s_feats['stages']]
    t_stages = [s['preact'].shape for s in t_feats['stages']]
    paired = sorted(set(self.terms) & {'nst', 'fsp', 'vid', 'review_kd'})
    if paired and len(s_stages) != len(t_stages):
      raise ConfigError(
        f'{paired} pair stages one to one: the student has {len(s_stages)}, '
        f'the teacher {len(t_stages)}.'
      )
    if 'fsp' in self.terms and [s[-1] for s in s_stages] != [
      t[-1] for t in t_stages
    ]:
      raise ConfigError(
        'fsp needs equal channels stage by stage: student '
        f'{[s[-1] for s in s_stages]}, teacher {[t[-1] for t in t_stages]}.'
      )
    modules = {}
    if 'cc' in self.terms:
      modules['cc'] = connectors.LinearEmbed(
        int(self.options['cc']['feat_dim'])
      )
    if 'vid' in self.terms:
      opts = self.options['vid']
      modules['vid'] = tuple(
        connectors.VIDRegressor(
          t[-1], t[-1], float(opts['init_pred_var']), float(opts['eps'])
        )
        for t in t_stages
      )
    if 'ft' in self.terms:  # factor_transfer_loss pools the larger map.
      rate = float(self.options['ft']['rate'])
      modules['ft'] = connectors.Translator(
        s_stages[-1][-1], int(t_stages[-1][-1] * rate)
      )
    if 'review_kd' in self.terms:
      s_pooled = s_feats['pooled'].shape[-1]
      modules['review_kd'] = connectors.ReviewFusion(
        features=tuple(t[-1] for t in t_stages)
        + (t_feats['pooled'].shape[-1],),
        out_sizes=tuple(t[1] for t in t_stages) + (1,),
        mid_features=min(
          int(self.options['review_kd']['max_mid_channels']), s_pooled
        ),
      )
    return modules

  # -- the initialization phase ---------------------------------------------

  @classmethod
  def init_phase_config(cls, config):
    """The config of the run that trains the initialization phase, or None.

    Its workdir is the plan's; this run then reads it as distill.init_dir.
    """
    if not init_phase_terms(config):
      return None
    init = copy.deepcopy(config)
    init.unlock()  # The command line's config is locked; this copy is ours.
    init.method = 'distill_init'
    init.num_epochs = int(config.distill.get('init_epochs', INIT_EPOCHS))
    init.max_steps = -1
    init.optimizer.update(
      learning_rate=init_learning_rate(config),
      schedule='constant',
      warmup_epochs=0,
    )
    init.distill.init_dir = None
    return init

  def warm_start_parts(self):
    parts = ()
    if {'ab', 'fsp'} & set(self.init_terms):
      parts += ('model',)
    if 'ft' in self.init_terms:
      parts += tuple(
        self.module_key('paraphraser', i) for i in range(len(self.teachers))
      )
    return parts

  def warm_start_dir(self):
    return self.config.distill.get('init_dir', None)

  def warm_start(self, params, batch_stats, frozen):
    """The student as the initialization phase left it (AB, FSP)."""
    if 'model' not in self.warm_start_parts():
      return params, batch_stats
    restored = frozen['init_phase']
    params = dict(params, student=dict(params['student']))
    batch_stats = dict(batch_stats, student=dict(batch_stats['student']))
    params['student']['model'] = restored['params']['model']
    batch_stats['student']['model'] = restored['batch_stats']['model']
    return params, batch_stats

  # -- modules -------------------------------------------------------------

  def _module_inputs(self, name, s: Views, t: Views):
    """The arguments each learnable module is applied to."""
    if name == 'cc':
      return (s.pooled, jax.lax.stop_gradient(t.pooled))
    if name == 'vid':
      return tuple(_vid_input(x, y) for x, y in zip(s.stages, t.stages))
    if name == 'review_kd':
      return s.stages + (s.pooled[:, None, None, :],)
    if name == 'ft':  # RepDistiller's feat[-2]: the last stage's output.
      return (s.stages[-1],)
    raise KeyError(name)

  def _init_module(self, name, key, rng, s: Views, t: Views):
    inputs = self._module_inputs(name, s, t)
    module = self.modules[key]
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
    if name == 'ft':
      return base.init_module(module, rng, inputs[0], train=False)
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
      s = views(s_logits, s_feats)
      # Shapes only: the teachers' weights are not known yet.
      ts = []
      for teacher in self.teachers:
        outputs = jax.eval_shape(
          functools.partial(teacher.init_with_output, train=False),
          jax.random.key(0),
          images,
        )[0]
        ts.append(
          views(*jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), outputs))
        )
      keys = sorted(self.modules)
      for key, r in zip(keys, jax.random.split(module_rng, len(keys))):
        name, _, index = key.partition('_teacher')
        p, bs = self._init_module(name, key, r, s, ts[int(index or 0)])
        student[key] = p
        if bs:
          stats[key] = bs
    return {'student': student}, {'student': stats}

  # -- the step ------------------------------------------------------------

  def _teacher_term(self, name, params, batch_stats, frozen, s, ts, labels):
    """A term against the teachers' views ``ts``, combined as configured.

    Returns (value, {module key: its new batch_stats}).
    """
    mode = self.config.distill.get('multi_teacher', 'mean_targets')
    if len(ts) == 1 or mode == 'sum_losses':
      values, stats = [], {}
      for i, t in enumerate(ts):
        key = self.module_key(name, i)
        value, new = self._term(
          name, key, params, batch_stats, frozen, s, t, labels
        )
        values.append(value)
        if new is not None:
          stats[key] = new
      return sum_terms(values), stats
    temperature = self.options[name]['temperature']
    mean = base.mean_soft_target_logits([t.logits for t in ts], temperature)
    t = ts[0]._replace(logits=mean)
    return self._term(name, name, params, batch_stats, frozen, s, t, labels)[
      0
    ], {}

  def _term(self, name, key, params, batch_stats, frozen, s, t, labels):
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
      return sum_terms(
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
      return sum_terms(map(losses.nst_loss, s.stages, t.stages)), None
    if name == 'fsp':
      return losses.fsp_loss(s.stages, t.stages), None
    p = params['student'][key]
    inputs = self._module_inputs(name, s, t)
    if name == 'cc':
      module = self.modules[key]
      es = module.apply({'params': p['student_embed']}, inputs[0])
      et = module.apply({'params': p['teacher_embed']}, inputs[1])
      return losses.cc_loss(es, et, train_teacher_embedding=True), None
    if name == 'vid':
      total = []
      for i, (module, x) in enumerate(zip(self.modules[key], inputs)):
        mu, log_scale = module.apply({'params': p[f'stage{i}']}, x)
        total.append(losses.vid_loss(mu, log_scale, t.stages[i], eps=o['eps']))
      return sum_terms(total), None
    if name == 'review_kd':
      fused, new_stats = base.run_module(
        self.modules[key],
        p,
        batch_stats['student'][key],
        inputs,
        train=True,
      )
      targets = t.preacts + (t.pooled[:, None, None, :],)
      return losses.review_kd_hcl_loss(fused, targets), new_stats
    if name == 'ft':
      factor_s, new_stats = base.run_module(
        self.modules[key], p, batch_stats['student'][key], *inputs, train=True
      )
      _, _, index = key.partition('_teacher')
      factor_t = self.paraphrasers[int(index or 0)].apply(
        {
          'params': frozen['init_phase']['params'][
            key.replace('ft', 'paraphraser', 1)
          ]
        },
        t.stages[-1],
        method=connectors.Paraphraser.encode,
      )
      return losses.factor_transfer_loss(
        factor_s, jax.lax.stop_gradient(factor_t), p1=o['p1'], p2=o['p2']
      ), new_stats
    raise KeyError(name)

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del rng
    cfg = self.config.distill
    images, labels = batch['image'], batch['label']
    s_logits, s_feats, s_stats = self.student_logits(
      params, batch_stats, images, True
    )
    s = views(s_logits, s_feats)
    ts = [views(*out) for out in self.teacher_outputs(frozen, images)]
    smoothing = self.config.get('loss', {}).get('label_smoothing', 0.0)
    ce = losses.cross_entropy(s_logits, labels, label_smoothing=smoothing)
    total = cfg.get('ce_weight', 1.0) * ce
    metrics = {'loss/ce': ce}
    new_stats = {'model': s_stats}
    for name in self.loop_terms:
      value, module_stats = self._teacher_term(
        name, params, batch_stats, frozen, s, ts, labels
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
      new_stats.update(module_stats)
    metrics['train_accuracy/student'] = base.accuracy(s_logits, labels)
    return total, ({'student': new_stats}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    teachers = [z for z, _ in self.teacher_outputs(frozen, images)]
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0],
      **base.teacher_heads(teachers),
    }


def _vid_input(student_stage, teacher_stage):
  """RepDistiller pools a larger student map to the teacher's size first."""
  if student_stage.shape[1] > teacher_stage.shape[1]:
    return losses.adaptive_avg_pool(student_stage, teacher_stage.shape[1:3])
  return student_stage


def sum_terms(values):
  return functools.reduce(
    lambda a, b: a + b, values, jnp.zeros((), jnp.float32)
  )
