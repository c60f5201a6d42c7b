"""End-to-end tests of the vision attack, dlg_jax/pipelines/attack.py.

The launcher, experiments/attack.py, is run as a command twice (a bad npz,
a bad checkpoint).

Also the text launcher's refusal of unreadable npz files, which shares the
vision loader's checks.
"""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from configs import bert as bert_config
from configs import cifar100 as cifar100_config
from configs import defenses as defenses_config
from configs import ig as ig_config
from configs import mnist as mnist_config
from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.pipelines import attack as attack_pipeline
from dlg_jax.pipelines import common
from dlg_jax.pipelines import sweep as sweep_pipeline
from dlg_jax.pipelines import text_attack as text_pipeline
from dlg_jax.vision import data
from dlg_jax.vision import metrics
from dlg_jax.vision import models
from dlg_jax.vision import train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _override(config, overrides):
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _small_cifar_npz(path, size, n=2):
  """The first `n` bundled CIFAR-100 test images, averaged down to `size`.

  Real pixels: the central 28x28 (or 32x32) of each image in blocks.
  """
  ds = data.load_bundled('cifar100')
  block = 28 // size if 28 % size == 0 else 32 // size
  lo = (32 - block * size) // 2
  crop = ds.x[:n, lo:lo + block * size, lo:lo + block * size]
  x = crop.reshape(n, size, block, size, block, 3).mean(axis=(2, 4))
  np.savez(path, x=np.round(x * 255).astype(np.uint8), y=ds.y[:n])
  return path


def _written(workdir):
  return sorted(set(os.listdir(workdir)) & {'results.json', 'config.json'}
                ) if os.path.isdir(workdir) else []


class QuickRunTest(absltest.TestCase):

  def test_quick_mnist_run_recovers_digits_and_writes_outputs(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    config = _override(mnist_config.get_config('quick'), {
        'attack.num_steps': 300, 'runner.chunk_size': 150,
        'attack.snapshot_steps': (0, 10, 50)})
    results = attack_pipeline.run(config, workdir)

    records = results['records']
    self.assertLen(records, 2)
    for r in records:
      for key in ('index', 'mse', 'psnr', 'ssim', 'lpips', 'label_correct',
                  'seconds'):
        self.assertIn(key, r)
      # Real MNIST digits through the DLG LeNet come back near exactly.
      self.assertGreaterEqual(r['psnr'], 30.0)
      self.assertGreater(r['ssim'], 0.95)
      # LPIPS (AlexNet, the 28x28 digits upsampled to 32x32): two different
      # bundled digits are 0.02 to 0.25 apart.
      self.assertBetween(r['lpips'], 0.0, 0.01)
      self.assertTrue(r['label_correct'])
      self.assertTrue(np.isfinite(r['seconds']) and r['seconds'] > 0)
    summary = results['summary']
    self.assertEqual(summary['successes'], 2)
    self.assertAlmostEqual(summary['mean_lpips'],
                           np.mean([r['lpips'] for r in records]))
    self.assertAlmostEqual(summary['std_psnr'],
                           np.std([r['psnr'] for r in records], ddof=1))

    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['data']['source'], 'mnist')
    png = os.path.join(workdir, 'reconstruction.png')
    self.assertGreater(os.path.getsize(png), 1000)
    # The arrays behind the figure: each original's paired reconstruction.
    with np.load(os.path.join(workdir, 'reconstructions.npz')) as f:
      self.assertEqual(f['x'].shape, (2, 28, 28, 1))
      np.testing.assert_array_equal(f['index'], [0, 1])
      psnr = [float(metrics.psnr(x, ref)) for x, ref in
              zip(f['x'], data.load_bundled('mnist').x[:2])]
    np.testing.assert_allclose(psnr, [r['psnr'] for r in records], rtol=1e-3)

  def test_user_npz_is_attacked(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    src = np.load(os.path.join(_REPO, 'dlg_jax', 'samples',
                               'mnist_samples.npz'))
    npz = os.path.join(workdir, 'mine.npz')
    np.savez(npz, x=src['x'][5:7], y=src['y'][5:7])
    config = _override(mnist_config.get_config('quick'), {
        'data.npz': npz, 'attack.num_steps': 200, 'runner.chunk_size': 200,
        'attack.snapshot_steps': (0,)})
    results = attack_pipeline.run(config, os.path.join(workdir, 'out'))
    self.assertEqual([r['label'] for r in results['records']],
                     [int(v) for v in src['y'][5:7]])


class SmallImagesTest(absltest.TestCase):
  """7x7 images, and records whose scoring fails, still give results.json."""

  def _config(self, npz):
    return _override(cifar100_config.get_config('quick'), {
        'data.npz': npz, 'data.count': None, 'attack.num_steps': 20,
        'runner.chunk_size': 20, 'attack.snapshot_steps': (0,)})

  def test_7x7_npz_without_count_attacks_every_image_with_ssim(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    npz = _small_cifar_npz(os.path.join(workdir, 'small.npz'), 7)
    results = attack_pipeline.run(self._config(npz),
                                  os.path.join(workdir, 'out'))
    with open(os.path.join(workdir, 'out', 'results.json')) as f:
      written = json.load(f)
    self.assertEqual(written, json.loads(json.dumps(results)))
    # Count unset: every image of the npz (a default of 10 would be refused
    # for these 2).
    self.assertEqual([r['index'] for r in written['records']], [0, 1])
    for r in written['records']:
      self.assertIsInstance(r['ssim'], float)
      self.assertTrue(-1.0 <= r['ssim'] <= 1.0)
      # 7x7 images are upsampled to 32x32 for LPIPS.
      self.assertIsInstance(r['lpips'], float)
      self.assertGreaterEqual(r['lpips'], 0.0)
      self.assertNotIn('metric_errors', r)
    self.assertIsInstance(written['summary']['mean_ssim'], float)
    self.assertIsInstance(written['summary']['mean_lpips'], float)
    with open(os.path.join(workdir, 'out', 'config.json')) as f:
      self.assertIsNone(json.load(f)['data']['count'])

  def test_a_failing_metric_is_null_and_the_rest_is_written(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    npz = _small_cifar_npz(os.path.join(workdir, 'small.npz'), 7)
    with np.load(npz) as f:
      second = f['x'][1].astype(np.float32) / 255
    real_ssim = metrics.ssim

    def flaky_ssim(x, ref, max_val=1.0):
      # Fails on the batched scoring and then on the second image only.
      if isinstance(ref, jax.core.Tracer) or np.array_equal(
          np.asarray(ref), second):
        raise ValueError('ssim broke')
      return real_ssim(x, ref, max_val)

    with mock.patch.object(metrics, 'ssim', flaky_ssim), self.assertLogs(
        level='WARNING') as logs:
      results = attack_pipeline.run(self._config(npz),
                                    os.path.join(workdir, 'out'))
    self.assertTrue(any('ssim' in line and 'null' in line
                        for line in logs.output), logs.output)
    with open(os.path.join(workdir, 'out', 'results.json')) as f:
      written = json.load(f)
    self.assertEqual(written, json.loads(json.dumps(results)))
    first, failed = written['records']
    self.assertIsInstance(first['ssim'], float)
    self.assertNotIn('metric_errors', first)
    self.assertIsNone(failed['ssim'])
    self.assertEqual(failed['metric_errors'],
                     {'ssim': 'ValueError: ssim broke'})
    for r in (first, failed):
      self.assertIsInstance(r['psnr'], float)
      self.assertIsInstance(r['mse'], float)
      self.assertIsInstance(r['lpips'], float)
    self.assertEqual(written['summary']['mean_ssim'], first['ssim'])
    # One SSIM left: no spread over images.
    self.assertIsNone(written['summary']['std_ssim'])
    self.assertIsInstance(written['summary']['std_lpips'], float)
    self.assertTrue(os.path.exists(
        os.path.join(workdir, 'out', 'reconstruction.png')))


class CountTest(absltest.TestCase):
  """`config.data.count` unset: all of an npz, the first 10 bundled."""

  def test_unset_count(self):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    config = cifar100_config.get_config()
    self.assertIsNone(config.data.count)
    # The README's command: the first 10 of the 20 bundled images.
    self.assertEqual(common.target_count(
        config, len(common.load_data(config).x)), 10)
    # A user's npz of 2 images: both.
    config.data.npz = _small_cifar_npz(os.path.join(tmp, 'two.npz'), 16)
    ds, _, _ = common.build(config, common.load_data(config))
    self.assertEqual(ds.x.shape, (2, 16, 16, 3))

  def test_explicit_count_is_checked_against_the_npz(self):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    config = cifar100_config.get_config()
    config.data.npz = _small_cifar_npz(os.path.join(tmp, 'two.npz'), 16)
    config.data.count = 3
    with self.assertRaisesRegex(errors.ConfigError,
                                r'config\.data\.count must be in \[1, 2\]'):
      attack_pipeline.run(config, os.path.join(tmp, 'out'))
    self.assertEqual(_written(os.path.join(tmp, 'out')), [])


class BadInputTest(parameterized.TestCase):

  def _npz(self, **arrays):
    path = os.path.join(self.enter_context(tempfile.TemporaryDirectory()),
                        'data.npz')
    np.savez(path, **arrays)
    return path

  @parameterized.named_parameters(
      ('unknown_model', {'model.name': 'vgg'}, r'config\.model'),
      ('unknown_activation', {'model.activation': 'cube'}, r'config\.model'),
      ('unknown_dataset', {'data.source': 'imagenet'}, r'config\.data\.source'),
      ('unknown_optimizer', {'attack.optimizer': 'sgd'}, r'config\.attack'),
      ('unknown_label_mode', {'attack.label_mode': 'guess'},
       r'config\.attack'),
      ('count_zero', {'data.count': 0}, r'config\.data\.count'),
      ('count_too_large', {'data.count': 21}, r'config\.data\.count'),
      ('label_outside_classes', {'model.num_classes': 10},
       r'config\.model\.num_classes'),
      ('negative_pretraining', {'model.pretrain_steps': -1},
       r'config\.model\.pretrain_steps'),
      ('no_restarts', {'attack.restarts': 0}, r'config\.attack\.restarts'),
      ('unknown_pairing', {'attack.pair_by': 'ssim'},
       r'config\.attack\.pair_by'),
      ('missing_npz', {'data.npz': '/nonexistent/data.npz'},
       r'config\.data\.npz'),
      ('misspelt_attack_key', {'attack.tv_wieght': 0.1},
       r'^config\.attack\.tv_wieght: no attack setting'),
  )
  def test_bad_config_names_the_key(self, overrides, message):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    config = _override(cifar100_config.get_config('quick'), overrides)
    with self.assertRaisesRegex(Exception, message):
      attack_pipeline.run(config, workdir)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'results.json')))

  @parameterized.named_parameters(
      ('bn_prior_without_batchnorm', {'attack.bn_weight': 0.01},
       r'^config\.attack\.bn_weight: .*no training-mode BatchNorm'),
      ('box_with_lbfgs', {'attack.optimizer': 'lbfgs'},
       r'^config\.attack\.schedule: applies to optimizer "adam" only'),
      ('features_of_a_batch',
       {'data.batch_size': 2, 'attack.label_method': 'count'},
       r'^config\.attack\.feature_weight: .*needs batch 1'),
      ('smoothing_to_the_end', {'attack.relu_smoothing': ((1.0, 10.0),)},
       r'^config\.attack\.relu_smoothing: .*ends increasing in \(0, 1\)'),
      ('smoothing_without_relus',
       {'attack.relu_smoothing': ((0.5, 10.0),), 'model.activation': 'gelu'},
       r'^config\.attack\.relu_smoothing: .*computes none'),
  )
  def test_bad_ig_config_names_the_key(self, overrides, message):
    workdir = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'new')
    config = _override(ig_config.get_config('quick'), overrides)
    with self.assertRaisesRegex(errors.ConfigError, message):
      attack_pipeline.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  @parameterized.named_parameters(
      ('empty', 'empty'), ('text', 'text'), ('truncated_zip', 'truncated'),
      ('damaged_zip', 'damaged'))
  def test_unreadable_npz_names_the_key_and_never_pickle(self, kind):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    npz = os.path.join(tmp, 'data.npz')
    if kind in ('truncated', 'damaged'):
      _small_cifar_npz(npz, 16)
      with open(npz, 'rb') as f:
        good = bytearray(f.read())
      if kind == 'truncated':
        content = bytes(good[:len(good) // 2])
      else:
        good[300:340] = bytes(255 - b for b in good[300:340])
        content = bytes(good)
    else:
      content = b'' if kind == 'empty' else b'images,labels\n1,2\n'
    with open(npz, 'wb') as f:
      f.write(content)
    workdir = os.path.join(tmp, 'out')
    config = _override(cifar100_config.get_config('quick'), {'data.npz': npz})
    with self.assertRaisesRegex(errors.ConfigError,
                                r'^config\.data\.npz: .*data\.npz') as cm:
      attack_pipeline.run(config, workdir)
    self.assertNotIn('pickle', str(cm.exception).lower())
    self.assertEqual(_written(workdir), [])

  @parameterized.parameters('npz', 'vocab')
  def test_text_launcher_unreadable_npz_names_the_key(self, key):
    npz = os.path.join(self.enter_context(tempfile.TemporaryDirectory()),
                       'empty.npz')
    open(npz, 'wb').close()
    config = bert_config.get_config('quick')
    config.data[key] = npz
    with self.assertRaisesRegex(errors.ConfigError,
                                rf'^config\.data\.{key}: .*empty') as cm:
      text_pipeline.prepare(config)
    self.assertNotIn('pickle', str(cm.exception).lower())

  def test_images_too_small_for_ssim_fail_before_compiling(self):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    config = _override(cifar100_config.get_config('quick'), {
        'data.npz': _small_cifar_npz(os.path.join(tmp, 'tiny.npz'), 2)})
    with self.assertRaisesRegex(errors.ConfigError,
                                r'config\.data\.npz: .*at least 3x3.*2x2'):
      attack_pipeline.run(config, os.path.join(tmp, 'out'))
    # config.json is written after the checks, before anything compiles.
    self.assertEqual(_written(os.path.join(tmp, 'out')), [])

  def test_command_line_user_error_is_one_line(self):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    empty = os.path.join(tmp, 'EMPTY.npz')
    open(empty, 'wb').close()
    workdir = os.path.join(tmp, 'out')
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.attack',
         '--config=configs/cifar100.py', f'--workdir={workdir}',
         f'--config.data.npz={empty}'],
        cwd=_REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    self.assertNotEqual(proc.returncode, 0)
    self.assertNotIn('Traceback', proc.stderr)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    self.assertIn('config.data.npz', last)
    self.assertIn('EMPTY.npz', last)
    self.assertFalse(os.path.isdir(workdir) and os.listdir(workdir))

  def test_npz_missing_labels(self):
    npz = self._npz(x=np.zeros((2, 8, 8, 3), np.uint8))
    config = _override(cifar100_config.get_config('quick'), {'data.npz': npz})
    with self.assertRaisesRegex(ValueError, r'config\.data\.npz.*y'):
      attack_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_npz_wrong_shape(self):
    npz = self._npz(x=np.zeros((2, 8), np.uint8), y=np.zeros(2, int))
    config = _override(cifar100_config.get_config('quick'), {'data.npz': npz})
    with self.assertRaisesRegex(ValueError, r'config\.data\.npz.*x'):
      attack_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_images_too_small_for_the_model(self):
    npz = self._npz(x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, int))
    config = _override(cifar100_config.get_config('quick'), {
        'data.npz': npz, 'model.name': 'convnet'})
    with self.assertRaisesRegex(ValueError, r'config\.model\.name.*\(4, 4, 3\)'):
      attack_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_unwritable_workdir(self):
    blocker = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'a_file')
    with open(blocker, 'w') as f:
      f.write('not a directory')
    with self.assertRaisesRegex(ValueError, '--workdir'):
      attack_pipeline.run(cifar100_config.get_config('quick'),
                          os.path.join(blocker, 'out'))

  def test_refused_run_leaves_no_workdir(self):
    workdir = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'new', 'out')
    config = _override(cifar100_config.get_config('quick'),
                       {'model.name': 'no_such_model'})
    with self.assertRaisesRegex(ValueError, r'config\.model'):
      attack_pipeline.run(config, workdir)
    self.assertFalse(os.path.exists(os.path.dirname(workdir)))

  def test_url_workdir_is_refused_not_made_locally(self):
    with self.assertRaisesRegex(ValueError, '--workdir .*is a URL'):
      common.check_workdir('gs://bucket/run')
    self.assertFalse(os.path.exists('gs:'))


class CheckpointFlagTest(parameterized.TestCase):
  """`--config.model.checkpoint`: the attack of saved weights."""

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())
    # A training workdir of the DLG LeNet with weights that are not
    # init_seed's: drawn here, from the same uniform(-0.5, 0.5).
    self.train_dir = os.path.join(self.tmp, 'train')
    model = models.get_model('lenet', num_classes=10)
    shapes = jax.eval_shape(
        lambda: models.init_params(model, jax.random.key(0), (28, 28, 1)))
    rng = np.random.default_rng(7)
    self.params = jax.tree.map(
        lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), shapes)
    train.save_model(os.path.join(self.train_dir, train.CHECKPOINT_DIR),
                     model, 'lenet', (28, 28, 1), self.params)
    self.apply_fn = models.make_apply_fn(model)

  def test_attack_uses_the_checkpoint_weights(self):
    workdir = os.path.join(self.tmp, 'attack')
    config = _override(mnist_config.get_config('quick'),
                       {'model.checkpoint': self.train_dir})
    setup = attack_pipeline.prepare(config, workdir)
    for a, b in zip(jax.tree.leaves(setup.params),
                    jax.tree.leaves(self.params)):
      np.testing.assert_array_equal(a, b)
    # The shared gradient is the client's gradient under those weights.
    x, y, grads = attack_pipeline.shared_gradients(setup)
    by_hand = jax.jit(client.gradient, static_argnums=0)(
        self.apply_fn, self.params, x[1], jax.nn.one_hot(y[1], 10))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(by_hand)):
      np.testing.assert_allclose(a[1], b, rtol=1e-4, atol=1e-6)
    # The attack itself, given the params and gradients, is QuickRunTest's.
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['model']['checkpoint'], self.train_dir)

  @parameterized.named_parameters(
      ('missing', 'mnist', {'model.checkpoint': '/nonexistent/run'},
       'no checkpoint folder at /nonexistent/run'),
      ('not_a_checkpoint', 'mnist', {'model.checkpoint': 'EMPTY'},
       'is not a dlg_jax checkpoint'),
      ('another_model', 'mnist', {'model.name': 'convnet'},
       "another model .*module 'LeNet' != 'ConvNet'"),
      ('another_num_classes', 'mnist', {'model.num_classes': 100},
       'another model .*num_classes 10 != 100'),
      ('another_image_shape', 'svhn', {},
       r'another model .*image_shape \[28, 28, 1\] != \[32, 32, 3\]'),
      ('with_pretraining', 'mnist', {'model.pretrain_steps': 10},
       'pretrain_steps must be 0'),
  )
  def test_bad_checkpoint_is_one_line_before_compiling(self, source,
                                                       overrides, message):
    overrides = {'model.checkpoint': self.train_dir, **overrides}
    if overrides['model.checkpoint'] == 'EMPTY':
      overrides['model.checkpoint'] = self.tmp
    config = _override(mnist_config.get_config('quick'), {
        'data.source': source, **overrides})
    workdir = os.path.join(self.tmp, 'new', 'attack')
    with self.assertRaisesRegex(errors.ConfigError,
                                rf'^config\.model\.checkpoint: .*{message}'):
      attack_pipeline.run(config, workdir)
    self.assertFalse(os.path.exists(os.path.dirname(workdir)))

  def test_command_line_bad_checkpoint_is_one_line(self):
    workdir = os.path.join(self.tmp, 'out')
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.attack',
         '--config=configs/mnist.py:quick', f'--workdir={workdir}',
         '--config.model.checkpoint=/nonexistent/run'],
        cwd=_REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    self.assertRegex(last, r'error: config\.model\.checkpoint: .*'
                     '/nonexistent/run')
    self.assertFalse(os.path.exists(workdir))

  def test_an_unset_checkpoint_keeps_sweep_fingerprints(self):
    config = defenses_config.get_config()
    self.assertNotIn('checkpoint', sweep_pipeline.fingerprint_config(
        config)['model'])
    config.model.checkpoint = self.train_dir
    self.assertEqual(
        sweep_pipeline.fingerprint_config(config)['model']['checkpoint'],
        self.train_dir)


if __name__ == '__main__':
  absltest.main()
