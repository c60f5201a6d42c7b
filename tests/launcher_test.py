"""End-to-end tests of the vision launcher, experiments/attack.py."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from configs import cifar100 as cifar100_config
from configs import mnist as mnist_config
from experiments import attack as attack_launcher


def _override(config, overrides):
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


class QuickRunTest(absltest.TestCase):

  def test_quick_mnist_run_recovers_digits_and_writes_outputs(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    config = _override(mnist_config.get_config('quick'), {
        'attack.num_steps': 300, 'attack.chunk_size': 150,
        'attack.snapshot_steps': (0, 10, 50)})
    results = attack_launcher.run(config, workdir)

    records = results['records']
    self.assertLen(records, 2)
    for r in records:
      for key in ('index', 'mse', 'psnr', 'ssim', 'label_correct', 'seconds'):
        self.assertIn(key, r)
      # Real MNIST digits through the DLG LeNet come back near exactly.
      self.assertGreaterEqual(r['psnr'], 30.0)
      self.assertGreater(r['ssim'], 0.95)
      self.assertTrue(r['label_correct'])
      self.assertTrue(np.isfinite(r['seconds']) and r['seconds'] > 0)
    self.assertEqual(results['summary']['successes'], 2)

    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['data']['source'], 'mnist')
    png = os.path.join(workdir, 'reconstruction.png')
    self.assertGreater(os.path.getsize(png), 1000)

  def test_user_npz_is_attacked(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    src = np.load(os.path.join(os.path.dirname(attack_launcher.__file__),
                               '..', 'dlg_jax', 'samples', 'mnist_samples.npz'))
    npz = os.path.join(workdir, 'mine.npz')
    np.savez(npz, x=src['x'][5:7], y=src['y'][5:7])
    config = _override(mnist_config.get_config('quick'), {
        'data.npz': npz, 'attack.num_steps': 200, 'attack.chunk_size': 200,
        'attack.snapshot_steps': (0,)})
    results = attack_launcher.run(config, os.path.join(workdir, 'out'))
    self.assertEqual([r['label'] for r in results['records']],
                     [int(v) for v in src['y'][5:7]])


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
      ('missing_npz', {'data.npz': '/nonexistent/data.npz'},
       r'config\.data\.npz'),
  )
  def test_bad_config_names_the_key(self, overrides, message):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    config = _override(cifar100_config.get_config('quick'), overrides)
    with self.assertRaisesRegex(Exception, message):
      attack_launcher.run(config, workdir)
    self.assertFalse(os.path.exists(os.path.join(workdir, 'results.json')))

  def test_npz_missing_labels(self):
    npz = self._npz(x=np.zeros((2, 8, 8, 3), np.uint8))
    config = _override(cifar100_config.get_config('quick'), {'data.npz': npz})
    with self.assertRaisesRegex(ValueError, r'config\.data\.npz.*y'):
      attack_launcher.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_npz_wrong_shape(self):
    npz = self._npz(x=np.zeros((2, 8), np.uint8), y=np.zeros(2, int))
    config = _override(cifar100_config.get_config('quick'), {'data.npz': npz})
    with self.assertRaisesRegex(ValueError, r'config\.data\.npz.*x'):
      attack_launcher.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_images_too_small_for_the_model(self):
    npz = self._npz(x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, int))
    config = _override(cifar100_config.get_config('quick'), {
        'data.npz': npz, 'model.name': 'convnet'})
    with self.assertRaisesRegex(ValueError, r'config\.model\.name.*\(4, 4, 3\)'):
      attack_launcher.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_unwritable_workdir(self):
    blocker = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'a_file')
    with open(blocker, 'w') as f:
      f.write('not a directory')
    with self.assertRaisesRegex(ValueError, '--workdir'):
      attack_launcher.run(cifar100_config.get_config('quick'),
                          os.path.join(blocker, 'out'))

  def test_url_workdir_is_refused_not_made_locally(self):
    with self.assertRaisesRegex(ValueError, '--workdir .*is a URL'):
      attack_launcher.check_workdir('gs://bucket/run')
    self.assertFalse(os.path.exists('gs:'))


if __name__ == '__main__':
  absltest.main()
