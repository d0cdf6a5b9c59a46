"""The distill method's configuration: every term's defaults (``TERMS``),
the ``config.distill`` section built from them, the DKD/ReviewKD warm-up and
the initialization phase's settings (kdjax.methods.distill and
kdjax.methods.distill_init say what each means).
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

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
  # Two-stage (initialization phase first; module docstring).
  'ab': dict(weight=1.0, margin=1.0),
  'ft': dict(weight=200.0, p1=2, p2=1, rate=0.5),
}
TERMS['fsp']['init_phase'] = False  # True: RepDistiller's FSP (init only).
# Terms that always train an initialization phase first.
TWO_STAGE_TERMS = ('ab', 'ft')
# How several teachers combine (distill.multi_teacher), and which terms each
# mode takes: the mean soft targets only mean something to the terms that
# read the teacher through softmax(z_t / T).
MEAN_TARGET_TERMS = ('kd', 'dkd', 'dist')
# Terms with a learnable module under params['student'][term].
MODULE_TERMS = ('cc', 'vid', 'review_kd', 'ft')
WARMUP_TERMS = ('dkd', 'review_kd')
# RepDistiller's init phase: epochs and, for FT with these students, its rate.
INIT_EPOCHS = 30
FT_LOW_INIT_LR_STUDENTS = (
  'resnet8',
  'resnet14',
  'resnet20',
  'resnet32',
  'resnet44',
  'resnet56',
  'resnet110',
  'resnet8x4',
  'resnet32x4',
  'wrn16_1',
  'wrn16_2',
  'wrn40_1',
  'wrn40_2',
)


def default_section(
  terms=('kd',), ce_weight: float = 1.0
) -> ml_collections.ConfigDict:
  """``config.distill`` with every term's defaults (so any can be overridden)."""
  section = ml_collections.ConfigDict()
  section.ce_weight = ce_weight
  section.terms = tuple(terms)
  section.init_epochs = INIT_EPOCHS
  section.init_learning_rate = ml_collections.config_dict.placeholder(float)
  section.init_dir = ml_collections.config_dict.placeholder(str)
  section.multi_teacher = 'mean_targets'
  for name, defaults in TERMS.items():
    section[name] = ml_collections.ConfigDict(dict(defaults))
  return section


def term_options(config, name: str) -> Dict[str, Any]:
  """The term's defaults, updated with what config.distill[name] sets."""
  options = dict(TERMS[name])
  options.update(dict(config.distill.get(name, None) or {}))
  return options


def init_phase_terms(config) -> tuple:
  """The configured terms that train in an initialization phase first."""
  terms = tuple(config.distill.get('terms', ()) or ())
  return tuple(
    t
    for t in terms
    if t in ('ab', 'ft')
    or (t == 'fsp' and term_options(config, t)['init_phase'])
  )


def init_learning_rate(config) -> float:
  """The initialization phase's constant rate (module docstring)."""
  rate = config.distill.get('init_learning_rate', None)
  if rate is not None:
    return float(rate)
  terms = init_phase_terms(config)
  if 'ft' in terms and config.model.name in FT_LOW_INIT_LR_STUDENTS:
    return 0.01
  return float(config.optimizer.learning_rate)


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
