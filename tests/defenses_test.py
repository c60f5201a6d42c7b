"""Tests for dlg_jax.core.defenses."""

import dataclasses
import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.core import defenses
from dlg_jax.vision import data
from dlg_jax.vision import models

_NUM_CLASSES = 100


def setUpModule():
  # Small programs: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _tree(key, scale=1.0):
  ka, kb, kc = jax.random.split(key, 3)
  return {'conv': {'kernel': scale * jax.random.normal(ka, (3, 3, 2, 4)),
                   'bias': scale * jax.random.normal(kb, (4,))},
          'dense': {'kernel': scale * jax.random.normal(kc, (10, 5))}}


def _kurtosis(x):
  x = np.asarray(x, np.float64).ravel()
  x = x - x.mean()
  return np.mean(x**4) / np.mean(x**2)**2


def _assert_trees_close(test, a, b, **kwargs):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **kwargs)


class NoiseTest(parameterized.TestCase):

  @parameterized.parameters(
      ('gaussian', 1e-1, 3.0), ('gaussian', 1e-3, 3.0),
      ('laplacian', 1e-1, 6.0), ('laplacian', 1e-4, 6.0))
  def test_variance_mean_and_kurtosis(self, name, variance, kurtosis):
    grads = {'big': jnp.zeros((1000, 500)), 'small': jnp.zeros((3,))}
    noisy = defenses.get_defense(name)(jax.random.key(0), grads, variance)
    noise = np.asarray(noisy['big'], np.float64)
    self.assertEqual(noisy['big'].dtype, jnp.float32)
    # 5e5 samples: the sample variance is within ~1% (Laplace) of the truth.
    self.assertAlmostEqual(noise.var() / variance, 1.0, delta=0.03)
    self.assertLess(abs(noise.mean()), 5 * np.sqrt(variance / noise.size))
    self.assertAlmostEqual(_kurtosis(noise), kurtosis, delta=0.3)

  @parameterized.parameters('gaussian', 'laplacian')
  def test_adds_to_the_gradient_and_differs_per_leaf(self, name):
    grads = {'a': jnp.full((200,), 5.0), 'b': jnp.full((200,), 5.0)}
    noisy = defenses.get_defense(name)(jax.random.key(1), grads, 1e-2)
    self.assertAlmostEqual(float(jnp.mean(noisy['a'])), 5.0, delta=0.05)
    self.assertFalse(np.allclose(noisy['a'] - 5.0, noisy['b'] - 5.0))


class CastTest(parameterized.TestCase):

  @parameterized.parameters(
      # Relative rounding error is at most half an ulp: 2^-11 and 2^-8.
      ('float16', 2.0**-11), ('bfloat16', 2.0**-8))
  def test_round_trip_error(self, name, rel):
    # Magnitudes kept inside float16's normal range (>= 6.1e-5).
    g = jax.random.uniform(jax.random.key(0), (1000,), minval=1e-3,
                           maxval=10.0)
    g = g * jnp.where(jnp.arange(1000) % 2 == 0, 1.0, -1.0)
    out = defenses.get_defense(name)(jax.random.key(0), {'g': g}, 0.0)['g']
    self.assertEqual(out.dtype, jnp.float32)
    np.testing.assert_array_less(np.abs(out - g), rel * np.abs(g) * 1.0001)
    self.assertGreater(float(jnp.max(jnp.abs(out - g))), 0.0)

  def test_int8_error_bound_and_zeros(self):
    grads = _tree(jax.random.key(3))
    grads['conv']['bias'] = grads['conv']['bias'].at[1].set(0.0)
    grads['zero'] = jnp.zeros((4, 4))
    out = defenses.int8(jax.random.key(0), grads, 0.0)
    for g, q in zip(jax.tree.leaves(grads), jax.tree.leaves(out)):
      self.assertEqual(q.dtype, jnp.float32)
      scale = float(defenses.int8_scale(g))
      np.testing.assert_array_less(np.abs(q - g), scale / 2 * 1.0001 + 1e-12)
      np.testing.assert_array_equal(np.asarray(q)[np.asarray(g) == 0], 0.0)
      # At most 255 distinct levels, integer multiples of the scale.
      if scale > 0:
        steps = np.asarray(q) / scale
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    np.testing.assert_array_equal(out['zero'], 0.0)


class PruneTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.1, 0.5, 0.9, 0.99)
  def test_per_layer_fraction_and_largest_kept(self, fraction):
    grads = _tree(jax.random.key(4))
    out = defenses.prune_per_layer(jax.random.key(0), grads, fraction)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(out)):
      g, p = np.asarray(g), np.asarray(p)
      pruned = p == 0
      self.assertEqual(pruned.sum(), int(np.floor(fraction * g.size)))
      np.testing.assert_array_equal(p[~pruned], g[~pruned])
      if pruned.any() and (~pruned).any():
        self.assertGreaterEqual(np.abs(g[~pruned]).min(),
                                np.abs(g[pruned]).max())

  @parameterized.parameters(0.0, 0.3, 0.75)
  def test_global_fraction_and_largest_kept(self, fraction):
    # Leaves of different scales: global pruning takes more from the small.
    grads = {'small': 0.01 * jax.random.normal(jax.random.key(5), (40,)),
             'large': jax.random.normal(jax.random.key(6), (60,))}
    out = defenses.prune_global(jax.random.key(0), grads, fraction)
    g = np.concatenate([np.asarray(x) for x in jax.tree.leaves(grads)])
    p = np.concatenate([np.asarray(x) for x in jax.tree.leaves(out)])
    pruned = p == 0
    self.assertEqual(pruned.sum(), int(np.floor(fraction * g.size)))
    np.testing.assert_array_equal(p[~pruned], g[~pruned])
    if pruned.any():
      self.assertGreaterEqual(np.abs(g[~pruned]).min(),
                              np.abs(g[pruned]).max())
    if fraction == 0.3:
      # The 30 smallest of 100 all lie in the 40 small entries.
      np.testing.assert_array_equal(out['large'], grads['large'])

  def test_ties_prune_exact_count(self):
    grads = {'g': jnp.ones((10,))}
    out = defenses.prune_per_layer(jax.random.key(0), grads, 0.5)
    self.assertEqual(int(jnp.sum(out['g'] == 0)), 5)

  def test_surviving_mask(self):
    grads = _tree(jax.random.key(8))
    out = defenses.prune_global(jax.random.key(0), grads, 0.6)
    mask = defenses.surviving_mask(out)
    self.assertEqual(jax.tree.structure(mask), jax.tree.structure(grads))
    for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(out)):
      self.assertEqual(m.dtype, jnp.bool_)
      np.testing.assert_array_equal(m, np.asarray(p) != 0)
    total = sum(int(m.sum()) for m in jax.tree.leaves(mask))
    size = sum(g.size for g in jax.tree.leaves(grads))
    self.assertEqual(total, size - int(np.floor(0.6 * size)))


# Every registered defense, so that one registered later is tested too.
_REGISTERED = [dict(testcase_name=name, name=name)
               for name in sorted(defenses.REGISTRY)]


def _contract_grads(key, spec, scale=1.0):
  """A tiny gradient pytree: float32, bfloat16 and scalar leaves.

  A per-example defense gets a leading `[3]` (batch) axis on every leaf.
  """
  ka, kb, kc, kd = jax.random.split(key, 4)
  batch = (3,) if spec.per_example else ()
  return {'w': scale * jax.random.normal(ka, batch + (4, 3)),
          'b': scale * jax.random.normal(kb, batch + (3,)),
          'h': (scale * jax.random.normal(kc, batch + (5,))).astype(
              jnp.bfloat16),
          's': scale * jax.random.normal(kd, batch)}


def _contract_strengths(spec):
  """Three valid strengths from 0, increasing."""
  top = min(0.5, spec.max_strength / 2)
  return jnp.array([0.0, top / 5, top])


def _shapes(tree):
  return jax.tree.map(lambda g: (g.shape, g.dtype), tree)


def _assert_trees_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    test.assertEqual(x.dtype, y.dtype)
    np.testing.assert_array_equal(np.asarray(x, np.float32),
                                  np.asarray(y, np.float32))


class ContractTest(parameterized.TestCase):
  """What every registered defense must do (as optax's alias_test)."""

  @parameterized.named_parameters(*_REGISTERED)
  def test_output_is_shaped_like_the_input(self, name):
    spec = defenses.lookup(name)
    grads = _contract_grads(jax.random.key(0), spec)
    one = jax.tree.map(lambda g: g[0], grads) if spec.per_example else grads
    top = _contract_strengths(spec)[-1]
    out = spec.fn(jax.random.key(1), grads, top)
    self.assertEqual(_shapes(out), _shapes(one))
    self.assertEqual(
        _shapes(jax.eval_shape(spec.fn, jax.random.key(1), grads, top)),
        _shapes(one))

  @parameterized.named_parameters(*_REGISTERED)
  def test_jit_equals_no_jit(self, name):
    spec = defenses.lookup(name)
    grads = _contract_grads(jax.random.key(2), spec)
    key, top = jax.random.key(3), _contract_strengths(spec)[-1]
    _assert_trees_close(self, jax.jit(spec.fn)(key, grads, top),
                        spec.fn(key, grads, top), rtol=1e-6, atol=1e-7)

  @parameterized.named_parameters(*_REGISTERED)
  def test_vmap_over_strengths_is_the_stack(self, name):
    spec = defenses.lookup(name)
    grads = _contract_grads(jax.random.key(4), spec)
    key, strengths = jax.random.key(5), _contract_strengths(spec)
    batched = jax.vmap(spec.fn, in_axes=(None, None, 0))(key, grads,
                                                          strengths)
    for i, s in enumerate(strengths):
      _assert_trees_close(self, jax.tree.map(lambda b, i=i: b[i], batched),
                          spec.fn(key, grads, s), rtol=1e-6, atol=1e-7)

  @parameterized.named_parameters(*_REGISTERED)
  def test_vmap_over_keys_is_the_stack(self, name):
    spec = defenses.lookup(name)
    grads = _contract_grads(jax.random.key(6), spec)
    keys = jax.random.split(jax.random.key(7), 2)
    top = _contract_strengths(spec)[-1]
    batched = jax.vmap(spec.fn, in_axes=(0, None, None))(keys, grads, top)
    for i in range(2):
      _assert_trees_close(self, jax.tree.map(lambda b, i=i: b[i], batched),
                          spec.fn(keys[i], grads, top), rtol=1e-6, atol=1e-7)

  @parameterized.named_parameters(*_REGISTERED)
  def test_new_values_do_not_recompile(self, name):
    spec = defenses.lookup(name)
    traces = []

    def counted(key, grads, strength):
      traces.append(None)  # Runs once per trace, not per call.
      return spec.fn(key, grads, strength)

    jitted = jax.jit(counted)
    _, low, top = (float(s) for s in _contract_strengths(spec))
    jitted(jax.random.key(8), _contract_grads(jax.random.key(9), spec), low)
    jitted(jax.random.key(10), _contract_grads(jax.random.key(11), spec, 2.0),
           top)
    self.assertLen(traces, 1)
    self.assertEqual(jitted._cache_size(), 1)  # pylint: disable=protected-access

  @parameterized.named_parameters(*_REGISTERED)
  def test_strength_zero(self, name):
    spec = defenses.lookup(name)
    grads = _contract_grads(jax.random.key(12), spec)
    out = spec.fn(jax.random.key(13), grads, 0.0)
    # At strength 0 nothing is random: another key, the same gradient.
    _assert_trees_equal(self, spec.fn(jax.random.key(14), grads, 0.0), out)
    if spec.identity_at_zero:
      _assert_trees_equal(self, out, grads)
    if spec.strength == defenses.IGNORED:
      top = _contract_strengths(spec)[-1]
      _assert_trees_equal(self, spec.fn(jax.random.key(13), grads, top), out)

  @parameterized.named_parameters(*_REGISTERED)
  def test_check_strength_names_the_defense(self, name):
    spec = defenses.lookup(name)
    defenses.check_strength(name, np.asarray(_contract_strengths(spec)))
    bad = [-1e-3, float('nan'), float('inf'), [0.0, -1.0]]
    if np.isfinite(spec.max_strength):
      bad.append(spec.max_strength)
    for strength in bad:
      with self.assertRaisesRegex(
          ValueError, f'strength for {re.escape(repr(name))}'):
        defenses.check_strength(name, strength)

  @parameterized.named_parameters(*_REGISTERED)
  def test_registering_it_again_fails(self, name):
    spec = defenses.lookup(name)
    with self.assertRaisesRegex(ValueError, re.escape(repr(name))):
      defenses.register(dataclasses.replace(spec))
    self.assertIs(defenses.lookup(name), spec)

  @parameterized.named_parameters(*_REGISTERED)
  def test_aware_attacker_and_batch_view(self, name):
    spec = defenses.lookup(name)
    self.assertIn(spec.aware, (defenses.AWARE_MASK,
                               defenses.AWARE_NOISE_PRIOR,
                               defenses.AWARE_NONE))
    if spec.aware == defenses.AWARE_NOISE_PRIOR:
      # The attacker weighs its prior by the strength as a variance.
      self.assertEqual(spec.strength, 'noise variance')
    if spec.aware == defenses.AWARE_MASK:
      # Pruning leaves zeros for the mask to drop.
      grads = _contract_grads(jax.random.key(15), spec)
      out = spec.fn(jax.random.key(16), grads,
                    _contract_strengths(spec)[-1])
      self.assertFalse(all(bool(jnp.all(m)) for m in
                           jax.tree.leaves(defenses.surviving_mask(out))))
    if spec.per_example:
      self.assertNotIn(name, defenses.DEFENSES)
      with self.assertRaisesRegex(ValueError, 'per-example'):
        defenses.get_defense(name)
    else:
      self.assertIs(defenses.get_defense(name), spec.fn)


# What each deterministic defense's docstring says, on a few numbers.
_KNOWN_OUTPUTS = (
    ('sign', 0.0, [-2.0, 0.0, 1.0, 3.0], [-1.5, 0.0, 1.5, 1.5]),
    ('float16', 0.0, [1 / 3, -1e-8], [np.float16(1 / 3), 0.0]),
    ('bfloat16', 0.0, [1 / 3], [float(jnp.bfloat16(1 / 3))]),
    ('int8', 0.0, [127.0, -63.4, 0.0, 0.2], [127.0, -63.0, 0.0, 0.0]),
    ('prune_layer', 0.5, [1.0, -3.0, 2.0, 0.5], [0.0, -3.0, 2.0, 0.0]),
    ('prune_global', 0.25, [-0.1, 4.0, 0.2, -5.0], [0.0, 4.0, 0.2, -5.0]),
)


class KnownOutputTest(parameterized.TestCase):

  @parameterized.named_parameters(
      *((row[0],) + row for row in _KNOWN_OUTPUTS))
  def test_known_output(self, name, strength, grads, expected):
    out = defenses.lookup(name).fn(jax.random.key(0),
                                   {'g': jnp.asarray(grads, jnp.float32)},
                                   strength)
    np.testing.assert_allclose(out['g'], np.asarray(expected, np.float32),
                               rtol=1e-6)


class TransformTest(parameterized.TestCase):
  """`compose`."""

  def test_compose_applies_in_order(self):
    grads = _tree(jax.random.key(12))
    key = jax.random.key(3)
    composed = defenses.compose(defenses.prune_per_layer,
                                defenses.gaussian_noise)
    out = composed(key, grads, jnp.array([0.5, 1e-2]))
    k1, k2 = jax.random.split(key)
    expected = defenses.gaussian_noise(
        k2, defenses.prune_per_layer(k1, grads, 0.5), 1e-2)
    _assert_trees_close(self, out, expected, rtol=1e-6)
    # Noise after pruning: nothing is left exactly zero.
    self.assertFalse(any(bool(jnp.any(x == 0)) for x in jax.tree.leaves(out)))
    # The other order: pruning last leaves zeros.
    reverse = defenses.compose(defenses.gaussian_noise,
                               defenses.prune_per_layer)
    out = reverse(key, grads, jnp.array([1e-2, 0.5]))
    self.assertTrue(all(bool(jnp.any(x == 0)) for x in jax.tree.leaves(out)))

  def test_compose_scalar_strength_and_vmap(self):
    grads = _tree(jax.random.key(13))
    composed = defenses.compose(defenses.prune_global, defenses.float16)
    key = jax.random.key(0)
    strengths = jnp.array([0.0, 0.5])
    batched = jax.vmap(composed, in_axes=(None, None, 0))(key, grads,
                                                           strengths)
    for i, s in enumerate(strengths):
      _assert_trees_close(self, jax.tree.map(lambda b, i=i: b[i], batched),
                          composed(key, grads, s))


class DpSgdTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    ds = data.load_bundled('cifar100')
    model = models.get_model('lenet', num_classes=_NUM_CLASSES)
    # staticmethod: a plain function stored on the class would bind `self`.
    cls.apply_fn = staticmethod(models.make_apply_fn(model))
    cls.params = models.init_params(model, jax.random.key(0), (32, 32, 3))
    cls.x = jnp.asarray(ds.x[:3])
    cls.labels = jax.nn.one_hot(ds.y[:3], _NUM_CLASSES)
    # Jitted: op by op, these gradients take ~10 s each on the 2-core CPU.
    cls.per_example = jax.jit(defenses.per_example_gradients,
                              static_argnums=0)(
                                  cls.apply_fn, cls.params, cls.x, cls.labels)

  def test_per_example_gradients_average_to_batch_gradient(self):
    gradient = jax.jit(client.gradient, static_argnums=0)
    batch = gradient(self.apply_fn, self.params, self.x, self.labels)
    for g, p in zip(jax.tree.leaves(batch),
                    jax.tree.leaves(self.per_example)):
      self.assertEqual(p.shape, (3, *g.shape))
      np.testing.assert_allclose(p.mean(axis=0), g, rtol=1e-4, atol=1e-6)
    one = gradient(self.apply_fn, self.params, self.x[1:2],
                   self.labels[1:2])
    _assert_trees_close(self, jax.tree.map(lambda p: p[1], self.per_example),
                        one, rtol=1e-4, atol=1e-6)

  def test_clipping_bound(self):
    norms = defenses.per_example_norms(self.per_example)
    clip_norm = 0.5 * float(jnp.min(norms))  # Every example is clipped.
    clipped = defenses.clip_by_global_norm_per_example(
        self.per_example, clip_norm=clip_norm)
    new_norms = defenses.per_example_norms(clipped)
    np.testing.assert_array_less(new_norms, clip_norm * (1 + 1e-5))
    np.testing.assert_allclose(new_norms, clip_norm, rtol=1e-5)
    # Direction is kept.
    for g, c in zip(jax.tree.leaves(self.per_example),
                    jax.tree.leaves(clipped)):
      ratio = (clip_norm / norms).reshape((3,) + (1,) * (g.ndim - 1))
      np.testing.assert_allclose(c, g * ratio, rtol=1e-5, atol=1e-9)
    # A bound above every norm changes nothing.
    loose = defenses.clip_by_global_norm_per_example(
        self.per_example, clip_norm=2 * float(jnp.max(norms)))
    _assert_trees_close(self, loose, self.per_example, rtol=0, atol=0)

  def test_zero_noise_is_mean_of_clipped(self):
    clip_norm = 0.5 * float(jnp.min(defenses.per_example_norms(
        self.per_example)))
    out = defenses.dp_sgd(jax.random.key(0), self.per_example, 0.0,
                          clip_norm=clip_norm)
    clipped = defenses.clip_by_global_norm_per_example(
        self.per_example, clip_norm=clip_norm)
    _assert_trees_close(self, out,
                        jax.tree.map(lambda c: c.mean(axis=0), clipped),
                        rtol=1e-6, atol=1e-9)
    self.assertLessEqual(
        float(defenses.per_example_norms(
            jax.tree.map(lambda g: g[None], out))[0]), clip_norm * 1.00001)

  @parameterized.parameters(0.0, 3.0)
  def test_batch_form_equals_per_example_form(self, multiplier):
    # dp_sgd_gradient scans over the examples instead of vmapping them; the
    # same key gives the same noise, so both forms share one gradient. One
    # bound between the norms: some examples clipped, some not.
    norms = np.sort(np.asarray(defenses.per_example_norms(self.per_example)))
    clip_norm = float(norms[:2].mean())
    key = jax.random.key(7)
    expected = defenses.dp_sgd(key, self.per_example, multiplier,
                               clip_norm=clip_norm)
    got = jax.jit(defenses.dp_sgd_gradient, static_argnums=1)(
        key, self.apply_fn, self.params, self.x, self.labels, multiplier,
        clip_norm=clip_norm)
    _assert_trees_close(self, got, expected, rtol=1e-4, atol=1e-6)

  def test_zero_gradients_stay_finite(self):
    grads = {'g': jnp.zeros((2, 5))}
    out = defenses.dp_sgd(jax.random.key(0), grads, 0.0, clip_norm=1.0)
    np.testing.assert_array_equal(out['g'], 0.0)

  @parameterized.parameters((0.5, 1.0), (2.0, 0.1))
  def test_noise_std(self, multiplier, clip_norm):
    batch = 4
    grads = {'w': jax.random.normal(jax.random.key(1), (batch, 400, 500))}
    clipped_mean = jax.tree.map(
        lambda c: c.mean(axis=0),
        defenses.clip_by_global_norm_per_example(grads, clip_norm=clip_norm))
    out = defenses.dp_sgd(jax.random.key(2), grads, multiplier,
                          clip_norm=clip_norm)
    noise = np.asarray(out['w'] - clipped_mean['w'], np.float64)
    self.assertAlmostEqual(noise.std() / (multiplier * clip_norm / batch), 1.0,
                           delta=0.02)
    self.assertAlmostEqual(_kurtosis(noise), 3.0, delta=0.1)

  def test_registered_form_clips_at_one(self):
    key = jax.random.key(4)
    grads = {'a': 3.0 * jax.random.normal(key, (3, 4, 5))}
    _assert_trees_close(
        self, defenses.lookup('dp_sgd').fn(key, grads, 0.5),
        defenses.dp_sgd(key, grads, 0.5, clip_norm=1.0), rtol=0, atol=0)

  def test_bad_clip_norm(self):
    with self.assertRaisesRegex(ValueError, 'clip_norm'):
      defenses.dp_sgd(jax.random.key(0), {'g': jnp.ones((2, 3))}, 1.0,
                      clip_norm=0.0)

  def test_real_gradient_defended_shapes(self):
    # The registry defenses act on a real LeNet gradient pytree.
    g = jax.tree.map(lambda p: p[0], self.per_example)
    for name in ('gaussian', 'int8', 'prune_global'):
      out = defenses.get_defense(name)(jax.random.key(0), g, 0.5)
      self.assertEqual(jax.tree.structure(out), jax.tree.structure(g))
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
        self.assertEqual((a.shape, a.dtype), (b.shape, b.dtype))


class ValidationTest(parameterized.TestCase):

  def test_unknown_defense(self):
    with self.assertRaisesRegex(ValueError, r"'median'.*gaussian"):
      defenses.get_defense('median')
    with self.assertRaisesRegex(ValueError, r"'median'.*dp_sgd.*gaussian"):
      defenses.lookup('median')
    with self.assertRaisesRegex(ValueError, 'median'):
      defenses.check_strength('median', 0.1)

  def test_registry(self):
    # The DLG paper's section 5 defenses and DP-SGD (others may follow).
    self.assertContainsSubset(
        {'gaussian', 'laplacian', 'float16', 'bfloat16', 'int8',
         'prune_layer', 'prune_global', 'dp_sgd'}, set(defenses.REGISTRY))
    self.assertEqual(
        set(defenses.DEFENSES),
        {name for name, spec in defenses.REGISTRY.items()
         if not spec.per_example})
    self.assertEqual(defenses.lookup('dp_sgd').aware, defenses.AWARE_NONE)
    self.assertEqual(defenses.lookup('prune_global').aware,
                     defenses.AWARE_MASK)
    self.assertEqual(defenses.lookup('laplacian').aware,
                     defenses.AWARE_NOISE_PRIOR)

  def test_register_a_new_defense(self):
    spec = defenses.DefenseSpec(
        name='halve', fn=lambda key, grads, strength: jax.tree.map(
            lambda g: g / 2, grads), strength=defenses.IGNORED)
    # Restores both tables afterwards.
    with mock.patch.dict(defenses._REGISTRY), mock.patch.dict(  # pylint: disable=protected-access
        defenses.DEFENSES):
      self.assertIs(defenses.register(spec), spec)
      self.assertIs(defenses.lookup('halve'), spec)
      self.assertIs(defenses.get_defense('halve'), spec.fn)
      defenses.check_strength('halve', 0.0)
      with self.assertRaisesRegex(ValueError, r"'halve' \(ignored\)"):
        defenses.check_strength('halve', -1.0)
    self.assertNotIn('halve', defenses.REGISTRY)

  @parameterized.named_parameters(
      ('unknown_aware', dict(aware='blur'), 'aware'),
      ('no_room', dict(max_strength=0.0), 'max_strength'),
      ('no_name', dict(name=''), 'name'),
      ('not_callable', dict(fn=None), 'fn'),
      ('ignored_identity', dict(strength=defenses.IGNORED,
                                identity_at_zero=True), 'identity'),
  )
  def test_bad_spec(self, overrides, message):
    kwargs = dict(name='x', fn=defenses.gaussian_noise,
                  strength='noise variance')
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, message):
      defenses.DefenseSpec(**kwargs)

  def test_spec_is_frozen_and_keyword_only(self):
    spec = defenses.lookup('gaussian')
    with self.assertRaises(dataclasses.FrozenInstanceError):
      spec.name = 'other'  # pytype: disable=not-writable
    with self.assertRaises(TypeError):
      defenses.DefenseSpec('x', defenses.gaussian_noise, 'noise variance')  # pylint: disable=too-many-function-args

  @parameterized.parameters(
      ('gaussian', -1e-3), ('laplacian', -1.0), ('dp_sgd', -0.5),
      ('prune_layer', 1.0), ('prune_layer', -0.1), ('prune_global', 1.0),
      ('prune_global', -0.1), ('gaussian', float('nan')),
      ('gaussian', float('inf')), ('prune_global', [0.1, 1.0]))
  def test_bad_strength_names_strength(self, name, strength):
    with self.assertRaisesRegex(ValueError, 'strength'):
      defenses.check_strength(name, strength)

  @parameterized.parameters(
      ('gaussian', 0.0), ('gaussian', 1e-1), ('laplacian', 1e-4),
      ('prune_layer', 0.0), ('prune_global', 0.99), ('dp_sgd', 1.1),
      ('float16', 0.0), ('prune_layer', np.array([0.0, 0.5, 0.9])))
  def test_good_strength(self, name, strength):
    defenses.check_strength(name, strength)

  def test_check_strength_skips_tracers(self):
    jax.jit(lambda s: defenses.check_strength('prune_layer', s) or s)(0.5)


if __name__ == '__main__':
  absltest.main()
