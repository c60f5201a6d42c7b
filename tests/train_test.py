"""Tests for dlg_jax.vision.train and its pipeline, dlg_jax/pipelines/train.py.

The pipeline trains the DLG LeNet on real MNIST digits once (the `:quick`
config) and the tests read what it wrote; BatchNorm training is checked on
a 7x7 ConvNet and a small NNX module against hand computations.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from configs import mnist as mnist_config
from configs import train as train_config
from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import common
from dlg_jax.pipelines import train as train_pipeline
from dlg_jax.vision import data
from dlg_jax.vision import models
from dlg_jax.vision import train

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _leaves_equal(test, a, b):
  test.assertEqual(jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


class PipelineTest(absltest.TestCase):
  """`configs/train.py:quick`: LeNet, 150 Adam steps on 400 MNIST digits."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.tmp, 'new', 'train')
    cls.results = train_pipeline.run(train_config.get_config('quick'),
                                     cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp)
    super().tearDownClass()

  def test_held_out_accuracy_and_outputs(self):
    r = self.results
    # Chance is 0.1; the untrained LeNet predicts one class for all.
    self.assertLess(r['initial_test_accuracy'], 0.2)
    self.assertGreater(r['test_accuracy'], 0.6)
    self.assertGreater(r['train_accuracy'], 0.6)
    self.assertLess(r['final_loss'], 0.3 * r['first_loss'])
    self.assertEqual((r['num_train'], r['num_test'], r['steps']),
                     (400, 100, 150))
    self.assertEqual(r['test_index_range'], [0, 99])
    self.assertGreater(r['seconds'], 0)
    self.assertEqual(sorted(os.listdir(self.workdir)),
                     ['checkpoint', 'config.json', 'results.json'])
    with open(os.path.join(self.workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(r)))

  def test_restored_weights_give_the_recorded_accuracy(self):
    model = models.get_model('lenet', num_classes=10)
    params = train.restore_model(self.workdir, model, 'lenet', (28, 28, 1))
    ds = data.load_bundled('mnist')
    score = train.evaluate(models.make_apply_fn(model), params, ds.x[:100],
                           ds.y[:100], num_classes=10)
    self.assertEqual(score['accuracy'], self.results['test_accuracy'])
    self.assertAlmostEqual(score['loss'], self.results['test_loss'],
                           places=5)

  def test_attack_config_restores_the_checkpoint(self):
    config = mnist_config.get_config('quick')
    config.model.checkpoint = self.workdir
    _, params, _ = common.build(config, common.load_data(config))
    model = models.get_model('lenet', num_classes=10)
    _leaves_equal(self, params, train.restore_model(
        os.path.join(self.workdir, 'checkpoint'), model, 'lenet',
        (28, 28, 1)))

  def test_a_workdir_with_a_checkpoint_is_refused_unchanged(self):
    before = sorted(os.listdir(self.workdir))
    with self.assertRaisesRegex(errors.ConfigError,
                                '^--workdir .* already holds a checkpoint'):
      train_pipeline.run(train_config.get_config('quick'), self.workdir)
    self.assertEqual(sorted(os.listdir(self.workdir)), before)


class BadConfigTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('unknown_model', {'model.name': 'vgg'}, r'^config\.model: .*vgg'),
      ('unknown_norm', {'model.norm': 'layer'}, r'^config\.model: .*layer'),
      ('unknown_source', {'data.source': 'imagenet'},
       r'^config\.data\.source: .*imagenet'),
      ('unprepared_tfds', {'data.source': 'tfds:mnist',
                          'data.data_dir': '/nonexistent/tfds'},
       r'^config\.data\.source: .*not prepared'),
      ('num_test_all', {'data.num_test': 500}, r'^config\.data\.num_test\b'),
      ('num_test_zero', {'data.num_test': 0}, r'^config\.data\.num_test\b'),
      ('no_steps', {'train.steps': 0}, r'^config\.train\.steps\b'),
      ('bad_batch', {'train.batch_size': 0}, r'^config\.train\.batch_size\b'),
      ('bad_lr', {'train.learning_rate': 0.0},
       r'^config\.train\.learning_rate\b'),
      ('few_classes', {'model.num_classes': 5},
       r'^config\.model\.num_classes: '),
  )
  def test_refused_before_anything_is_written(self, overrides, message):
    config = train_config.get_config('quick')
    for key, value in overrides.items():
      section, name = key.split('.')
      config[section][name] = value
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertRaisesRegex(errors.ConfigError, message):
      train_pipeline.run(config, os.path.join(tmp, 'new', 'out'))
    self.assertEqual(os.listdir(tmp), [])

  def test_command_line_user_error_is_one_line(self):
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.train',
         '--config=configs/train.py:quick', '--config.model.name=vgg',
         f'--workdir={os.path.join(tmp, "out")}'],
        cwd=_REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    self.assertRegex(last, r'error: config\.model: .*vgg')
    self.assertEqual(os.listdir(tmp), [])


class BatchNormTest(absltest.TestCase):

  def test_training_moves_the_running_statistics_and_they_round_trip(self):
    ds = data.load_bundled('mnist')
    x, y = ds.x[:64, ::4, ::4], ds.y[:64]  # 7x7 digits
    model = models.get_model('convnet', num_classes=10, norm='batch',
                             widths=(8,))
    apply_fn = models.make_apply_fn(model)
    victim = models.init_params(model, jax.random.PRNGKey(0), x.shape[1:])
    key = jax.random.PRNGKey(1)
    one, losses = train.train(apply_fn, victim, x, y, key, num_classes=10,
                              steps=1, batch_size=16)
    self.assertEqual(losses.shape, (1,))
    # A second call with the same model and settings does not compile.
    # pylint: disable=protected-access
    compiled = train._fit._cache_size()
    again, _ = train.train(apply_fn, victim, x, y, key, num_classes=10,
                           steps=1, batch_size=16)
    self.assertEqual(train._fit._cache_size(), compiled)
    # pylint: enable=protected-access
    _leaves_equal(self, again, one)
    # By hand: step 0's minibatch through the first convolution; the
    # running statistics move 10% (momentum 0.9) towards its statistics.
    idx = jax.random.randint(jax.random.split(key, 1)[0], (16,), 0, 64)
    conv = models.Conv(8, (3, 3)).apply(
        {'params': victim.params['Conv_0']}, x[idx])
    stats = one.state['batch_stats']['BatchNorm_0']
    np.testing.assert_allclose(stats['mean'],
                               0.1 * jnp.mean(conv, axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats['var'],
                               0.9 + 0.1 * jnp.var(conv, axis=(0, 1, 2)),
                               rtol=1e-4)

    # Saved and restored: parameters and statistics, bit for bit.
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    path = os.path.join(tmp, 'ckpt')
    train.save_model(path, model, 'convnet', x.shape[1:], one)
    back = train.restore_model(path, model, 'convnet', x.shape[1:])
    self.assertIsInstance(back, client.Victim)
    _leaves_equal(self, back, one)
    # Not into the same ConvNet without BatchNorm, nor another width.
    for other in ({'norm': 'none'}, {'norm': 'batch', 'widths': (4,)}):
      with self.assertRaisesRegex(ValueError, 'another model.*!='):
        train.restore_model(path, models.get_model(
            'convnet', num_classes=10, **other), 'convnet', x.shape[1:])

  def test_an_nnx_module_trains_its_batch_statistics(self):

    class Net(nnx.Module):

      def __init__(self, rngs):
        self.lin = nnx.Linear(16, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

      def __call__(self, x):
        h = self.lin(x.reshape(x.shape[0], -1))
        return self.head(nnx.relu(self.norm(h)))

    apply_fn, victim = models.from_nnx(Net(nnx.Rngs(0)))
    ds = data.load_bundled('mnist')
    x, y = ds.x[:32, ::7, ::7], ds.y[:32]  # 4x4 digits
    key = jax.random.PRNGKey(2)
    one, _ = train.train(apply_fn, victim, x, y, key, num_classes=10,
                         steps=1, batch_size=8)
    idx = jax.random.randint(jax.random.split(key, 1)[0], (8,), 0, 32)
    lin = victim.params['lin']
    h = x[idx].reshape(8, -1) @ lin['kernel'] + lin['bias'][None]
    # nnx.BatchNorm's momentum is 0.99.
    np.testing.assert_allclose(one.state['norm']['mean'],
                               0.01 * jnp.mean(h, axis=0), rtol=1e-4,
                               atol=1e-7)


class TrainTest(absltest.TestCase):

  def test_zero_steps_keeps_params(self):
    model = models.get_model('lenet', num_classes=10)
    apply_fn = models.make_apply_fn(model)
    params = {'w': jnp.ones((2,))}
    x = np.zeros((4, 28, 28, 1), np.float32)
    same, losses = train.train(apply_fn, params, x, np.zeros(4, int),
                               jax.random.PRNGKey(1), num_classes=10, steps=0)
    self.assertEqual(losses.shape, (0,))
    self.assertIs(same, params)

  def test_bad_arguments_name_themselves(self):
    with self.assertRaisesRegex(ValueError, 'steps'):
      train.train(None, {}, np.zeros((1, 2, 2, 1)), np.zeros(1, int),
                  jax.random.PRNGKey(0), num_classes=2, steps=-1)
    with self.assertRaisesRegex(ValueError, 'batch_size'):
      train.train(None, {}, np.zeros((1, 2, 2, 1)), np.zeros(1, int),
                  jax.random.PRNGKey(0), num_classes=2, steps=1, batch_size=0)


class CheckpointFileTest(parameterized.TestCase):
  """Checkpoints that `restore_model` refuses, with one message each."""

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())
    self.model = models.get_model('lenet', num_classes=10)
    shapes = jax.eval_shape(lambda: models.init_params(
        self.model, jax.random.key(0), (28, 28, 1)))
    rng = np.random.default_rng(0)
    self.params = jax.tree.map(
        lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), shapes)
    self.path = os.path.join(self.tmp, 'checkpoint')
    train.save_model(self.path, self.model, 'lenet', (28, 28, 1),
                     self.params, meta={'note': 'test'})

  def _restore(self, path=None, image_shape=(28, 28, 1), **kwargs):
    model = models.get_model(kwargs.pop('name', 'lenet'),
                             num_classes=kwargs.pop('num_classes', 10),
                             **kwargs)
    return train.restore_model(path or self.tmp, model, 'lenet', image_shape)

  def test_round_trip_from_the_workdir_or_the_folder(self):
    _leaves_equal(self, self._restore(), self.params)
    _leaves_equal(self, self._restore(self.path), self.params)

  @parameterized.named_parameters(
      ('classes', {'num_classes': 100}, 'num_classes 10 != 100'),
      ('activation', {'activation': 'relu'}, "'sigmoid' != 'relu'"),
      ('model', {'name': 'convnet'}, "module 'LeNet' != 'ConvNet'"),
      ('image_shape', {'image_shape': (32, 32, 3)},
       r'image_shape \[28, 28, 1\] != \[32, 32, 3\]'),
  )
  def test_another_model_is_named(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, 'another model .*' + message):
      self._restore(**kwargs)

  def test_damaged_arrays_are_refused(self):
    # Bytes flipped inside the arrays' data files, which orbax restores
    # without a complaint; the sha256 saved with them does not match.
    data_dir = os.path.join(self.path, 'params', 'ocdbt.process_0', 'd')
    for name in os.listdir(data_dir):
      with open(os.path.join(data_dir, name), 'r+b') as f:
        content = bytearray(f.read())
        mid = len(content) // 2
        content[mid:mid + 40] = bytes(255 - b for b in content[mid:mid + 40])
        f.seek(0)
        f.write(bytes(content))
    with self.assertRaisesRegex(ValueError, 'is damaged: .*sha256'):
      self._restore()

  def test_missing_and_foreign_folders(self):
    with self.assertRaisesRegex(FileNotFoundError, 'no checkpoint folder'):
      self._restore(os.path.join(self.tmp, 'nope'))
    empty = os.path.join(self.tmp, 'empty')
    os.mkdir(empty)
    with self.assertRaisesRegex(ValueError, 'is not a dlg_jax checkpoint'):
      self._restore(empty)
    figures.save_json(os.path.join(self.path, 'meta', 'metadata'),
                      {'format': 'something else'})
    with self.assertRaisesRegex(ValueError, 'not a checkpoint of a dlg_jax'):
      self._restore()


if __name__ == '__main__':
  absltest.main()
