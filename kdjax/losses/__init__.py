"""Distillation losses as pure functions of arrays.

Every loss takes arrays (or pytrees of arrays), casts to float32 inside, puts
teacher inputs under ``stop_gradient`` and returns a float32 scalar; the
``*_total`` helpers and ``ekd_loss`` return ``(total, terms)`` with a dict of
named terms for logging. The learnable pieces (OFD / FitNets connectors,
PKKD's rho, EKD's adapters) are linen modules in ``kdjax.models.connectors``;
the caller applies them and hands their outputs to the losses. Formulas,
sources and reductions: docs/baselines.md, docs/ofd.md, docs/pkkd.md,
docs/ekd.md.
"""

from kdjax.losses.classification import cross_entropy, hinton_kd_total, kd_loss
from kdjax.losses.ekd import branch_teacher_pairing, ekd_loss, ensemble_logits
from kdjax.losses.hints import (
  attention_map,
  attention_transfer_loss,
  attention_transfer_total,
  fitnet_loss,
)
from kdjax.losses.ofd import (
  ofd_distance,
  ofd_feature_loss,
  ofd_margin,
  ofd_stage_weights,
  ofd_total,
)
from kdjax.losses.pkkd import (
  filter_sq_norms,
  gaussian_kernel_features,
  gaussian_kernel_from_conv,
  gaussian_kernel_from_norms,
  gaussian_kernel_sigma,
  gaussian_sq_distance,
  laplace_kernel_features,
  laplace_kernel_from_adder,
  laplace_kernel_sigma,
  patch_sq_norms,
  pkkd_feature_loss,
  pkkd_total,
  soft_label_loss,
)

# baselines (RepDistiller, mdistiller, torchdistill)
from kdjax.losses.crd import (
  CRDMemory,
  crd_contrast_scores,
  crd_loss,
  crd_memory_init,
  crd_memory_update,
  crd_nce_loss,
  crd_sample_indices,
)
from kdjax.losses.features import (
  activation_boundary_loss,
  adaptive_avg_pool,
  factor_transfer_loss,
  fsp_loss,
  kdsvd_loss,
  nst_loss,
  review_kd_hcl_loss,
  vid_loss,
)
from kdjax.losses.jacobian import jacobian_matching_loss, logit_input_gradients
from kdjax.losses.logits import dist_loss, dkd_loss, logit_std_kd_loss
from kdjax.losses.relational import cc_loss, pkt_loss, rkd_loss, sp_loss

__all__ = [
  # classification
  'cross_entropy',
  'kd_loss',
  'hinton_kd_total',
  # hints
  'fitnet_loss',
  'attention_map',
  'attention_transfer_loss',
  'attention_transfer_total',
  # OFD
  'ofd_margin',
  'ofd_distance',
  'ofd_stage_weights',
  'ofd_feature_loss',
  'ofd_total',
  # PKKD
  'patch_sq_norms',
  'filter_sq_norms',
  'gaussian_sq_distance',
  'gaussian_kernel_sigma',
  'gaussian_kernel_features',
  'laplace_kernel_sigma',
  'laplace_kernel_features',
  'gaussian_kernel_from_conv',
  'gaussian_kernel_from_norms',
  'laplace_kernel_from_adder',
  'pkkd_feature_loss',
  'pkkd_total',
  'soft_label_loss',
  # EKD
  'ekd_loss',
  'ensemble_logits',
  'branch_teacher_pairing',
  # baselines (RepDistiller, mdistiller, torchdistill)
  'dkd_loss',
  'dist_loss',
  'logit_std_kd_loss',
  'sp_loss',
  'cc_loss',
  'rkd_loss',
  'pkt_loss',
  'nst_loss',
  'factor_transfer_loss',
  'fsp_loss',
  'activation_boundary_loss',
  'vid_loss',
  'review_kd_hcl_loss',
  'kdsvd_loss',
  'adaptive_avg_pool',
  'CRDMemory',
  'crd_memory_init',
  'crd_sample_indices',
  'crd_contrast_scores',
  'crd_nce_loss',
  'crd_memory_update',
  'crd_loss',
  'logit_input_gradients',
  'jacobian_matching_loss',
]
