"""Modules that moved: the new homes work, the old paths still work and warn.

kdjax.losses.{FeatureConnector, ...}, kdjax.losses.connectors
    -> kdjax.models.connectors
kdjax.train.methods.base.StageConnectors -> kdjax.models.connectors
kdjax.data.testing -> tests/tfds_mocks.py
"""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfds_mocks
from kdjax import losses
from kdjax.models import connectors

MOVED_FROM_LOSSES = (
  'FeatureConnector',
  'KernelTransform',
  'BranchAdapters',
  'he_normal_fan_out',
  'identity_1x1_init',
)


def fresh_import(name):
  """Imports `name` again, so that its import-time warning fires here."""
  sys.modules.pop(name, None)
  return importlib.import_module(name)


@pytest.mark.parametrize('name', MOVED_FROM_LOSSES)
def test_losses_still_serve_the_connectors_with_a_warning(name):
  with pytest.warns(
    DeprecationWarning, match=f'kdjax.models.connectors.{name}'
  ):
    old = getattr(losses, name)
  assert old is getattr(connectors, name)
  assert name in losses.__all__  # Still exported, for one release.


def test_losses_connectors_module_warns_on_import():
  with pytest.warns(DeprecationWarning, match='kdjax.models.connectors'):
    module = fresh_import('kdjax.losses.connectors')
  for name in MOVED_FROM_LOSSES:
    assert getattr(module, name) is getattr(connectors, name)
  with pytest.raises(AttributeError, match='no attribute'):
    losses.no_such_loss


def test_pure_losses_do_not_warn(recwarn):
  losses.kd_loss(jnp.zeros((2, 3)), jnp.ones((2, 3)))
  assert not [w for w in recwarn if w.category is DeprecationWarning]


def test_stage_connectors_moved_out_of_the_methods():
  base = importlib.import_module('kdjax.train.methods.base')
  with pytest.warns(
    DeprecationWarning, match='kdjax.models.connectors.StageConnectors'
  ):
    assert base.StageConnectors is connectors.StageConnectors
  with pytest.raises(AttributeError):
    base.NoSuchThing


def test_stage_connectors_build_one_connector_per_stage():
  xs = (jnp.ones((2, 4, 4, 3)), jnp.full((2, 2, 2, 5), 0.5))
  feature = connectors.StageConnectors('feature', (6, 7))
  variables = feature.init(jax.random.key(0), xs, train=False)
  kernels = {
    k: v['conv']['kernel'].shape for k, v in variables['params'].items()
  }
  assert kernels == {'connector0': (1, 1, 3, 6), 'connector1': (1, 1, 5, 7)}
  assert set(variables['batch_stats']) == {'connector0', 'connector1'}
  # rho starts as the identity (zero bias): its outputs are its inputs.
  kernel = connectors.StageConnectors('kernel', (3, 5))
  params = kernel.init(jax.random.key(0), xs, train=False)
  outputs = kernel.apply(params, xs, train=False)
  assert set(params['params']) == {'rho0', 'rho1'}
  for x, y in zip(xs, outputs):
    np.testing.assert_allclose(y, x, rtol=1e-6)
  with pytest.raises(ValueError, match="'feature' or 'kernel'"):
    connectors.StageConnectors('other', (3,)).init(
      jax.random.key(0), xs, train=False
    )


def test_data_testing_serves_the_tfds_mocks_with_a_warning():
  with pytest.warns(DeprecationWarning, match='tests/tfds_mocks.py'):
    old = fresh_import('kdjax.data.testing')
  assert old.mock_dataset is tfds_mocks.mock_dataset
  assert old.rewrite_record is tfds_mocks.rewrite_record
  assert os.path.isdir(old.FIXTURES_DIR)


def test_data_testing_without_the_tests_folder_says_where_they_went(
  monkeypatch,
):
  # An installed wheel: no tests/tfds_mocks.py next to the package.
  monkeypatch.delitem(sys.modules, 'tfds_mocks')
  real_isfile = os.path.isfile
  monkeypatch.setattr(
    os.path,
    'isfile',
    lambda p: False if p.endswith('tfds_mocks.py') else real_isfile(p),
  )
  with pytest.warns(DeprecationWarning):
    with pytest.raises(ImportError, match='moved to tests/tfds_mocks.py'):
      fresh_import('kdjax.data.testing')
  sys.modules.pop('kdjax.data.testing', None)
