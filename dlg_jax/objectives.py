"""Gradient-matching distances over gradient pytrees, and image priors.

All functions act on ONE reconstruction; `jax.vmap` batches them from outside.
`weights`, where taken, is None (every layer weighs 1), a scalar, or a pytree
of scalars with the structure of the gradients (per-layer weights).
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Grads = Any


def _weights(grads: Grads, weights: Any) -> list[jax.Array]:
  leaves = jax.tree.leaves(grads)
  if weights is None:
    return [jnp.ones((), g.dtype) for g in leaves]
  if jnp.ndim(weights) == 0 and not isinstance(weights, dict):
    return [jnp.asarray(weights, g.dtype) for g in leaves]
  weight_leaves = jax.tree.leaves(weights)
  if len(weight_leaves) != len(leaves):
    raise ValueError(
        f'weights has {len(weight_leaves)} leaves but the gradients have '
        f'{len(leaves)}; pass a scalar or a pytree shaped like the gradients.')
  return [jnp.asarray(w, g.dtype) for w, g in zip(weight_leaves, leaves)]


def _check_structure(grads: Grads, target: Grads) -> None:
  if jax.tree.structure(grads) != jax.tree.structure(target):
    raise ValueError(
        'grads and target have different structures: '
        f'{jax.tree.structure(grads)} vs {jax.tree.structure(target)}.')


def l2_distance(grads: Grads, target: Grads, weights: Any = None) -> jax.Array:
  """Squared Euclidean distance between two gradients, summed over layers.

  `sum_l w_l ||g_l - t_l||^2`, the objective of DLG.

  Args:
    grads: the dummy data's gradient.
    target: the shared gradient, same structure.
    weights: optional per-layer weights (see module docstring).

  Returns:
    A scalar.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, eq. (4).
  """
  _check_structure(grads, target)
  g, t = jax.tree.leaves(grads), jax.tree.leaves(target)
  return sum(w * jnp.sum(jnp.square(a - b))
             for w, a, b in zip(_weights(grads, weights), g, t))


def cosine_distance(grads: Grads, target: Grads,
                    weights: Any = None) -> jax.Array:
  """One minus the cosine similarity of two gradients, over all layers jointly.

  `1 - <g, t>_w / (||g||_w ||t||_w)` with per-layer weights in the inner
  products; insensitive to the gradient's scale, which helps against trained
  models and large gradients.

  Args:
    grads: the dummy data's gradient.
    target: the shared gradient, same structure.
    weights: optional per-layer weights.

  Returns:
    A scalar in [0, 2].

  References:
    Geiping, Bauermeister, Droege and Moeller, "Inverting Gradients - How
    easy is it to break privacy in federated learning?", NeurIPS 2020, eq. (4).
  """
  _check_structure(grads, target)
  g, t = jax.tree.leaves(grads), jax.tree.leaves(target)
  w = _weights(grads, weights)
  dot = sum(wi * jnp.vdot(a, b) for wi, a, b in zip(w, g, t))
  gg = sum(wi * jnp.vdot(a, a) for wi, a in zip(w, g))
  tt = sum(wi * jnp.vdot(b, b) for wi, b in zip(w, t))
  # The epsilon keeps a zero gradient (e.g. a saturated start) finite.
  return 1.0 - dot / jnp.sqrt(gg * tt + 1e-24)


def residual(grads: Grads, target: Grads, weights: Any = None) -> jax.Array:
  """The flat residual `sqrt(w_l) (g_l - t_l)` whose squared norm is `l2_distance`.

  Least-squares solvers (Gauss-Newton, Levenberg-Marquardt) work on it.

  Returns:
    A `[num_gradient_entries]` vector.
  """
  _check_structure(grads, target)
  g, t = jax.tree.leaves(grads), jax.tree.leaves(target)
  return jnp.concatenate([
      jnp.sqrt(w) * (a - b).ravel()
      for w, a, b in zip(_weights(grads, weights), g, t)])


def total_variation(x: ArrayLike) -> jax.Array:
  """Anisotropic total variation of one `[h, w, c]` image.

  The mean absolute difference between vertical and between horizontal
  neighbours, as the image prior of Geiping et al. 2020.
  """
  x = jnp.asarray(x)
  if x.ndim != 3:
    raise ValueError(f'total_variation takes one [h, w, c] image, got {x.shape}.')
  dy = jnp.mean(jnp.abs(x[1:] - x[:-1]))
  dx = jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]))
  return dx + dy


DISTANCES = {'l2': l2_distance, 'cosine': cosine_distance}


def get_distance(name: str):
  """Returns the gradient distance called `name` ('l2' or 'cosine')."""
  if name not in DISTANCES:
    raise ValueError(
        f'Unknown distance {name!r}; choose one of {sorted(DISTANCES)}.')
  return DISTANCES[name]
