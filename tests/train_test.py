"""Tests for dlg_jax.vision.train."""

from absl.testing import absltest
import jax
import numpy as np

from dlg_jax.core import client
from dlg_jax.vision import data
from dlg_jax.vision import models
from dlg_jax.vision import train


class TrainTest(absltest.TestCase):

  def test_training_lowers_the_loss_on_real_digits(self):
    ds = data.load_bundled('mnist')
    model = models.get_model('lenet', num_classes=10)
    apply_fn = models.make_apply_fn(model)
    params = models.init_params(model, jax.random.PRNGKey(0), (28, 28, 1))
    x, y = ds.x[:200], ds.y[:200]
    trained, losses = train.train(apply_fn, params, x, y, jax.random.PRNGKey(1),
                                  num_classes=10, steps=150,
                                  learning_rate=3e-3)
    self.assertEqual(losses.shape, (150,))
    onehot = jax.nn.one_hot(y, 10)
    before = float(client.loss(apply_fn, params, x, onehot))
    after = float(client.loss(apply_fn, trained, x, onehot))
    self.assertLess(after, 0.5 * before)
    accuracy = np.mean(np.argmax(apply_fn(trained, x), -1) == y)
    self.assertGreater(accuracy, 0.6)

  def test_a_model_with_batchnorm_trains_its_parameters(self):
    ds = data.load_bundled('mnist')
    x, y = ds.x[:64, ::4, ::4], ds.y[:64]  # 7x7 digits
    model = models.get_model('convnet', num_classes=10, norm='batch',
                             widths=(8,))
    apply_fn = models.make_apply_fn(model)
    victim = models.init_params(model, jax.random.PRNGKey(0), x.shape[1:])
    trained, _ = train.train(apply_fn, victim, x, y, jax.random.PRNGKey(1),
                             num_classes=10, steps=40, learning_rate=1e-2)
    self.assertIsInstance(trained, client.Victim)
    self.assertIs(trained.state, victim.state)
    onehot = jax.nn.one_hot(y, 10)
    self.assertLess(float(client.loss(apply_fn, trained, x, onehot)),
                    0.8 * float(client.loss(apply_fn, victim, x, onehot)))

  def test_zero_steps_keeps_params(self):
    model = models.get_model('lenet', num_classes=10)
    apply_fn = models.make_apply_fn(model)
    params = models.init_params(model, jax.random.PRNGKey(0), (28, 28, 1))
    x = np.zeros((4, 28, 28, 1), np.float32)
    same, losses = train.train(apply_fn, params, x, np.zeros(4, int),
                               jax.random.PRNGKey(1), num_classes=10, steps=0)
    self.assertEqual(losses.shape, (0,))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
      np.testing.assert_array_equal(a, b)

  def test_bad_arguments_name_themselves(self):
    with self.assertRaisesRegex(ValueError, 'steps'):
      train.train(None, {}, np.zeros((1, 2, 2, 1)), np.zeros(1, int),
                  jax.random.PRNGKey(0), num_classes=2, steps=-1)
    with self.assertRaisesRegex(ValueError, 'batch_size'):
      train.train(None, {}, np.zeros((1, 2, 2, 1)), np.zeros(1, int),
                  jax.random.PRNGKey(0), num_classes=2, steps=1, batch_size=0)


if __name__ == '__main__':
  absltest.main()
