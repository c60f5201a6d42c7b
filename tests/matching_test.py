"""Tests for dlg_jax.vision.matching (pairing reconstructions with originals)."""

import itertools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from dlg_jax.vision import data
from dlg_jax.vision import matching
from dlg_jax.vision import metrics
class MatchingTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)
    self.ref = data.load_dataset('cifar100', count=8).x

  @parameterized.parameters(1, 2, 4, 8)
  def test_recovers_permutation_of_noisy_batch(self, batch):
    ref = self.ref[:batch]
    for _ in range(3):
      perm = self.rng.permutation(batch)
      noisy = ref + 0.03 * self.rng.standard_normal(ref.shape).astype(
          np.float32)
      x = noisy[perm]  # slot j holds original perm[j]
      got = matching.match(x, ref)
      # x[got[i]] is paired with ref[i], so perm[got[i]] == i.
      np.testing.assert_array_equal(perm[got], np.arange(batch))

  def test_maximises_total_psnr(self):
    # Brute force over all 4! pairings of unrelated images.
    x = self.rng.random((4, 16, 16, 3)).astype(np.float32)
    ref = self.rng.random((4, 16, 16, 3)).astype(np.float32)
    psnr = np.asarray(matching.psnr_matrix(x, ref))
    best = max(itertools.permutations(range(4)),
               key=lambda p: sum(psnr[p[i], i] for i in range(4)))
    got = matching.match(x, ref)
    self.assertAlmostEqual(sum(psnr[got[i], i] for i in range(4)),
                           sum(psnr[best[i], i] for i in range(4)), places=4)

  def test_psnr_matrix_entries(self):
    x = self.rng.random((3, 16, 16, 3)).astype(np.float32)
    ref = self.ref[:3, :16, :16]
    got = np.asarray(matching.psnr_matrix(x, ref))
    self.assertEqual(got.shape, (3, 3))
    for j, i in itertools.product(range(3), range(3)):
      self.assertAlmostEqual(got[j, i], float(metrics.psnr(x[j], ref[i])),
                             places=4)

  def test_matched_metrics_per_original(self):
    ref = self.ref[:4]
    perm = np.array([2, 0, 3, 1])
    x = ref[perm].copy()
    x[np.argmax(perm == 3)] += 0.1  # original 3 is reconstructed worse
    true_labels = np.array([5, 6, 7, 8])
    labels = true_labels[perm].copy()
    labels[np.argmax(perm == 1)] = 0  # original 1 gets a wrong label
    m = matching.matched_metrics(x, ref, labels, true_labels)
    np.testing.assert_array_equal(perm[m.matched_to], np.arange(4))
    np.testing.assert_array_equal(m.label_correct, [True, False, True, True])
    self.assertGreater(m.psnr[0], 90.0)
    self.assertLess(m.psnr[3], 25.0)
    self.assertAlmostEqual(m.ssim[0], 1.0, places=4)
    self.assertLess(m.lpips[0], 1e-6)
    # A brightness shift of 0.1 is mild to LPIPS (0.007 measured).
    self.assertGreater(m.lpips[3], 1e-3)
    means = m.mean()
    self.assertAlmostEqual(means['label_accuracy'], 0.75)
    self.assertAlmostEqual(means['psnr'], float(np.mean(m.psnr)), places=4)

  def test_reconstructions_are_clipped(self):
    ref = self.ref[:2].copy()
    ref[:, :8] = 1.0
    x = ref.copy()
    x[:, :8] = 3.0  # equal to ref once clipped to [0, 1]
    m = matching.matched_metrics(x, ref, [0, 1], [0, 1])
    np.testing.assert_array_equal(m.matched_to, [0, 1])
    np.testing.assert_array_less(90.0, m.psnr)

  def test_pairs_by_lpips(self):
    ref = self.ref[:4]
    perm = np.array([2, 0, 3, 1])
    noisy = np.clip(ref + 0.05 * self.rng.standard_normal(ref.shape), 0,
                    1).astype(np.float32)
    got = matching.match(noisy[perm], ref, by='lpips')
    np.testing.assert_array_equal(perm[got], np.arange(4))
    # It minimises the total LPIPS: brute force over all 3! pairings of
    # unrelated 16x16 images (upsampled to 32x32 by metrics.lpips).
    x = self.rng.random((3, 16, 16, 3)).astype(np.float32)
    lp = np.asarray(matching.lpips_matrix(x, ref[:3, :16, :16]))
    self.assertAlmostEqual(lp[1, 2], float(metrics.lpips(x[1], ref[2, :16,
                                                                    :16])),
                           places=5)
    best = min(itertools.permutations(range(3)),
               key=lambda p: sum(lp[p[i], i] for i in range(3)))
    got = matching.match(x, ref[:3, :16, :16], by='lpips')
    self.assertAlmostEqual(sum(lp[got[i], i] for i in range(3)),
                           sum(lp[best[i], i] for i in range(3)), places=5)
    # The LPIPS of each pair, under that pairing: 0 for an exact copy.
    m = matching.matched_metrics(ref[perm], ref, [0] * 4, [0] * 4,
                                 by='lpips')
    np.testing.assert_array_equal(perm[m.matched_to], np.arange(4))
    np.testing.assert_array_less(m.lpips, 1e-6)
    with self.assertRaisesRegex(ValueError, "by must be one of.*'ssim'"):
      matching.match(ref, ref, by='ssim')

  def test_bad_shapes_raise(self):
    with self.assertRaisesRegex(ValueError, 'same shape'):
      matching.match(self.ref[:2], self.ref[:3])
    with self.assertRaisesRegex(ValueError, r'\[batch, h, w, c\]'):
      matching.psnr_matrix(self.ref[0], self.ref[0])
    with self.assertRaisesRegex(ValueError, 'labels'):
      matching.matched_metrics(self.ref[:2], self.ref[:2], [0], [0, 1])


if __name__ == '__main__':
  absltest.main()
