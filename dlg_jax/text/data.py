"""Text for the NLP attack: WordPiece tokens, bundled sentences and scores.

The tokeniser is the `tokenizers` library's BERT WordPiece, built from the
bert-base-uncased vocabulary bundled in `samples/text_samples.npz` (the same
vocabulary as the `vocab.txt` of all-MiniLM-L6-v2), so nothing is downloaded.

Scores compare a recovered sentence with its reference: `token_accuracy`
position by position over WordPiece tokens, and ROUGE-1/2/L F-measures over
lower-cased words (Lin 2004), the measures of later gradient-inversion
attacks on text (TAG, LAMP), computed by Google's `rouge-score`, the
reference Python scorer (LAMP's code calls it through Hugging Face
`datasets`, without stemming).
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import os

from absl import logging
import numpy as np
from jax.typing import ArrayLike
from rouge_score import rouge_scorer
from rouge_score import tokenizers as rouge_tokenizers
from tokenizers import BertWordPieceTokenizer
from tokenizers import Tokenizer

from dlg_jax.core import npz
CLS, SEP, MASK, PAD, UNK = '[CLS]', '[SEP]', '[MASK]', '[PAD]', '[UNK]'

# rouge-score's defaults, which LAMP's scores (through Hugging Face's
# `datasets` rouge metric) use: no Porter stemming.
_USE_STEMMER = False
_ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')

_SAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'samples',
    'text_samples.npz')


def bundled_path() -> str:
  """Path of the bundled `text_samples.npz` (package data)."""
  return _SAMPLES


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No text samples file at {path!r}.')
  return npz.read_npz_arrays(path)


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
  """Lower-cased alphanumeric words: rouge-score's tokens, without stemming."""
  return _rouge_tokenizer().tokenize(text)


@functools.cache
def _rouge_tokenizer() -> rouge_tokenizers.DefaultTokenizer:
  return rouge_tokenizers.DefaultTokenizer(use_stemmer=_USE_STEMMER)


@functools.cache
def _scorer(rouge_types: tuple[str, ...]) -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(list(rouge_types),
                                  use_stemmer=_USE_STEMMER)


def _check(prediction: str, reference: str) -> None:
  for name, value in (('prediction', prediction), ('reference', reference)):
    if not isinstance(value, str):
      raise TypeError(f'{name} must be a str, got {type(value).__name__}.')


def rouge_n(prediction: str, reference: str, n: int) -> float:
  """ROUGE-N F-measure: clipped n-gram overlap of the two word sequences.

  Computed by rouge-score (`RougeScorer([f'rouge{n}'])`, no stemmer).

  Args:
    prediction: the recovered sentence.
    reference: the true sentence.
    n: the n-gram length, >= 1.

  Returns:
    The F-measure in [0, 1]; 0 when either side has no n-gram.

  Raises:
    ValueError: `n` is not a positive int.

  References:
    Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004.
  """
  _check(prediction, reference)
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'n must be a positive int, got {n!r}.')
  key = f'rouge{n}'
  return float(_scorer((key,)).score(reference, prediction)[key].fmeasure)


def rouge_l(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure: longest common word subsequence (Lin 2004, sec. 3).

  Computed by rouge-score (`RougeScorer(['rougeL'])`, no stemmer).
  """
  _check(prediction, reference)
  return float(_scorer(('rougeL',)).score(reference, prediction)
               ['rougeL'].fmeasure)


def rouge(prediction: str, reference: str) -> dict[str, float]:
  """`{'rouge1', 'rouge2', 'rougeL'}` F-measures of `prediction`.

  One rouge-score `RougeScorer(['rouge1', 'rouge2', 'rougeL'],
  use_stemmer=False)`, the settings of the `rouge` metric in Hugging Face
  `datasets` that LAMP (Balunovic et al. 2022) reports with.

  Args:
    prediction: the recovered sentence.
    reference: the true sentence.

  Returns:
    `{'rouge1', 'rouge2', 'rougeL'}`, each an F-measure in [0, 1].
  """
  _check(prediction, reference)
  result = _scorer(_ROUGE_TYPES).score(reference, prediction)
  return {k: float(result[k].fmeasure) for k in _ROUGE_TYPES}


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
