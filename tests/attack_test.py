"""Tests for dlg_jax.vision.attack: the DLG attack must recover real images."""

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.core import defenses
from dlg_jax.core import errors
from dlg_jax.vision import attack
from dlg_jax.vision import data
from dlg_jax.vision import metrics
from dlg_jax.vision import models


def setUpModule():
  # Compile time dominates every test here but the CIFAR-100 attack (see
  # EndToEndTest); e.g. jitting the LeNet's init (threefry) takes ~1 s
  # without XLA's optimisations and ~5 s with them on a loaded 2-core CPU.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _shared_gradients(apply_fn, params, xs, ys, num_classes):
  """The gradients of `n` clients with one image each: `[n, ...]` leaves.

  Args:
    apply_fn: the model.
    params: its parameters.
    xs: `[n, h, w, c]` images.
    ys: `[n]` int labels.
    num_classes: the classifier's output count.
  """
  def one(params, x, y):
    return client.gradient(apply_fn, params, x[None],
                           jax.nn.one_hot(y[None], num_classes))
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))(params, xs, ys)


class EndToEndTest(parameterized.TestCase):
  """The paper's setting: the DLG LeNet at initialisation, one real image.

  Each attack compiles once (`chunk_size=num_steps`). Measured PSNR (model
  seed, attack key as below): CIFAR-100 image 0 passes 25 dB at steps
  385-403 and ends at 27.2-27.9 dB after 500 steps, 29.4-30.2 dB after 600
  and 33.6-34.8 dB after 800, over attack keys 0-4; MNIST
  image 0 with joint labels passes 30 dB by step ~100 and converges
  (distance below tol) by step 180-250 at 76-100 dB, over three keys.
  """

  def _attack(self, name, num_classes, *, num_steps, label_mode='analytic',
              model_seed=0, attack_key=0, optimize=False):
    ds = data.load_bundled(name)
    x, y = ds.x[:1], ds.y[:1]
    model = models.get_model('lenet', num_classes=num_classes)
    params = jax.jit(models.init_params, static_argnums=(0, 2))(
        model, jax.random.key(model_seed), x.shape[1:])
    apply_fn = models.make_apply_fn(model)
    grads = _shared_gradients(apply_fn, params, x, y, num_classes)
    atk = attack.make(
        apply_fn=apply_fn, image_shape=x.shape[1:],
        num_classes=num_classes, label_mode=label_mode, num_steps=num_steps,
        success_psnr=25.0)
    # XLA's optimisations pay for themselves on long runs only: a CIFAR
    # step takes ~2.5 ms optimised and ~6 ms not, MNIST runs are short.
    jax.config.update('jax_disable_most_optimizations', not optimize)
    try:
      result = attack.reconstruct(
          atk, params, grads, y[:, None], jax.random.key(attack_key),
          ground_truth=x[None], chunk_size=num_steps)
    finally:
      jax.config.update('jax_disable_most_optimizations', True)
    for field, value in result._asdict().items():
      self.assertTrue(np.all(np.isfinite(value)), field)
    self.assertEqual(result.x.shape, (1, 1, *x.shape[1:]))
    psnr = float(metrics.psnr(np.clip(result.x[0, 0], 0.0, 1.0), x[0]))
    return result, psnr, int(y[0])

  def test_cifar100_lenet(self):
    result, psnr, label = self._attack('cifar100', 100, num_steps=600,
                                       model_seed=1, optimize=True)
    self.assertGreaterEqual(psnr, 25.0)
    self.assertEqual(int(result.labels[0, 0]), label)
    self.assertFalse(result.diverged[0])
    # The runner's own bookkeeping saw the 25 dB crossing.
    self.assertBetween(int(result.success_step[0]), 0, 599)

  def _mnist_joint(self):
    # DLG proper, the label optimised with the image. One attack serves the
    # two tests below: compiling it costs more than running it.
    cls = type(self)
    if not hasattr(cls, '_mnist_result'):
      cls._mnist_result = self._attack('mnist', 10, num_steps=300,
                                       label_mode='joint')
    return cls._mnist_result

  def test_mnist_lenet(self):
    result, psnr, _ = self._mnist_joint()
    self.assertGreaterEqual(psnr, 30.0)
    self.assertBetween(int(result.converged_step[0]), 0, 299)

  def test_joint_label_mode(self):
    # The argmax of the dummy logits is right by step ~25 (measured over
    # three starts, on MNIST and on CIFAR-100).
    result, _, label = self._mnist_joint()
    self.assertEqual(int(result.labels[0, 0]), label)


class _ReluNet(nn.Module):
  """A ReLU conv layer and a classifier."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class InvertingGradientsTest(absltest.TestCase):
  """Inverting Gradients' recipe (configs/ig.py's optimiser) on a ReLU victim."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    ds = data.load_bundled('cifar100')
    cls.x = jnp.asarray(ds.x[:1, ::4, ::4])  # [1, 8, 8, 3]
    cls.y = jnp.asarray(ds.y[:1] % 10)
    model = _ReluNet()
    cls.params = models.init_params(model, jax.random.key(0),
                                    cls.x.shape[1:])
    cls.apply_fn = models.make_apply_fn(model)

  def test_recipe_recovers_a_relu_victim_in_the_box(self):
    atk = attack.make(
        apply_fn=self.apply_fn, image_shape=self.x.shape[1:], num_classes=10,
        distance='cosine', optimizer='adam', learning_rate=0.1,
        schedule='step', signed=True, box=True, num_steps=400, tol=0.0,
        init_scale=0.25, snapshot_steps=(0,))
    grads = atk.threat.shared_update(self.params, self.x,
                                     jax.nn.one_hot(self.y, 10))
    result = attack.reconstruct(
        atk, self.params, jax.tree.map(lambda g: g[None], grads),
        self.y[:, None], jax.random.key(0), restarts=2, chunk_size=400)
    x = np.asarray(result.x[0, 0])
    # Boxed: never outside the data range, not merely clipped afterwards.
    self.assertBetween(float(x.min()), 0.0, 1.0)
    self.assertBetween(float(x.max()), 0.0, 1.0)
    # Measured: 82.1 dB (the step decay's last stage polishes to ~1e-7).
    self.assertGreaterEqual(float(metrics.psnr(x, self.x[0])), 40.0)
    self.assertEqual(int(result.labels[0, 0]), int(self.y[0]))

  def test_feature_term_recovers_a_relu_victim(self):
    # The classifier's input, leaked exactly, matched beside the cosine
    # distance: a term continuous through the ReLUs (Objective.feature_weight).
    atk = attack.make(
        apply_fn=self.apply_fn, image_shape=self.x.shape[1:], num_classes=10,
        distance='cosine', optimizer='adam', learning_rate=0.1,
        schedule='step', signed=True, box=True, num_steps=200, tol=0.0,
        init_scale=0.25, feature_weight=10.0, snapshot_steps=(0,))
    grads = atk.threat.shared_update(self.params, self.x,
                                     jax.nn.one_hot(self.y, 10))
    target = attack.make_target(atk, grads, self.y, params=self.params)
    objective = jax.jit(lambda v: attack.objective(
        atk, self.params, {'x': v}, target))
    self.assertLess(float(objective(self.x)), 1e-6)
    self.assertGreater(float(objective(self.x * 0.9)), 1e-3)
    result = attack.reconstruct(
        atk, self.params, jax.tree.map(lambda g: g[None], grads),
        self.y[:, None], jax.random.key(0), chunk_size=200)
    # Measured: 78.8 dB (74.5 without the term, same start and steps).
    self.assertGreaterEqual(
        float(metrics.psnr(np.asarray(result.x[0, 0]), self.x[0])), 40.0)

  def test_relu_smoothing_anneals_then_ends_on_the_victim(self):
    # A continuation (Objective.relu_smoothing): softplus ReLUs of sharpness
    # 30 for 60 of the 200 steps, then the victim itself, whose objective
    # the result is judged by.
    fields = dict(
        apply_fn=self.apply_fn, image_shape=self.x.shape[1:], num_classes=10,
        distance='cosine', optimizer='adam', learning_rate=0.1,
        schedule='step', signed=True, box=True, num_steps=200, tol=0.0,
        init_scale=0.25, snapshot_steps=(0,))
    atk = attack.make(relu_smoothing=((0.3, 30.0),), **fields)
    plain = attack.make(**fields)
    grads = atk.threat.shared_update(self.params, self.x,
                                     jax.nn.one_hot(self.y, 10))
    target = attack.make_target(atk, grads, self.y, params=self.params)
    value = jax.jit(lambda a, v, step: attack.objective(
        a, self.params, {'x': v}, target, step), static_argnums=0)
    # Smoothed, the truth no longer matches its own gradient; from step 60
    # the objective is the victim's.
    self.assertLess(float(value(plain, self.x, 0)), 1e-6)
    self.assertGreater(float(value(atk, self.x, 0)), 1e-5)
    self.assertEqual(float(value(atk, self.x * 0.9, 60)),
                     float(value(plain, self.x * 0.9, 60)))
    result = attack.reconstruct(
        atk, self.params, jax.tree.map(lambda g: g[None], grads),
        self.y[:, None], jax.random.key(0), chunk_size=200)
    # The best point is the last stage's: its value is the victim's.
    self.assertAlmostEqual(
        float(result.distance[0]),
        float(value(plain, result.x[0], 199)), delta=1e-3)
    # Measured: 63.8 dB (74.5 without the smoothing: one ReLU layer is no
    # staircase to cross, and the last 140 steps do the polishing).
    self.assertGreaterEqual(
        float(metrics.psnr(np.asarray(result.x[0, 0]), self.x[0])), 50.0)

  def test_relu_smoothing_is_checked(self):
    for stages, message in ((((0.1, 0.0),), 'sharpness > 0'),
                            (((0.2, 1.0), (0.1, 2.0)), 'increasing'),
                            ((('a', 1.0),), 'end, sharpness'),
                            (((1.0, 1.0),), r'\(0, 1\)')):
      with self.assertRaisesRegex(errors.FieldError, message) as cm:
        attack.make(apply_fn=self.apply_fn, image_shape=(8, 8, 3),
                    num_classes=10, relu_smoothing=stages)
      self.assertIn('relu_smoothing', cm.exception.field)

  def test_feature_weight_needs_one_fedsgd_example(self):
    for fields in ({'batch': 2, 'label_mode': 'known'},
                   {'client': client.Client(local_steps=2,
                                            learning_rate=0.1)}):
      with self.assertRaisesRegex(errors.FieldError, 'batch 1') as cm:
        attack.make(apply_fn=self.apply_fn, image_shape=(8, 8, 3),
                    num_classes=10, feature_weight=1.0, **fields)
      self.assertEqual(cm.exception.field, 'objective.feature_weight')

  def test_adam_fields_on_lbfgs_name_the_field(self):
    for field, value in (('box', True), ('signed', True),
                         ('schedule', 'step')):
      with self.assertRaisesRegex(errors.FieldError, 'adam') as cm:
        attack.make(apply_fn=self.apply_fn, image_shape=(8, 8, 3),
                    num_classes=10, **{field: value})
      self.assertEqual(cm.exception.field, field)


_IMAGE_SHAPE = (4, 4, 1)
_NUM_CLASSES = 4
_NUM_STEPS = 6
_SNAPSHOTS = (0, 3, 100)


class _BatchNormNet(nn.Module):
  """A conv net with BatchNorm in training mode: a model with state."""

  @nn.compact
  def __call__(self, x):
    x = nn.sigmoid(nn.Conv(4, (3, 3))(x))
    x = nn.Conv(4, (3, 3))(x)
    x = nn.sigmoid(nn.BatchNorm(use_running_average=False)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


class VictimStateTest(absltest.TestCase):
  """A victim with BatchNorm statistics goes through the attack as a Victim."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    ds = data.load_bundled('mnist')
    cls.x = jnp.asarray(ds.x[:1, ::3, ::3][:, :8, :8])
    cls.y = jnp.asarray(ds.y[:1])
    cls.model = _BatchNormNet()
    cls.victim = models.init_params(cls.model, jax.random.key(0),
                                    cls.x.shape[1:])
    cls.apply_fn = models.make_apply_fn(cls.model)

  def test_init_keeps_the_state(self):
    self.assertIsInstance(self.victim, client.Victim)
    self.assertEqual(set(self.victim.state), {'batch_stats'})

  def test_gradient_is_the_training_mode_gradient_of_the_params(self):
    onehot = jax.nn.one_hot(self.y, 10)

    def flax_loss(params):
      logits, _ = self.model.apply(
          {'params': params, **self.victim.state}, self.x,
          mutable=['batch_stats'])
      return client.soft_cross_entropy(logits, onehot)
    want = jax.grad(flax_loss)(self.victim.params)
    got = client.gradient(self.apply_fn, self.victim, self.x, onehot)
    self.assertEqual(jax.tree.structure(got), jax.tree.structure(want))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 got, want)

  def test_batch_statistics_are_what_flax_averages_in(self):
    x = jnp.concatenate([self.x, 1.0 - self.x])  # a batch of two
    (mean, var), = models.batch_norm_statistics(self.apply_fn, self.victim, x)
    _, updated = self.model.apply(
        {'params': self.victim.params, **self.victim.state}, x,
        mutable=['batch_stats'])
    old = self.victim.state['batch_stats']['BatchNorm_0']
    new = updated['batch_stats']['BatchNorm_0']
    # Flax: running = 0.99 running + 0.01 batch statistic.
    np.testing.assert_allclose(mean, (new['mean'] - 0.99 * old['mean']) / 0.01,
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(var, (new['var'] - 0.99 * old['var']) / 0.01,
                               rtol=1e-3, atol=1e-4)

  def test_batchnorm_prior_is_zero_at_the_client_batch_only(self):
    atk = attack.make(apply_fn=self.apply_fn, image_shape=self.x.shape[1:],
                      num_classes=10, bn_weight=1.0, snapshot_steps=(0,))
    x = jnp.concatenate([self.x, 1.0 - self.x])
    y = jax.nn.one_hot(jnp.array([1, 2]), 10)
    atk = attack.replace(atk, batch=2, label_mode='known')
    target = jax.jit(lambda v, x: attack.make_target(
        atk, atk.threat.shared_update(v, x, y), jnp.array([1, 2]),
        bn_stats=atk.threat.batch_statistics(v, x)))(self.victim, x)
    objective = jax.jit(lambda v: attack.objective(atk, self.victim,
                                                   {'x': v}, target))
    value = lambda v: float(objective(v))
    self.assertLess(value(x), 1e-5)
    # Same gradient distance term order, but the wrong batch statistics.
    self.assertGreater(value(x * 0.5), 1e-2)
    with self.assertRaisesRegex(ValueError, 'bn_stats'):
      attack.objective(atk, self.victim, {'x': x},
                       target._replace(bn_stats=None))

  def test_attack_recovers_the_image_through_batchnorm(self):
    atk = attack.make(apply_fn=self.apply_fn, image_shape=self.x.shape[1:],
                      num_classes=10, num_steps=300, snapshot_steps=(0,))
    grads = atk.threat.shared_update(self.victim, self.x,
                                     jax.nn.one_hot(self.y, 10))
    result = attack.reconstruct(
        atk, self.victim, jax.tree.map(lambda g: g[None], grads),
        self.y[:, None], jax.random.key(1), chunk_size=300)
    # Measured: converged at step 150, 100 dB (the PSNR cap).
    self.assertGreaterEqual(
        float(metrics.psnr(np.clip(result.x[0, 0], 0, 1), self.x[0])), 40.0)
    self.assertEqual(int(result.labels[0, 0]), int(self.y[0]))


class _Mlp(nn.Module):
  """A two-layer sigmoid MLP: the runner's plumbing, compiled in a second."""

  @nn.compact
  def __call__(self, x):
    x = nn.sigmoid(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(_NUM_CLASSES)(x)


class _Counter:
  """Counts how often the model is traced, i.e. how often XLA compiles."""

  def __init__(self, fn):
    self.fn = fn
    self.count = 0

  def __call__(self, params, x):
    self.count += 1
    return self.fn(params, x)


class RunnerTest(parameterized.TestCase):
  """The runner's plumbing on a tiny MLP: 2 targets x 2 restarts.

  Adam, not L-BFGS: its steps are smooth in the gradient, so programs that
  round differently (vmapped or not, one chunk or two) agree to float32
  precision. L-BFGS's first curvature pair is the difference of two nearly
  equal float32 gradients and amplifies such roundoff by ~1e4 within three
  steps; optim_test checks its jit and vmap on well-scaled problems.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model = _Mlp()
    cls.params = jax.jit(models.init_params, static_argnums=(0, 2))(
        model, jax.random.key(0), _IMAGE_SHAPE)
    cls.xs = jax.random.uniform(jax.random.key(1), (2, 1, *_IMAGE_SHAPE))
    cls.ys = np.array([1, 3])
    cls.grads = _shared_gradients(models.make_apply_fn(model), cls.params,
                                  cls.xs[:, 0], cls.ys, _NUM_CLASSES)
    cls.apply_fn = _Counter(models.make_apply_fn(model))
    cls.attack = attack.make(
        apply_fn=cls.apply_fn, image_shape=_IMAGE_SHAPE,
        num_classes=_NUM_CLASSES, optimizer='adam', learning_rate=0.05,
        init='uniform', num_steps=_NUM_STEPS, snapshot_steps=_SNAPSHOTS)
    cls.key = jax.random.key(7)

    # Two chunks of the same length: one compilation.
    cls.result = attack.reconstruct(
        cls.attack, cls.params, cls.grads, cls.ys[:, None], cls.key,
        restarts=2, ground_truth=cls.xs, chunk_size=_NUM_STEPS // 2)
    cls.reconstruct_traces = cls.apply_fn.count

    # The same four jobs by hand: job j attacks target j // 2 from key j.
    targets = [
        attack.make_target(cls.attack, jax.tree.map(lambda g, i=i: g[i],
                                                    cls.grads),
                           cls.ys[i:i + 1], cls.xs[i], params=cls.params)
        for i in range(2)]
    cls.job_targets = jax.tree.map(lambda *t: jnp.stack(t),
                                   *[targets[j // 2] for j in range(4)])
    cls.keys = jax.random.split(cls.key, 4)
    cls.init_states = jax.vmap(
        lambda k: attack.init_state(cls.attack, k))(cls.keys)
    # staticmethod: a jitted function is a descriptor, bound as a method.
    cls.run_one = staticmethod(jax.jit(attack.run_steps,
                                       static_argnums=(0, 4)))
    cls.run_jobs = staticmethod(jax.jit(
        jax.vmap(attack.run_steps, in_axes=(None, None, 0, 0, None)),
        static_argnums=(0, 4)))
    cls.final = cls.run_jobs(cls.attack, cls.params, cls.init_states,
                             cls.job_targets, _NUM_STEPS)

  def _job(self, tree, j):
    return jax.tree.map(lambda a: a[j], tree)

  def test_lowest_distance_restart_wins(self):
    values = np.asarray(self.final.best_value).reshape(2, 2)
    self.assertTrue(np.all(np.isfinite(values)))
    # The restarts really differ, so the choice means something.
    self.assertTrue(np.all(np.abs(values[:, 0] - values[:, 1]) > 1e-3 *
                           values.min(axis=1)))
    np.testing.assert_array_equal(self.result.restart,
                                  np.argmin(values, axis=1))
    np.testing.assert_allclose(self.result.distance, values.min(axis=1),
                               rtol=1e-4)
    winners = 2 * np.arange(2) + self.result.restart
    np.testing.assert_allclose(
        self.result.x, np.asarray(self.final.best['x'])[winners],
        rtol=1e-4, atol=1e-5)

  def test_result_finite_and_shaped(self):
    result = self.result
    for field, value in result._asdict().items():
      self.assertFalse(np.any(np.isnan(value)), field)
    self.assertEqual(result.x.shape, (2, 1, *_IMAGE_SHAPE))
    self.assertEqual(result.snapshots.shape,
                     (len(_SNAPSHOTS), 2, 1, *_IMAGE_SHAPE))
    np.testing.assert_array_equal(result.labels, self.ys[:, None])
    np.testing.assert_array_equal(result.steps, [_NUM_STEPS] * 2)
    np.testing.assert_array_equal(result.converged_step, [-1, -1])
    self.assertFalse(result.diverged.any())
    self.assertTrue(np.all(result.seconds > 0))
    self.assertGreater(result.compile_seconds, 0.0)
    # Step 0 records the start of the winning job; a step never reached
    # shows the final reconstruction.
    winners = 2 * np.arange(2) + result.restart
    np.testing.assert_allclose(
        result.snapshots[0],
        np.asarray(self.init_states.variables['x'])[winners], rtol=1e-6)
    np.testing.assert_array_equal(result.snapshots[-1], result.x)

  def test_run_steps_equals_step_loop(self):
    # `run_steps` jitted as one scan == the same steps one program at a time.
    state, target = self._job(self.init_states, 1), self._job(
        self.job_targets, 1)
    got = self.run_one(self.attack, self.params, state, target, _NUM_STEPS)
    step = jax.jit(attack.attack_step, static_argnums=0)
    want = state
    for _ in range(_NUM_STEPS):
      want = step(self.attack, self.params, want, target)
    self.assertEqual(int(got.step), _NUM_STEPS)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        got, want)

  def test_snapshots_record_the_best_point_at_their_steps(self):
    # Row k holds the best point after step _SNAPSHOTS[k]'s evaluation,
    # written at that step only; a step never reached leaves its row 0.
    state, target = self._job(self.init_states, 0), self._job(
        self.job_targets, 0)
    step = jax.jit(attack.attack_step, static_argnums=0)
    want = np.zeros((len(_SNAPSHOTS), 1, *_IMAGE_SHAPE), np.float32)
    for i in range(_NUM_STEPS):
      state = step(self.attack, self.params, state, target)
      if i in _SNAPSHOTS:
        want[_SNAPSHOTS.index(i)] = state.best['x']
    np.testing.assert_array_equal(state.snapshots, want)

  def test_run_steps_stops_at_stop_at(self):
    state, target = self._job(self.init_states, 2), self._job(
        self.job_targets, 2)
    run = jax.jit(attack.run_steps, static_argnums=(0, 4),
                  static_argnames='stop_at')
    stopped = run(self.attack, self.params, state, target, _NUM_STEPS,
                  stop_at=_NUM_STEPS // 2)
    want = self.run_one(self.attack, self.params, state, target,
                        _NUM_STEPS // 2)
    jax.tree.map(np.testing.assert_array_equal, stopped, want)

  def test_over_jobs_runs_one_job_unbatched(self):
    fn = lambda s, t: attack.run_steps(self.attack, self.params, s, t, 2)
    one = lambda tree: jax.tree.map(lambda a: a[:1], tree)
    states, targets = one(self.init_states), one(self.job_targets)
    got = jax.jit(attack.over_jobs(fn, in_axes=(0, 0)))(states, targets)
    want = jax.jit(jax.vmap(fn))(states, targets)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        got, want)
    # Batches of more than one job are vmapped.
    two = lambda tree: jax.tree.map(lambda a: a[:2], tree)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.jit(attack.over_jobs(fn, in_axes=(0, 0)))(
            two(self.init_states), two(self.job_targets)),
        jax.jit(jax.vmap(fn))(two(self.init_states), two(self.job_targets)))

  def test_vmap_equals_stack(self):
    singles = [
        self.run_one(self.attack, self.params, self._job(self.init_states, j),
                     self._job(self.job_targets, j), _NUM_STEPS)
        for j in range(4)]
    want = jax.tree.map(lambda *a: jnp.stack(a), *singles)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        self.final, want)

  def test_second_call_does_not_recompile(self):
    self.assertEqual(self.run_jobs._cache_size(), 1)
    states = jax.vmap(lambda k: attack.init_state(self.attack, k))(
        jax.random.split(jax.random.key(99), 4))
    count = self.apply_fn.count
    again = self.run_jobs(self.attack, self.params, states, self.job_targets,
                          _NUM_STEPS)
    self.assertEqual(self.run_jobs._cache_size(), 1)
    self.assertEqual(self.apply_fn.count, count)
    self.assertFalse(np.allclose(again.best['x'], self.final.best['x']))

  def test_equal_model_reuses_the_compiled_runner(self):
    def run():
      # A new apply function of an equal module each time.
      fresh = attack.replace(
          self.attack, apply_fn=models.make_apply_fn(_Mlp()))
      return attack.reconstruct(
          fresh, self.params, self.grads, self.ys[:, None], self.key,
          restarts=2, ground_truth=self.xs, chunk_size=_NUM_STEPS // 2)
    first, again = run(), run()
    self.assertEqual(again.compiles, 0)
    self.assertEqual(again.compile_seconds, 0.0)
    np.testing.assert_array_equal(again.x, first.x)

  def test_one_program_for_one_batch_size(self):
    # The jobs start inside their first chunk: no program of their own.
    self.assertEqual(self.result.compiles, 1)

  def test_reconstruct_compiles_each_chunk_once(self):
    # One trace of the vmapped chunk, counted without compiling it ...
    count = self.apply_fn.count
    jax.eval_shape(
        jax.vmap(lambda s, t: attack.run_steps(self.attack, self.params, s, t,
                                               _NUM_STEPS // 2)),
        self.init_states, self.job_targets)
    per_trace = self.apply_fn.count - count
    self.assertGreater(per_trace, 0)
    # ... equals what `reconstruct` traced for its two chunks.
    self.assertEqual(self.reconstruct_traces, per_trace)

  def test_unknown_layer_weight_raises(self):
    bad = attack.make(
        apply_fn=self.apply_fn, image_shape=_IMAGE_SHAPE,
        num_classes=_NUM_CLASSES, layer_weights=(('Conv_9', 2.0),))
    with self.assertRaisesRegex(ValueError, 'Conv_9'):
      jax.eval_shape(
          lambda s, t: attack.objective(bad, self.params, s.variables, t),
          self._job(self.init_states, 0), self._job(self.job_targets, 0))

  @parameterized.parameters(0, -1)
  def test_restarts_below_one_raises(self, restarts):
    with self.assertRaisesRegex(ValueError, 'restarts'):
      attack.reconstruct(self.attack, self.params, self.grads,
                         self.ys[:, None], self.key, restarts=restarts)


class TargetFieldsTest(parameterized.TestCase):
  """`Target.mask`, `.tolerance` and `.tv_weight`, and `aware_target`."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model = _Mlp()
    cls.params = jax.jit(models.init_params, static_argnums=(0, 2))(
        model, jax.random.key(0), _IMAGE_SHAPE)
    cls.apply_fn = models.make_apply_fn(model)
    cls.x = jax.random.uniform(jax.random.key(1), (1, *_IMAGE_SHAPE))
    cls.y = np.array([2])
    cls.grads = client.gradient(cls.apply_fn, cls.params, cls.x,
                                jax.nn.one_hot(cls.y, _NUM_CLASSES))
    cls.attack = attack.make(
        apply_fn=cls.apply_fn, image_shape=_IMAGE_SHAPE,
        num_classes=_NUM_CLASSES, label_mode='known', init='uniform',
        num_steps=100)

  def _value_and_grad(self, target):
    fn = lambda x: attack.objective(self.attack, self.params, {'x': x},
                                    target)
    start = jax.random.uniform(jax.random.key(2), self.x.shape)
    return jax.jit(jax.value_and_grad(fn))(start)

  def test_mask_hides_masked_out_coordinates(self):
    mask = defenses.surviving_mask(
        defenses.prune_per_layer(None, self.grads, 0.5))
    # A target that differs from the true gradient only where mask is off.
    noise = jax.tree.map(
        lambda g, m: jnp.where(m, 0.0, 1.0 + jnp.abs(g)), self.grads, mask)
    shifted = jax.tree.map(jnp.add, self.grads, noise)
    plain = attack.make_target(self.attack, self.grads, self.y)
    other = attack.make_target(self.attack, shifted, self.y)
    value, grad = self._value_and_grad(plain._replace(mask=mask))
    value_other, grad_other = self._value_and_grad(other._replace(mask=mask))
    np.testing.assert_allclose(value_other, value, rtol=1e-6)
    np.testing.assert_allclose(grad_other, grad, rtol=1e-5, atol=1e-9)
    # Without the mask those coordinates count.
    self.assertGreater(float(self._value_and_grad(other)[0]),
                       2.0 * float(self._value_and_grad(plain)[0]))

  def test_target_tv_weight_replaces_attack_tv_weight(self):
    target = attack.make_target(self.attack, self.grads, self.y)
    with_tv = attack.replace(self.attack, tv_weight=0.3)
    x = {'x': jax.random.uniform(jax.random.key(3), self.x.shape)}
    want = attack.objective(with_tv, self.params, x, target)
    got = attack.objective(self.attack, self.params, x,
                           target._replace(tv_weight=jnp.float32(0.3)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    zero = attack.objective(with_tv, self.params, x,
                            target._replace(tv_weight=jnp.float32(0.0)))
    np.testing.assert_allclose(
        zero, attack.objective(self.attack, self.params, x, target),
        rtol=1e-6)

  def test_objective_takes_the_step_weight(self):
    annealed = attack.replace(self.attack, tv_weight=0.5,
                                   tv_final_weight=0.0)
    target = attack.make_target(self.attack, self.grads, self.y)
    x = {'x': jax.random.uniform(jax.random.key(3), self.x.shape)}
    value = lambda atk, *step: float(
        attack.objective(atk, self.params, x, target, *step))
    np.testing.assert_allclose(value(annealed, 100), value(self.attack),
                               rtol=1e-6)
    np.testing.assert_allclose(
        value(annealed, 0),
        value(attack.replace(self.attack, tv_weight=0.5)), rtol=1e-6)
    # A target's tv_weight replaces the whole schedule.
    fixed = target._replace(tv_weight=jnp.float32(0.5))
    np.testing.assert_allclose(
        attack.objective(annealed, self.params, x, fixed, 100),
        value(annealed, 0), rtol=1e-6)

  def test_target_tolerance_stops_the_job(self):
    run = jax.jit(attack.run_steps, static_argnums=(0, 4))
    start = attack.init_state(self.attack, jax.random.key(4))
    target = attack.make_target(self.attack, self.grads, self.y)
    free = run(self.attack, self.params, start, target, 20)
    # A tolerance above the start's distance stops the job at step 0, for
    # good: the best point stays the start.
    stopped = run(self.attack, self.params, start,
                  target._replace(tolerance=jnp.float32(1e9)), 20)
    self.assertEqual(int(stopped.converged_step), 0)
    self.assertEqual(int(stopped.step), 20)
    np.testing.assert_array_equal(stopped.best['x'], start.variables['x'])
    # One of zero is never reached: the job runs as without it.
    never = run(self.attack, self.params, start,
                target._replace(tolerance=jnp.float32(0.0)), 20)
    self.assertEqual(int(never.converged_step), -1)
    np.testing.assert_allclose(never.best_value, free.best_value, rtol=1e-5)

  def test_aware_pruning_beats_plain(self):
    # Measured on 4 images and starts of this MLP at 70% pruning, 100
    # L-BFGS steps: plain 13.9-16.2 dB, aware 100 dB (exact).
    defended = defenses.prune_per_layer(None, self.grads, 0.7)
    run = jax.jit(attack.run_steps, static_argnums=(0, 4))
    start = attack.init_state(self.attack, jax.random.key(5))
    psnr = {}
    for name, target in [
        ('plain', attack.make_target(self.attack, defended, self.y)),
        ('aware', attack.aware_target(self.attack, 'prune_layer', 0.7,
                                      defended, self.y))]:
      state = run(self.attack, self.params, start, target, 100)
      psnr[name] = float(metrics.psnr(
          jnp.clip(state.best['x'][0], 0.0, 1.0), self.x[0]))
    self.assertLess(psnr['plain'], 25.0)
    self.assertGreater(psnr['aware'], 50.0)

  def test_aware_target_per_defense(self):
    plain = attack.make_target(self.attack, self.grads, self.y)
    # Every defense the registry marks AWARE_NONE: the plain target.
    for name in [n for n, spec in defenses.REGISTRY.items()
                 if spec.aware == defenses.AWARE_NONE]:
      got = attack.aware_target(self.attack, name, 0.0, self.grads, self.y)
      self.assertIsNone(got.mask)
      self.assertIsNone(got.tv_weight)
      jax.tree.map(np.testing.assert_array_equal, got.grads, plain.grads)
    noisy = attack.aware_target(self.attack, 'gaussian', 1e-4, self.grads,
                                self.y)
    np.testing.assert_allclose(noisy.tv_weight,
                               attack.AWARE_TV_PER_VARIANCE * 1e-4,
                               rtol=1e-6)
    self.assertIsNone(noisy.mask)
    with self.assertRaisesRegex(ValueError, 'no_such_defense'):
      attack.aware_target(self.attack, 'no_such_defense', 1.0, self.grads,
                          self.y)
    cosine = attack.replace(self.attack, distance='cosine')
    with self.assertRaisesRegex(ValueError, 'l2'):
      attack.aware_target(cosine, 'laplacian', 1e-4, self.grads, self.y)

  def test_aware_target_vmaps_over_traced_strengths(self):
    strengths = jnp.array([0.0, 0.5, 0.9])

    def one(s):
      defended = defenses.prune_per_layer(None, self.grads, s)
      return attack.aware_target(self.attack, 'prune_layer', s, defended,
                                 self.y)

    targets = jax.jit(jax.vmap(one))(strengths)
    kept = [sum(int(m[i].sum()) for m in jax.tree.leaves(targets.mask))
            for i in range(3)]
    total = sum(g.size for g in jax.tree.leaves(self.grads))
    self.assertEqual(kept[0], total)
    self.assertGreater(kept[1], kept[2])
    noise = jax.jit(jax.vmap(lambda s: attack.aware_target(
        self.attack, 'gaussian', s, self.grads, self.y).tv_weight))(strengths)
    np.testing.assert_allclose(
        noise, attack.AWARE_TV_PER_VARIANCE * strengths, rtol=1e-6)


class AttackConfigTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('label_mode', dict(label_mode='guess'), 'label_mode.*guess'),
      ('init', dict(init='zeros'), 'init.*zeros'),
      ('optimizer', dict(optimizer='sgd'), 'optimizer.*sgd'),
      ('distance', dict(distance='l1'), 'distance.*l1'),
      ('label_method', dict(label_method='guess'), 'label_method.*guess'),
      ('idlg_batch', dict(batch=2, label_method='idlg'), 'idlg.*batch 2'),
      ('num_steps', dict(num_steps=0), 'num_steps'),
      ('batch', dict(batch=0, label_mode='joint'), 'batch'),
      ('tv_weight', dict(tv_weight=-0.1), 'tv_weight'),
      ('tv_final_weight', dict(tv_final_weight=-0.1), 'tv_final_weight'),
      ('tv_decay_steps', dict(tv_decay_steps=-1), 'tv_decay_steps'),
      ('tv_stages', dict(tv_stages=1), 'tv_stages'),
  )
  def test_bad_argument_raises(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      attack.make(apply_fn=lambda p, x: x, image_shape=(8, 8, 1),
                  num_classes=4, **kwargs)

  @parameterized.parameters('joint', 'known', 'analytic')
  def test_batches_allowed(self, label_mode):
    atk = attack.make(apply_fn=lambda p, x: x, image_shape=(8, 8, 1),
                      num_classes=4, batch=4, label_mode=label_mode)
    self.assertEqual(atk.batch, 4)

  def test_make_and_replace_route_fields_to_their_sections(self):
    atk = attack.make(apply_fn=lambda p, x: x, image_shape=[8, 8, 1],
                      num_classes=4, tv_weight=0.1, num_steps=7, init='randn')
    self.assertEqual(atk.threat.image_shape, (8, 8, 1))  # a tuple: hashable
    self.assertEqual(atk.objective.tv_weight, 0.1)
    self.assertEqual(atk.optimization.num_steps, 7)
    self.assertEqual(atk.start.init, 'randn')
    other = attack.replace(atk, batch=2, label_mode='joint', tv_weight=0.2)
    self.assertEqual((other.batch, other.labels.label_mode,
                      other.objective.tv_weight), (2, 'joint', 0.2))
    self.assertEqual(other.optimization, atk.optimization)
    with self.assertRaisesRegex(TypeError, 'tv_wieght'):
      attack.make(apply_fn=lambda p, x: x, image_shape=(8, 8, 1),
                  num_classes=4, tv_wieght=0.1)
    # Checks across sections run on replace too.
    with self.assertRaisesRegex(ValueError, 'idlg'):
      attack.replace(atk, batch=2, label_method='idlg')

  def test_attack_is_hashable(self):
    apply_fn = lambda p, x: x
    a = attack.make(apply_fn=apply_fn, image_shape=(8, 8, 1), num_classes=4)
    b = attack.make(apply_fn=apply_fn, image_shape=(8, 8, 1), num_classes=4)
    # Equal and hashed alike, so jit's static-argument cache hits.
    self.assertEqual(a, b)
    self.assertEqual(hash(a), hash(b))

  def _weights(self, steps, **kwargs):
    atk = attack.make(apply_fn=lambda p, x: x, image_shape=(8, 8, 1),
                      num_classes=4, num_steps=100, **kwargs)
    weight = jax.jit(jax.vmap(lambda s: attack.tv_weight_at(atk, s)))
    return np.asarray(weight(jnp.asarray(steps)))

  def test_tv_weight_constant_when_unset(self):
    np.testing.assert_allclose(
        self._weights([0, 37, 99, 500], tv_weight=0.01), 0.01, rtol=1e-6)

  def test_tv_weight_anneals_by_cosine(self):
    got = self._weights([0, 50, 100, 500], tv_weight=0.03,
                        tv_final_weight=0.001)
    np.testing.assert_allclose(got, [0.03, 0.0155, 0.001, 0.001], rtol=1e-5)
    self.assertTrue(np.all(np.diff(self._weights(
        np.arange(101), tv_weight=0.03, tv_final_weight=0.0)) <= 0))
    # tv_decay_steps ends the annealing before num_steps.
    np.testing.assert_allclose(
        self._weights([0, 20, 40, 99], tv_weight=0.02, tv_final_weight=0.0,
                      tv_decay_steps=40),
        [0.02, 0.01, 0.0, 0.0], atol=1e-8)

  def test_tv_weight_stages(self):
    # Three stages of 100 / 3 steps: the start weight, the midpoint, the
    # final weight.
    got = self._weights([0, 33, 34, 66, 67, 99, 300], tv_weight=0.02,
                        tv_final_weight=0.0, tv_stages=3)
    np.testing.assert_allclose(got, [0.02, 0.02, 0.01, 0.01, 0.0, 0.0, 0.0],
                               atol=1e-8)


if __name__ == '__main__':
  absltest.main()
