"""AdderNet adaptive learning-rate scaling (Chen et al., CVPR 2020, Eq. 12-13).

Per adder layer l, before weight decay and momentum (docs/adder.md):

    g_l <- eta * sqrt(k_l) * g_l / ||g_l||_2,        k_l = g_l.size,  eta = 0.2

Only adder kernels are rescaled, selected by a mask as in ``optax.masked``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import optax

PyTree = Any
MaskOrFn = Union[PyTree, Callable[[PyTree], PyTree]]
PathPredicate = Callable[[Tuple[str, ...], Any], bool]

DEFAULT_ADDER_ETA = 0.2


def scale_layer_gradient(
  g: jax.Array, eta: float = DEFAULT_ADDER_ETA
) -> jax.Array:
  """Rescales one layer's gradient to norm ``eta * sqrt(g.size)``; 0 stays 0."""
  # Adder gradients (X - F, full precision) are orders of magnitude larger than
  # conv gradients and vary between layers: one global learning rate would
  # stall the small layers or blow up the large ones.
  g32 = g.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(g32)))
  # A zero gradient stays zero instead of 0/0 = NaN (the official code clamps
  # the norm at 1e-12, with the same result).
  safe_norm = jnp.where(norm > 0, norm, 1.0)
  scaled = g32 * (eta * math.sqrt(g.size) / safe_norm)
  return jnp.where(norm > 0, scaled, g32).astype(g.dtype)


def _apply_to_masked(
  fn: Callable[[jax.Array], jax.Array], updates: PyTree, mask_tree: PyTree
) -> PyTree:
  # The mask may stop above the leaves (optax.masked allows a prefix): a True
  # at an inner node selects every leaf below it.
  def apply(selected, subtree):
    if selected:
      return jax.tree.map(fn, subtree)
    return subtree

  return jax.tree.map(apply, mask_tree, updates)


def scale_by_adder_lr(
  eta: float = DEFAULT_ADDER_ETA, mask: Optional[MaskOrFn] = None
) -> optax.GradientTransformation:
  """AdderNet adaptive LR scaling as a stateless optax transformation.

  Args:
    eta: the global scale of Eq. 13 (0.2 in the paper).
    mask: which leaves are adder kernels. A pytree of Python bools with the
      structure of the updates (or a prefix of it), or a callable mapping the
      updates to such a pytree. ``None`` rescales every leaf it is given (the
      form for ``optax.masked(scale_by_adder_lr(eta), mask)``). Leaves outside
      the mask pass through unchanged.
  """
  if eta is None or not eta > 0:
    raise ValueError(
      f'scale_by_adder_lr: eta must be a positive float, got {eta!r}'
    )

  def scale(g):
    return scale_layer_gradient(g, eta)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    if mask is None:
      return jax.tree.map(scale, updates), state
    mask_tree = mask(updates) if callable(mask) else mask
    return _apply_to_masked(scale, updates, mask_tree), state

  return optax.GradientTransformation(init_fn, update_fn)


def path_names(path: Sequence[Any]) -> Tuple[str, ...]:
  """Turns a jax key path into plain strings: ('params', 'block1', 'conv', 'kernel')."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      names.append(str(key.key))
    else:
      names.append(str(key))
  return tuple(names)


def kernel_under_module_named(*substrings: str) -> PathPredicate:
  """Predicate: a leaf 'kernel' under a module whose name contains a substring.

  Case-insensitive: ``kernel_under_module_named('adder')`` selects
  ``{'adder1': {'kernel': ...}}`` and ``{'AdderConv_0': {'kernel': ...}}``.
  """
  lowered = tuple(s.lower() for s in substrings)
  if not lowered:
    raise ValueError('kernel_under_module_named: give at least one substring')

  def predicate(names: Tuple[str, ...], leaf: Any) -> bool:
    del leaf
    if not names or names[-1] != 'kernel':
      return False
    return any(s in module.lower() for module in names[:-1] for s in lowered)

  return predicate


# Why the default looks for 'adder' and not for 'ConvOrAdder': the model zoo's
# ConvOrAdder class hosts both multiplicative convs and adders, so its class name
# says nothing about which one a layer is. A model that wants the default to work
# names its adder modules with 'adder' in them; anything else passes a predicate
# (or the mask itself) built from the model's own knowledge of its layers.
default_adder_kernel_predicate: PathPredicate = kernel_under_module_named(
  'adder'
)


def adder_kernel_mask(
  params: PyTree,
  adder_paths_predicate: PathPredicate = default_adder_kernel_predicate,
) -> PyTree:
  """Boolean mask over ``params`` marking the adder kernels.

  Args:
    params: the parameter pytree (dicts, FrozenDicts, lists...).
    adder_paths_predicate: ``(path_names, leaf) -> bool``, ``path_names`` being
      the leaf's key path as strings, e.g. ('layer1_0', 'conv1', 'kernel').

  Returns:
    A pytree of Python bools with the structure of ``params``: a ``mask`` for
    ``scale_by_adder_lr``, ``build_optimizer(adder_mask=...)``, ``optax.masked``.
  """
  return jax.tree.map_with_path(
    lambda path, leaf: bool(adder_paths_predicate(path_names(path), leaf)),
    params,
  )
