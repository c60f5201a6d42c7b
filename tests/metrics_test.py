"""Tests for dlg_jax.metrics."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from dlg_jax import metrics


def _reference_ssim(x, ref, max_val=1.0):
  """Independent SSIM (Wang et al. 2004) with scipy, as skimage computes it.

  Gaussian weights via `ndimage.gaussian_filter` (sigma 1.5, truncate 3.5,
  so radius 5: an 11x11 window), population moments, then only the pixels
  whose window lies inside the image (skimage's crop), averaged over pixels
  and channels.
  """
  x = np.asarray(x, np.float64)
  ref = np.asarray(ref, np.float64)
  c1 = (0.01 * max_val) ** 2
  c2 = (0.03 * max_val) ** 2
  pad = 5

  def blur(a):
    return ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5)

  maps = []
  for ch in range(x.shape[-1]):
    a, b = x[..., ch], ref[..., ch]
    ua, ub = blur(a), blur(b)
    vaa = blur(a * a) - ua * ua
    vbb = blur(b * b) - ub * ub
    vab = blur(a * b) - ua * ub
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / (
        (ua ** 2 + ub ** 2 + c1) * (vaa + vbb + c2))
    maps.append(s[pad:-pad, pad:-pad])
  return float(np.mean(maps))


class MetricsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # Silent broadcasting of mismatched ranks would hide shape bugs.
    self.enter_context(jax.numpy_rank_promotion('raise'))
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

  def test_ssim_identical_is_one(self):
    x = self.rng.random((16, 16, 3)).astype(np.float32)
    self.assertAlmostEqual(float(metrics.ssim(x, x)), 1.0, places=5)

  def test_ssim_constant_images_hand_value(self):
    # No variance: SSIM reduces to the luminance term
    # (2 a b + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = metrics.ssim(np.full((12, 12, 1), a), np.full((12, 12, 1), b))
    self.assertAlmostEqual(float(value), expected, places=5)

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

  def test_ssim_too_small(self):
    with self.assertRaisesRegex(ValueError, '11x11'):
      metrics.ssim(np.zeros((8, 8, 1)), np.zeros((8, 8, 1)))

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


if __name__ == '__main__':
  absltest.main()
