"""How close a reconstruction is to the private image, and whether its label is.

Each function compares ONE pair of images `[h, w, c]` with values in [0, 1]
(or [0, max_val]); batch with `jax.vmap` from outside:

  >>> import jax, jax.numpy as jnp
  >>> from dlg_jax import metrics
  >>> x = jnp.zeros((4, 32, 32, 3)); ref = jnp.full((4, 32, 32, 3), 0.5)
  >>> jax.vmap(metrics.psnr)(x, ref).shape
  (4,)

References:
  Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE Trans. Image Processing 13(4),
  2004.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
from jax.typing import ArrayLike

# Identical images have mse 0 and an infinite PSNR; a finite ceiling keeps
# means over restarts and JSON output meaningful. 1e-10 caps PSNR at 100 dB
# for max_val 1, far above any real reconstruction.
MSE_EPSILON = 1e-10

# Wang et al.'s window, scikit-image's for gaussian_weights=True; smaller
# images get the largest odd window that fits, down to _SSIM_MIN_WINDOW.
_SSIM_WINDOW = 11
_SSIM_MIN_WINDOW = 3
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def image_pair(x: ArrayLike, ref: ArrayLike, *,
               batched: bool = False) -> tuple[jax.Array, jax.Array]:
  """Both as float32 of one shape, `[h, w, c]` (or `[batch, h, w, c]`).

  Raises:
    ValueError: other ranks, or shapes that differ.
  """
  x = jnp.asarray(x, jnp.float32)
  ref = jnp.asarray(ref, jnp.float32)
  if x.ndim != 3 + batched or x.shape != ref.shape:
    what = ('batches of the same shape [batch, h, w, c]' if batched else
            'one image each with the same shape [h, w, c] (vmap for batches)')
    raise ValueError(f'x and ref must be {what}, got {x.shape} and '
                     f'{ref.shape}.')
  return x, ref


def mse(x: ArrayLike, ref: ArrayLike) -> jax.Array:
  """Mean squared error over pixels and channels.

  Args:
    x: image `[h, w, c]`.
    ref: reference image `[h, w, c]`.

  Returns:
    float32 `[]`.
  """
  x, ref = image_pair(x, ref)
  return jnp.mean(jnp.square(x - ref))


def psnr(x: ArrayLike, ref: ArrayLike, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio, `10 log10(max_val^2 / mse)`, in dB.

  The mse is clipped below at `MSE_EPSILON` (1e-10), so identical images
  give a large finite value (100 dB for `max_val=1`) instead of infinity.

  Args:
    x: image `[h, w, c]`.
    ref: reference image `[h, w, c]`.
    max_val: the largest possible pixel value.

  Returns:
    float32 `[]`.
  """
  err = jnp.maximum(mse(x, ref), MSE_EPSILON)
  return 10.0 * jnp.log10(jnp.square(jnp.float32(max_val)) / err)


def ssim_window(height: int, width: int) -> int:
  """The side of the Gaussian window `ssim` uses on `height x width` images.

  11 (sigma 1.5, the paper's and scikit-image's window) when both sides are
  at least 11; for smaller images the largest odd size <= `min(height,
  width)`, so that the window fits ('valid' filtering keeps at least one
  pixel).

  Args:
    height: the image height.
    width: the image width.

  Returns:
    An odd window side in [3, 11].

  Raises:
    ValueError: the image is smaller than 3x3, too small for any window.
  """
  side = min(int(height), int(width))
  if side < _SSIM_MIN_WINDOW:
    raise ValueError(
        f'ssim needs images of at least {_SSIM_MIN_WINDOW}x'
        f'{_SSIM_MIN_WINDOW} (its smallest window), got {height}x{width}.')
  return min(_SSIM_WINDOW, side if side % 2 else side - 1)


def _gaussian_window(size: int) -> jax.Array:
  """Normalised `size x size` Gaussian, sigma 1.5, `[size, size]`."""
  half = (size - 1) / 2
  t = jnp.arange(size, dtype=jnp.float32) - half
  g = jnp.exp(-0.5 * jnp.square(t / _SSIM_SIGMA))
  g = g / jnp.sum(g)
  return jnp.outer(g, g)


def _filter_valid(img: jax.Array, size: int) -> jax.Array:
  """Per-channel Gaussian weighting, 'valid' mode.

  `[h, w, c]` to `[h - size + 1, w - size + 1, c]`.
  """
  c = img.shape[-1]
  kernel = jnp.tile(_gaussian_window(size)[:, :, None, None], (1, 1, 1, c))
  out = lax.conv_general_dilated(
      img[None], kernel, window_strides=(1, 1), padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
      precision=lax.Precision.HIGHEST)
  return out[0]


def ssim(x: ArrayLike, ref: ArrayLike, max_val: float = 1.0) -> jax.Array:
  """Structural similarity index (SSIM) of Wang et al. 2004.

  Local means, variances and covariance use an 11x11 Gaussian window with
  sigma 1.5 (the paper's choice), computed only where the window fits
  ('valid'), with `C1 = (0.01 max_val)^2` and `C2 = (0.03 max_val)^2`. The
  SSIM map is averaged over pixels and channels. This matches
  `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=max_val,
  channel_axis=-1)`.

  Images smaller than 11x11 (which scikit-image refuses) use the same
  Gaussian (sigma 1.5) cut to the largest odd window that fits,
  `ssim_window(h, w)`: 9x9 for 9x9 or 10x10 images, 7x7 for 7x7 or 8x8, down
  to 3x3; the value then equals scipy's Gaussian filtering truncated at that
  radius, cropped to the valid pixels. Images of 11x11 and more are unchanged
  by this.

  Args:
    x: image `[h, w, c]`, `h, w >= 3`.
    ref: reference image `[h, w, c]`.
    max_val: the largest possible pixel value (the data range).

  Returns:
    float32 `[]`, 1 for identical images.

  Raises:
    ValueError: shapes differ or the image is smaller than 3x3.

  References:
    Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from
    error visibility to structural similarity", IEEE TIP 2004.
  """
  x, ref = image_pair(x, ref)
  size = ssim_window(*x.shape[:2])
  c1 = jnp.square(_SSIM_K1 * jnp.float32(max_val))
  c2 = jnp.square(_SSIM_K2 * jnp.float32(max_val))
  mu_x = _filter_valid(x, size)
  mu_r = _filter_valid(ref, size)
  # (Co)variances do not change under a shift; centring each channel first
  # keeps E[x^2] - E[x]^2 from cancelling catastrophically in float32.
  xc = x - jnp.mean(x, axis=(0, 1), keepdims=True)
  rc = ref - jnp.mean(ref, axis=(0, 1), keepdims=True)
  mu_xc = _filter_valid(xc, size)
  mu_rc = _filter_valid(rc, size)
  # Population (not sample) moments, as in the paper's weighted estimates.
  var_x = _filter_valid(xc * xc, size) - mu_xc * mu_xc
  var_r = _filter_valid(rc * rc, size) - mu_rc * mu_rc
  cov = _filter_valid(xc * rc, size) - mu_xc * mu_rc
  num = (2.0 * mu_x * mu_r + c1) * (2.0 * cov + c2)
  den = (mu_x * mu_x + mu_r * mu_r + c1) * (var_x + var_r + c2)
  return jnp.mean(num / den)


def label_correct(pred: ArrayLike, true: ArrayLike) -> jax.Array:
  """Whether a recovered label equals the true one.

  Args:
    pred: recovered class id `[]`.
    true: true class id `[]`.

  Returns:
    bool `[]`.
  """
  pred = jnp.asarray(pred)
  true = jnp.asarray(true)
  if pred.shape != true.shape:
    raise ValueError(
        f'pred and true must have the same shape, got {pred.shape} and '
        f'{true.shape}.')
  return pred == true
