r"""How well a noisy shared gradient determines the image, to first order.

The attacker sees `g = G(x) + n`. Here `G` is the client's shared update
(`attack.Threat.shared_update`) as a function of the private input `x` (`d`
pixels), with the model and label fixed. `n` is zero-mean noise of covariance
`variance * I`, as `defenses.gaussian_noise` adds. Near the true image, `G` is
linear: `G(x + e) ~ G(x) + J e`, with `J = dG/dx` of shape `[n, d]`. In that
linear model, two estimators have an expected error that is known in closed
form. Both depend on `J` only through the Gram matrix `J^T J`
(`gradient_jacobian_gram`):

* Least squares, the minimiser of the DLG objective `||G(x') - g||^2`:
  `e = (J^T J)^-1 J^T n`, so `E||e||^2 = variance * trace((J^T J)^-1)`
  (`least_squares_mse`). A direction in which the gradient barely changes,
  one with a small eigenvalue of `J^T J`, takes up the noise with gain
  `1 / eigenvalue`. Without a prior, the attack cannot do better than this.
* Bayes (MMSE), the posterior mean under a Gaussian image prior
  `x ~ N(mu, Sigma)`. Its error covariance is
  `(J^T J / variance + Sigma^-1)^-1` (`bayes_mse`), for every prior mean and
  every observed `g`. No estimator does better on images drawn from that
  prior. `stationary_prior_covariance` fits `Sigma` on images.

The assumptions are those of the linearisation:
* The error is small enough that `G` is linear over it. At larger noise the
  true error can differ in either direction. For example, the clipping of
  pixels to [0, 1] by PSNR is ignored.
* The attacker knows the model, the label and the noise model, and finds the
  global minimiser.
* Only the noise's covariance enters. So the least-squares numbers hold for
  Laplacian noise of the same variance too, and the Bayes number is then the
  best LINEAR estimator's error.
* The Bayes number averages over images drawn from the prior. For one given
  image, the posterior mean's error has the same covariance, but the error it
  measures is against that image, which the prior may fit well or badly.

PSNRs here are of the expected MSE (`mse_to_psnr`), for pixels in [0, 1].

Example:

  >>> from dlg_jax.vision import identifiability as ident
  >>> gram = ident.gradient_jacobian_gram(attack.threat, params, x, onehot)
  >>> eig = jnp.linalg.eigvalsh(gram)
  >>> ident.mse_to_psnr(ident.least_squares_mse(eig, 1e-4))  # dB
  >>> ident.mse_to_psnr(ident.bayes_mse(
  ...     gram, ident.stationary_prior_covariance(other_images), 1e-4))

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5
  (the noise defense analysed here).
  Kay, "Fundamentals of Statistical Signal Processing: Estimation Theory",
  1993, chapters 8 (least squares) and 10 (the Bayesian linear model).
"""

from collections.abc import Sequence
from typing import Any

import jax
from jax import flatten_util
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from dlg_jax.core import objectives
from dlg_jax.vision import attack as attack_lib
def _check_variance(variance: ArrayLike) -> jax.Array:
  """`variance` as an array after checking it, unless it is traced."""
  if not isinstance(variance, jax.core.Tracer):
    v = np.asarray(variance, np.float64)
    if not np.all(np.isfinite(v)) or np.any(v < 0):
      raise ValueError(
          f'variance must be finite and >= 0, got {np.asarray(variance)}.')
  return jnp.asarray(variance)


def _check_square(name: str, a: jax.Array) -> None:
  if a.ndim != 2 or a.shape[0] != a.shape[1]:
    raise ValueError(f'{name} must be a square matrix [d, d], got shape '
                     f'{a.shape}.')


def gradient_jacobian_gram(threat: attack_lib.Threat, params: Any,
                           x: ArrayLike, labels: ArrayLike, *,
                           chunk_size: int = 128) -> jax.Array:
  """`J^T J`, with `J` the Jacobian of the shared update in the input at `x`.

  Column `k` is `J^T (J e_k)`: a forward-mode product, then its transpose,
  about the cost of a few gradients. The full `[n, d]` Jacobian is never
  held, only `chunk_size` columns of it at a time. The result is in the
  dtype of `x` and `params`. To get float64, enable `jax_enable_x64` and pass
  float64 `x` and `params`. For the DLG LeNet on CIFAR-100 image 0, the
  eigenvalues of a float32 Gram (taken in float64) agree with float64 to
  within 0.3%, down to the smallest (5.6e-6 against a largest of 224).

  Args:
    threat: the victim and its client; its `shared_update` (gradient, or
      FedAvg update) is the function differentiated.
    params: the shared model's parameters (or a `client.Victim`).
    x: `[batch, h, w, c]`, the inputs at which to linearise (the private
      images).
    labels: `[batch, num_classes]`, soft labels. The true one-hot labels for
      an attacker who knows them (iDLG reads them exactly for batch 1).
    chunk_size: columns computed together. It trades memory for speed and
      does not change the result.

  Returns:
    `[d, d]`, symmetric, with `d = batch * h * w * c` and pixels in `x.ravel()`
    order.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'x must be [batch, h, w, c], got shape {x.shape}.')
  labels = jnp.asarray(labels, x.dtype)

  def update(flat):
    g = threat.shared_update(params, flat.reshape(x.shape), labels)
    return flatten_util.ravel_pytree(g)[0]

  flat = x.ravel()
  _, jvp = jax.linearize(update, flat)
  vjp = jax.linear_transpose(jvp, flat)
  column = lambda e: vjp(jvp(e))[0]
  gram = jax.lax.map(column, jnp.eye(flat.size, dtype=flat.dtype),
                     batch_size=min(chunk_size, flat.size))
  # J^T J is symmetric; rounding in the products is not.
  return (gram + gram.T) / 2


def default_floor(eigenvalues: ArrayLike) -> jax.Array:
  """The eigenvalue below which `J^T J` is numerically singular.

  `max * eps` in the eigenvalues' dtype. A symmetric eigensolver is
  backward stable: it finds each eigenvalue to within about `eps * max`, so
  smaller ones cannot be told from 0. It is about 5e-14 in float64 for the
  DLG LeNet on CIFAR-100 (max 224 to 270), and 3e-5 in float32. Compute
  the eigenvalues in float64, even from a float32 Gram.

  Args:
    eigenvalues: `[d]`, of `J^T J`.

  Returns:
    A scalar.
  """
  eig = jnp.asarray(eigenvalues)
  return jnp.max(eig) * jnp.finfo(eig.dtype).eps


def least_squares_mse(eigenvalues: ArrayLike, variance: ArrayLike, *,
                      floor: ArrayLike | None = None) -> jax.Array:
  """Expected per-pixel MSE of the least-squares (plain DLG) estimate.

  `variance * trace((J^T J)^-1) / d = variance * mean(1 / eigenvalues)`, in
  the linear model of the module docstring.

  An eigenvalue at or near 0 means that a direction is not determined at
  all. The pseudo-inverse would count such a direction as error-free, which
  is wrong. Instead, eigenvalues below `floor` are raised to `floor`. Such a
  direction then counts as barely determined, with a large but finite error
  `variance / floor`. With float64 eigenvalues of the DLG LeNet, no
  eigenvalue is floored (see `default_floor`).

  Args:
    eigenvalues: `[d]`, of `J^T J`.
    variance: the noise variance per gradient entry, `[]` or `[k]`, >= 0.
    floor: the smallest eigenvalue used; None is `default_floor`.

  Returns:
    The MSE, shaped like `variance`.
  """
  variance = _check_variance(variance)
  eig = jnp.asarray(eigenvalues)
  if eig.ndim != 1:
    raise ValueError(f'eigenvalues must be [d], got shape {eig.shape}.')
  floor = default_floor(eig) if floor is None else jnp.asarray(floor)
  return variance * jnp.mean(1.0 / jnp.maximum(eig, floor))


def _sqrtm_psd(a: jax.Array) -> jax.Array:
  w, v = jnp.linalg.eigh(a)
  return (v * jnp.sqrt(jnp.maximum(w, 0.0))[None, :]) @ v.T


def bayes_mse(gram: ArrayLike, prior_cov: ArrayLike,
              variance: ArrayLike) -> jax.Array:
  """Expected per-pixel MSE of the Bayes (posterior mean) estimate.

  `trace((J^T J / variance + Sigma^-1)^-1) / d`, the posterior variance of
  the linear Gaussian model in the module docstring. It is computed as
  `trace(S (S J^T J S / variance + I)^-1 S) / d` with `S = Sigma^(1/2)`.
  That form holds for a singular `J^T J` and a singular `Sigma` (positive
  semi-definite), and it inverts only matrices with eigenvalues >= 1. One
  eigendecomposition serves every variance. The result is at most the prior
  variance `trace(Sigma) / d`, which it reaches as `variance` grows. It is
  also at most `least_squares_mse`.

  Args:
    gram: `[d, d]`, `J^T J` (`gradient_jacobian_gram`).
    prior_cov: `[d, d]`, the prior's covariance `Sigma` in the same pixel
      order (`stationary_prior_covariance`). For a batch of inputs, use the
      block-diagonal `jax.scipy.linalg.block_diag(*[Sigma] * batch)`.
    variance: the noise variance per gradient entry, `[]` or `[k]`, >= 0.

  Returns:
    The MSE, shaped like `variance`.
  """
  variance = _check_variance(variance)
  gram, prior_cov = jnp.asarray(gram), jnp.asarray(prior_cov)
  _check_square('gram', gram)
  _check_square('prior_cov', prior_cov)
  if gram.shape != prior_cov.shape:
    raise ValueError(f'gram {gram.shape} and prior_cov {prior_cov.shape} '
                     'must have the same shape.')
  s = _sqrtm_psd(prior_cov)
  a, w = jnp.linalg.eigh(s @ gram @ s)
  # Directions the data does not see must stay at exactly 0, for variance 0.
  a = jnp.where(a > jnp.max(a) * a.size * jnp.finfo(a.dtype).eps, a, 0.0)
  # The prior variance along each eigenvector of S J^T J S.
  c = jnp.sum(w * (prior_cov @ w), axis=0)
  v = variance[..., None]
  # Explicit ranks: variance [k] against the d eigen-directions.
  lead = (1,) * (v.ndim - 1)
  a, c = a.reshape(lead + a.shape), c.reshape(lead + c.shape)
  # c / (1 + a / v), written so that variance 0 gives 0 where a > 0.
  shrink = jnp.where(a > 0, v / (v + a), 1.0)
  return jnp.sum(c * shrink, axis=-1) / gram.shape[0]


def stationary_prior_covariance(images: ArrayLike) -> jax.Array:
  """The covariance of a stationary, isotropic Gaussian fitted on images.

  Per-channel means are removed. The 3x3 (c x c) cross-spectrum of the
  colour channels is averaged over the images and then over rings of equal
  integer radial frequency `round(|f|)`, with `f` in cycles per image. So the
  covariance between two pixels depends only on their (circular) offset and
  its length. It is a smooth image model with about `h / 2` spectra fitted,
  not one per pixel pair, so a few images are enough. Its diagonal,
  `trace / d`, is the mean squared deviation of the pixels from their
  channel's mean.

  Args:
    images: `[n, h, w, c]`, n >= 1, values in [0, 1].

  Returns:
    `[h * w * c, h * w * c]`, symmetric positive semi-definite, in
    `image.ravel()` order, in the images' float dtype.
  """
  images = jnp.asarray(images)
  if images.ndim == 4 and not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  _, smooth = objectives.ring_spectrum(images)
  _, h, w, c = images.shape
  # The covariance at each offset; real because every ring is symmetric.
  kernel = jnp.real(jnp.fft.ifft2(smooth, axes=(0, 1))).astype(images.dtype)
  i, j = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing='ij')
  di = (i.ravel()[:, None] - i.ravel()[None, :]) % h
  dj = (j.ravel()[:, None] - j.ravel()[None, :]) % w
  cov = kernel[di[:, :, None, None], dj[:, :, None, None],
               jnp.arange(c)[:, None], jnp.arange(c)[None, :]]
  # [hw, hw, c, c] -> pixel order (i, j, channel) on both sides.
  cov = cov.transpose(0, 2, 1, 3).reshape(h * w * c, h * w * c)
  return (cov + cov.T) / 2


def mse_to_psnr(mse: ArrayLike) -> jax.Array:
  """PSNR in dB of a per-pixel MSE, for pixels in [0, 1]."""
  return -10.0 * jnp.log10(jnp.asarray(mse))


def spectrum_summary(eigenvalues: ArrayLike,
                     thresholds: Sequence[float] = (0.01, 0.1)
                     ) -> dict[str, float]:
  """Min, median, max and the fraction of eigenvalues below each threshold.

  Args:
    eigenvalues: `[d]`.
    thresholds: fractions reported as `frac_below_<threshold>`.

  Returns:
    A dict of Python floats.
  """
  eig = np.asarray(eigenvalues, np.float64)
  out = {'min': float(eig.min()), 'median': float(np.median(eig)),
         'max': float(eig.max())}
  for t in thresholds:
    out[f'frac_below_{t:g}'] = float(np.mean(eig < t))
  return out
