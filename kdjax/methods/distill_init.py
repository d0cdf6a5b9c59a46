"""The initialization phase of a distill config (method ``distill_init``).

RepDistiller's ``init``: AB, FT, and FSP with
``fsp.init_phase`` train something first, in a run of their own that the
trainer's plan puts before the main distill run (``init_phase_config``; method
``distill_init``, ``<workdir>/init_phase``), checkpointed and resumable like
any run: ``distill.init_epochs`` epochs of SGD at a constant
``distill.init_learning_rate`` (None: the run's rate; for FT with a ResNet or
WRN student 0.01, RepDistiller's rule), the run's momentum and weight decay.
  ab   the student's feature layers (not its classifier) and AB's connectors,
       on the AB loss between the connected student and the teacher pre-ReLU
       stage maps; the main run then starts from that student, loss CE (+ KD)
  fsp  the student's feature layers on the FSP loss; the main run starts from it
  ft   the paraphraser, reconstructing the teacher's last stage map (MSE);
       the main run keeps it frozen and trains the translator with the student
As in RepDistiller, AB and an initialized FSP add nothing to the main run's loss
(its ``loss_kd`` is 0 for them); their ``weight`` is RepDistiller's ``-b``,
unused. ``distill.init_dir`` is the initialization run's workdir: the plan
fills it in (set it to reuse a finished one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.methods import base
from kdjax.methods.distill import Distill, sum_terms, views


class DistillInit(Distill):
  """The initialization phase of a distill config (method 'distill_init').

  Trains what ``init_phase_terms`` name, nothing else (module docstring):
  ``trainable_mask`` keeps every other leaf as it was, weight decay included,
  as RepDistiller's init optimizer covers only those modules. The student's
  BN statistics follow its batches where its feature layers train.
  """

  @classmethod
  def init_phase_config(cls, config):
    return None  # This is that phase.

  def warm_start_parts(self):
    return ()

  def _trains_student(self) -> bool:
    return bool({'ab', 'fsp'} & set(self.init_terms))

  def init(self, rng, images):
    model_rng, *rngs = jax.random.split(rng, 1 + 2 * len(self.teachers))
    params, batch_stats = base.init_model(self.student, model_rng, images)
    student, stats = {'model': params}, {'model': batch_stats}
    _, s_feats = self.student.apply(
      {'params': params, 'batch_stats': batch_stats}, images, train=False
    )
    preacts = tuple(s['preact'] for s in s_feats['stages'])
    for i, teacher in enumerate(self.teachers):
      ab_rng, ft_rng = rngs[2 * i : 2 * i + 2]
      if 'ab' in self.init_terms:
        key = self.module_key('ab', i)
        student[key], ab_stats = base.init_module(
          self.ab_connectors[i], ab_rng, preacts, train=False
        )
        if ab_stats:
          stats[key] = ab_stats
      if 'ft' in self.init_terms:
        last = self.abstract_outputs(teacher)[1]['stages'][-1]['preact']
        student[self.module_key('paraphraser', i)], _ = base.init_module(
          self.paraphrasers[i], ft_rng, jnp.zeros(last.shape, jnp.float32)
        )
    return {'student': student}, {'student': stats}

  def trainable_mask(self, params):
    trains_student = self._trains_student()

    def model_leaf(path, _):
      # RepDistiller's get_feat_modules(): every layer but the classifier.
      keys = {getattr(k, 'key', None) for k in path}
      return trains_student and not keys & {'classifier', 'logit_bn'}

    student = {
      part: (
        jax.tree.map_with_path(model_leaf, tree)
        if part == 'model'
        else jax.tree.map(lambda _: True, tree)
      )
      for part, tree in params['student'].items()
    }
    return {'student': student}

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    """RepDistiller's unweighted sum of the init losses, each summed over
    the teachers (one connector set and paraphraser each)."""
    del step, rng
    images = batch['image']
    ts = [views(*out) for out in self.teacher_outputs(frozen, images)]
    student = params['student']
    new_stats = dict(batch_stats['student'])
    metrics = {}
    if self._trains_student():
      s_logits, s_feats, new_stats['model'] = self.student_logits(
        params, batch_stats, images, True
      )
      s = views(s_logits, s_feats)
      metrics['train_accuracy/student'] = base.accuracy(
        s_logits, batch['label']
      )
    terms = {
      name: [] for name in ('ab', 'fsp', 'ft') if name in self.init_terms
    }
    for i, t in enumerate(ts):
      if 'ab' in terms:
        key = self.module_key('ab', i)
        connected, ab_stats = base.run_module(
          self.ab_connectors[i],
          student[key],
          batch_stats['student'].get(key, {}),
          s.preacts,
          train=True,
        )
        if ab_stats:
          new_stats[key] = ab_stats
        terms['ab'].append(
          losses.activation_boundary_loss(
            connected, t.preacts, margin=self.options['ab']['margin']
          )
        )
      if 'fsp' in terms:
        terms['fsp'].append(losses.fsp_loss(s.stages, t.stages))
      if 'ft' in terms:
        _, rebuilt = self.paraphrasers[i].apply(
          {'params': student[self.module_key('paraphraser', i)]}, t.stages[-1]
        )
        terms['ft'].append(jnp.mean(jnp.square(rebuilt - t.stages[-1])))
    total = jnp.zeros((), jnp.float32)
    for name, values in terms.items():
      metrics[f'loss/init_{name}'] = sum_terms(values)
      total = total + metrics[f'loss/init_{name}']
    return total, ({'student': new_stats}, metrics)
