"""What a BERT masked-LM gradient leaks without any optimisation.

For a client batch of one sentence of `n` tokens, `M` of them masked
(`dlg_jax.text.client`), `analyse_leak` reads off:

* Length. The position-embedding gradient has a non-zero row for each of the
  `n` positions used and exactly zero rows after them.
* Where each input token sits (bag of words with positions). Word, position
  and token-type embeddings are added before the first LayerNorm, so the
  gradient of position row `i` is `g_i = dL/dx_i`, the gradient of the summed
  embedding at `i`, and the input part of word row `v` is `sum_{i: t_i = v}
  g_i`. With the decoder tied to the word embeddings, every word row also
  gets the output-softmax term `sum_p (softmax_p[v] - y_p[v]) h_p / M` over
  the masked positions `p` (`h_p`: the head's transformed hidden state), so
  "non-zero rows" is not literally sparse: every row is non-zero. The two
  parts have structure, though: the input part lies in `span{g_i}` (known:
  the position gradient) with 0/1 coefficients, the output part in the
  `M`-dimensional `span{h_p}`, and generically the two spans meet only at
  zero. So (1) the word gradient's Gram matrix, projected off `span{g_i}`,
  has rank `M` and gives `M`; (2) `span{h_p}` itself is fitted to the rows
  of tokens absent from the input (all but at most `n` of the 30522 rows lie
  exactly in it), robustly, by refitting without the rows it fits worst;
  (3) every word row is regressed on `[g_1..g_n, h-basis]`. The coefficient
  on `g_i` is 1 where token `v` sits at position `i` and 0 elsewhere, up to
  float error (about 1e-6 on MiniLM). This needs `n + M <= hidden_size`;
  otherwise the bag falls back to the largest word-gradient rows, unplaced.
* The masked tokens (labels). The decoder-bias gradient is
  `mean_p (softmax_p - y_p)`; its negative entries are the masked tokens
  (their `-1/M` outweighs the softmax mass wherever the model is not
  confidently predicting another token).

With several sentences per client step, `g_i` sums over the batch and the
rows no longer say which sentence a token came from.

All of it runs once, on the host, in float64 numpy.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
  Deng et al., "TAG: Gradient Attack on Transformer-based Language Models",
  Findings of EMNLP 2021 (bag of words from the embedding gradient).
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from absl import logging
import numpy as np

Params = Any


class Leak(NamedTuple):
  """What the gradient gives away directly (host numpy, from `analyse_leak`).

  Attributes:
    length: the number of tokens `n`, `[CLS]` and `[SEP]` included.
    tokens: `[k]` ids of the tokens in the model's input (the bag of words,
      `[MASK]` included when a token was masked).
    scores: `[n, k]` how much of token `tokens[j]`'s word gradient is the
      position gradient of position `i`: about 1 where it sits, 0 elsewhere.
    labels: `[l]` ids of the masked tokens (the MLM labels), most certain
      first.
    dense_rank: the rank found for the output-softmax part of the word
      gradient (the number of masked positions when all is exact).
  """
  length: int
  tokens: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  dense_rank: int


def leaked_length(grads: Params) -> int:
  """The sequence length, read off the position-embedding gradient.

  Positions past the sentence take no part in the loss, so their rows of the
  gradient are exactly zero; the length is one past the last non-zero row.

  Args:
    grads: the shared gradient.

  Returns:
    `n`, `[CLS]` and `[SEP]` included.
  """
  pos = np.asarray(grads['position_embeddings']['embedding'])
  used = np.flatnonzero(np.any(pos != 0, axis=1))
  if used.size == 0:
    raise ValueError('The position-embedding gradient is zero: no sentence.')
  return int(used[-1]) + 1


def leaked_labels(grads: Params, *, max_labels: int | None = None
                  ) -> np.ndarray:
  """Ids whose decoder-bias gradient is negative: the masked tokens.

  The bias gradient is `mean_p (softmax_p - onehot(label_p))` over masked
  positions, so a label's entry is about `-count/M` and every other entry is
  a positive softmax mass.

  Args:
    grads: the shared gradient.
    max_labels: keep at most this many (the most negative).

  Returns:
    `[l]` int32 ids, most negative entry first.
  """
  bias = np.asarray(grads['decoder_bias'], np.float64)
  order = np.argsort(bias)
  labels = order[bias[order] < 0]
  if labels.size == 0:
    raise ValueError('No negative decoder-bias gradient: no masked token.')
  return labels[:max_labels].astype(np.int32)


def _top_directions(rows: np.ndarray, rank: int) -> np.ndarray:
  """`[rank, d]` orthonormal top right singular vectors of `rows` `[m, d]`."""
  _, evecs = np.linalg.eigh(rows.T @ rows)
  return evecs[:, ::-1][:, :rank].T


def _output_directions(unit: np.ndarray, rank: int, length: int
                       ) -> np.ndarray:
  """`[rank, r]` basis of the output part's span, from the rows it explains.

  The rows of tokens absent from the input (all but at most `length` rows)
  lie exactly in that span. Rows come unit-normalised so that the few input
  rows weigh as little as the many others; the fit is redone without the
  `2 * length` rows it explains worst, which removes the input rows.
  """
  directions = _top_directions(unit, rank)
  for _ in range(2):
    off = unit - (unit @ directions.T) @ directions
    misfit = np.linalg.norm(off, axis=1)
    keep = np.argsort(misfit)[:max(rank, unit.shape[0] - 2 * length)]
    directions = _top_directions(unit[keep], rank)
  return directions


def _spans(word: np.ndarray, pos: np.ndarray, rank_tol: float
           ) -> tuple[np.ndarray, np.ndarray]:
  """Orthonormal bases of the position gradients' span and of the rest.

  Args:
    word: `[vocab, d]` the word-embedding gradient.
    pos: `[n, d]` the position-embedding gradient's used rows.
    rank_tol: relative singular-value cutoff of the rest.

  Returns:
    `(span_pos, span_out)`: `[r, d]` spanning the rows of `pos`, and
    `[M, d]` spanning what the word rows hold off that span (the output
    part, `M` its rank).
  """
  # One pass over the [vocab, d] rows: their Gram matrix. Projecting it off
  # span{g_i} leaves the Gram matrix of the output part alone.
  gram = word.T @ word
  _, s, vt = np.linalg.svd(pos, full_matrices=False)
  span_pos = vt[s > 1e-9 * s[0]]
  off_pos = np.eye(word.shape[1]) - span_pos.T @ span_pos
  evals, evecs = np.linalg.eigh(off_pos @ gram @ off_pos)
  sv = np.sqrt(np.maximum(evals[::-1], 0.0))
  rank = int(np.sum(sv > rank_tol * sv[0])) if sv[0] > 0 else 0
  return span_pos, evecs[:, ::-1][:, :rank].T


def _placed_tokens(word: np.ndarray, pos: np.ndarray, span_pos: np.ndarray,
                   span_out: np.ndarray, threshold: float
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The input tokens and their position scores, by regressing word rows.

  Every word row lies in `span_pos + span_out`, so the work is done in
  coordinates of that `(r + M)`-dimensional space.

  Args:
    word: `[vocab, d]` the word-embedding gradient.
    pos: `[n, d]` the position-embedding gradient's used rows.
    span_pos: `[r, d]` from `_spans`.
    span_out: `[M, d]` from `_spans`.
    threshold: a token is in the input when its coefficient on some position
      gradient exceeds this.

  Returns:
    `(tokens, scores)`: `[k]` ids and their `[n, k]` coefficients on the
    position gradients.
  """
  n, rank = pos.shape[0], span_out.shape[0]
  frame = np.concatenate([span_pos, span_out])
  coords = word @ frame.T
  norms = np.linalg.norm(coords, axis=1, keepdims=True)
  unit = coords[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
  dense = (_output_directions(unit, rank, n) if rank
           else np.zeros((0, frame.shape[0])))
  basis = np.concatenate([pos @ frame.T, dense], axis=0)
  coef, *_ = np.linalg.lstsq(basis.T, coords.T, rcond=None)
  scores = coef[:n].T  # [vocab, n]
  tokens = np.flatnonzero(np.max(scores, axis=1) > threshold)
  return tokens, scores[tokens].T


def _largest_rows(word: np.ndarray, length: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The `2 * length` word rows of largest norm, unplaced (zero scores)."""
  norms = np.linalg.norm(word, axis=1)
  tokens = np.sort(np.argsort(norms)[::-1][:2 * length])
  return tokens, np.zeros((length, tokens.size))


def analyse_leak(grads: Params, *, length: int | None = None,
                 threshold: float = 0.5, rank_tol: float = 1e-4,
                 max_labels: int | None = None) -> Leak:
  """Length, input tokens with their positions, and labels from `grads`.

  See the module docstring for why the word gradient splits into position
  gradients plus a low-rank output part.

  Args:
    grads: the shared gradient of `dlg_jax.text.client.client_gradient`.
    length: the sequence length if known; None reads it from the gradient.
    threshold: a token is in the input when its coefficient on some position
      gradient exceeds this.
    rank_tol: singular values of the output part below `rank_tol` times the
      largest are float noise.
    max_labels: at most this many labels (None: all negative bias entries).

  Returns:
    The `Leak`.
  """
  n = leaked_length(grads) if length is None else int(length)
  word = np.asarray(grads['word_embeddings']['embedding'], np.float64)
  pos = np.asarray(grads['position_embeddings']['embedding'],
                   np.float64)[:n]
  span_pos, span_out = _spans(word, pos, rank_tol)
  dense_rank, hidden = span_out.shape
  if n + dense_rank <= hidden:
    tokens, scores = _placed_tokens(word, pos, span_pos, span_out, threshold)
  else:
    # Too many unknowns to separate: the optimisation places the tokens.
    logging.warning('length %d + output rank %d > hidden size %d: the bag '
                    'of words falls back to word-gradient row norms.',
                    n, dense_rank, hidden)
    tokens, scores = _largest_rows(word, n)
  return Leak(length=n, tokens=tokens.astype(np.int32),
              scores=scores.astype(np.float32),
              labels=leaked_labels(grads, max_labels=max_labels),
              dense_rank=dense_rank)
