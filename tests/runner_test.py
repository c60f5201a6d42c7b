"""Tests of the runner core (dlg_jax/core/runner.py)."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import runner


class CompileCacheTest(absltest.TestCase):

  def test_second_call_compiles_nothing(self):
    cache = runner.CompileCache()
    traces = []

    def f(x):
      traces.append(None)
      return 2.0 * x

    jitted = jax.jit(f)
    x = jnp.ones((3,))
    np.testing.assert_allclose(cache.compiled('f', jitted, x)(x), 2.0)
    np.testing.assert_allclose(cache.compiled('f', jax.jit(f), 3 * x)(3 * x),
                               6.0)
    self.assertEqual((cache.compiles, len(traces)), (1, 1))
    self.assertGreater(cache.compile_seconds, 0.0)
    # A new shape, or a new key, is a new program.
    cache.compiled('f', jitted, jnp.ones((4,)))
    cache.compiled('g', jitted, x)
    self.assertEqual(cache.compiles, 3)

  def test_jax_settings_are_part_of_the_key(self):
    cache = runner.CompileCache()
    jitted = jax.jit(lambda x: x + 1)
    x = jnp.ones((2,))
    cache.compiled('f', jitted, x)
    jax.config.update('jax_disable_most_optimizations', True)
    try:
      cache.compiled('f', jitted, x)
    finally:
      jax.config.update('jax_disable_most_optimizations', False)
    cache.compiled('f', jitted, x)
    self.assertEqual(cache.compiles, 2)

  def test_oldest_entries_dropped(self):
    cache = runner.CompileCache(max_entries=2)
    jitted = jax.jit(lambda x: x + 1)
    for n in (1, 2, 3, 1):
      cache.compiled('f', jitted, jnp.ones((n,)))
    self.assertEqual(cache.compiles, 4)  # (1,) was dropped by (3,).

  def test_counter_counts_from_its_start(self):
    cache = runner.CompileCache()
    jitted = jax.jit(lambda x: x * x)
    cache.compiled('f', jitted, jnp.ones((2,)))
    counter = runner.CompileCounter(cache)
    cache.compiled('f', jitted, jnp.ones((2,)))
    self.assertEqual(counter.compiles, 0)
    cache.compiled('f', jitted, jnp.ones((5,)))
    self.assertEqual(counter.compiles, 1)
    self.assertGreater(counter.seconds, 0.0)


class SizesTest(parameterized.TestCase):

  @parameterized.parameters(
      # (active, current, compiled, expected)
      (10, 10, [10], 10),
      (9, 10, [10], 10),     # less than half gone: keep the batch, pad
      (5, 10, [10], 5),      # half: compile the running jobs' size
      (2, 10, [10], 2),
      (1, 2, [10, 2], 2),    # two sizes compiled: pad
      (2, 10, [10, 4], 4),   # the smallest compiled size that fits
      (4, 10, [10, 4], 4),
      (1, 4, [10, 4], 4),
      (3, 8, [8], 3),
  )
  def test_next_size(self, active, current, compiled, expected):
    self.assertEqual(runner.next_size(active, current, compiled), expected)

  def test_a_shrinking_run_compiles_at_most_two_sizes(self):
    for width in range(1, 40):
      sizes = [width]
      for active in range(width, 0, -1):
        size = runner.next_size(active, sizes[-1], sizes)
        self.assertBetween(size, active, sizes[-1])
        sizes.append(size)
      self.assertLessEqual(len(set(sizes)), 2)

  @parameterized.parameters((6000, 250, 250, 24), (1000, 300, 250, 4),
                            (1001, 250, 201, 5), (10, 250, 10, 1),
                            (7, 1, 1, 7))
  def test_chunk_lengths(self, num_steps, chunk_size, length, chunks):
    self.assertEqual(runner.chunk_lengths(num_steps, chunk_size),
                     (length, chunks))
    self.assertGreaterEqual(length * chunks, num_steps)
    self.assertLess(length * chunks - num_steps, chunks)

  def test_chunk_lengths_refuses_nonpositive(self):
    with self.assertRaisesRegex(ValueError, 'num_steps'):
      runner.chunk_lengths(0, 10)


class BestRestartTest(absltest.TestCase):

  def test_nan_restart_never_wins(self):
    values = [[np.nan, 2.0, 1.0],   # the finite minimum wins
              [np.inf, np.nan, 5.0],
              [np.nan, np.nan, np.nan],  # diverged everywhere: the first
              [0.5, np.nan, -np.inf]]  # -inf is no better than NaN
    np.testing.assert_array_equal(runner.best_restart(np.asarray(values)),
                                  [2, 2, 0, 0])


class ProgressTest(absltest.TestCase):

  def test_lines_are_rate_limited_with_time_left(self):
    lines = []
    progress = runner.Progress('sweep', every_seconds=3600.0,
                               log=lambda fmt, *a: lines.append(fmt % a))
    progress.update(1, 4, 'chunk 1/4')
    progress.update(2, 4, 'chunk 2/4')  # within the interval: no line
    progress.update(4, 4, 'chunk 4/4', force=True)
    self.assertLen(lines, 2)
    self.assertIn('chunk 1/4, about', lines[0])
    self.assertIn('s left', lines[0])
    self.assertNotIn('left', lines[1])


if __name__ == '__main__':
  absltest.main()
