"""Tests of the client's masked-LM step, dlg_jax/text/client.py."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import data
from tests import text_fixtures


setUpModule = text_fixtures.set_up_module
tearDownModule = text_fixtures.tear_down_module
TINY, MASK, SENTENCE = (text_fixtures.TINY, text_fixtures.MASK,
                        text_fixtures.SENTENCE)


class MaskTokensTest(absltest.TestCase):

  def test_masks_word_pieces_only(self):
    ids = jnp.arange(100, 131)
    ex = client.mask_tokens(ids, jax.random.key(0), mask_id=MASK)
    masked = np.asarray(ex.masked)
    self.assertEqual(masked.sum(), round(0.15 * 29))
    self.assertFalse(masked[0] or masked[-1])
    np.testing.assert_array_equal(np.asarray(ex.inputs)[masked], MASK)
    np.testing.assert_array_equal(np.asarray(ex.inputs)[~masked],
                                  np.asarray(ids)[~masked])

  def test_needs_a_word_piece(self):
    with self.assertRaisesRegex(ValueError, 'got 2 ids'):
      client.mask_tokens(jnp.array([101, 102]), jax.random.key(0),
                         mask_id=MASK)


class GradientTest(absltest.TestCase):

  def test_mlm_loss_is_mean_over_masked(self):
    logits = jax.random.normal(jax.random.key(0), (5, 7))
    ids = jnp.array([1, 2, 3, 4, 5])
    weights = jnp.array([0.0, 1.0, 0.0, 1.0, 0.0])
    expected = -(jax.nn.log_softmax(logits[1])[2]
                 + jax.nn.log_softmax(logits[3])[4]) / 2
    self.assertAlmostEqual(
        float(client.mlm_loss(logits, jax.nn.one_hot(ids, 7), weights)),
        float(expected), places=5)

  def test_gradient_covers_word_embeddings(self):
    ids = data.encode(data.make_tokenizer(), SENTENCE, max_length=64)
    example = client.mask_tokens(ids, jax.random.key(3), mask_id=MASK,
                                 rate=0.2)
    params = bert.init_params(TINY, jax.random.key(0))
    grads = jax.jit(client.client_gradient, static_argnums=0)(
        TINY, params, example)
    word = np.asarray(grads['word_embeddings']['embedding'])
    self.assertEqual(word.shape, (bert.VOCAB_SIZE, TINY.hidden_size))
    # The tied decoder makes every row non-zero, not only the input's.
    self.assertGreater(np.mean(np.any(word != 0, axis=1)), 0.99)


if __name__ == '__main__':
  absltest.main()
