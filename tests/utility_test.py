"""Tests of the utility study (dlg_jax/vision/utility.py, dlg_jax/pipelines/utility.py)."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from configs import utility as utility_config
from dlg_jax.core import client
from dlg_jax.core import defenses
from dlg_jax.pipelines import utility as utility_pipeline
from dlg_jax.vision import data
from dlg_jax.vision import utility
from tests import isolated


# Both end-to-end tests train with these settings, so the one compiled
# program per defense serves both (see test_no_recompilation).
_STEPS = 30
_HUGE = 10.0  # Gaussian variance: noise std ~3 against entries ~1e-3.


def setUpModule():
  # Compile time dominates these tests; see attack_test.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _quick_config():
  config = utility_config.get_config('quick')
  config.train.steps = _STEPS
  config.utility.strengths.gaussian = (0.0, _HUGE)
  return config


class LauncherTest(absltest.TestCase):

  def test_quick_run_learns_without_defense_and_not_under_huge_noise(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    results = utility_pipeline.run(_quick_config(), workdir)

    with open(os.path.join(workdir, 'utility.json')) as f:
      written = json.load(f)
    self.assertEqual(written['records'], results['records'])
    self.assertEqual(written['config']['train']['steps'], _STEPS)
    records = results['records']
    self.assertEqual([(r['defense'], r['strength']) for r in records],
                     [('none', 0.0), ('gaussian', 0.0), ('gaussian', _HUGE)])
    acc = {(r['defense'], r['strength']): r['accuracy'] for r in records}
    # Measured 0.70 after 30 steps (2.4 epochs); chance is about 0.10.
    self.assertGreaterEqual(acc[('none', 0.0)], 0.5)
    # Zero variance adds exactly nothing: the same model as the baseline.
    self.assertEqual(acc[('gaussian', 0.0)], acc[('none', 0.0)])
    self.assertLessEqual(acc[('gaussian', _HUGE)], 0.25)

    summary = results['summary']
    self.assertEqual((summary['num_train'], summary['num_test']), (400, 100))
    self.assertEqual(summary['baseline_accuracy'], acc[('none', 0.0)])
    with open(os.path.join(workdir, 'utility.md')) as f:
      table = f.read()
    self.assertIn('| defense | strength | test accuracy |', table)
    self.assertIn(f'| gaussian | {_HUGE:g} |', table)
    self.assertLen(table.strip().splitlines(), 4 + len(records))

  def test_unknown_defense_in_config_is_named(self):
    config = _quick_config()
    config.utility.defenses = ('none', 'blur')
    config.utility.strengths.blur = (1.0,)
    with self.assertRaisesRegex(ValueError, r'config\.utility.*blur'):
      utility_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))


class AccuracyTableTest(absltest.TestCase):

  def test_table_has_baseline_and_every_strength(self):
    ds = data.load_bundled('mnist')
    table = utility.accuracy_table([('gaussian', (0.0, _HUGE))], ds.x, ds.y,
                                   steps=_STEPS)
    self.assertEqual(set(table), {('none', 0.0), ('gaussian', 0.0),
                                  ('gaussian', _HUGE)})
    self.assertEqual(table[('gaussian', 0.0)], table[('none', 0.0)])
    self.assertLess(table[('gaussian', _HUGE)], table[('none', 0.0)])

  def test_dp_sgd_learns_with_clipping_alone_not_with_huge_noise(self):
    # In a child process: this program once crashed XLA:CPU (SIGSEGV) on
    # another 2-core machine, taking the rest of the suite with it.
    acc = np.asarray(isolated.run('''
        from dlg_jax.vision import data, utility
        ds = data.load_bundled('mnist')
        acc = utility.accuracy_grid('dp_sgd', [0.0, 100.0],
                                    utility.split(ds.x, ds.y), steps=60,
                                    clip_norm=1.0)
        report(acc.tolist())
        '''))
    self.assertEqual(acc.shape, (2, 1))
    # Clipping slows learning: measured 0.52 (seeds 1, 2: 0.42, 0.61) with
    # clipping alone (sigma 0) after 60 steps.
    self.assertGreaterEqual(acc[0, 0], 0.35)
    # sigma 100: noise std 100 / 32 per entry.
    self.assertLessEqual(acc[1, 0], 0.25)

  def test_dp_sgd_grid_of_two_strengths_runs(self):
    # Issue 10's reproduction, verbatim: it died with SIGSEGV on a 2-core
    # AMD EPYC (AVX2) machine with per-example gradients vmapped inside the
    # scan of SGD steps; one strength ran, two crashed.
    acc = np.asarray(isolated.run('''
        from dlg_jax.vision import data, utility
        ds = data.load_bundled('mnist')
        report(utility.accuracy_grid(
            'dp_sgd', [0.0, 100.0], utility.split(ds.x, ds.y), steps=2,
            clip_norm=1.0).tolist())
        '''))
    self.assertEqual(acc.shape, (2, 1))
    self.assertTrue(np.all((acc >= 0) & (acc <= 1)), acc)

  def test_no_recompilation(self):
    ds = data.load_bundled('mnist')
    split = utility.split(ds.x, ds.y)
    utility.accuracy_grid('gaussian', [1e-3, 1e-2], split, steps=_STEPS)
    cache_size = utility._grid._cache_size  # pylint: disable=protected-access
    compiled = cache_size()
    utility.accuracy_grid('gaussian', [1e-1, 1.0], split, steps=_STEPS,
                          learning_rate=0.05, seeds=(3,))
    self.assertEqual(cache_size(), compiled)


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b'][None]


class SharedGradientTest(parameterized.TestCase):
  """What the server receives under every registered defense (and 'none')."""

  @parameterized.named_parameters(
      (name, name) for name in (utility.BASELINE, *sorted(defenses.REGISTRY)))
  def test_shared_gradient(self, name):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {'w': jax.random.normal(k1, (4, 3)), 'b': jnp.zeros((3,))}
    x = jax.random.normal(k2, (5, 2, 2, 1))
    labels = jax.nn.one_hot(jnp.arange(5) % 3, 3)
    strength, clip_norm = jnp.float32(0.25), jnp.float32(0.5)
    shared = jax.jit(utility._shared_gradient, static_argnums=(0, 1))(  # pylint: disable=protected-access
        name, _linear, params, x, labels, k3, strength, clip_norm)
    if utility.is_per_example(name):
      expected = defenses.dp_sgd_gradient(k3, _linear, params, x, labels,
                                          strength, clip_norm=clip_norm)
    else:
      expected = client.gradient(_linear, params, x, labels)
      if name != utility.BASELINE:
        expected = defenses.lookup(name).fn(k3, expected, strength)
    self.assertEqual(jax.tree.structure(shared), jax.tree.structure(params))
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  def test_table_labels_come_from_the_registry(self):
    label = utility_pipeline.strength_label
    self.assertEqual(label('none', 0.0, 1.0), '-')
    self.assertEqual(label('float16', 0.0, 1.0), '-')  # Ignored.
    self.assertEqual(label('gaussian', 0.0, 1.0), '0')
    self.assertEqual(label('prune_layer', 0.5, 1.0), '0.5')
    self.assertEqual(label('dp_sgd', 2.0, 0.5), 'sigma=2, C=0.5')


class ValidationTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    ds = data.load_bundled('mnist')
    self.split = utility.split(ds.x[:50], ds.y[:50], num_test=10)

  def test_unknown_defense_lists_the_registry(self):
    with self.assertRaisesRegex(ValueError,
                                r"'blur'.*'none'.*dp_sgd.*prune_layer"):
      utility.check_defense('blur', [0.0])

  @parameterized.named_parameters(
      ('unknown_defense', dict(defense='blur'), 'defense'),
      ('negative_variance', dict(strengths=[1e-2, -1.0]), 'strength'),
      ('pruning_everything', dict(defense='prune_layer', strengths=[1.0]),
       'strength'),
      ('negative_noise_multiplier', dict(defense='dp_sgd', strengths=[-1.0]),
       'strength'),
      ('nan_baseline_strength', dict(defense='none', strengths=[np.nan]),
       'strength'),
      ('no_steps', dict(steps=0), 'steps'),
      ('batch_too_big', dict(batch_size=41), 'batch_size'),
      ('no_seeds', dict(seeds=()), 'seeds'),
      ('zero_clip_norm', dict(defense='dp_sgd', clip_norm=0.0), 'clip_norm'),
      ('too_few_classes', dict(num_classes=3), 'num_classes'),
  )
  def test_bad_argument_is_named(self, overrides, name):
    kwargs = dict(defense='gaussian', strengths=[1e-2], steps=1)
    kwargs.update(overrides)
    with self.assertRaisesRegex(ValueError, name):
      utility.accuracy_grid(kwargs.pop('defense'), kwargs.pop('strengths'),
                            self.split, **kwargs)

  @parameterized.named_parameters(
      ('none_held_out', 0), ('nothing_to_train', 50), ('not_an_int', 1.5))
  def test_bad_num_test_is_named(self, num_test):
    ds = data.load_bundled('mnist')
    with self.assertRaisesRegex(ValueError, 'num_test'):
      utility.split(ds.x[:50], ds.y[:50], num_test=num_test)

  def test_mismatched_labels_are_named(self):
    with self.assertRaisesRegex(ValueError, 'y must be'):
      utility.split(np.zeros((5, 8, 8, 1)), np.zeros(4, int), num_test=1)

  def test_split_holds_out_the_last_images(self):
    ds = data.load_bundled('mnist')
    split = utility.split(ds.x, ds.y, num_test=100)
    np.testing.assert_array_equal(split.train_x, ds.x[:400])
    np.testing.assert_array_equal(split.test_y, ds.y[400:])


if __name__ == '__main__':
  absltest.main()
