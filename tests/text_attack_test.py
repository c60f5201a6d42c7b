"""Tests of the text attack: client MLM step, leaks, attack, launcher."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from configs import bert as bert_config
from dlg_jax.pipelines import text_attack as attack_text
from dlg_jax.text import attack as text_attack
from dlg_jax.text import bert
from dlg_jax.text import data as text

# Silent broadcasting between arrays of different rank fails loudly here.
jax.config.update('jax_numpy_rank_promotion', 'raise')


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


TINY = bert.get_config('tiny')
MASK = 103
SENTENCE = 'He played my brother in Mercury Fur.'  # bundled WikiText


class TextAttackTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = text.make_tokenizer()
    cls.params = bert.init_params(TINY, jax.random.key(0))
    cls.ids = text.encode(cls.tok, SENTENCE, max_length=64)
    cls.example = text_attack.mask_tokens(cls.ids, jax.random.key(3),
                                          mask_id=MASK, rate=0.2)
    cls.grads = jax.jit(text_attack.client_gradient, static_argnums=0)(
        TINY, cls.params, cls.example)

  def test_mask_tokens(self):
    ids = jnp.arange(100, 131)
    ex = text_attack.mask_tokens(ids, jax.random.key(0), mask_id=MASK)
    masked = np.asarray(ex.masked)
    self.assertEqual(masked.sum(), round(0.15 * 29))
    self.assertFalse(masked[0] or masked[-1])
    np.testing.assert_array_equal(np.asarray(ex.inputs)[masked], MASK)
    np.testing.assert_array_equal(np.asarray(ex.inputs)[~masked],
                                  np.asarray(ids)[~masked])

  def test_mlm_loss_is_mean_over_masked(self):
    logits = jax.random.normal(jax.random.key(0), (5, 7))
    ids = jnp.array([1, 2, 3, 4, 5])
    weights = jnp.array([0.0, 1.0, 0.0, 1.0, 0.0])
    expected = -(jax.nn.log_softmax(logits[1])[2]
                 + jax.nn.log_softmax(logits[3])[4]) / 2
    self.assertAlmostEqual(
        float(text_attack.mlm_loss(logits, jax.nn.one_hot(ids, 7), weights)),
        float(expected), places=5)

  def test_gradient_covers_word_embeddings(self):
    word = np.asarray(self.grads['word_embeddings']['embedding'])
    self.assertEqual(word.shape, (bert.VOCAB_SIZE, TINY.hidden_size))
    # The tied decoder makes every row non-zero, not only the input's.
    self.assertGreater(np.mean(np.any(word != 0, axis=1)), 0.99)

  def test_leak(self):
    leak = text_attack.analyse_leak(self.grads)
    inputs = np.asarray(self.example.inputs)
    self.assertEqual(leak.length, len(self.ids))
    self.assertEqual(sorted(leak.tokens), sorted(set(inputs)))
    np.testing.assert_array_equal(
        leak.tokens[np.argmax(leak.scores, axis=1)], inputs)
    self.assertEqual(leak.dense_rank, int(self.example.masked.sum()))
    self.assertEqual(
        sorted(leak.labels),
        sorted(set(np.asarray(self.ids)[np.asarray(self.example.masked)])))

  def test_padded_dummy_gradient_matches(self):
    leak = text_attack.analyse_leak(self.grads)
    n, k = leak.scores.shape
    logits = jnp.asarray(leak.scores) * 3.0
    labels = jnp.asarray(leak.labels)
    label_logits = jnp.zeros((n, labels.size))
    mask_index = int(np.flatnonzero(leak.tokens == MASK)[0])
    grad = jax.jit(jax.grad(text_attack.dummy_loss, argnums=1),
                   static_argnums=0)
    plain = grad(TINY, self.params, jnp.asarray(leak.tokens), labels,
                 mask_index, logits, label_logits)
    padded = grad(TINY, self.params, jnp.asarray(leak.tokens), labels,
                  mask_index, jnp.pad(logits, ((0, 3), (0, 0))),
                  jnp.pad(label_logits, ((0, 3), (0, 0))),
                  jnp.arange(n + 3) < n)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    del k

  def test_attack_recovers_sentence(self):
    leak = text_attack.analyse_leak(self.grads)
    seen = []
    result = text_attack.attack(
        TINY, self.params, self.grads, leak, key=jax.random.key(1),
        mask_id=MASK, steps=10, log_every=5,
        callback=lambda step, ids, loss: seen.append(step))
    self.assertEqual(seen, [0, 5, 10])
    self.assertEqual(result.history.shape, (3, len(self.ids)))
    accuracy = text.token_accuracy(result.ids[1:-1], self.ids[1:-1])
    self.assertGreaterEqual(accuracy, 0.9)
    self.assertLess(result.losses[-1], result.losses[0])
    # A second sentence of the same bucket reuses the compiled chunk.
    compiled = text_attack._run_chunk._cache_size()
    again = text_attack.attack(TINY, self.params, self.grads, leak,
                               key=jax.random.key(1), mask_id=MASK, steps=10,
                               log_every=5)
    self.assertEqual(text_attack._run_chunk._cache_size(), compiled)
    np.testing.assert_array_equal(again.history, result.history)

  def test_format_log(self):
    lines = text_attack.format_log([0, 10], ['a b', 'c d'], 'C D')
    self.assertEqual(lines, ['[iter=0] a b', '[iter=10] c d',
                             '[Ground Truth] C D'])


class LauncherTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def _config(self):
    config = bert_config.get_config('quick')
    config.data.count = 1
    config.data.npz = os.path.join(self.tmp, 'sentences.npz')
    np.savez(config.data.npz, sentences=np.array([SENTENCE]))
    return config

  def test_quick_run_writes_results_and_log(self):
    workdir = os.path.join(self.tmp, 'run')
    attack_text.run(self._config(), workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    (record,) = results['records']
    self.assertEqual(record['reference'], SENTENCE)
    for key in ('recovered', 'token_accuracy', 'rouge1', 'rouge2', 'rougeL',
                'seconds'):
      self.assertIn(key, record)
    self.assertGreaterEqual(record['token_accuracy'], 0.9)
    with open(os.path.join(workdir, 'text_log.txt')) as f:
      log = f.read()
    self.assertIn('[iter=0] ', log)
    self.assertIn('[iter=10] ', log)
    self.assertIn(f'[Ground Truth] {SENTENCE}', log)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'config.json')))

  def _expect(self, config, key, pattern=''):
    with self.assertRaisesRegex(ValueError, rf'config\.{key}.*{pattern}'):
      attack_text.prepare(config)

  def test_bad_model_size(self):
    config = self._config()
    config.model.size = 'huge'
    self._expect(config, r'model\.size', 'huge')

  def test_bad_npz(self):
    config = self._config()
    config.data.npz = os.path.join(self.tmp, 'missing.npz')
    self._expect(config, r'data\.npz', 'missing.npz')

  def test_empty_sentence(self):
    config = self._config()
    np.savez(config.data.npz, sentences=np.array(['Fine.', ' ']))
    config.data.count = 2
    self._expect(config, r'data\.npz', 'sentence 1: Empty sentence')

  def test_too_long_sentence(self):
    config = self._config()
    config.data.max_length = 5
    self._expect(config, r'data\.npz', 'max_length=5')

  def test_truncation(self):
    config = self._config()
    config.data.max_length = 5
    config.data.truncate = True
    with self.assertLogs(level='WARNING'):
      *_, ids = attack_text.prepare(config)
    self.assertLen(ids[0], 5)

  def test_max_length_beyond_model(self):
    config = self._config()
    config.data.max_length = 65
    self._expect(config, r'data\.max_length', 'max_position_embeddings')

  def test_count_out_of_range(self):
    config = self._config()
    config.data.count = 2
    self._expect(config, r'data\.count', 'out of range')

  def test_missing_vocab(self):
    config = self._config()
    config.data.vocab = os.path.join(self.tmp, 'vocab.txt')
    self._expect(config, r'data\.vocab', 'vocab.txt')

  def test_missing_weights(self):
    config = self._config()
    config.model.weights = os.path.join(self.tmp, 'model.safetensors')
    self._expect(config, r'model\.weights', 'model.safetensors')

  def test_weights_that_do_not_fit(self):
    config = self._config()
    config.model.weights = os.path.join(self.tmp, 'model.safetensors')
    wide = bert.BertConfig(hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=64)
    bert.save_safetensors(config.model.weights,
                          bert.init_params(wide, jax.random.key(0)), wide)
    self._expect(config, r'model\.weights',
                 'embeddings.word_embeddings.weight')

  def test_bad_init(self):
    config = self._config()
    config.attack.init = 'zeros'
    self._expect(config, r'attack\.init', 'zeros')


if __name__ == '__main__':
  absltest.main()
