"""DML: deep mutual learning (Zhang et al., CVPR 2018), N networks in one step.

Every network is trained, from scratch and at the same time, on the labels
and on the others' current predictions:

    L_i = CE(y, p_i) + w / (N - 1) * sum_{j != i} T^2 KL(sg(p_j^T) || p_i^T)

with p^T the softmax at temperature T. The paper has w = 1, T = 1 and
alternates the updates; kdjax updates all N in the same jitted step, each
with its own optimizer (groups 'student', 'peer1', ...), which is the
paper's simultaneous variant. Everything a network takes from the others is
under stop_gradient, so the gradient of the total with respect to network i
is that of L_i alone. It generalizes PKKD's co-trained teacher
(``pkkd.teacher_kd_weight``) to N networks of any architecture.

config.dml: temperature, kd_weight (w). config.peers: the model entries of
the N - 1 networks beside config.model (each may be conv or adder).
"""

import jax
import jax.numpy as jnp

from kdjax import losses, models
from kdjax.errors import ConfigError
from kdjax.methods import base


def _peer_groups(config):
  return tuple(f'peer{k + 1}' for k in range(len(config.get('peers') or ())))


class DML(base.Method):
  """N networks, each CE plus the mean soft-label term to the others."""

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    if not config.get('peers'):
      raise ConfigError(
        'dml needs at least one peer besides config.model: set config.peers '
        'to a list of model entries (configs/dml.py).'
      )
    cfg = config.dml
    if not cfg.temperature > 0 or cfg.kd_weight < 0:
      raise ConfigError(
        f'dml.temperature must be > 0 and dml.kd_weight >= 0, got '
        f'{cfg.temperature!r} and {cfg.kd_weight!r}.'
      )

  def __init__(self, config, **kwargs):
    self.check_config(config)  # Also for a method built without validation.
    super().__init__(config, **kwargs)
    self.groups = ('student',) + _peer_groups(config)
    self.peers = tuple(
      base.build_zoo_model(entry, self.num_classes, self.image_shape)
      for entry in config.peers
    )

  def _networks(self):
    return (self.student,) + self.peers

  def init(self, rng, images):
    params, stats = {}, {}
    for group, model, key in zip(
      self.groups,
      self._networks(),
      jax.random.split(rng, len(self.groups)),
    ):
      p, s = base.init_model(model, key, images)
      params[group], stats[group] = {'model': p}, {'model': s}
    return params, stats

  def adder_masks(self, params):
    shape = (1,) + self.image_shape
    return {
      group: {'model': models.adder_kernel_mask(model, shape)}
      for group, model in zip(self.groups, self._networks())
    }

  def _logits(self, params, batch_stats, images, train):
    out = [
      base.run_model(
        model,
        params[group]['model'],
        batch_stats[group]['model'],
        images,
        train,
      )
      for group, model in zip(self.groups, self._networks())
    ]
    return [o[0] for o in out], [o[2] for o in out]

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, frozen, rng
    cfg = self.config.dml
    labels = batch['label']
    logits, new_stats = self._logits(params, batch_stats, batch['image'], True)
    others = len(logits) - 1
    total, metrics = 0.0, {}
    for i, (group, z) in enumerate(zip(self.groups, logits)):
      ce = losses.cross_entropy(z, labels)
      mutual = (
        sum(
          losses.kd_loss(z, jax.lax.stop_gradient(z_j), cfg.temperature)
          for j, z_j in enumerate(logits)
          if j != i
        )
        / others
      )
      total = total + ce + cfg.kd_weight * mutual
      metrics[f'loss/ce_{group}'] = ce
      metrics[f'loss/mutual_{group}'] = mutual
      metrics[f'train_accuracy/{group}'] = base.accuracy(z, labels)
    stats = {group: {'model': s} for group, s in zip(self.groups, new_stats)}
    return total, (stats, metrics)

  def predict(self, params, batch_stats, frozen, images):
    del frozen
    logits, _ = self._logits(params, batch_stats, images, False)
    heads = dict(zip(self.groups, logits))
    heads['ensemble'] = jnp.mean(jnp.stack(logits), 0)
    return heads
