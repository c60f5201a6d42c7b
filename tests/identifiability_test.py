"""Tests for dlg_jax.vision.identifiability and the noise_bound launcher checks."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np

from dlg_jax.pipelines import noise_bound
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import identifiability

_SHAPE = (4, 4, 2)
_CLASSES = 5


def setUpModule():
  jax.config.update('jax_disable_most_optimizations', True)


def _tiny_mlp():
  """A sigmoid MLP on 4x4x2 images, 5 classes: d = 32, n = 613.

  Any differentiable model will do: the Gram is model-agnostic, and a
  LeNet would triple the compile time.
  """
  k1, k2 = jax.random.split(jax.random.key(0))
  d = int(np.prod(_SHAPE))
  params = {'hidden': jax.random.uniform(k1, (d + 1, 16), minval=-1.0),
            'out': jax.random.uniform(k2, (17, _CLASSES), minval=-1.0)}

  def apply_fn(p, x):
    h = x.reshape(x.shape[0], -1)
    h = jax.nn.sigmoid(h @ p['hidden'][:-1] + p['hidden'][-1:])
    return h @ p['out'][:-1] + p['out'][-1:]

  attack = attack_lib.make(apply_fn=apply_fn, image_shape=_SHAPE,
                           num_classes=_CLASSES)
  return attack, params


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(attack, params, x, labels):
  """The full `[n, d]` Jacobian of the flattened gradient, by jacfwd."""
  def update(flat):
    g = attack.threat.shared_update(params, flat.reshape(x.shape),
                                 labels)
    return flatten_util.ravel_pytree(g)[0]
  return jax.jacfwd(update)(x.ravel())


_gram = jax.jit(identifiability.gradient_jacobian_gram, static_argnums=0,
                static_argnames='chunk_size')


def _smooth_images(key, n, h, w, c):
  """Random images blurred by a 3x3 box, so that neighbours correlate."""
  noise = np.asarray(jax.random.uniform(key, (n, h, w, c)), np.float64)
  return sum(np.roll(noise, (a, b), axis=(1, 2))
             for a in (-1, 0, 1) for b in (-1, 0, 1)) / 9


class GramTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.attack, cls.params = _tiny_mlp()
    cls.x = jax.random.uniform(jax.random.key(1), (1, *_SHAPE))
    cls.labels = jax.nn.one_hot(jnp.array([3]), _CLASSES)
    jac = np.asarray(_jacobian(cls.attack, cls.params, cls.x, cls.labels),
                     np.float64)
    cls.jac = jac
    cls.brute = jac.T @ jac

  @parameterized.parameters(12, 1000)
  def test_equals_jacobian_transpose_jacobian(self, chunk_size):
    gram = _gram(self.attack.threat, self.params, self.x, self.labels,
                 chunk_size=chunk_size)
    self.assertEqual(gram.shape, (32, 32))
    scale = np.abs(self.brute).max()
    np.testing.assert_allclose(np.asarray(gram), self.brute,
                               atol=1e-5 * scale, rtol=0)
    np.testing.assert_array_equal(np.asarray(gram), np.asarray(gram).T)

  def test_no_jit_equals_jit(self):
    np.testing.assert_allclose(
        np.asarray(identifiability.gradient_jacobian_gram(
            self.attack.threat, self.params, self.x, self.labels,
            chunk_size=32)),
        np.asarray(_gram(self.attack.threat, self.params, self.x, self.labels,
                         chunk_size=32)),
        rtol=1e-5, atol=1e-6 * np.abs(self.brute).max())

  def test_batch_of_two_is_one_jacobian_over_both_images(self):
    x = jax.random.uniform(jax.random.key(2), (2, *_SHAPE))
    labels = jax.nn.one_hot(jnp.array([0, 4]), _CLASSES)
    gram = _gram(self.attack.threat, self.params, x, labels, chunk_size=32)
    jac = np.asarray(_jacobian(self.attack, self.params, x, labels),
                     np.float64)
    self.assertEqual(gram.shape, (64, 64))
    np.testing.assert_allclose(np.asarray(gram), jac.T @ jac,
                               atol=1e-5 * np.abs(jac.T @ jac).max())

  def test_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'chunk_size'):
      identifiability.gradient_jacobian_gram(
          self.attack.threat, self.params, self.x, self.labels, chunk_size=0)
    with self.assertRaisesRegex(ValueError, r'x must be \[batch'):
      identifiability.gradient_jacobian_gram(
          self.attack.threat, self.params, self.x[0], self.labels)

  def test_least_squares_mse_matches_monte_carlo(self):
    # The linear model: observe J e + noise; least squares recovers e with
    # error (J^T J)^-1 J^T noise.
    variance, draws = 1e-4, 2000
    jac, gram = self.jac, self.brute
    eig = np.linalg.eigvalsh(gram)
    predicted = float(identifiability.least_squares_mse(eig, variance))
    noise = np.random.default_rng(0).normal(
        scale=np.sqrt(variance), size=(draws, jac.shape[0]))
    errors = np.linalg.solve(gram, jac.T @ noise.T)  # [d, draws]
    measured = np.mean(np.square(errors))
    self.assertGreater(predicted, 0)
    self.assertAlmostEqual(measured / predicted, 1.0, delta=0.1)

  def test_bayes_is_below_prior_and_least_squares(self):
    gram = self.brute
    prior = np.asarray(identifiability.stationary_prior_covariance(
        _smooth_images(jax.random.key(3), 10, *_SHAPE)), np.float64)
    variances = np.array([1e-6, 1e-4, 1e-2, 1.0, 1e6])
    bayes = np.asarray(identifiability.bayes_mse(gram, prior, variances))
    ls = np.asarray(identifiability.least_squares_mse(
        np.linalg.eigvalsh(gram), variances))
    prior_mse = np.trace(prior) / len(prior)
    self.assertTrue(np.all(bayes <= prior_mse * (1 + 1e-5)), bayes)
    self.assertTrue(np.all(bayes <= ls * (1 + 1e-5)), (bayes, ls))
    self.assertTrue(np.all(np.diff(bayes) > 0), bayes)
    # Noise that drowns the gradient leaves the prior.
    self.assertAlmostEqual(bayes[-1] / prior_mse, 1.0, delta=1e-3)
    # Little noise leaves little error, as little as least squares.
    self.assertLess(bayes[0], 1e-2 * prior_mse)


class BayesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # Float64, so that the comparisons below are tight.
    self.enter_context(jax.enable_x64(True))
    rng = np.random.default_rng(0)
    self.d = 6
    self.jac = rng.normal(size=(9, self.d)) * np.array([3, 1, .3, .1, .03, 0])
    a = rng.normal(size=(self.d, self.d))
    self.prior = a @ a.T / self.d + 0.1 * np.eye(self.d)

  def test_matches_the_direct_formula(self):
    gram = self.jac.T @ self.jac  # singular: the last column is 0
    for variance in (1e-3, 1.0, 10.0):
      direct = np.trace(np.linalg.inv(
          gram / variance + np.linalg.inv(self.prior))) / self.d
      self.assertAlmostEqual(
          float(identifiability.bayes_mse(gram, self.prior, variance)),
          direct, delta=1e-4 * direct)

  def test_matches_monte_carlo_of_the_posterior_mean(self):
    variance, draws = 0.5, 20000
    rng = np.random.default_rng(1)
    gram = self.jac.T @ self.jac
    x = rng.multivariate_normal(np.zeros(self.d), self.prior, size=draws)
    g = x @ self.jac.T + rng.normal(scale=np.sqrt(variance),
                                    size=(draws, len(self.jac)))
    post = np.linalg.inv(gram / variance + np.linalg.inv(self.prior))
    estimate = g @ self.jac @ post.T / variance
    measured = np.mean(np.square(estimate - x))
    predicted = float(identifiability.bayes_mse(gram, self.prior, variance))
    self.assertAlmostEqual(measured / predicted, 1.0, delta=0.03)

  def test_zero_variance_leaves_the_prior_in_the_null_space(self):
    gram = self.jac.T @ self.jac  # J e_d = 0
    # The prior variance that the data cannot touch: of e_d given the rest.
    conditional = 1 / np.linalg.inv(self.prior)[-1, -1]
    self.assertAlmostEqual(
        float(identifiability.bayes_mse(gram, self.prior, 0.0)),
        conditional / self.d, delta=1e-4)

  def test_rejects_bad_input(self):
    gram = self.jac.T @ self.jac
    for bad in (-1e-4, np.nan, [1e-4, -1.0]):
      with self.assertRaisesRegex(ValueError, 'variance'):
        identifiability.bayes_mse(gram, self.prior, bad)
      with self.assertRaisesRegex(ValueError, 'variance'):
        identifiability.least_squares_mse(np.ones(3), bad)
    with self.assertRaisesRegex(ValueError, 'prior_cov'):
      identifiability.bayes_mse(gram, self.prior[:3], 1.0)
    with self.assertRaisesRegex(ValueError, 'eigenvalues'):
      identifiability.least_squares_mse(gram, 1.0)


class LeastSquaresTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.enter_context(jax.enable_x64(True))

  def test_is_variance_times_mean_inverse_eigenvalue(self):
    mse = identifiability.least_squares_mse(
        np.array([1.0, 4.0, 0.5]), np.array([1e-4, 1e-2]))
    np.testing.assert_allclose(np.asarray(mse), [1e-4 * 3.25 / 3,
                                                 1e-2 * 3.25 / 3], rtol=1e-6)

  def test_singular_directions_are_floored_not_dropped(self):
    eig = np.array([0.0, -1e-20, 1.0, 2.0])
    floor = float(identifiability.default_floor(eig))
    self.assertAlmostEqual(floor, 2.0 * np.finfo(eig.dtype).eps)
    mse = float(identifiability.least_squares_mse(eig, 1.0))
    self.assertAlmostEqual(mse, (2 / floor + 1.5) / 4, delta=1e-6 * mse)
    self.assertAlmostEqual(
        float(identifiability.least_squares_mse(eig, 1.0, floor=0.5)),
        (4 + 1.5) / 4, places=6)

  def test_psnr_and_summary(self):
    self.assertAlmostEqual(float(identifiability.mse_to_psnr(1e-3)), 30.0,
                           places=4)
    s = identifiability.spectrum_summary([1e-3, 0.05, 0.5, 2.0, 300.0])
    self.assertEqual(s, {'min': 1e-3, 'median': 0.5, 'max': 300.0,
                         'frac_below_0.01': 0.2, 'frac_below_0.1': 0.4})


class StationaryPriorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.images = _smooth_images(jax.random.key(4), 5, 6, 6, 2)
    with jax.enable_x64(True):
      cls.cov = np.asarray(
          identifiability.stationary_prior_covariance(cls.images))

  def test_symmetric_positive_semidefinite(self):
    self.assertEqual(self.cov.shape, (72, 72))
    np.testing.assert_allclose(self.cov, self.cov.T, atol=1e-7)
    self.assertGreater(np.linalg.eigvalsh(self.cov).min(), -1e-6)

  def test_diagonal_is_the_pixel_variance(self):
    centred = self.images - self.images.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(np.diag(self.cov).reshape(6, 6, 2),
                               np.broadcast_to(np.mean(
                                   np.square(centred), axis=(0, 1, 2)),
                                               (6, 6, 2)), rtol=1e-4)

  def test_depends_only_on_the_offset_and_its_length(self):
    cov = self.cov.reshape(6, 6, 2, 6, 6, 2)
    for (i, j), (di, dj) in [((0, 0), (1, 0)), ((2, 3), (1, 0)),
                             ((5, 5), (1, 0)), ((4, 1), (0, 1)),
                             ((1, 2), (0, -1))]:
      np.testing.assert_allclose(
          cov[i, j, :, (i + di) % 6, (j + dj) % 6, :],
          cov[0, 0, :, 1, 0, :], atol=1e-6)
    # Smooth images: neighbours correlate, more than pixels far apart.
    self.assertGreater(cov[0, 0, 0, 1, 0, 0], cov[0, 0, 0, 3, 3, 0])
    self.assertGreater(cov[0, 0, 0, 1, 0, 0], 0.3 * cov[0, 0, 0, 0, 0, 0])

  def test_matches_a_filter_applied_to_basis_images(self):
    # Independent construction: the ring-averaged cross-spectrum applied, as
    # a filter, to each one-pixel image.
    n, h, w, c = self.images.shape
    f = np.fft.fft2(self.images - self.images.mean(axis=(0, 1, 2)),
                    axes=(1, 2))
    power = np.einsum('nijc,nijd->ijcd', f, f.conj()) / (n * h * w)
    ky, kx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w,
                         indexing='ij')
    ring = np.round(np.hypot(ky, kx)).astype(int)
    smooth = np.zeros_like(power)
    for r in np.unique(ring):
      smooth[ring == r] = power[ring == r].mean(axis=0)
    cols = []
    for e in np.eye(h * w * c):
      fe = np.fft.fft2(e.reshape(h, w, c), axes=(0, 1))
      cols.append(np.real(np.fft.ifft2(
          np.einsum('ijcd,ijd->ijc', smooth, fe), axes=(0, 1))).ravel())
    np.testing.assert_allclose(self.cov, np.stack(cols, axis=1), atol=1e-6)

  def test_rejects_bad_shape(self):
    with self.assertRaisesRegex(ValueError, 'images'):
      identifiability.stationary_prior_covariance(np.zeros((6, 6, 2)))


class LauncherChecksTest(absltest.TestCase):
  """Bad arguments fail before any work, naming the flag."""

  def test_unknown_image(self):
    with self.assertRaisesRegex(ValueError, '--images.*no bundled.*20'):
      noise_bound.run(images=[0, 20], variances=[1e-4])
    with self.assertRaisesRegex(ValueError, '--images'):
      noise_bound.run(images=['x'], variances=[1e-4])
    with self.assertRaisesRegex(ValueError, '--images'):
      noise_bound.run(images=[], variances=[1e-4])

  def test_bad_variance(self):
    for bad in ([-1e-4], [0.0], ['nan'], [], ['a']):
      with self.assertRaisesRegex(ValueError, '--variances'):
        noise_bound.run(images=[0], variances=bad)

  def test_prior_images_overlap(self):
    with self.assertRaisesRegex(ValueError, '--prior_images'):
      noise_bound.run(images=[0, 1], variances=[1e-4], prior_images=[1, 2])
    with self.assertRaisesRegex(ValueError, '--prior_images'):
      noise_bound.run(images=[0], variances=[1e-4], prior_images=[25])


if __name__ == '__main__':
  absltest.main()
