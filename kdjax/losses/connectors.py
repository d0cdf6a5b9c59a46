"""Deprecated: the connector modules moved to ``kdjax.models.connectors``.

``kdjax.losses`` holds pure functions only. This module keeps the old import
path working for one release and warns on import.
"""

import warnings

from kdjax.models.connectors import (  # noqa: F401 (re-exported)
  BranchAdapters,
  FeatureConnector,
  KernelTransform,
  he_normal_fan_out,
  identity_1x1_init,
)

warnings.warn(
  'kdjax.losses.connectors moved to kdjax.models.connectors (FeatureConnector, '
  'KernelTransform, BranchAdapters, StageConnectors); import them from there. '
  'The old path will be removed in the next release.',
  DeprecationWarning,
  stacklevel=2,
)
