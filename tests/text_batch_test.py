"""Tests of the text attack on batches: dlg_jax/text/{batch,spans,lamp}.py
and the relaxed fallback, dlg_jax/text/batch_relaxed.py.

The end-to-end test uses a 2-layer, 64-wide BERT with BERT's vocabulary:
the 'tiny' model (32 wide) is nearly linear at initialisation, so its FFN
rows barely depend on which position a token holds.
"""

import json
import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from configs import bert as bert_config
from dlg_jax.core import errors
from dlg_jax.pipelines import text_attack
from dlg_jax.text import batch
from dlg_jax.text import batch_relaxed
from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import data
from dlg_jax.text import lamp
from dlg_jax.text import recover
from dlg_jax.text import spans
from tests import text_fixtures


setUpModule = text_fixtures.set_up_module
tearDownModule = text_fixtures.tear_down_module
TINY, MASK = text_fixtures.TINY, text_fixtures.MASK
SMALL = bert.BertConfig(hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256,
                        max_position_embeddings=32, initializer_range=0.05)
SENTENCES = ('He played my brother.', 'The ship sank in May.',
             'Kiss you twice.', 'A lack of aircraft.')


class SpanTest(absltest.TestCase):

  def test_rank_and_residual_of_a_sum_of_outer_products(self):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 20))
    grad = sum(np.outer(x, rng.normal(size=30)) for x in rows)
    basis, rank = spans.span(grad.astype(np.float32))
    self.assertEqual(rank, 7)
    self.assertLess(spans.residual(rows, basis).max(), 1e-5)
    # a combination of rows is inside, a random row is not.
    self.assertLess(spans.residual(rows.sum(0), basis), 1e-5)
    self.assertGreater(spans.residual(rng.normal(size=(5, 20)), basis).min(),
                       0.3)

  def test_rows_that_fill_the_space_are_not_identifiable(self):
    rng = np.random.default_rng(1)
    _, rank = spans.span(rng.normal(size=(10, 40)).astype(np.float32))
    self.assertEqual(rank, 0)


class PairingTest(absltest.TestCase):

  def test_hungarian_on_rouge1(self):
    self.assertEqual(lamp.pair_by_rouge1(['b c', 'a b'], ['a b', 'b c', 'x']),
                     [1, 0, None])
    self.assertEqual(lamp.pair_by_rouge1([], ['a']), [None])


class BatchClientTest(absltest.TestCase):

  def test_padded_batch_of_one_is_the_single_sentence_step(self):
    tok = data.make_tokenizer()
    ids = data.encode(tok, SENTENCES[0], max_length=16)  # 7 ids
    params = bert.init_params(TINY, jax.random.key(0))
    key = jax.random.key(5)
    padded = jax.jit(batch.batch_gradient, static_argnums=0)(
        TINY, params, batch.mask_batch([ids], [key], mask_id=MASK,
                                       length=12))
    single = jax.jit(client.client_gradient, static_argnums=0)(
        TINY, params, client.mask_tokens(ids, key, mask_id=MASK))
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(single)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    pos = np.asarray(padded['position_embeddings']['embedding'])
    self.assertFalse(np.any(pos[7:]))  # padding has exactly zero gradient
    self.assertTrue(np.all(np.any(pos[:7] != 0, axis=1)))

  def test_bad_lengths(self):
    with self.assertRaisesRegex(ValueError, 'one key per sentence'):
      batch.mask_batch([np.array([101, 7, 102])], [], mask_id=MASK)
    with self.assertRaisesRegex(ValueError, 'shorter than the longest'):
      batch.mask_batch([np.array([101, 7, 8, 102])], [jax.random.key(0)],
                       mask_id=MASK, length=3)


class BatchAttackTest(absltest.TestCase):

  def test_four_sentences_in_one_gradient_are_recovered_exactly(self):
    tok = data.make_tokenizer()
    ids = [data.encode(tok, s, max_length=32) for s in SENTENCES]
    params = bert.init_params(SMALL, jax.random.key(0))
    rec = recover.recover_batch(
        SMALL, params, ids, mask_keys=[jax.random.key(b) for b in range(4)],
        mask_id=MASK, cls_id=101, sep_id=102)
    inputs = np.asarray(rec.example.inputs)[np.asarray(rec.example.valid)]
    # The leak: every token of the input, every row, every length.
    self.assertEqual(set(rec.leak.bag.tolist()), set(inputs.tolist()))
    self.assertEqual(rec.leak.rows, sum(len(x) for x in ids))
    self.assertEqual(sorted(rec.leak.lengths.tolist()),
                     sorted(set(len(x) for x in ids)))
    # The span test accepts each input and rejects a swap of two
    # sentences' second tokens.
    grads = jax.jit(batch.batch_gradient, static_argnums=0)(
        SMALL, params, rec.example)
    first, second = (np.asarray(rec.example.inputs)[b, :len(ids[b])]
                     for b in (0, 1))
    for x in (first, second):
      self.assertLess(spans.sentence_residual(SMALL, params, grads, x),
                      spans.EXACT_TOL)
    swapped = first.copy()
    swapped[1] = second[1]
    self.assertGreater(spans.sentence_residual(SMALL, params, grads, swapped),
                       10 * spans.EXACT_TOL)
    self.assertTrue(all(rec.assembly.exact))
    texts = [data.decode(tok, x) for x in rec.sentences]
    pairs = lamp.pair_by_rouge1(texts, list(SENTENCES))
    for sentence, ref, j in zip(SENTENCES, ids, pairs):
      self.assertIsNotNone(j)
      self.assertEqual(data.rouge(texts[j], sentence)['rouge1'], 1.0)
      np.testing.assert_array_equal(rec.sentences[j], ref)


class FallbackTest(absltest.TestCase):

  def test_lengths_keep_every_leaked_length_and_sum_to_the_rows(self):
    leak = spans.BatchLeak(
        length=10, bag=np.arange(5), candidates=[], lengths=np.array(
            [10, 8, 6]), rows=30, labels=np.zeros(0, np.int64), ranks={},
        pair_threshold=0.0, attention_basis=np.zeros((4, 0)))
    lengths = batch_relaxed.batch_lengths(
        None, None, None, leak, [], batch_size=4, sep_id=102, trusted=True)
    self.assertEqual(lengths, [10, 8, 6, 6])
    self.assertEqual(batch_relaxed.batch_lengths(
        None, None, None, leak._replace(rows=36), [], batch_size=5,
        sep_id=102, trusted=True), [10, 8, 6, 6, 6])
    # one sentence held fixed, B = 2: the other length is N minus it.
    self.assertEqual(batch_relaxed.batch_lengths(
        None, None, None, leak._replace(rows=17), [10], batch_size=2,
        sep_id=102, trusted=True), [7])
    # N unknown: no lengths, no fallback.
    self.assertEqual(batch_relaxed.batch_lengths(
        None, None, None, leak._replace(rows=0), [], batch_size=4,
        sep_id=102, trusted=True), [])

  def test_fallback_holds_exact_sentences_and_repairs_the_others(self):
    tok = data.make_tokenizer()
    ids = [data.encode(tok, s, max_length=32) for s in SENTENCES[2:]]
    params = bert.init_params(SMALL, jax.random.key(0))
    example = batch.mask_batch(ids, [jax.random.key(b) for b in range(2)],
                               mask_id=MASK, length=8)
    grads = jax.jit(batch.batch_gradient, static_argnums=0)(
        SMALL, params, example)
    leak = spans.analyse_batch_leak(SMALL, params, grads, cls_id=101,
                                    sep_id=102)
    truth = [np.asarray(example.inputs)[b, :len(x)]
             for b, x in enumerate(ids)]
    # The assembly as if it had verified the first sentence only, its
    # guess of the second wrong at two positions; every leaked token is a
    # candidate at every position, so the order is the optimisation's.
    guess = truth[1].copy()
    guess[1], guess[2] = guess[2], guess[1]
    assembly = spans.Assembly(inputs=[truth[0], guess], exact=[True, False],
                              scores=[0.0, 0.1], history=[[truth[0]],
                                                          [guess]])
    result = batch_relaxed.fallback(
        SMALL, params, grads, leak, assembly, batch_size=2,
        key=jax.random.key(0), cls_id=101, sep_id=102, mask_id=MASK,
        num_steps=40, log_every=20, span_weight=1.0, candidates='bag',
        sweeps=0)
    self.assertEqual(result.fixed, [True, False])
    self.assertEqual(result.source, [0, 1])
    np.testing.assert_array_equal(result.inputs[0], truth[0])
    self.assertLess(result.losses[-1], 0.1 * result.losses[0])
    self.assertEqual(result.steps.tolist(), [0, 20, 40])
    self.assertEqual(result.history[1].shape, (3, truth[1].size))
    self.assertGreaterEqual(
        data.token_accuracy(result.inputs[1], truth[1]), 0.85)
    # "exact" is the span test's verdict on what was decoded.
    for x, exact in zip(result.inputs, result.exact):
      self.assertEqual(exact, spans.sentence_residual(
          SMALL, params, grads, x) < spans.EXACT_TOL)
    self.assertTrue(result.exact[0])


class BatchPipelineTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def _config(self, batch_size=2, count=2):
    config = bert_config.get_config('quick')
    config.data.npz = os.path.join(self.tmp, 'sentences.npz')
    np.savez(config.data.npz, sentences=np.array(SENTENCES))
    config.data.batch_size = batch_size
    config.data.count = count
    return config

  def _expect(self, config, key, pattern=''):
    with self.assertRaisesRegex(errors.ConfigError,
                                rf'^config\.{key}: .*{pattern}'):
      text_attack.prepare(config)

  def test_bad_batch_configs_name_their_key(self):
    self._expect(self._config(0), r'data\.batch_size', '< 1')
    self._expect(self._config(3, 2), r'data\.batch_size', r'> the 2')
    self._expect(self._config(2, 3), r'data\.count', 'not a multiple')
    config = self._config()
    config.data.max_batch_tokens = 100
    self._expect(config, r'data\.batch_size', 'max_batch_tokens=100')
    config = self._config()
    config.defense.name = 'shout'
    self._expect(config, r'defense\.name', 'shout')
    config = self._config()
    config.defense.name = 'prune_layer'
    config.defense.strength = 1.0
    self._expect(config, r'defense\.strength', 'prune_layer')
    config = self._config(1, 1)
    config.defense.name = 'gaussian'
    self._expect(config, r'defense\.name', 'span attack')
    config = self._config()
    config.attack.method = 'magic'
    self._expect(config, r'attack\.method', 'magic')
    config = self._config()
    config.attack.fallback = 'magic'
    self._expect(config, r'attack\.fallback', 'magic')
    config = self._config()
    config.attack.fallback_steps = -1
    self._expect(config, r'attack\.fallback_steps', '< 0')

  def test_batch_run_writes_paired_records(self):
    workdir = os.path.join(self.tmp, 'run')
    config = self._config()
    config.defense.name = 'prune_layer'
    config.defense.strength = 0.01
    text_attack.run(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    self.assertLen(results['records'], 2)
    for record, sentence in zip(results['records'], SENTENCES):
      self.assertEqual(record['reference'], sentence)
      for key in ('recovered', 'token_accuracy', 'rouge1', 'rouge2',
                  'rougeL', 'seconds', 'batch_seconds', 'exact',
                  'fallback'):
        self.assertIn(key, record)
    self.assertEqual(results['summary']['batch_size'], 2)
    with open(os.path.join(workdir, 'text_log.txt')) as f:
      log = f.read()
    self.assertIn('# batch 0', log)
    self.assertIn(f'[Ground Truth] {SENTENCES[1]}', log)


if __name__ == '__main__':
  absltest.main()
