"""Tests of what a BERT MLM gradient leaks, dlg_jax/text/leakage.py."""

from absl.testing import absltest
import jax
import numpy as np

from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import data
from dlg_jax.text import leakage
from tests import text_fixtures


setUpModule = text_fixtures.set_up_module
tearDownModule = text_fixtures.tear_down_module
TINY, MASK, SENTENCE = (text_fixtures.TINY, text_fixtures.MASK,
                        text_fixtures.SENTENCE)


def _grads(word, pos, bias):
  """A gradient pytree with only the leaves `leakage` reads."""
  return {'word_embeddings': {'embedding': word},
          'position_embeddings': {'embedding': pos}, 'decoder_bias': bias}


class AnalyseLeakTest(absltest.TestCase):

  def test_tiny_bert_leaks_length_tokens_positions_and_labels(self):
    ids = data.encode(data.make_tokenizer(), SENTENCE, max_length=64)
    example = client.mask_tokens(ids, jax.random.key(3), mask_id=MASK,
                                 rate=0.2)
    params = bert.init_params(TINY, jax.random.key(0))
    grads = jax.jit(client.client_gradient, static_argnums=0)(
        TINY, params, example)
    leak = leakage.analyse_leak(grads)
    inputs = np.asarray(example.inputs)
    masked = np.asarray(example.masked)
    self.assertEqual(leak.length, len(ids))
    self.assertEqual(sorted(leak.tokens), sorted(set(inputs)))
    np.testing.assert_array_equal(
        leak.tokens[np.argmax(leak.scores, axis=1)], inputs)
    self.assertEqual(leak.dense_rank, int(masked.sum()))
    self.assertEqual(sorted(leak.labels),
                     sorted(set(np.asarray(ids)[masked])))

  def test_too_long_for_hidden_size_falls_back_to_row_norms(self):
    # 6 positions in 4 dimensions: the word rows cannot be placed.
    rng = np.random.default_rng(0)
    word = rng.normal(size=(50, 4))
    word *= (np.arange(1, 51) / np.linalg.norm(word, axis=1))[:, None]
    pos = np.concatenate([rng.normal(size=(6, 4)), np.zeros((2, 4))])
    bias = np.where(np.arange(50) == 7, -1.0, 0.1)
    with self.assertLogs(level='WARNING'):
      leak = leakage.analyse_leak(_grads(word, pos, bias))
    self.assertEqual(leak.length, 6)
    np.testing.assert_array_equal(leak.tokens, np.arange(38, 50))
    np.testing.assert_array_equal(leak.scores, np.zeros((6, 12)))
    np.testing.assert_array_equal(leak.labels, [7])


class LeakedPartsTest(absltest.TestCase):

  def test_labels_most_negative_first(self):
    bias = np.array([0.2, -0.1, 0.3, -0.5, 0.0])
    grads = _grads(None, None, bias)
    np.testing.assert_array_equal(leakage.leaked_labels(grads), [3, 1])
    np.testing.assert_array_equal(
        leakage.leaked_labels(grads, max_labels=1), [3])

  def test_no_masked_token(self):
    with self.assertRaisesRegex(ValueError, 'no masked token'):
      leakage.leaked_labels(_grads(None, None, np.ones(5)))

  def test_no_sentence(self):
    with self.assertRaisesRegex(ValueError, 'no sentence'):
      leakage.leaked_length(_grads(None, np.zeros((8, 4)), None))


if __name__ == '__main__':
  absltest.main()
