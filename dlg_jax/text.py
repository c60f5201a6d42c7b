"""Text for the NLP attack: WordPiece tokens, bundled sentences and scores.

The tokeniser is the `tokenizers` library's BERT WordPiece, built from the
bert-base-uncased vocabulary bundled in `samples/text_samples.npz` (the same
vocabulary as the `vocab.txt` of all-MiniLM-L6-v2), so nothing is downloaded.

Scores compare a recovered sentence with its reference: `token_accuracy`
position by position over WordPiece tokens, and ROUGE-1/2/L F-measures over
lower-cased words (Lin 2004), the measures of later gradient-inversion
attacks on text (TAG, LAMP).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import os
import re

from absl import logging
import numpy as np
from jax.typing import ArrayLike
from tokenizers import BertWordPieceTokenizer
from tokenizers import Tokenizer

from dlg_jax import data

CLS, SEP, MASK, PAD, UNK = '[CLS]', '[SEP]', '[MASK]', '[PAD]', '[UNK]'

_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'samples',
                        'text_samples.npz')


def bundled_path() -> str:
  """Path of the bundled `text_samples.npz` (package data)."""
  return _SAMPLES


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No text samples file at {path!r}.')
  return data.read_npz_arrays(path)


def load_vocab(path: str | os.PathLike[str] | None = None) -> list[str]:
  """The WordPiece vocabulary, one token per id.

  Args:
    path: a `vocab.txt` (one token a line) or an `.npz` with an array
      `bert_vocab`; None reads the bundled bert-base-uncased vocabulary.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file holds no vocabulary or lacks BERT's special tokens.
  """
  path = _SAMPLES if path is None else os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No vocabulary file at {path!r}.')
  if path.endswith('.npz'):
    arrays = _load_npz(path)
    if 'bert_vocab' not in arrays:
      raise ValueError(f'{path} has no array bert_vocab; it has '
                       f'{sorted(arrays)}.')
    vocab = [str(t) for t in arrays['bert_vocab']]
  else:
    with open(path, encoding='utf-8') as f:
      vocab = [line.rstrip('\n') for line in f]
    while vocab and not vocab[-1]:
      vocab.pop()
  missing = [t for t in (CLS, SEP, MASK, PAD, UNK) if t not in vocab]
  if missing:
    raise ValueError(f'Vocabulary {path} lacks the special token {missing[0]}.')
  return vocab


def make_tokenizer(vocab: Sequence[str] | None = None) -> Tokenizer:
  """BERT's uncased WordPiece tokeniser over `vocab` (bundled if None).

  Lower-cases, strips accents, splits on white space and punctuation, then
  WordPiece; `encode` adds `[CLS]` and `[SEP]`.
  """
  vocab = load_vocab() if vocab is None else list(vocab)
  return BertWordPieceTokenizer({t: i for i, t in enumerate(vocab)},
                                lowercase=True)


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
  """Ids of `[CLS]`, `[SEP]`, `[MASK]`, `[PAD]`, `[UNK]` in `tokenizer`."""
  return {t: tokenizer.token_to_id(t) for t in (CLS, SEP, MASK, PAD, UNK)}


def encode(tokenizer: Tokenizer, sentence: str, *, max_length: int,
           truncate: bool = False) -> np.ndarray:
  """`[CLS] sentence [SEP]` as int32 ids, at most `max_length` of them.

  Args:
    tokenizer: from `make_tokenizer`.
    sentence: the text; must hold at least one token.
    max_length: the most ids, `[CLS]` and `[SEP]` included (the model's
      `max_position_embeddings` or less).
    truncate: whether a longer sentence is cut to `max_length` (with a
      warning) rather than refused.

  Returns:
    `[length]` int32 ids.

  Raises:
    ValueError: the sentence is empty (no token), or longer than
      `max_length` and `truncate` is False.
  """
  if not isinstance(sentence, str):
    raise TypeError(f'sentence must be a str, got {type(sentence).__name__}.')
  ids = tokenizer.encode(sentence).ids
  if len(ids) <= 2:
    raise ValueError(f'Empty sentence {sentence!r}: it has no token.')
  if len(ids) > max_length:
    if not truncate:
      raise ValueError(
          f'Sentence of {len(ids)} tokens ([CLS] and [SEP] included) exceeds '
          f'max_length={max_length}: {sentence[:60]!r}...')
    logging.warning('Truncating a sentence of %d tokens to %d: %r',
                    len(ids), max_length, sentence[:60])
    ids = ids[:max_length - 1] + ids[-1:]
  return np.asarray(ids, np.int32)


def decode(tokenizer: Tokenizer, ids: ArrayLike) -> str:
  """Text of `ids`, special tokens other than `[MASK]` and `[UNK]` dropped."""
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  keep = {tokenizer.token_to_id(MASK), tokenizer.token_to_id(UNK)}
  drop = {tokenizer.token_to_id(t) for t in (CLS, SEP, PAD)}
  ids = [i for i in ids if i not in drop or i in keep]
  return tokenizer.decode(ids, skip_special_tokens=False)


def load_sentences(path: str | os.PathLike[str], *,
                   key: str = 'sentences') -> list[str]:
  """The array `key` of strings in an `.npz` (opened without pickle).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: no array `key`, not strings, or empty.
  """
  path = os.fspath(path)
  arrays = _load_npz(path)
  if key not in arrays:
    raise ValueError(f'{path} has no array {key!r}; it has {sorted(arrays)}.')
  arr = arrays[key]
  if arr.dtype.kind not in 'US' or arr.ndim != 1:
    raise ValueError(f'{path}: array {key!r} must be a 1-D array of strings, '
                     f'got dtype {arr.dtype} and shape {arr.shape}.')
  if arr.size == 0:
    raise ValueError(f'{path}: array {key!r} is empty.')
  return [s.decode('utf-8') if isinstance(s, bytes) else str(s) for s in arr]


def bundled_sentences(tokenizer: Tokenizer | None = None,
                      max_tokens: int | None = None) -> list[str]:
  """The three DLG example texts, then the WikiText-2 test sentences.

  Args:
    tokenizer: needed with `max_tokens`.
    max_tokens: keep only WikiText sentences of at most this many WordPiece
      tokens (`[CLS]`, `[SEP]` not counted); the DLG texts are always kept.
  """
  arrays = _load_npz(_SAMPLES)
  dlg = [str(s) for s in arrays['dlg_sentences']]
  wiki = [str(s) for s in arrays['wikitext_sentences']]
  if max_tokens is not None:
    if tokenizer is None:
      raise ValueError('max_tokens needs a tokenizer.')
    wiki = [s for s in wiki if len(tokenizer.encode(s).ids) - 2 <= max_tokens]
  return dlg + wiki


def token_accuracy(recovered: ArrayLike, reference: ArrayLike) -> float:
  """Fraction of the reference's positions whose token is recovered exactly.

  Positions past the end of a shorter `recovered` count as wrong; extra
  recovered positions are ignored.

  Args:
    recovered: `[length']` token ids.
    reference: `[length]` token ids, `length >= 1`.
  """
  rec = np.asarray(recovered).reshape(-1)
  ref = np.asarray(reference).reshape(-1)
  if ref.size == 0:
    raise ValueError('token_accuracy needs a non-empty reference.')
  n = min(rec.size, ref.size)
  return float(np.sum(rec[:n] == ref[:n]) / ref.size)


def words(text: str) -> list[str]:
  """Lower-cased alphanumeric words, as ROUGE's default tokeniser splits."""
  return re.findall(r'[a-z0-9]+', text.lower())


def _f_measure(overlap: int, n_pred: int, n_ref: int) -> float:
  if overlap == 0 or n_pred == 0 or n_ref == 0:
    return 0.0
  p, r = overlap / n_pred, overlap / n_ref
  return 2 * p * r / (p + r)


def rouge_n(prediction: str, reference: str, n: int) -> float:
  """ROUGE-N F-measure: clipped n-gram overlap of the two word sequences.

  References:
    Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004.
  """
  def grams(ws):
    return collections.Counter(tuple(ws[i:i + n])
                               for i in range(len(ws) - n + 1))
  pred, ref = grams(words(prediction)), grams(words(reference))
  overlap = sum((pred & ref).values())
  return _f_measure(overlap, sum(pred.values()), sum(ref.values()))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
  row = [0] * (len(b) + 1)
  for x in a:
    prev = 0
    for j, y in enumerate(b):
      cur = row[j + 1]
      row[j + 1] = prev + 1 if x == y else max(row[j + 1], row[j])
      prev = cur
  return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure: longest common word subsequence (Lin 2004, sec. 3)."""
  pred, ref = words(prediction), words(reference)
  return _f_measure(_lcs(pred, ref), len(pred), len(ref))


def rouge(prediction: str, reference: str) -> dict[str, float]:
  """`{'rouge1', 'rouge2', 'rougeL'}` F-measures of `prediction`."""
  return {'rouge1': rouge_n(prediction, reference, 1),
          'rouge2': rouge_n(prediction, reference, 2),
          'rougeL': rouge_l(prediction, reference)}


def scores(recovered: ArrayLike, reference: ArrayLike, recovered_text: str,
           reference_text: str) -> dict[str, float]:
  """Token accuracy over word pieces and ROUGE-1/2/L F-measures over words.

  Args:
    recovered: `[n']` recovered ids, `[CLS]`/`[SEP]` stripped.
    reference: `[n]` reference ids, `[CLS]`/`[SEP]` stripped.
    recovered_text: the recovered sentence.
    reference_text: the reference sentence.

  Returns:
    `{'token_accuracy', 'rouge1', 'rouge2', 'rougeL'}`.
  """
  return {'token_accuracy': token_accuracy(recovered, reference),
          **rouge(recovered_text, reference_text)}
