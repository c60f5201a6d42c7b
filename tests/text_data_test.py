"""Tests of the WordPiece tokeniser, sentence loading and text scores."""

import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from rouge_score import rouge_scorer

from dlg_jax.text import data


class TokenizerTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tok = data.make_tokenizer()

  def test_special_ids(self):
    self.assertEqual(data.special_ids(self.tok),
                     {'[CLS]': 101, '[SEP]': 102, '[MASK]': 103, '[PAD]': 0,
                      '[UNK]': 100})

  def test_round_trip_on_bundled_sentences(self):
    sentences = data.bundled_sentences()
    self.assertLen(sentences, 153)
    for sentence in sentences:
      ids = data.encode(self.tok, sentence, max_length=512)
      self.assertEqual((ids[0], ids[-1]), (101, 102))
      self.assertNotIn(100, ids)  # no [UNK]: the vocabulary covers them
      # The uncased tokeniser lower-cases and spaces out punctuation.
      self.assertEqual(data.decode(self.tok, ids).replace(' ', ''),
                       sentence.lower().replace(' ', ''))

  def test_known_pieces(self):
    ids = data.encode(self.tok, 'Registration opens.', max_length=16)
    self.assertEqual(
        [self.tok.id_to_token(int(i)) for i in ids],
        ['[CLS]', 'registration', 'opens', '.', '[SEP]'])

  def test_bundled_filter(self):
    short = data.bundled_sentences(self.tok, max_tokens=32)
    self.assertLen(short, 121)
    self.assertTrue(short[0].startswith('Registration, volunteer'))
    for s in short[3:]:
      self.assertLessEqual(len(self.tok.encode(s).ids) - 2, 32)

  @parameterized.parameters('', '   ', '\n')
  def test_empty_sentence(self, sentence):
    with self.assertRaisesRegex(ValueError, 'Empty sentence'):
      data.encode(self.tok, sentence, max_length=16)

  def test_too_long(self):
    with self.assertRaisesRegex(ValueError, 'max_length=4'):
      data.encode(self.tok, 'one two three four', max_length=4)

  def test_truncate_warns_and_keeps_sep(self):
    with self.assertLogs(level='WARNING'):
      ids = data.encode(self.tok, 'one two three four', max_length=4,
                        truncate=True)
    self.assertEqual([self.tok.id_to_token(int(i)) for i in ids],
                     ['[CLS]', 'one', 'two', '[SEP]'])

  def test_decode_keeps_mask(self):
    ids = [101, 1996, 103, 2003, 102]
    self.assertEqual(data.decode(self.tok, ids), 'the [MASK] is')


class FilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def test_vocab_txt(self):
    path = os.path.join(self.tmp, 'vocab.txt')
    with open(path, 'w') as f:
      f.write('\n'.join(str(t) for t in
                        np.load(data.bundled_path())['bert_vocab']) + '\n')
    self.assertEqual(data.load_vocab(path), data.load_vocab())

  def test_missing_vocab(self):
    with self.assertRaisesRegex(FileNotFoundError, 'vocab.txt'):
      data.load_vocab(os.path.join(self.tmp, 'vocab.txt'))

  def test_vocab_without_specials(self):
    path = os.path.join(self.tmp, 'vocab.txt')
    with open(path, 'w') as f:
      f.write('[PAD]\nhello\n')
    with self.assertRaisesRegex(ValueError, r'\[CLS\]'):
      data.load_vocab(path)

  def test_load_sentences(self):
    path = os.path.join(self.tmp, 's.npz')
    np.savez(path, sentences=np.array(['Hello there.', 'Bye.']))
    self.assertEqual(data.load_sentences(path), ['Hello there.', 'Bye.'])

  def test_bad_npz(self):
    with self.assertRaisesRegex(FileNotFoundError, 'missing.npz'):
      data.load_sentences(os.path.join(self.tmp, 'missing.npz'))
    path = os.path.join(self.tmp, 'other.npz')
    np.savez(path, text=np.array(['a']))
    with self.assertRaisesRegex(ValueError, "no array 'sentences'"):
      data.load_sentences(path)
    np.savez(path, sentences=np.zeros(3))
    with self.assertRaisesRegex(ValueError, 'strings'):
      data.load_sentences(path)


class ScoresTest(parameterized.TestCase):

  def test_token_accuracy(self):
    self.assertEqual(data.token_accuracy([1, 2, 3, 4], [1, 2, 5, 4]), 0.75)
    self.assertEqual(data.token_accuracy([1, 2], [1, 2, 3, 4]), 0.5)
    self.assertEqual(data.token_accuracy([1, 2, 3, 4, 5], [1, 2]), 1.0)

  @parameterized.parameters(
      # the cat sat on the mat / the cat is on the mat: 5 of 6 words,
      # bigrams 'the cat', 'on the', 'the mat' of 5, LCS 5.
      ('The cat sat on the mat.', 'the cat is on the mat', 5 / 6, 3 / 5,
       5 / 6),
      ('a b c d', 'd c b a', 1.0, 0.0, 2 * (1 / 4) * (1 / 4) / (1 / 2)),
      ('a b', 'a b c d', 2 * 1 * 0.5 / 1.5, 2 * 1 * (1 / 3) / (4 / 3),
       2 * 1 * 0.5 / 1.5),
      ('x y', 'a b', 0.0, 0.0, 0.0),
      ('', 'a b', 0.0, 0.0, 0.0),
  )
  def test_rouge_hand_values(self, pred, ref, r1, r2, rl):
    scores = data.rouge(pred, ref)
    self.assertAlmostEqual(scores['rouge1'], r1)
    self.assertAlmostEqual(scores['rouge2'], r2)
    self.assertAlmostEqual(scores['rougeL'], rl)

  def test_rouge_clips_repeats(self):
    # 'the the the' matches 'the' in the reference at most twice.
    self.assertAlmostEqual(data.rouge_n('the the the', 'the cat the', 1),
                           2 / 3)

  def test_rouge_cat_on_the_mat(self):
    # Prediction 5 words, reference 6, all 5 in the reference in order:
    # ROUGE-1 and ROUGE-L F = 2 * 5 / (5 + 6). Bigrams: 3 of the
    # prediction's 4 ('the cat', 'on the', 'the mat') among the reference's
    # 5: F = 2 * 3 / (4 + 5).
    scores = data.rouge('the cat on the mat', 'the cat sat on the mat')
    self.assertAlmostEqual(scores['rouge1'], 10 / 11)
    self.assertAlmostEqual(scores['rouge2'], 2 / 3)
    self.assertAlmostEqual(scores['rougeL'], 10 / 11)
    self.assertAlmostEqual(
        data.rouge_n('the cat on the mat', 'the cat sat on the mat', 2), 2 / 3)
    self.assertAlmostEqual(
        data.rouge_l('the cat on the mat', 'the cat sat on the mat'), 10 / 11)
    # Trigrams: 'on the mat' only, of 3 and 4.
    self.assertAlmostEqual(
        data.rouge_n('the cat on the mat', 'the cat sat on the mat', 3),
        2 / 7)

  def test_rouge_is_rouge_score_without_stemming(self):
    # rouge-score's tokens: lower case, split on anything not [a-z0-9].
    self.assertEqual(data.words("Don't STOP, 3-D!"), ['don', 't', 'stop', '3',
                                                      'd'])
    self.assertEqual(data.rouge("Don't STOP", 'don t stop')['rougeL'], 1.0)
    # No Porter stemmer (rouge-score's default, LAMP's setting): 'cats' is
    # not 'cat'.
    self.assertEqual(data.rouge_n('cats running', 'cat run', 1), 0.0)
    scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'])
    for pred, ref in [('a b c a', 'c a b a'), ('the the the', 'the cat the'),
                      ('Registration opens.', 'registration opens soon')]:
      want = scorer.score(ref, pred)
      self.assertEqual(data.rouge(pred, ref),
                       {k: v.fmeasure for k, v in want.items()})

  def test_rouge_bundled_sentences_recovered_exactly_score_one(self):
    # The text attack's recovered text is the tokeniser's decoding
    # (lower-cased, punctuation spaced out); on the 121 sentences of the
    # README's table that scores 1 against the original.
    tok = data.make_tokenizer()
    for sentence in data.bundled_sentences(tok, max_tokens=32):
      recovered = data.decode(tok, data.encode(tok, sentence, max_length=64))
      self.assertEqual(set(data.rouge(recovered, sentence).values()), {1.0},
                       sentence)

  @parameterized.parameters(0, -1, 1.5, True)
  def test_rouge_n_bad_n(self, n):
    with self.assertRaisesRegex(ValueError, 'positive int'):
      data.rouge_n('a b', 'a b', n)

  def test_rouge_refuses_non_strings(self):
    with self.assertRaisesRegex(TypeError, 'prediction must be a str'):
      data.rouge(b'a b', 'a b')
    with self.assertRaisesRegex(TypeError, 'reference must be a str'):
      data.rouge_l('a b', ['a', 'b'])

  def test_scores(self):
    s = data.scores([1, 2], [1, 3], 'a b', 'a c')
    self.assertEqual(s['token_accuracy'], 0.5)
    self.assertAlmostEqual(s['rouge1'], 0.5)


if __name__ == '__main__':
  absltest.main()
