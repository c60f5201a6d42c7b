"""Tests for dlg_jax.core.objectives."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np

from dlg_jax.core import objectives
from dlg_jax.vision import identifiability


def setUpModule():
  # The programs here are a few dozen flops: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _grads():
  # Flattened, g = (1, 2, 3) and t = (0, 0, 1): leaf 'a' then leaf 'b'.
  grads = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([[3.0]])}
  target = {'a': jnp.array([0.0, 0.0]), 'b': jnp.array([[1.0]])}
  return grads, target


def _random_tree(key, dtype=jnp.float32):
  ka, kb = jax.random.split(key)
  return {'conv': {'kernel': jax.random.normal(ka, (2, 2, 1, 3), dtype)},
          'dense': {'bias': jax.random.normal(kb, (4,), dtype)}}


class DistanceTest(parameterized.TestCase):

  def test_l2_hand_value(self):
    grads, target = _grads()
    # (1 - 0)^2 + (2 - 0)^2 + (3 - 1)^2.
    self.assertAlmostEqual(float(objectives.l2_distance(grads, target)), 9.0)
    self.assertAlmostEqual(float(objectives.l2_distance(grads, grads)), 0.0)

  def test_l2_weights(self):
    grads, target = _grads()
    self.assertAlmostEqual(
        float(objectives.l2_distance(grads, target, 3.0)), 27.0)
    # 2 * (1 + 4) + 0.5 * 4.
    self.assertAlmostEqual(
        float(objectives.l2_distance(grads, target, {'a': 2.0, 'b': 0.5})),
        12.0, places=5)

  def test_cosine_hand_value(self):
    grads, target = _grads()
    # <g, t> = 3, ||g|| = sqrt(14), ||t|| = 1.
    self.assertAlmostEqual(
        float(objectives.cosine_distance(grads, target)),
        1 - 3 / np.sqrt(14), places=6)
    self.assertAlmostEqual(
        float(objectives.cosine_distance(grads, grads)), 0.0, places=6)
    negated = jax.tree.map(jnp.negative, grads)
    self.assertAlmostEqual(
        float(objectives.cosine_distance(grads, negated)), 2.0, places=6)

  def test_cosine_weights(self):
    grads, target = _grads()
    # <g, t>_w = 0.5 * 3, ||g||_w^2 = 2 * 5 + 0.5 * 9, ||t||_w^2 = 0.5 * 1.
    self.assertAlmostEqual(
        float(objectives.cosine_distance(grads, target,
                                         {'a': 2.0, 'b': 0.5})),
        1 - 1.5 / np.sqrt(14.5 * 0.5), places=6)
    # A common scalar weight cancels.
    self.assertAlmostEqual(
        float(objectives.cosine_distance(grads, target, 7.0)),
        1 - 3 / np.sqrt(14), places=6)

  def test_cosine_scale_invariant(self):
    grads, target = _random_tree(jax.random.key(0)), _random_tree(
        jax.random.key(1))
    scaled = jax.tree.map(lambda g: 1e3 * g, grads)
    np.testing.assert_allclose(
        objectives.cosine_distance(scaled, target),
        objectives.cosine_distance(grads, target), rtol=1e-5)

  def test_cosine_zero_gradient_is_finite(self):
    grads, target = _grads()
    zeros = jax.tree.map(jnp.zeros_like, grads)
    self.assertAlmostEqual(
        float(objectives.cosine_distance(zeros, target)), 1.0)

  @parameterized.parameters(objectives.l2_distance,
                            objectives.cosine_distance, objectives.residual)
  def test_structure_mismatch_raises(self, fn):
    grads, target = _grads()
    with self.assertRaisesRegex(ValueError, 'structure'):
      fn(grads, {'a': target['a']})

  @parameterized.parameters(objectives.l2_distance,
                            objectives.cosine_distance, objectives.residual)
  def test_weights_mismatch_raises(self, fn):
    grads, target = _grads()
    with self.assertRaisesRegex(ValueError, 'weights has 1 leaves'):
      fn(grads, target, {'a': 1.0})

  @parameterized.parameters((None,), (2.5,), ({'a': 2.0, 'b': 0.5},))
  def test_residual_squared_norm_is_l2(self, weights):
    grads, target = _grads()
    r = objectives.residual(grads, target, weights)
    self.assertEqual(r.shape, (3,))
    np.testing.assert_allclose(
        jnp.sum(jnp.square(r)),
        objectives.l2_distance(grads, target, weights), rtol=1e-6)

  def test_residual_random_tree(self):
    grads, target = _random_tree(jax.random.key(0)), _random_tree(
        jax.random.key(1))
    r = objectives.residual(grads, target)
    self.assertEqual(r.shape, (12 + 4,))
    np.testing.assert_allclose(jnp.sum(jnp.square(r)),
                               objectives.l2_distance(grads, target),
                               rtol=1e-5)

  @parameterized.parameters('l2', 'cosine')
  def test_get_distance(self, name):
    self.assertIs(objectives.get_distance(name), objectives.DISTANCES[name])

  def test_get_distance_unknown_raises(self):
    with self.assertRaisesRegex(ValueError, "'manhattan'"):
      objectives.get_distance('manhattan')

  @parameterized.parameters(objectives.l2_distance,
                            objectives.cosine_distance)
  def test_vmap_equals_stack(self, fn):
    target = _random_tree(jax.random.key(0))
    batch = jax.vmap(_random_tree)(jax.random.split(jax.random.key(1), 3))
    weights = {'conv': {'kernel': 2.0}, 'dense': {'bias': 0.5}}
    got = jax.vmap(fn, in_axes=(0, None, None))(batch, target, weights)
    want = jnp.stack([
        fn(jax.tree.map(lambda a, i=i: a[i], batch), target, weights)
        for i in range(3)])
    self.assertEqual(got.shape, (3,))
    np.testing.assert_allclose(got, want, rtol=1e-5)

  @parameterized.parameters(objectives.l2_distance,
                            objectives.cosine_distance)
  def test_numerical_gradients(self, fn):
    with jax.enable_x64(True):
      grads = _random_tree(jax.random.key(0), jnp.float64)
      target = _random_tree(jax.random.key(1), jnp.float64)
      weights = {'conv': {'kernel': 2.0}, 'dense': {'bias': 0.5}}
      check_grads(jax.jit(lambda g, t: fn(g, t, weights)), (grads, target),
                  order=2, modes=('rev',), eps=1e-4, atol=1e-5, rtol=1e-5)


class TotalVariationTest(parameterized.TestCase):

  def test_hand_value(self):
    x = jnp.array([[0.0, 1.0], [2.0, 4.0]])[..., None]
    # Vertical |2 - 0|, |4 - 1|: mean 2.5; horizontal |1 - 0|, |4 - 2|: 1.5.
    self.assertAlmostEqual(float(objectives.total_variation(x)), 4.0)

  def test_constant_image_is_zero(self):
    self.assertEqual(
        float(objectives.total_variation(jnp.full((4, 5, 3), 0.3))), 0.0)

  def test_channels_averaged(self):
    x = jax.random.uniform(jax.random.key(0), (5, 6, 1))
    stacked = jnp.concatenate([x, x], axis=-1)
    np.testing.assert_allclose(objectives.total_variation(stacked),
                               objectives.total_variation(x), rtol=1e-6)

  @parameterized.parameters(((4, 4),), ((1, 4, 4, 3),))
  def test_rejects_batches(self, shape):
    with self.assertRaisesRegex(ValueError, r'\[h, w, c\]'):
      objectives.total_variation(jnp.zeros(shape))

  def test_numerical_gradients(self):
    with jax.enable_x64(True):
      # Random pixels: no two neighbours within eps, where |.| has a kink.
      x = jax.random.uniform(jax.random.key(0), (4, 5, 2), jnp.float64)
      check_grads(jax.jit(objectives.total_variation), (x,), order=1,
                  modes=('fwd', 'rev'), eps=1e-6, atol=1e-6, rtol=1e-6)

  def test_vmap_equals_stack(self):
    xs = jax.random.uniform(jax.random.key(0), (3, 4, 5, 2))
    np.testing.assert_allclose(
        jax.vmap(objectives.total_variation)(xs),
        jnp.stack([objectives.total_variation(x) for x in xs]), rtol=1e-6)


class GaussianPriorTest(parameterized.TestCase):

  def _images(self, n=5, h=4, w=4, c=3):
    # Smooth-ish colour images: correlated channels, so the 3x3 spectra
    # are not diagonal.
    base = jax.random.uniform(jax.random.key(0), (n, h, w, 1))
    noise = jax.random.uniform(jax.random.key(1), (n, h, w, c))
    return 0.7 * base + 0.3 * noise

  def test_zero_at_mean(self):
    prior = objectives.fit_gaussian_prior(self._images())
    mean_image = jnp.broadcast_to(prior.mean, (4, 4, 3))
    self.assertAlmostEqual(
        float(objectives.gaussian_prior_penalty(prior, mean_image)), 0.0,
        places=6)

  def test_grows_with_distance(self):
    prior = objectives.fit_gaussian_prior(self._images())
    d = jax.random.normal(jax.random.key(2), (4, 4, 3))
    x = lambda t: jnp.broadcast_to(prior.mean, (4, 4, 3)) + t * d
    values = [float(objectives.gaussian_prior_penalty(prior, x(t)))
              for t in (0.5, 1.0, 2.0)]
    # A quadratic form: 4x the value at twice the distance.
    self.assertLess(values[0], values[1])
    np.testing.assert_allclose(values[2], 4 * values[1], rtol=1e-4)
    np.testing.assert_allclose(values[1], 4 * values[0], rtol=1e-4)

  @parameterized.parameters(1e-3, 1e-1)
  def test_matches_dense_formula(self, floor):
    images = self._images()
    prior = objectives.fit_gaussian_prior(images, floor=floor)
    cov = np.asarray(identifiability.stationary_prior_covariance(images),
                     np.float64)
    d = cov.shape[0]
    # The floor adds floor x pixel variance to every frequency's spectrum,
    # the identity in the DFT basis and so in pixel space.
    cov += floor * np.trace(cov) / d * np.eye(d)
    x = np.asarray(jax.random.uniform(jax.random.key(3), (4, 4, 3)))
    r = (x - np.asarray(prior.mean)).ravel().astype(np.float64)
    dense = 0.5 * r @ np.linalg.solve(cov, r)
    np.testing.assert_allclose(
        float(objectives.gaussian_prior_penalty(prior, x)), dense, rtol=2e-3)

  def test_jit_and_grad(self):
    prior = objectives.fit_gaussian_prior(self._images())
    x = self._images(n=1)[0]
    np.testing.assert_allclose(
        jax.jit(objectives.gaussian_prior_penalty)(prior, x),
        objectives.gaussian_prior_penalty(prior, x), rtol=1e-5)
    check_grads(lambda v: objectives.gaussian_prior_penalty(prior, v), (x,),
                order=1, modes=('rev',), atol=1e-2, rtol=1e-2)

  @parameterized.named_parameters(
      ('rank', (4, 4, 3)), ('empty', (0, 4, 4, 3)))
  def test_bad_images_raise(self, shape):
    with self.assertRaisesRegex(ValueError, 'images'):
      objectives.fit_gaussian_prior(jnp.zeros(shape))

  def test_bad_floor_raises(self):
    with self.assertRaisesRegex(ValueError, 'floor'):
      objectives.fit_gaussian_prior(self._images(), floor=0.0)

  @parameterized.named_parameters(
      ('batch', (2, 4, 4, 3)), ('size', (5, 4, 3)), ('channels', (4, 4, 1)))
  def test_bad_image_raises(self, shape):
    prior = objectives.fit_gaussian_prior(self._images())
    with self.assertRaisesRegex(ValueError, 'shaped as the prior'):
      objectives.gaussian_prior_penalty(prior, jnp.zeros(shape))


if __name__ == '__main__':
  absltest.main()
