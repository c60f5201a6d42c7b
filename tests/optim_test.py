"""Tests for dlg_jax.core.optim."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlg_jax.core import optim


def setUpModule():
  # Programs of a few dozen flops: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


# One step count for every run, so that tests share compiled runs.
_STEPS = 100
# Condition number 1e4 over 20 coordinates.
_CURVATURE = jnp.logspace(0.0, 4.0, 20)


def _quadratic(x):
  return 0.5 * jnp.sum(_CURVATURE * jnp.square(x))


def _rosenbrock(x):
  return jnp.sum(100.0 * jnp.square(x[1:] - jnp.square(x[:-1]))
                 + jnp.square(1.0 - x[:-1]))


def _nan_beyond_two(x):
  # Minimum at x = 3, but every point with x[0] > 2 has a NaN value and a
  # NaN gradient (the log of a negative number).
  return jnp.sum(jnp.square(x - 3.0)) + 0.0 * jnp.log(2.0 - x[0])


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _run(fn, x0, num_steps, opt=None):
  """`num_steps` steps of `opt` on `fn`; the states' values and points."""
  opt = opt or optim.lbfgs()

  def body(carry, _):
    x, state = carry
    value, grad = jax.value_and_grad(fn)(x)
    updates, state = opt.update(grad, state, x, value=value)
    return (optax.apply_updates(x, updates), state), (
        state.value, state.x, state.accepted)

  (x, state), trace = jax.lax.scan(body, (x0, opt.init(x0)), None,
                                   length=num_steps)
  return x, state, trace


class LbfgsTest(parameterized.TestCase):

  def test_ill_conditioned_quadratic(self):
    _, state, (values, _, _) = _run(_quadratic, jnp.ones(20), _STEPS)
    self.assertLess(float(state.value), 1e-10)
    np.testing.assert_allclose(state.x, 0.0, atol=1e-6)
    # Curvature pairs made the difference: steepest descent with a step
    # safe for the largest curvature would still be at ~0.5 * 20 * 1^2.
    self.assertLess(float(values[60]), 0.1)

  @parameterized.named_parameters(
      ('2d', jnp.array([-1.2, 1.0])),
      ('6d', jnp.array([-1.2, 1.0, -1.2, 1.0, 0.0, 0.0])),
  )
  def test_rosenbrock(self, x0):
    _, state, _ = _run(_rosenbrock, x0, _STEPS)
    self.assertLess(float(state.value), 1e-10)
    np.testing.assert_allclose(state.x, 1.0, atol=1e-4)
    np.testing.assert_allclose(optim.best_params(state, x0), 1.0, atol=1e-4)

  @parameterized.named_parameters(
      ('quadratic', _quadratic, jnp.ones(20)),
      ('rosenbrock', _rosenbrock, jnp.array([-1.2, 1.0])),
      ('nan', _nan_beyond_two, jnp.zeros(3)),
  )
  def test_accepted_value_never_increases(self, fn, x0):
    _, _, (values, points, accepted) = _run(fn, x0, _STEPS)
    values, points = np.asarray(values), np.asarray(points)
    accepted = np.asarray(accepted)
    self.assertTrue(np.all(np.isfinite(values)))
    self.assertTrue(np.all(np.diff(values) <= 0.0))
    # An accepted step lowers the value; a rejected one keeps the point.
    steps = np.diff(values)
    self.assertTrue(np.all(steps[accepted[1:]] < 0.0))
    self.assertTrue(np.all(steps[~accepted[1:]] == 0.0))
    self.assertTrue(np.all(np.diff(points, axis=0)[~accepted[1:]] == 0.0))
    self.assertTrue(accepted[0])
    self.assertFalse(accepted.all())
    # The recorded value is the objective at the recorded point.
    np.testing.assert_allclose(values, jax.vmap(fn)(points), rtol=1e-5,
                               atol=1e-12)

  def test_rejects_nan(self):
    x, state, (values, points, _) = _run(_nan_beyond_two, jnp.zeros(3),
                                         _STEPS)
    accepted = np.asarray(points)
    self.assertTrue(np.all(np.isfinite(accepted)))
    self.assertTrue(np.all(np.isfinite(values)))
    self.assertTrue(np.all(accepted[:, 0] <= 2.0))
    self.assertTrue(np.isfinite(state.grad).all())
    # It went up to the region's edge, pressing towards the NaN minimum.
    self.assertGreater(float(state.x[0]), 1.9)
    self.assertTrue(np.all(np.isfinite(x)))

  def test_first_nan_value_is_rejected(self):
    opt = optim.lbfgs()
    x = jnp.array([5.0, 0.0])
    state = opt.init(x)
    _, state = jax.jit(opt.update)(jnp.full(2, jnp.nan), state, x,
                                   value=jnp.nan)
    self.assertFalse(bool(state.accepted))
    self.assertTrue(np.isinf(float(state.value)))

  def test_jit_equals_no_jit(self):
    opt = optim.lbfgs(memory_size=4)
    fn = _rosenbrock
    x = jnp.array([-1.2, 1.0, 0.5])
    state = opt.init(x)
    update = jax.jit(opt.update)
    # A few steps, so that the memory holds curvature pairs.
    for _ in range(5):
      value, grad = jax.value_and_grad(fn)(x)
      want_u, want_s = opt.update(grad, state, x, value=value)
      got_u, got_s = update(grad, state, x, value=value)
      np.testing.assert_allclose(got_u, want_u, rtol=1e-5, atol=1e-7)
      jax.tree.map(
          lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
          got_s, want_s)
      x, state = optax.apply_updates(x, want_u), want_s
    self.assertGreater(int(state.count), 0)

  def test_vmap_equals_stack(self):
    starts = jnp.array([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0]])
    run = lambda x0: _run(_rosenbrock, x0, _STEPS)
    got = jax.vmap(run)(starts)
    want = jax.tree.map(lambda *a: jnp.stack(a), *(run(x0) for x0 in starts))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        got, want)

  def test_kept_products_match_the_memory(self):
    # The ring memory, the chronological <s_i, y_j> and <y_i, y_j> and the
    # kept <s_i, g>, <y_i, g> (updated, not recomputed) agree with products
    # taken directly, past a full memory (count > memory_size).
    m = 4
    _, state, _ = _run(_rosenbrock, jnp.array([-1.2, 1.0, 0.5]), 30,
                       optim.lbfgs(memory_size=m))
    count = int(state.count)
    self.assertGreater(count, m)
    order = (count + np.arange(m)) % m
    s, y = np.asarray(state.s)[order], np.asarray(state.y)[order]
    np.testing.assert_allclose(state.sy, s @ y.T, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.yy, y @ y.T, rtol=1e-4, atol=1e-6)
    g = np.asarray(state.grad)
    scale = np.abs(s).max() * np.abs(g).max() * 1e-3
    np.testing.assert_allclose(state.sg, np.asarray(state.s) @ g, atol=scale)
    scale = np.abs(y).max() * np.abs(g).max() * 1e-3
    np.testing.assert_allclose(state.yg, np.asarray(state.y) @ g, atol=scale)

  def test_pytree_params(self):
    params = {'a': jnp.ones(3), 'b': {'c': jnp.full((2, 2), -1.0)}}
    fn = lambda p: jnp.sum(jnp.square(p['a'] - 2.0)) + jnp.sum(
        jnp.square(p['b']['c']))
    opt = optim.lbfgs()
    state = opt.init(params)
    self.assertEqual(state.x.shape, (7,))

    @jax.jit
    def step(params, state):
      value, grad = jax.value_and_grad(fn)(params)
      updates, state = opt.update(grad, state, params, value=value)
      return optax.apply_updates(params, updates), state

    for _ in range(20):
      params, state = step(params, state)
    best = optim.best_params(state, params)
    np.testing.assert_allclose(best['a'], 2.0, atol=1e-5)
    np.testing.assert_allclose(best['b']['c'], 0.0, atol=1e-5)

  def test_update_needs_value(self):
    opt = optim.lbfgs()
    x = jnp.zeros(2)
    with self.assertRaisesRegex(ValueError, 'value='):
      opt.update(x, opt.init(x), x)

  @parameterized.parameters(0, -3)
  def test_memory_size_below_one_raises(self, memory_size):
    with self.assertRaisesRegex(ValueError, 'memory_size'):
      optim.lbfgs(memory_size)
    with self.assertRaisesRegex(ValueError, 'memory_size'):
      optim.get_optimizer('lbfgs', memory_size=memory_size)

  @parameterized.parameters(dict(shrink=1.0), dict(shrink=0.0),
                            dict(grow=0.5))
  def test_bad_step_control_raises(self, **kwargs):
    with self.assertRaisesRegex(ValueError, 'shrink'):
      optim.lbfgs(**kwargs)


class GetOptimizerTest(parameterized.TestCase):

  def test_unknown_name_raises(self):
    with self.assertRaisesRegex(ValueError, "'sgd'"):
      optim.get_optimizer('sgd')

  @parameterized.parameters(*optim.OPTIMIZERS)
  def test_known_names_minimise(self, name):
    opt = optim.get_optimizer(name, learning_rate=0.1, num_steps=100)
    fn = lambda x: jnp.sum(jnp.square(x - 1.0))

    @jax.jit
    def run(x):
      def body(carry, _):
        x, state = carry
        value, grad = jax.value_and_grad(fn)(x)
        updates, state = opt.update(grad, state, x, value=value, grad=grad,
                                    value_fn=fn)
        return (optax.apply_updates(x, updates), state), None
      (x, _), _ = jax.lax.scan(body, (x, opt.init(x)), None, length=100)
      return x

    x = run(jnp.zeros(3))
    self.assertLess(float(fn(x)), 1e-3)

  def test_step_schedule_cuts_at_three_five_seven_eighths(self):
    lr = optim.learning_rate_schedule('step', 0.1, 800)
    np.testing.assert_allclose(
        [lr(s) for s in (0, 299, 300, 499, 500, 699, 700, 799)],
        [0.1, 0.1, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)

  def test_signed_adam_moves_tiny_gradients_as_fast_as_large_ones(self):
    # Adam's eps slows a coordinate whose gradient is far below it; on the
    # gradient's sign every coordinate moves alike.
    grad = jnp.array([1e-10, 1.0])
    for signed, moved in ((False, False), (True, True)):
      opt = optim.get_optimizer('adam', learning_rate=0.1, signed=signed,
                                schedule='constant')
      updates, _ = opt.update(grad, opt.init(grad))
      self.assertEqual(
          bool(np.isclose(abs(updates[0]), abs(updates[1]), rtol=1e-3)),
          moved)

  @parameterized.parameters(dict(signed=True), dict(schedule='step'))
  def test_adam_options_on_lbfgs_raise(self, **kwargs):
    with self.assertRaisesRegex(ValueError, 'Adam'):
      optim.get_optimizer('lbfgs', **kwargs)

  def test_unknown_schedule_raises(self):
    with self.assertRaisesRegex(ValueError, "'linear'"):
      optim.get_optimizer('adam', schedule='linear')


if __name__ == '__main__':
  absltest.main()
