"""Gradient-matching distances over gradient pytrees, and image priors.

All functions act on ONE reconstruction; `jax.vmap` batches them from outside.
`weights`, where taken, is None (every layer weighs 1), a scalar, or a pytree
of scalars with the structure of the gradients (per-layer weights).
"""

import math
from typing import Any, NamedTuple

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


class GaussianPrior(NamedTuple):
  """A stationary Gaussian image prior, diagonal in the 2-D DFT.

  Attributes:
    mean: `[c]` per-channel mean; the prior's mean image is this constant
      colour.
    precision: `[h, w, c, c]` real symmetric inverse of the colour
      cross-spectrum at each DFT frequency (regularised).
  """
  mean: jax.Array
  precision: jax.Array


def ring_spectrum(images: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """The stationary, isotropic colour statistics of `[n, h, w, c]` images.

  Per-channel means are removed; the `c x c` colour cross-spectrum of each
  DFT frequency is averaged over the images and then over rings of equal
  integer radial frequency `round(|f|)` (`f` in cycles per image), so a few
  images fit it. Both `fit_gaussian_prior` (the attack's prior) and
  `identifiability.stationary_prior_covariance` (the bound's) use it.

  Args:
    images: `[n, h, w, c]`, n >= 1; integer images are cast to float32.

  Returns:
    `(mean [c], spectrum [h, w, c, c])`, the spectrum complex, Hermitian per
    frequency and real up to rounding (every ring holds k and -k).

  Raises:
    ValueError: images not `[n, h, w, c]` with n >= 1.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[0] < 1:
    raise ValueError('images must be [n, h, w, c] with n >= 1, got shape '
                     f'{images.shape}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  n, h, w, c = images.shape
  mean = jnp.mean(images, axis=(0, 1, 2))
  f = jnp.fft.fft2(images - mean.reshape(1, 1, 1, c), axes=(1, 2))
  power = jnp.einsum('nijc,nijd->ijcd', f, f.conj()) / (n * h * w)
  ky = jnp.fft.fftfreq(h) * h
  kx = jnp.fft.fftfreq(w) * w
  ring = jnp.round(jnp.hypot(ky[:, None], kx[None, :])).astype(jnp.int32)
  num_rings = int(math.ceil(math.hypot(h / 2, w / 2))) + 1
  sums = jax.ops.segment_sum(power.reshape(h * w, c, c), ring.ravel(),
                             num_segments=num_rings)
  counts = jax.ops.segment_sum(jnp.ones(h * w), ring.ravel(),
                               num_segments=num_rings)
  return mean, (sums / jnp.maximum(counts, 1)[:, None, None])[ring]


def fit_gaussian_prior(images: ArrayLike, *,
                       floor: float = 1e-3) -> GaussianPrior:
  """Fits a stationary, isotropic Gaussian prior on `[n, h, w, c]` images.

  As `identifiability.stationary_prior_covariance`: per-channel means are
  removed, the `c x c` colour cross-spectrum is averaged over the images and
  then over rings of equal integer radial frequency (so a few images fit
  it), and the covariance is the circulant one with that spectrum. A
  circulant covariance is diagonal in the DFT, so its inverse is stored as
  one `c x c` precision per frequency, and `gaussian_prior_penalty` costs
  one FFT. `floor` times the mean per-channel pixel variance is added to
  every spectrum's diagonal: high frequencies have almost no power in
  natural images, and an unregularised precision there would be huge.

  Args:
    images: `[n, h, w, c]`, n >= 1, values in [0, 1].
    floor: the relative regulariser, > 0.

  Returns:
    A `GaussianPrior` in float32.
  """
  if not floor > 0:
    raise ValueError(f'floor must be > 0, got {floor}.')
  mean, spectrum = ring_spectrum(jnp.asarray(images, jnp.float32))
  c = spectrum.shape[-1]
  spectrum = jnp.real(spectrum)
  spectrum = (spectrum + jnp.swapaxes(spectrum, -1, -2)) / 2
  # The mean over frequencies of the diagonal is the pixel variance.
  variance = jnp.mean(jnp.trace(spectrum, axis1=-2, axis2=-1)) / c
  spectrum = spectrum + floor * variance * jnp.eye(c)[None, None]
  precision = jnp.linalg.inv(spectrum)
  return GaussianPrior(mean, (precision + jnp.swapaxes(precision, -1, -2)) / 2)


def gaussian_prior_penalty(prior: GaussianPrior, x: ArrayLike) -> jax.Array:
  """`0.5 (x - mean)^T Sigma^-1 (x - mean)` of one `[h, w, c]` image.

  The negative log-density of `prior` up to a constant, computed in the DFT:
  `sum_k F_k^H P_k F_k / (2 h w)` with `F = fft2(x - mean)` and `P_k` the
  precision at frequency k.
  """
  x = jnp.asarray(x)
  if x.ndim != 3 or x.shape + x.shape[-1:] != prior.precision.shape:
    raise ValueError(f'gaussian_prior_penalty takes one [h, w, c] image '
                     f'shaped as the prior, {prior.precision.shape[:3]}; got '
                     f'{x.shape}.')
  h, w, _ = x.shape
  f = jnp.fft.fft2(x - prior.mean[None, None], axes=(0, 1))
  quad = jnp.einsum('ijc,ijcd,ijd->', f.conj(),
                    prior.precision.astype(f.dtype), f)
  return 0.5 * jnp.real(quad) / (h * w)


DISTANCES = {'l2': l2_distance, 'cosine': cosine_distance}


def get_distance(name: str):
  """Returns the gradient distance called `name` ('l2' or 'cosine')."""
  if name not in DISTANCES:
    raise ValueError(
        f'Unknown distance {name!r}; choose one of {sorted(DISTANCES)}.')
  return DISTANCES[name]
