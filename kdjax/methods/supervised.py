"""One network trained alone on labels: the baselines and the teachers."""

from kdjax import losses
from kdjax.methods import base


class Supervised(base.Method):
  """CE on the labels, for a CNN or an ANN (``config.model.conv_type``)."""

  def init(self, rng, images):
    params, batch_stats = base.init_model(self.student, rng, images)
    return {'student': {'model': params}}, {'student': {'model': batch_stats}}

  def loss(self, step, params, batch_stats, frozen, batch, rng):
    del step, frozen, rng
    logits, _, new_stats = self.student_logits(
      params, batch_stats, batch['image'], True
    )
    ce = losses.cross_entropy(
      logits, batch['label'], self.config.loss.get('label_smoothing', 0.0)
    )
    metrics = {
      'loss/ce': ce,
      'train_accuracy/student': base.accuracy(logits, batch['label']),
    }
    return ce, ({'student': {'model': new_stats}}, metrics)

  def predict(self, params, batch_stats, frozen, images):
    del frozen
    return {
      'student': self.student_logits(params, batch_stats, images, False)[0]
    }
