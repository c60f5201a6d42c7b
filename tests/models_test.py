"""Tests for dlg_jax.vision.models."""

from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.vision import data
from dlg_jax.vision import labels
from dlg_jax.vision import models


def setUpModule():
  # The programs here run on a handful of pixels: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


_SHAPES = (('cifar', (32, 32, 3)), ('mnist', (28, 28, 1)))


def _num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _init(model, image_shape, seed=0):
  return jax.jit(models.init_params, static_argnums=(0, 2))(
      model, jax.random.key(seed), tuple(image_shape))


def _abstract_params(model, image_shape):
  """Parameter shapes without running the initialiser."""
  return jax.eval_shape(
      lambda k: models.init_params(model, k, image_shape), jax.random.key(0))


class ModelsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # One compiled init and apply per model, shared by the tests below.
    cls._x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    cls._small = {}
    for name in ('lenet', 'convnet', 'resnet'):
      model = models.get_model(name, num_classes=5)
      cls._small[name] = (model, _init(model, (8, 8, 3)),
                          jax.jit(models.make_apply_fn(model)))

  @parameterized.product(
      name=('lenet', 'convnet', 'resnet'),
      shape=_SHAPES,
      num_classes=(1, 10, 100),
  )
  def test_output_shape(self, name, shape, num_classes):
    _, image_shape = shape
    model = models.get_model(name, num_classes=num_classes)
    apply_fn = models.make_apply_fn(model)
    params = _abstract_params(model, image_shape)
    x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    logits = jax.eval_shape(apply_fn, params, x)
    self.assertEqual(logits.shape, (2, num_classes))
    self.assertEqual(logits.dtype, jnp.float32)

  @parameterized.named_parameters(
      # Three 5x5 convolutions with biases, 3->12 then 12->12 twice:
      # (75 + 1) * 12 + 2 * (300 + 1) * 12 = 912 + 2 * 3612 = 8136;
      # dense 8*8*12 = 768 -> 100 with bias: 76900.
      ('cifar', (32, 32, 3), 100, 8136 + 76900, 768),
      # 1->12 first: (25 + 1) * 12 = 312; 7*7*12 = 588 -> 10: 5890.
      ('mnist', (28, 28, 1), 10, 312 + 2 * 3612 + 5890, 588),
  )
  def test_lenet_parameter_count(self, image_shape, num_classes, expected,
                                 features):
    model = models.get_model('lenet', num_classes=num_classes)
    params = _abstract_params(model, image_shape)
    self.assertEqual(_num_params(params), expected)
    self.assertEqual(params['Dense_0']['kernel'].shape,
                     (features, num_classes))
    kernels = sorted(k for k in params if k.startswith('Conv'))
    self.assertLen(kernels, 3)
    for k in kernels:
      self.assertEqual(params[k]['kernel'].shape[:2], (5, 5))
      self.assertEqual(params[k]['kernel'].shape[-1], 12)
      self.assertEqual(params[k]['bias'].shape, (12,))

  def test_lenet_weights_uniform_half(self):
    model = models.get_model('lenet', num_classes=100)
    params = _init(model, (32, 32, 3))
    leaves = jax.tree.leaves(params)
    self.assertLen(leaves, 8)
    for leaf in leaves:
      self.assertLessEqual(float(jnp.max(jnp.abs(leaf))), 0.5)
    # Uniform on [-0.5, 0.5], not a fan-in scaled init: the dense kernel's
    # 76800 draws fill the interval.
    dense = np.asarray(params['Dense_0']['kernel'])
    self.assertGreater(dense.max(), 0.49)
    self.assertLess(dense.min(), -0.49)
    self.assertAlmostEqual(float(dense.std()), 1 / np.sqrt(12), delta=0.01)

  @parameterized.named_parameters(
      # PyTorch: out = floor((h + 2 * 2 - 5) / stride) + 1.
      ('cifar', (32, 32, 3), (16, 8, 8)),
      ('mnist', (28, 28, 1), (14, 7, 7)),
  )
  def test_lenet_padding_matches_pytorch(self, image_shape, sizes):
    model = models.get_model('lenet', num_classes=10)
    params = _abstract_params(model, image_shape)
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)

    def intermediates(params, x):
      _, state = model.apply({'params': params}, x,
                             capture_intermediates=True)
      return state['intermediates']

    inter = jax.eval_shape(intermediates, params, x)
    convs = sorted(k for k in inter if k.startswith('Conv'))
    self.assertLen(convs, 3)
    for conv, size in zip(convs, sizes):
      (out,) = inter[conv]['__call__']
      self.assertEqual(out.shape, (1, size, size, 12))

  @parameterized.parameters('lenet', 'convnet', 'resnet')
  def test_activation_selectable(self, name):
    model, params, apply_fn = self._small[name]
    other = 'relu' if model.activation == 'sigmoid' else 'sigmoid'
    changed = models.get_model(name, num_classes=5, activation=other)
    self.assertEqual(changed.activation, other)
    # Same parameters, different function.
    y = jax.jit(models.make_apply_fn(changed))(params, self._x)
    self.assertEqual(y.shape, (2, 5))
    self.assertFalse(np.allclose(y, apply_fn(params, self._x)))

  def test_default_activations(self):
    self.assertEqual(models.get_model('lenet', num_classes=2).activation,
                     'sigmoid')
    self.assertEqual(models.get_model('convnet', num_classes=2).activation,
                     'relu')
    self.assertEqual(models.get_model('resnet', num_classes=2).activation,
                     'relu')

  @parameterized.parameters(*sorted(models.ACTIVATIONS))
  def test_get_activation(self, name):
    act = models.get_activation(name)
    y = act(jnp.linspace(-2.0, 2.0, 5))
    self.assertEqual(y.shape, (5,))
    self.assertTrue(np.all(np.isfinite(y)))

  def test_unknown_model_raises(self):
    with self.assertRaisesRegex(ValueError, "'vgg19'"):
      models.get_model('vgg19', num_classes=10)

  def test_unknown_activation_raises(self):
    with self.assertRaisesRegex(ValueError, "'mish'"):
      models.get_model('lenet', num_classes=10, activation='mish')
    with self.assertRaisesRegex(ValueError, "'mish'"):
      models.get_activation('mish')

  def test_bad_num_classes_raises(self):
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      models.get_model('lenet', num_classes=0)

  @parameterized.parameters(((32, 32),), ((1, 32, 32, 3),), ((),))
  def test_init_params_rejects_bad_image_shape(self, image_shape):
    model = models.get_model('lenet', num_classes=10)
    with self.assertRaisesRegex(ValueError, 'image_shape'):
      models.init_params(model, jax.random.key(0), image_shape)

  @parameterized.parameters('lenet', 'convnet', 'resnet')
  def test_jit_equals_no_jit(self, name):
    model, params, apply_fn = self._small[name]
    np.testing.assert_allclose(
        apply_fn(params, self._x),
        models.make_apply_fn(model)(params, self._x), rtol=1e-5, atol=1e-5)

  def test_apply_is_pure(self):
    model, params, apply_fn = self._small['lenet']
    np.testing.assert_array_equal(apply_fn(params, self._x),
                                  apply_fn(params, self._x))
    other = _init(model, self._x.shape[1:], seed=1)
    self.assertFalse(np.allclose(apply_fn(params, self._x),
                                 apply_fn(other, self._x)))


class _NnxNet(nnx.Module):
  """A user's NNX model: conv, BatchNorm (training mode), linear head."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.sigmoid(self.norm(nnx.sigmoid(self.conv(x))))
    return self.head(x.reshape(x.shape[0], -1))


class NnxTest(absltest.TestCase):
  """An NNX module is a victim through `from_nnx`."""

  def setUp(self):
    super().setUp()
    ds = data.load_bundled('cifar100')
    self.x = jnp.asarray(ds.x[:1, ::4, ::4])  # [1, 8, 8, 3], a real image
    self.onehot = jax.nn.one_hot(jnp.array([6]), 10)
    self.module = _NnxNet(nnx.Rngs(0))
    self.apply_fn, self.victim = models.from_nnx(self.module)

  def test_params_are_plain_dicts_and_the_statistics_are_state(self):
    self.assertIsInstance(self.victim, client.Victim)
    self.assertIsInstance(self.victim.params, dict)
    self.assertEqual(set(self.victim.state), {'norm'})
    self.assertEqual(set(self.victim.state['norm']), {'mean', 'var'})
    # Equal graphs give equal apply functions (a shared compiled attack).
    self.assertEqual(self.apply_fn, models.from_nnx(_NnxNet(nnx.Rngs(1)))[0])

  def test_gradient_equals_nnx_grad_and_reads_the_label(self):
    want = nnx.grad(lambda m: client.soft_cross_entropy(
        m(self.x), self.onehot))(self.module)
    got = client.gradient(self.apply_fn, self.victim, self.x, self.onehot)
    self.assertEqual(jax.tree.structure(got),
                     jax.tree.structure(want.to_pure_dict()))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-7),
                 got, want.to_pure_dict())
    self.assertEqual(int(labels.idlg_label(got, 10)), 6)

  def test_label_read_out_of_an_nnx_state_says_what_to_use(self):
    _, state = nnx.split(self.module, nnx.Param, ...)[:2]
    with self.assertRaisesRegex(ValueError, 'from_nnx'):
      labels.idlg_label(state, 10)

  def test_not_an_nnx_module_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'nnx.Module'):
      models.from_nnx(models.get_model('lenet', num_classes=10))


class NormTest(parameterized.TestCase):
  """The ConvNet's and ResNet's `norm`: BatchNorm gives the model state."""

  @parameterized.product(name=('convnet', 'resnet'),
                         norm=('none', 'batch', 'group'))
  def test_norm_and_its_state(self, name, norm):
    model = models.get_model(name, num_classes=10, norm=norm,
                             widths=(8, 16))
    params = _abstract_params(model, (8, 8, 3))
    self.assertEqual(isinstance(params, client.Victim), norm == 'batch')
    layers = str(jax.tree.structure(client.trainable(params)))
    self.assertEqual('BatchNorm' in layers, norm == 'batch')
    self.assertEqual('GroupNorm' in layers, norm == 'group')
    # The gradient is shaped like the parameters alone.
    x = jnp.zeros((2, 8, 8, 3))
    grads = jax.eval_shape(
        lambda p: client.gradient(models.make_apply_fn(model), p, x,
                                  jnp.full((2, 10), 0.1)), params)
    self.assertEqual(jax.tree.structure(grads),
                     jax.tree.structure(client.trainable(params)))

  @parameterized.named_parameters(
      # He et al. 2016's ResNet-20 (0.28M at 100 classes, 1x1 projections)
      # and ResNet-18 with the CIFAR stem (11.2M at 100 classes).
      ('resnet20', 'resnet20', 100, 279_108, 32),
      ('resnet18', 'resnet18', 100, 11_224_932, 32),
      # The ImageNet stem: torchvision's resnet18 (11,689,512 at 1,000
      # classes) plus the convolutions' biases (4,800).
      ('resnet18_imagenet', 'resnet18_imagenet', 1000, 11_694_312, 224),
  )
  def test_zoo_resnets_have_their_size_and_batchnorm(self, name, num_classes,
                                                     count, size=32):
    model = models.get_model(name, num_classes=num_classes)
    victim = _abstract_params(model, (size, size, 3))
    self.assertIsInstance(victim, client.Victim)
    self.assertEqual(sum(p.size for p in jax.tree.leaves(victim.params)),
                     count)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    self.assertEqual(
        jax.eval_shape(models.make_apply_fn(model), victim, x).shape,
        (2, num_classes))
    # norm overrides the default.
    self.assertNotIsInstance(_abstract_params(
        models.get_model(name, num_classes=10, norm='group'),
        (size, size, 3)), client.Victim)

  @parameterized.parameters(('relu', 'none', True), ('sigmoid', 'none', False),
                            ('gelu', 'none', False), ('relu', 'batch', True),
                            ('sigmoid', 'batch', False),
                            ('sigmoid', 'group', False))
  def test_has_relu_reads_the_program(self, activation, norm, expected):
    # A normalisation layer's variance clamp, max(0, var), is no ReLU.
    model = models.get_model('convnet', num_classes=10, widths=(4,),
                             activation=activation, norm=norm)
    params = _abstract_params(model, (8, 8, 3))
    self.assertEqual(models.has_relu(models.make_apply_fn(model), params,
                                     (8, 8, 3)), expected)

  def test_smooth_relu_rounds_every_relu_and_nothing_else(self):
    model = models.get_model('convnet', num_classes=10, widths=(4,))
    x = jnp.asarray(data.load_bundled('cifar100').x[:2, ::4, ::4])
    params = models.init_params(model, jax.random.key(0), x.shape[1:])
    apply_fn = models.make_apply_fn(model)
    exact = apply_fn(params, x)
    # Sharpness 0 is the model itself, bit for bit.
    np.testing.assert_array_equal(models.smooth_relu(apply_fn, 0.0)(
        params, x), exact)
    # It is the same model with softplus(s z) / s for its activation.
    for s in (10.0, 1000.0):
      models.ACTIVATIONS['_test_softplus'] = (
          lambda z, s=s: jax.nn.softplus(s * z) / s)
      try:
        soft = models.get_model('convnet', num_classes=10, widths=(4,),
                                activation='_test_softplus')
        want = models.make_apply_fn(soft)(params, x)
      finally:
        del models.ACTIVATIONS['_test_softplus']
      got = jax.jit(lambda p, s: models.smooth_relu(apply_fn, s)(p, x))(
          params, s)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    self.assertGreater(float(jnp.abs(got - exact).max()), 0.0)
    # A sigmoid model has no ReLU, and BatchNorm's variance clamp,
    # max(0, var), is none: unchanged.
    sig = models.get_model('convnet', num_classes=10, widths=(4,),
                           activation='sigmoid', norm='batch')
    sig_fn = models.make_apply_fn(sig)
    victim = models.init_params(sig, jax.random.key(0), x.shape[1:])
    np.testing.assert_array_equal(
        models.smooth_relu(sig_fn, 10.0)(victim, x), sig_fn(victim, x))

  def test_smooth_relu_refuses_a_relu_inside_control_flow(self):
    def scanned(x):
      return jax.lax.scan(lambda c, _: (jax.nn.relu(c), None), x, None,
                          length=2)[0]
    with self.assertRaisesRegex(NotImplementedError, 'scan'):
      models.smooth_relu(scanned, 10.0)(jnp.ones(3))

  def test_bad_norm_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'Unknown norm'):
      models.get_model('convnet', num_classes=10, norm='layer')
    with self.assertRaisesRegex(ValueError, 'lenet has no normalisation'):
      models.get_model('lenet', num_classes=10, norm='batch')


if __name__ == '__main__':
  absltest.main()
