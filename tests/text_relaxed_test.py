"""Tests of the relaxed token optimisation, dlg_jax/text/relaxed.py."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import runner
from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import data
from dlg_jax.text import leakage
from dlg_jax.text import relaxed
from tests import text_fixtures


setUpModule = text_fixtures.set_up_module
tearDownModule = text_fixtures.tear_down_module
TINY, MASK, SENTENCE = (text_fixtures.TINY, text_fixtures.MASK,
                        text_fixtures.SENTENCE)


class RelaxedAttackTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ids = data.encode(data.make_tokenizer(), SENTENCE, max_length=64)
    cls.params = bert.init_params(TINY, jax.random.key(0))
    example = client.mask_tokens(cls.ids, jax.random.key(3), mask_id=MASK,
                                 rate=0.2)
    cls.grads = jax.jit(client.client_gradient, static_argnums=0)(
        TINY, cls.params, example)
    cls.leak = leakage.analyse_leak(cls.grads)

  def test_padded_dummy_gradient_matches(self):
    leak = self.leak
    n = leak.length
    logits = jnp.asarray(leak.scores) * 3.0
    labels = jnp.asarray(leak.labels)
    label_logits = jnp.zeros((n, labels.size))
    mask_index = int(np.flatnonzero(leak.tokens == MASK)[0])
    grad = jax.jit(jax.grad(relaxed.dummy_loss, argnums=1),
                   static_argnums=0)
    plain = grad(TINY, self.params, jnp.asarray(leak.tokens), labels,
                 mask_index, logits, label_logits)
    padded = grad(TINY, self.params, jnp.asarray(leak.tokens), labels,
                  mask_index, jnp.pad(logits, ((0, 3), (0, 0))),
                  jnp.pad(label_logits, ((0, 3), (0, 0))),
                  jnp.arange(n + 3) < n)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded)):
      np.testing.assert_allclose(a, b, atol=1e-6)

  def test_attack_recovers_sentence(self):
    seen = []
    result = relaxed.attack(
        TINY, self.params, self.grads, self.leak, key=jax.random.key(1),
        mask_id=MASK, num_steps=10, log_every=5,
        callback=lambda step, ids, loss: seen.append(step))
    self.assertEqual(seen, [0, 5, 10])
    self.assertEqual(result.history.shape, (3, len(self.ids)))
    accuracy = data.token_accuracy(result.ids[1:-1], self.ids[1:-1])
    self.assertGreaterEqual(accuracy, 0.9)
    self.assertLess(result.losses[-1], result.losses[0])
    # A second sentence of the same bucket reuses the compiled programs.
    counter = runner.CompileCounter()
    again = relaxed.attack(TINY, self.params, self.grads, self.leak,
                           key=jax.random.key(1), mask_id=MASK, num_steps=10,
                           log_every=5)
    self.assertEqual(counter.compiles, 0)
    np.testing.assert_array_equal(again.history, result.history)


class ArgumentsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('init', dict(init='zeros'), 'zeros'),
      ('num_steps', dict(num_steps=-1), 'num_steps >= 0'),
      ('log_every', dict(log_every=0), 'log_every >= 1'),
      ('distance', dict(distance='l1'), 'l1'))
  def test_bad_argument_fails_before_any_work(self, kwargs, pattern):
    # No model or gradient: the arguments are checked before either is used.
    leak = leakage.Leak(length=3, tokens=np.array([101, MASK, 102]),
                        scores=np.eye(3), labels=np.array([7]), dense_rank=1)
    with self.assertRaisesRegex(ValueError, pattern):
      relaxed.attack(TINY, None, None, leak, key=jax.random.key(1),
                     mask_id=MASK, **kwargs)


if __name__ == '__main__':
  absltest.main()
