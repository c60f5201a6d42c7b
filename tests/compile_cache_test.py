"""The runners' compiled programs outlive a call: a second call compiles nothing.

Counted with `jax.monitoring`: every program handed to XLA, compiled or read
from the persistent cache that tests/conftest.py sets, records one
`/jax/core/compile/backend_compile_duration` event. The vision attack, a
sweep's chunks and the text attack each run twice with the same shapes; the
second run must record none (optax's and flax's habit), and return the
same results. Tiny models with XLA's optimisations off: the programs, not
the models, are under test.
"""

import contextlib

from absl.testing import absltest
import jax
import numpy as np

from dlg_jax.core import client
from dlg_jax.text import bert
from dlg_jax.text import client as text_client
from dlg_jax.text import data as text_data
from dlg_jax.text import leakage
from dlg_jax.text import relaxed
from dlg_jax.vision import attack
from dlg_jax.vision import sweep
from tests import parallel_worker
from tests import text_fixtures

_BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
_COMPILED: list[str] = []


def _listen(event: str, duration: float, **kwargs) -> None:
  del duration
  if event == _BACKEND_COMPILE:
    _COMPILED.append(kwargs.get('fun_name', '?'))


def setUpModule():
  # One listener for the module: jax.monitoring cannot remove one alone.
  jax.monitoring.register_event_duration_secs_listener(_listen)
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


@contextlib.contextmanager
def _compiles():
  """Yields the list of programs XLA compiles (or loads) inside the block."""
  start = len(_COMPILED)
  seen: list[str] = []
  try:
    yield seen
  finally:
    seen.extend(_COMPILED[start:])


class CompileCacheTest(absltest.TestCase):

  def test_second_reconstruct_compiles_nothing(self):
    atk, params, x, y = parallel_worker.tiny_attack(2)
    atk = attack.replace(atk, num_steps=6)
    grads = jax.vmap(
        lambda xi, yi: client.gradient(atk.threat.apply_fn, params, xi[None],
                                       jax.nn.one_hot(yi[None], 10)))(x, y)

    def run(chunk_size=3):
      return attack.reconstruct(atk, params, grads, y[:, None],
                                jax.random.key(0), ground_truth=x[:, None],
                                chunk_size=chunk_size)

    with _compiles() as first_programs:
      first = run()
    self.assertNotEmpty(first_programs)
    self.assertEqual(first.compiles, 1)
    with _compiles() as again_programs:
      again = run()
    self.assertEqual(again_programs, [])
    self.assertEqual(again.compiles, 0)
    np.testing.assert_array_equal(again.x, first.x)
    np.testing.assert_array_equal(again.distance, first.distance)
    # The chunk length is part of the key: another one is another program.
    with _compiles() as other_programs:
      other = run(chunk_size=2)
    self.assertNotEmpty(other_programs)
    self.assertEqual(other.compiles, 1)

  def test_second_sweep_compiles_nothing(self):
    atk, params, x, y = parallel_worker.tiny_attack(2)
    spec = sweep.SweepSpec(defenses=(('gaussian', (1e-4,)),), restarts=1,
                           seed=3)

    def run():
      return sweep.run_sweep(atk, params, x, y, spec, jobs_per_device=2)

    first = run()
    with _compiles() as programs:
      again = run()
    self.assertEqual(programs, [])
    self.assertEqual(again.compiles, 0)
    np.testing.assert_array_equal(again.psnr, first.psnr)

  def test_second_text_attack_compiles_nothing(self):
    tiny = text_fixtures.TINY
    ids = text_data.encode(text_data.make_tokenizer(), text_fixtures.SENTENCE,
                           max_length=64)
    params = bert.init_params(tiny, jax.random.key(0))
    example = text_client.mask_tokens(ids, jax.random.key(3),
                                      mask_id=text_fixtures.MASK, rate=0.2)
    grads = jax.jit(text_client.client_gradient, static_argnums=0)(
        tiny, params, example)
    leak = leakage.analyse_leak(grads)

    def run():
      # tests/text_relaxed_test.py's attack: one process compiles it once.
      return relaxed.attack(tiny, params, grads, leak, key=jax.random.key(1),
                            mask_id=text_fixtures.MASK, num_steps=10,
                            log_every=5)

    first = run()
    with _compiles() as programs:
      again = run()
    self.assertEqual(programs, [])
    np.testing.assert_array_equal(again.history, first.history)


if __name__ == '__main__':
  absltest.main()
