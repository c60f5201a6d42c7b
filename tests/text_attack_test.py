"""Tests of the text attack's pipeline, dlg_jax/pipelines/text_attack.py."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from configs import bert as bert_config
from dlg_jax.pipelines import text_attack
from dlg_jax.text import bert


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


SENTENCE = 'He played my brother in Mercury Fur.'  # bundled WikiText


class TextAttackPipelineTest(parameterized.TestCase):

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
    text_attack.run(self._config(), workdir)
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
      text_attack.prepare(config)

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
      *_, ids = text_attack.prepare(config)
    self.assertLen(ids[0], 5)

  def test_max_length_beyond_model(self):
    config = self._config()
    config.data.max_length = 65
    self._expect(config, r'data\.max_length', 'max_position_embeddings')

  def test_unset_count_takes_all(self):
    config = self._config()
    np.savez(config.data.npz, sentences=np.array(['One.', 'Two.', 'Three.']))
    config.data.count = None
    *_, ids = text_attack.prepare(config)
    self.assertLen(ids, 3)

  @parameterized.parameters(0, 2)
  def test_count_out_of_range(self, count):
    config = self._config()
    config.data.count = count
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

  def test_bad_num_steps(self):
    config = self._config()
    config.attack.num_steps = -1
    self._expect(config, r'attack\.num_steps', 'num_steps >= 0')

  def test_bad_max_labels(self):
    config = self._config()
    config.attack.max_labels = 0
    self._expect(config, r'attack\.max_labels', 'unset keeps every')


if __name__ == '__main__':
  absltest.main()
