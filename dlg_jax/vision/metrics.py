"""How close a reconstruction is to the private image, and whether its label is.

Each function compares ONE pair of images `[h, w, c]` with values in [0, 1]
(or [0, max_val]); batch with `jax.vmap` from outside:

  >>> import jax, jax.numpy as jnp
  >>> from dlg_jax.vision import metrics
  >>> x = jnp.zeros((4, 32, 32, 3)); ref = jnp.full((4, 32, 32, 3), 0.5)
  >>> jax.vmap(metrics.psnr)(x, ref).shape
  (4,)

MSE and SSIM are computed by dm-pix (DeepMind's JAX image library), PSNR
from dm-pix's MSE; this module fixes their conventions: the PSNR ceiling for
identical images, the SSIM window for images smaller than 11x11, and the
shape checks.

References:
  Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE Trans. Image Processing 13(4),
  2004.
"""

from __future__ import annotations

import dm_pix
import jax
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
  """Mean squared error over pixels and channels (`dm_pix.mse`).

  Args:
    x: image `[h, w, c]`.
    ref: reference image `[h, w, c]`.

  Returns:
    float32 `[]`.
  """
  x, ref = image_pair(x, ref)
  return dm_pix.mse(x, ref)


def psnr(x: ArrayLike, ref: ArrayLike, max_val: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio, `10 log10(max_val^2 / mse)`, in dB.

  The mse (`dm_pix.mse`) is clipped below at `MSE_EPSILON` (1e-10), so
  identical images give a large finite value (100 dB for `max_val=1`) and a
  zero gradient. `dm_pix.psnr` itself is not used: it assumes `max_val` 1 and
  has no floor, so identical images give infinity and a NaN gradient.

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


def ssim(x: ArrayLike, ref: ArrayLike, max_val: float = 1.0) -> jax.Array:
  """Structural similarity index (SSIM) of Wang et al. 2004, by `dm_pix.ssim`.

  Local means, variances and covariance use an 11x11 Gaussian window with
  sigma 1.5 (the paper's choice), computed only where the window fits
  ('valid'), with `C1 = (0.01 max_val)^2` and `C2 = (0.03 max_val)^2`. The
  SSIM map is averaged over pixels and channels. This matches
  `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=max_val,
  channel_axis=-1)` to float32 rounding: dm-pix forms the (co)variances as
  E[xy] - E[x]E[y] in float32, which is within 4e-6 of float64 on the
  bundled 32x32 CIFAR-100 images and within about 1e-4 on flat or small
  ones.

  Images smaller than 11x11 (which scikit-image refuses) use the same
  Gaussian (sigma 1.5) cut to the largest odd window that fits,
  `ssim_window(h, w)`: 9x9 for 9x9 or 10x10 images, 7x7 for 7x7 or 8x8, down
  to 3x3; the value then equals scipy's Gaussian filtering truncated at that
  radius, cropped to the valid pixels.

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
  return dm_pix.ssim(
      x, ref, max_val=max_val, filter_size=ssim_window(*x.shape[:2]),
      filter_sigma=_SSIM_SIGMA, k1=_SSIM_K1, k2=_SSIM_K2,
      precision=jax.lax.Precision.HIGHEST)


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
