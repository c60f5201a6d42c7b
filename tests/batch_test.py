"""Tests for batched DLG: labels, FedAvg, the batch attack and launchers."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from configs import batch as batch_config
from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import attack as attack_pipeline
from dlg_jax.pipelines import batch_study
from dlg_jax.vision import attack
from dlg_jax.vision import data
from dlg_jax.vision import labels
from dlg_jax.vision import matching
from dlg_jax.vision import models

_NUM_CLASSES = 10
_SHAPE = (16, 16, 3)


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _lenet(num_classes=_NUM_CLASSES, shape=_SHAPE, seed=0):
  model = models.get_model('lenet', num_classes=num_classes)
  # Jitted: one compile, where eager initialisation compiles every op.
  params = jax.jit(models.init_params, static_argnums=(0, 2))(
      model, jax.random.key(seed), tuple(shape))
  return models.make_apply_fn(model), params


class BatchLabelsTest(parameterized.TestCase):
  """Batch label recovery on random models and random images."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model = models.get_model('lenet', num_classes=_NUM_CLASSES)
    apply_fn = models.make_apply_fn(model)

    # One compile per batch size: a random LeNet and random images from
    # `seed`, the gradient for `y`, and every method's labels.
    def recover(seed, y):
      k_params, k_x = jax.random.split(jax.random.key(seed))
      params = models.init_params(model, k_params, _SHAPE)
      x = jax.random.uniform(k_x, (y.shape[0], *_SHAPE))
      grads = client.gradient(apply_fn, params, x,
                              jax.nn.one_hot(y, _NUM_CLASSES))
      b = y.shape[0]
      got = {'count': labels.batch_labels(grads, _NUM_CLASSES, b,
                                          method='count', params=params)}
      if b <= _NUM_CLASSES:
        got['yin'] = labels.batch_labels(grads, _NUM_CLASSES, b, method='yin')
      if b == 1:
        got['idlg'] = labels.batch_labels(grads, _NUM_CLASSES, 1,
                                          method='idlg')
      return got
    cls._recover = staticmethod(jax.jit(recover))

  @parameterized.parameters(1, 2, 4, 8)
  def test_count_exact_with_repeated_labels(self, batch):
    rng = np.random.default_rng(batch)
    cases = [rng.integers(0, _NUM_CLASSES, batch) for _ in range(6)]
    cases.append(np.full(batch, 7))                 # one class only
    cases.append(np.arange(batch) % 2 * 9)          # two classes
    for seed, y in enumerate(cases):
      got = self._recover(seed, jnp.asarray(y, jnp.int32))
      np.testing.assert_array_equal(got['count'], np.sort(y),
                                    err_msg=f'seed {seed}')

  @parameterized.parameters(1, 2, 4)
  def test_yin_exact_for_distinct_labels(self, batch):
    rng = np.random.default_rng(batch)
    for seed in range(4):
      y = rng.permutation(_NUM_CLASSES)[:batch]
      got = self._recover(seed, jnp.asarray(y, jnp.int32))
      np.testing.assert_array_equal(got['yin'], np.sort(y))
      np.testing.assert_array_equal(got['count'], np.sort(y))

  def test_yin_misses_repeated_labels(self):
    got = self._recover(0, jnp.array([3, 3, 5, 5], jnp.int32))
    self.assertNotEqual(got['yin'].tolist(), [3, 3, 5, 5])
    self.assertEqual(got['count'].tolist(), [3, 3, 5, 5])

  def test_batch_one_agrees_with_idlg(self):
    for seed, label in enumerate((0, 4, 9)):
      got = self._recover(seed, jnp.array([label], jnp.int32))
      for method in ('idlg', 'count', 'yin'):
        self.assertEqual(got[method].tolist(), [label], method)

  def test_round_counts(self):
    got = labels.round_counts(jnp.array([1.6, 0.3, 2.4, -0.2, 0.7]), 5)
    self.assertEqual(got.tolist(), [2, 0, 2, 0, 1])
    # A surplus is taken back from the smallest fractions.
    got = labels.round_counts(jnp.array([1.9, 1.9, 1.9]), 4)
    self.assertEqual(int(jnp.sum(got)), 4)
    self.assertEqual(labels.counts_to_labels(
        jnp.array([0, 2, 0, 1]), 3).tolist(), [1, 1, 3])

  def test_bad_inputs_raise(self):
    apply_fn, params = _lenet()
    grads = jax.jit(client.gradient, static_argnums=0)(
        apply_fn, params, jnp.zeros((2, *_SHAPE)),
        jax.nn.one_hot(jnp.array([1, 2]), _NUM_CLASSES))
    with self.assertRaisesRegex(ValueError, 'label method.*guess'):
      labels.batch_labels(grads, _NUM_CLASSES, 2, method='guess')
    with self.assertRaisesRegex(ValueError, 'idlg.*batch 1'):
      labels.batch_labels(grads, _NUM_CLASSES, 2, method='idlg')
    with self.assertRaisesRegex(ValueError, 'params'):
      labels.batch_labels(grads, _NUM_CLASSES, 2, method='count')
    with self.assertRaisesRegex(ValueError, 'batch'):
      labels.batch_labels(grads, _NUM_CLASSES, 0, method='count',
                          params=params)
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      labels.batch_labels(grads, _NUM_CLASSES, 11, method='yin')
    no_bias = jax.tree.map(lambda g: g, grads)
    del no_bias['Dense_0']['bias']
    with self.assertRaisesRegex(ValueError, 'bias'):
      labels.batch_labels(no_bias, _NUM_CLASSES, 2, method='count',
                          params=params)


class FedAvgTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.apply_fn, self.params = _lenet()
    self.x = jax.random.uniform(jax.random.key(1), (4, *_SHAPE))
    self.y = jax.nn.one_hot(jnp.array([1, 5, 5, 2]), _NUM_CLASSES)

  def _assert_trees_close(self, a, b, **kwargs):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **kwargs),
                 a, b)

  def test_one_step_is_fedsgd_times_learning_rate(self):
    lr = 0.3
    update = client.fedavg_update(self.apply_fn, self.params, self.x,
                                  self.y, local_steps=1, learning_rate=lr)
    grads = client.gradient(self.apply_fn, self.params, self.x, self.y)
    self._assert_trees_close(
        update, jax.tree.map(lambda g: lr * g, grads), rtol=1e-5, atol=1e-7)

  def test_steps_over_mini_batches(self):
    lr = 0.5
    update = client.fedavg_update(
        self.apply_fn, self.params, self.x, self.y, local_steps=3,
        learning_rate=lr, local_batch_size=2)
    # By hand: mini-batches [0, 1], [2, 3], then [0, 1] again.
    p = self.params
    for lo in (0, 2, 0):
      g = client.gradient(self.apply_fn, p, self.x[lo:lo + 2],
                          self.y[lo:lo + 2])
      p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    self._assert_trees_close(
        update, jax.tree.map(lambda a, b: a - b, self.params, p),
        rtol=1e-4, atol=1e-6)

  def test_jit_equals_no_jit(self):
    fn = lambda x: client.fedavg_update(
        self.apply_fn, self.params, x, self.y, local_steps=2,
        learning_rate=0.1)
    self._assert_trees_close(jax.jit(fn)(self.x), fn(self.x), rtol=1e-5,
                             atol=1e-7)

  @parameterized.named_parameters(
      ('steps', dict(local_steps=0), 'local_steps'),
      ('lr', dict(local_steps=2, learning_rate=0.0), 'learning_rate'),
      ('local_batch', dict(local_steps=2, local_batch_size=3),
       'local_batch_size'),
  )
  def test_bad_settings_raise(self, kwargs, message):
    kwargs = {'learning_rate': 0.1, **kwargs}
    with self.assertRaisesRegex(ValueError, message):
      client.fedavg_update(self.apply_fn, self.params, self.x, self.y,
                           **kwargs)

  @parameterized.named_parameters(
      ('steps', dict(local_steps=0), {}, '^local_steps must'),
      ('method', {}, dict(label_method='guess'), '^label_method.*guess'),
      ('fedsgd_mini_batch', dict(local_batch_size=2), {},
       '^client.local_batch_size.*FedSGD'),
      ('analytic_mini_batch', dict(local_steps=2, local_batch_size=2), {},
       '^threat.client.local_batch_size.*analytic'),
      ('yin_batch', {}, dict(batch=11, label_method='yin'),
       '^labels.label_method.*yin'),
  )
  def test_attack_rejects(self, client_kwargs, kwargs, message):
    # Each section names its own field; checks across sections name the
    # field's path from the attack.
    kwargs = {'batch': 4, **kwargs}
    with self.assertRaisesRegex(errors.FieldError, message):
      attack.make(apply_fn=self.apply_fn, image_shape=_SHAPE,
                  num_classes=_NUM_CLASSES,
                  client=client.Client(**client_kwargs), **kwargs)

  def test_attack_matches_client(self):
    atk = attack.make(
        apply_fn=self.apply_fn, image_shape=_SHAPE, num_classes=_NUM_CLASSES,
        batch=4, label_mode='joint', client=client.Client(
            local_steps=2, learning_rate=0.2, local_batch_size=2))
    self._assert_trees_close(
        atk.threat.shared_update(self.params, self.x, self.y),
        client.fedavg_update(self.apply_fn, self.params, self.x, self.y,
                             local_steps=2, learning_rate=0.2,
                             local_batch_size=2), rtol=1e-6)
    # With analytic labels the target is still the update itself.
    one = attack.make(
        apply_fn=self.apply_fn, image_shape=_SHAPE, num_classes=_NUM_CLASSES,
        client=client.Client(local_steps=3, learning_rate=0.2))
    update = one.threat.shared_update(self.params, self.x[:1], self.y[:1])
    target = attack.make_target(one, update, jnp.array([1]),
                                params=self.params)
    self._assert_trees_close(target.grads, update, rtol=0, atol=0)
    self.assertEqual(int(jnp.argmax(target.labels[0])), 1)
    fedsgd = attack.make(apply_fn=self.apply_fn, image_shape=_SHAPE,
                         num_classes=_NUM_CLASSES, batch=4)
    self._assert_trees_close(
        fedsgd.threat.shared_update(self.params, self.x, self.y),
        client.gradient(self.apply_fn, self.params, self.x, self.y),
        rtol=0, atol=0)


class BatchSuccessTest(absltest.TestCase):

  def test_permuted_and_duplicated(self):
    ref = jnp.asarray(data.load_dataset('cifar100', count=4).x)
    perm = jnp.array([3, 0, 2, 1])
    self.assertTrue(attack.batch_success(ref[perm], ref, 30.0))
    noisy = ref[perm] + 0.1 * jax.random.normal(jax.random.key(0), ref.shape)
    self.assertFalse(attack.batch_success(noisy, ref, 30.0))
    # One reconstruction standing for two originals is not a recovery.
    self.assertFalse(attack.batch_success(ref[jnp.array([0, 0, 2, 3])], ref,
                                          30.0))
    self.assertFalse(attack.batch_success(ref, jnp.full_like(ref, jnp.nan),
                                          30.0))
    self.assertTrue(attack.batch_success(ref[:1], ref[:1], 30.0))


class BatchAttackTest(absltest.TestCase):
  """The batch attack end to end on real bundled images."""

  def test_recovers_batch_with_repeated_label(self):
    # MNIST test images 2 and 5, both a '1', behind one gradient; labels
    # counted off the gradient. Measured: the batch passes 30 dB at step
    # 212, and ends at 33.5 and 32.1 dB. Without XLA's optimisations (this
    # module's setting) the test took 16.9 s here, with them 23.0 s: the
    # compile saved outweighs the slower steps.
    ds = data.load_dataset('mnist', count=8)
    pick = np.array([2, 5])
    x, y = ds.x[pick], ds.y[pick]
    self.assertEqual(y.tolist(), [1, 1])
    apply_fn, params = _lenet(num_classes=10, shape=x.shape[1:])
    atk = attack.make(apply_fn=apply_fn, image_shape=x.shape[1:],
                      num_classes=10, batch=2, num_steps=300,
                      snapshot_steps=(0,), success_psnr=30.0)
    grads = atk.threat.shared_update(params, x, jax.nn.one_hot(y, 10))
    result = attack.reconstruct(
        atk, params, jax.tree.map(lambda g: g[None], grads), y[None],
        jax.random.key(0), ground_truth=x[None], chunk_size=300)
    self.assertEqual(result.x.shape, (1, 2, *x.shape[1:]))
    m = matching.matched_metrics(result.x[0], x, result.labels[0], y)
    np.testing.assert_array_less(30.0, m.psnr)
    self.assertTrue(m.label_correct.all())
    self.assertBetween(int(result.success_step[0]), 0, 299)


class StudyTest(parameterized.TestCase):

  def test_rows_table_and_plot(self):
    records = [
        {'batch': 0, 'psnr': 31.0, 'label_correct': True, 'success_step': 40,
         'seconds': 2.0},
        {'batch': 0, 'psnr': 35.0, 'label_correct': True, 'success_step': 40,
         'seconds': 2.0},
        {'batch': 1, 'psnr': 24.0, 'label_correct': False,
         'success_step': -1, 'seconds': 3.0},
        {'batch': 1, 'psnr': 26.0, 'label_correct': True,
         'success_step': -1, 'seconds': 3.0}]
    row = batch_study.summarize_batch_size({'records': records}, 30.0)
    self.assertEqual(row['batches_reached'], 1)
    self.assertIsNone(row['median_iterations'])  # batch 1 never got there
    self.assertEqual(row['images_at_25db'], 3)
    self.assertEqual(row['label_accuracy'], 0.75)
    # Records without LPIPS (written before it) leave it out.
    self.assertIsNone(row['mean_lpips'])
    table = batch_study.markdown_table({2: row}, 30.0)
    self.assertIn('| 2 | 1/2 | not reached | 602 | 3/4 |', table)
    self.assertTrue(table.endswith('| 2.5 | - |\n'), table)
    path = os.path.join(self.enter_context(tempfile.TemporaryDirectory()),
                        'plot.png')
    figures.save_line_plot(path, {'a': ([1, 2, 4], [10, None, 30])},
                           xlabel='batch', ylabel='iterations', title='t')
    with Image.open(path) as image:
      self.assertEqual(image.size, (480, 320))
    with self.assertRaisesRegex(ValueError, 'no finite point'):
      figures.save_line_plot(path, {'a': ([1], [None])}, xlabel='x',
                             ylabel='y')

  def test_label_overlap_and_comparison_table(self):
    # Labels are multisets: a repeated label counts as often as it is right.
    self.assertEqual(labels.multiset_overlap([3, 3, 5], [5, 3, 7]), 2)
    self.assertEqual(labels.multiset_overlap([3, 3, 5], [3, 5, 3]), 3)
    self.assertEqual(labels.multiset_overlap(np.array([1, 1]), [1, 2]), 1)
    # The attack's summary: under the pairing only the second slot is
    # right; as multisets two of three are.
    records = [dict(label=t, predicted_label=p, label_correct=t == p,
                    psnr=20.0, ssim=0.5, lpips=0.1, seconds=1.0,
                    seconds_to_success=None, batch=0)
               for t, p in ((3, 5), (3, 3), (5, 7))]
    summary = attack_pipeline.summarize(records, 30.0, 0.0)
    self.assertAlmostEqual(summary['label_accuracy'], 1 / 3)
    self.assertAlmostEqual(summary['label_multiset_accuracy'], 2 / 3)
    rows = {2: {'joint': {'accuracy': 0.75, 'exact': 0.5},
                'count': {'accuracy': 1.0, 'exact': 1.0}, 'batches': 2,
                'joint_mean_psnr': 21.04}}
    self.assertIn('| 2 | 2 | 75% / 50% | 100% / 100% | - | 21.0 |',
                  batch_study.comparison_table(rows))

  @parameterized.named_parameters(
      ('count', {'joint_count': 3}, r'config\.study\.joint_count'),
      ('fedavg', {'local_steps': 2}, r'config\.client\.local_steps'),
  )
  def test_bad_comparison_config_raises_before_work(self, overrides, message):
    config = batch_config.get_config('quick')
    config.study.joint_count = overrides.get('joint_count', 2)
    config.client.local_steps = overrides.get('local_steps', 1)
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertRaisesRegex(ValueError, message):
      batch_study.run(config, workdir)
    self.assertEqual(os.listdir(workdir), [])


class LauncherTest(parameterized.TestCase):

  def _config(self, **overrides):
    config = batch_config.get_config('quick')
    for key, value in overrides.items():
      section, name = key.split('.')
      config[section][name] = value
    return config

  @parameterized.named_parameters(
      ('batch_larger_than_data', {'data.batch_size': 21, 'data.count': 20},
       r'config\.data\.batch_size'),
      ('batch_zero', {'data.batch_size': 0}, r'config\.data\.batch_size'),
      ('count_not_multiple', {'data.batch_size': 4, 'data.count': 6},
       r'config\.data\.count'),
      ('label_method', {'attack.label_method': 'guess'},
       r'config\.attack\.label_method'),
      ('idlg_for_batch', {'attack.label_method': 'idlg'},
       r'config\.attack\.label_method'),
      ('local_steps', {'client.local_steps': 0},
       r'config\.client\.local_steps'),
      ('learning_rate', {'client.local_steps': 2, 'client.learning_rate': 0.0},
       r'config\.client\.learning_rate'),
      ('local_batch_size', {'client.local_steps': 2,
                            'client.local_batch_size': 3},
       r'config\.client\.local_batch_size'),
  )
  def test_bad_config_names_key(self, overrides, message):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertRaisesRegex(ValueError, message):
      attack_pipeline.run(self._config(**overrides), workdir)
    # Nothing was attacked.
    self.assertFalse(os.path.exists(os.path.join(workdir, 'results.json')))

  def test_quick_batch_run_writes_matched_records(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    config = self._config(**{'attack.num_steps': 30,
                             'runner.chunk_size': 30,
                             'attack.snapshot_steps': (0, 10),
                             'attack.pair_by': 'lpips'})
    results = attack_pipeline.run(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    records = results['records']
    self.assertLen(records, 2)
    self.assertEqual([r['batch'] for r in records], [0, 0])
    self.assertCountEqual([r['matched_to'] for r in records], [0, 1])
    self.assertEqual([r['index'] for r in records], [0, 1])
    for r in records:
      for key in ('label', 'predicted_label', 'label_correct', 'mse', 'psnr',
                  'ssim', 'lpips', 'success_step', 'seconds', 'steps'):
        self.assertIn(key, r)
      self.assertTrue(r['label_correct'])  # analytic batch labels
      self.assertGreaterEqual(r['lpips'], 0.0)
    self.assertEqual(results['summary']['batch_size'], 2)
    self.assertEqual(results['summary']['label_multiset_accuracy'], 1.0)
    self.assertTrue(os.path.exists(os.path.join(workdir,
                                                'reconstruction.png')))


if __name__ == '__main__':
  absltest.main()
