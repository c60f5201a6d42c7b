"""Tests for dlg_jax.vision.labels (iDLG label recovery)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.vision import labels
from dlg_jax.vision import models

_IMAGE_SHAPE = (8, 8, 3)
_NUM_CLASSES = 10
_MODELS = {
    'lenet': dict(name='lenet'),
    'convnet_relu': dict(name='convnet', activation='relu', widths=(8, 16)),
    'resnet': dict(name='resnet', widths=(8, 16)),
}


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


class IdlgLabelTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._fns = {}
    for key, kwargs in _MODELS.items():
      model = models.get_model(num_classes=_NUM_CLASSES, **kwargs)
      apply_fn = models.make_apply_fn(model)

      # One compiled program per model: parameters and image from `seed`,
      # the client's gradient for `label`.
      def grad_fn(seed, label, model=model, apply_fn=apply_fn):
        k_params, k_x = jax.random.split(jax.random.key(seed))
        params = models.init_params(model, k_params, _IMAGE_SHAPE)
        x = jax.random.uniform(k_x, (1, *_IMAGE_SHAPE))
        onehot = jax.nn.one_hot(label[None], _NUM_CLASSES)
        return client.gradient(apply_fn, params, x, onehot)
      cls._fns[key] = jax.jit(grad_fn)

  @parameterized.product(model=tuple(_MODELS), seed=(0, 1, 2),
                         label=(0, 3, 9))
  def test_exact_for_one_image(self, model, seed, label):
    grads = self._fns[model](seed, jnp.int32(label))
    self.assertEqual(int(labels.idlg_label(grads, _NUM_CLASSES)), label)

  @parameterized.parameters(*_MODELS)
  def test_without_bias(self, model):
    for seed, label in ((0, 4), (1, 7)):
      grads = self._fns[model](seed, jnp.int32(label))
      path = labels.find_last_layer(grads, _NUM_CLASSES)
      layer = grads
      for key in path[:-1]:
        layer = layer[key]
      # The kernel column sums alone carry the sign, for non-negative
      # features (sigmoid, ReLU).
      layer[path[-1]] = {'kernel': layer[path[-1]]['kernel']}
      self.assertEqual(int(labels.idlg_label(grads, _NUM_CLASSES)), label)

  def test_bias_free_module(self):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top

    class NoBias(nn.Module):

      @nn.compact
      def __call__(self, x):
        x = nn.sigmoid(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(_NUM_CLASSES, use_bias=False)(x)

    model = NoBias()
    x = jax.random.uniform(jax.random.key(0), (1, 4, 4, 1))
    params = model.init(jax.random.key(1), x)['params']
    apply_fn = models.make_apply_fn(model)
    grad_fn = jax.jit(lambda y: client.gradient(
        apply_fn, params, x, jax.nn.one_hot(y[None], _NUM_CLASSES)))
    for label in (2, 8):
      grads = grad_fn(jnp.int32(label))
      self.assertNotIn('bias', grads['Dense_1'])
      self.assertEqual(int(labels.idlg_label(grads, _NUM_CLASSES)), label)

  def test_jit(self):
    grads = self._fns['lenet'](0, jnp.int32(5))
    label = jax.jit(labels.idlg_label, static_argnums=1)(grads, _NUM_CLASSES)
    self.assertEqual(label.dtype, jnp.int32)
    self.assertEqual(label.shape, ())
    self.assertEqual(int(label), 5)

  def test_vmap_over_targets(self):
    ys = jnp.array([1, 6, 9], jnp.int32)
    grads = jax.tree.map(lambda *g: jnp.stack(g),
                         *(self._fns['lenet'](0, y) for y in ys))
    got = jax.vmap(lambda g: labels.idlg_label(g, _NUM_CLASSES))(grads)
    np.testing.assert_array_equal(got, ys)

  @parameterized.parameters(*_MODELS)
  def test_find_last_layer(self, model):
    grads = self._fns[model](0, jnp.int32(0))
    path = labels.find_last_layer(grads, _NUM_CLASSES)
    layer = grads
    for key in path:
      layer = layer[key]
    self.assertEqual(layer['kernel'].ndim, 2)
    self.assertEqual(layer['kernel'].shape[-1], _NUM_CLASSES)
    self.assertEqual(path[-1].split('_')[0], 'Dense')

  def test_last_of_several_candidates(self):
    grads = {'Dense_0': {'kernel': jnp.zeros((4, 3))},
             'Block': {'Dense_1': {'kernel': jnp.zeros((3, 3)),
                                   'bias': jnp.array([0.1, -0.9, 0.8])}}}
    self.assertEqual(labels.find_last_layer(grads, 3), ('Block', 'Dense_1'))
    self.assertEqual(int(labels.idlg_label(grads, 3)), 1)

  def test_no_classifier_layer_raises(self):
    grads = self._fns['lenet'](0, jnp.int32(0))
    with self.assertRaisesRegex(ValueError, 'No Dense layer with 7 outputs'):
      labels.find_last_layer(grads, 7)
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      labels.idlg_label(grads, 7)


if __name__ == '__main__':
  absltest.main()


class LeakedFeaturesTest(parameterized.TestCase):
  """The classifier's input, read off one example's gradient."""

  @parameterized.parameters(*_MODELS)
  def test_equals_the_classifier_input(self, model):
    model = models.get_model(num_classes=_NUM_CLASSES, **_MODELS[model])
    apply_fn = models.make_apply_fn(model)
    params = models.init_params(model, jax.random.key(0), _IMAGE_SHAPE)
    x = jax.random.uniform(jax.random.key(1), (1, *_IMAGE_SHAPE))
    grads = client.gradient(apply_fn, params, x,
                            jax.nn.one_hot(jnp.array([3]), _NUM_CLASSES))
    want = models.classifier_input(apply_fn, params, x)[0]
    np.testing.assert_allclose(
        labels.leaked_features(grads, _NUM_CLASSES), want,
        rtol=1e-4, atol=1e-6)

  def test_not_for_a_batch(self):
    model = models.get_model(num_classes=_NUM_CLASSES, **_MODELS['lenet'])
    apply_fn = models.make_apply_fn(model)
    params = models.init_params(model, jax.random.key(0), _IMAGE_SHAPE)
    x = jax.random.uniform(jax.random.key(1), (2, *_IMAGE_SHAPE))
    grads = client.gradient(apply_fn, params, x,
                            jax.nn.one_hot(jnp.array([3, 5]), _NUM_CLASSES))
    leaked = labels.leaked_features(grads, _NUM_CLASSES)
    features = models.classifier_input(apply_fn, params, x)
    for f in features:
      self.assertGreater(float(jnp.max(jnp.abs(leaked - f))), 1e-3)

  def test_classifier_without_bias_raises(self):
    grads = {'Dense_0': {'kernel': jnp.ones((6, _NUM_CLASSES))}}
    with self.assertRaisesRegex(ValueError, 'bias'):
      labels.leaked_features(grads, _NUM_CLASSES)
