"""Sentences of a batch from the spans of BERT's weight gradients.

A linear layer's weight gradient over a batch is `sum_r x_r^T delta_r`, a
sum of outer products over the `N` token rows `r` that enter it, so its
row space (in the input dimension) is `span{x_r}` while `N` stays below
that dimension: a candidate input is one of the rows only if it lies in the
span (DAGER, Petrov et al. 2024). For one client step on `B` padded
sentences (`dlg_jax.text.batch`), `analyse_batch_leak` and `assemble` read
the batch off the gradient in these steps, each stated with when it is
exact (`d` is the hidden size, `f` the FFN width, 4 d in BERT):

1. Longest length `L`: the last non-zero row of the position-embedding
   gradient (padding has exactly zero gradient). Exact.
2. Bag of input tokens: layer 0's Q/K/V kernels see `x(v, i) = LN(E[v] +
   P[i] + T[0])`. LayerNorm only centres and rescales a row, so the rows
   span `{sum a_v E'[v] + sum b_i P'[i]}` over the tokens and positions
   used, within each connected component of the graph whose edges are the
   (token, position) pairs; a vocabulary token is in the input iff its row
   at some position lies in the span of the stacked Q/K/V gradients (all
   30522 x `L` rows are tested at once). Exact while the rows are fewer
   than `d`. It hardly says WHICH position a token holds: tokens that
   share positions (as common words do across a batch) join one component,
   and every combination within a component lies in the span.
3. Rows `N` (total tokens of the batch): the rank of the gradient of layer
   0's attention-output kernel, whose inputs `z_r` (attention-weighted sums
   of values) differ from row to row. Exact while `N < d`.
4. (token, position) pairs: the FFN's hidden rows `gelu(W1 LN(x + a))` are
   a nonlinear function of the pair; with the attention output `a` set to
   its bias (no context) a true pair lies close to the span of the gradient
   of layer 0's FFN output kernel (`N`-dimensional in `f`), a false one
   does not. Approximate (the missing context): at random initialisation
   the two groups separate by a wide margin; the threshold is the widest gap
   of the sorted residuals. Lengths are the positions of the `[SEP]` pairs,
   plus one.
5. Sentences (`assemble`): for a length `n`, one candidate per position,
   such that every `z_r` of the sentence lies in the span of step 3. At
   near-uniform attention `z_r` is about the mean of the sentence's values,
   so `sum_i P_perp (beta_i * v_i) = 0` with `beta` the attention's column
   sums: a linear system in the relaxed choice weights (one simplex per
   position) over the leaked candidates, solved by least squares, rounded,
   its `beta` recomputed from the rounding and solved again. The rounded
   sentence is then verified EXACTLY by the span test on all its `z_r`
   (float noise, about 1e-5, against 1e-3 and more for any wrong token);
   if it fails, coordinate descent on that test over the candidates. Same-
   length sentences are found by excluding one token of a found sentence
   at a time. Sentences left unverified go to the relaxed batch
   optimisation (`dlg_jax.text.batch_relaxed`), whose results `descend`
   (the same coordinate descent, from a given sentence) may make exact.
6. Masked labels (`place_labels`): with the inputs known, the decoder-bias
   gradient gives each label's exact count, and the word-gradient row of a
   label `v` is `in_v + (1/M) sum_p (softmax_p[v] - [y_p = v]) h_p`; all
   but `in_v` (the input side, zero unless `v` also occurs in the input) is
   computed from a forward pass, so regressing on the `h_p` places each
   label; `in_v` is computed from the current placement and the solve
   repeated. Exact for labels absent from the input; alternating otherwise.

Everything runs on the host in numpy (float64 for the decompositions).

References:
  Petrov, Dimitrov, Baader, Mueller and Vechev, "DAGER: Exact Gradient
  Inversion for Large Language Models", NeurIPS 2024.
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize
import scipy.special

from dlg_jax.text import bert
from dlg_jax.text import leakage

Params = Any

# A rank is read at the widest gap of the singular values; a widest gap
# narrower than this means no gap: the span fills the space.
_MIN_GAP = 10.0
_STRUCTURAL = 1e-9
_NOISE = 1e-5
# Relative residual of an exact row: float32 noise is about 1e-5.
EXACT_TOL = 1e-3


class BatchLeak(NamedTuple):
  """What a batch gradient gives away directly (`analyse_batch_leak`).

  Attributes:
    length: `L`, the longest sentence's length.
    bag: `[u]` the input tokens (`[MASK]` among them).
    candidates: `L` arrays, the tokens that may sit at each position.
    lengths: the distinct sentence lengths, longest first.
    rows: `N`, the number of token rows of the batch (0: not identifiable).
    labels: `[l]` the masked tokens' ids (negative decoder-bias gradient).
    ranks: the ranks read: 'qkv' (layer 0 Q/K/V), 'attention_output' and
      'ffn' (layer 0), each 0 where the span filled the space.
    pair_threshold: the residual below which a pair was kept.
    attention_basis: `[d, N]` the span of layer 0's attention-output
      inputs (step 3), which `assemble` tests sentences against.
  """
  length: int
  bag: np.ndarray
  candidates: list[np.ndarray]
  lengths: np.ndarray
  rows: int
  labels: np.ndarray
  ranks: dict[str, int]
  pair_threshold: float
  attention_basis: np.ndarray


class Assembly(NamedTuple):
  """Sentences assembled from a `BatchLeak` (`assemble`).

  Attributes:
    inputs: the recovered model inputs (`[MASK]` kept), one `[n]` array per
      sentence found.
    exact: per sentence, whether its span test passed (`EXACT_TOL`).
    scores: per sentence, its span residual.
    history: per sentence, the sentence after each assembly iteration.
  """
  inputs: list[np.ndarray]
  exact: list[bool]
  scores: list[float]
  history: list[list[np.ndarray]]


# ---------------------------------------------------------------------------
# Layer 0 of BERT in numpy, as `dlg_jax.text.bert.BertMLM` computes it.

def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _layer_norm(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _gelu(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


class _Layer0:
  """Layer 0's inputs and intermediate rows for candidate tokens."""

  def __init__(self, config: bert.BertConfig, params: Params):
    self.config = config
    p = _np({k: params[k] for k in ('word_embeddings', 'position_embeddings',
                                    'token_type_embeddings',
                                    'embeddings_LayerNorm', 'layer_0')})
    self.word = p['word_embeddings']['embedding']
    self.pos = p['position_embeddings']['embedding']
    self.type0 = p['token_type_embeddings']['embedding'][0]
    self.ln0 = p['embeddings_LayerNorm']
    self.layer = p['layer_0']
    self.heads = config.num_attention_heads
    self.head_dim = config.hidden_size // self.heads

  def x(self, ids, positions):
    """`[..., d]` LN(E[v] + P[i] + T[0]), the rows layer 0 sees."""
    e = self.word[ids] + self.pos[positions] + self.type0
    return _layer_norm(e, self.ln0, self.config.layer_norm_eps)

  def dense(self, x, name):
    return x @ self.layer[name]['kernel'] + self.layer[name]['bias']

  def qkv(self, ids, positions):
    """Query, key and value rows, `[..., heads, head_dim]` each."""
    x = self.x(ids, positions)
    shape = x.shape[:-1] + (self.heads, self.head_dim)
    return tuple(self.dense(x, k).reshape(shape)
                 for k in ('query', 'key', 'value'))

  def hidden_without_context(self, ids, positions):
    """`[..., f]` FFN hidden rows with the attention output at its bias."""
    x = self.x(ids, positions)
    a = self.layer['attention_output']['bias']
    y = _layer_norm(x + a, self.layer['attention_LayerNorm'],
                    self.config.layer_norm_eps)
    return _gelu(self.dense(y, 'intermediate'))


def _attention(q, k, v):
  """`[..., n, d]` attention outputs (before the output dense) of rows."""
  scores = np.einsum('...qhe,...khe->...hqk', q, k) / math.sqrt(q.shape[-1])
  weights = scipy.special.softmax(scores, axis=-1)
  z = np.einsum('...hqk,...khe->...qhe', weights, v)
  return z.reshape(z.shape[:-2] + (-1,))


# ---------------------------------------------------------------------------
# Spans.

def span(kernel_grad: np.ndarray) -> tuple[np.ndarray, int]:
  """`(basis, rank)` of the column space of a `[in, out]` kernel gradient.

  The rank is read at the widest gap of the singular values down into the
  noise (float32 gradients put the null directions near 1e-8 of the
  largest, below `_NOISE`; far below, `_STRUCTURAL`, lie exact zeros of the
  layer, not noise); without a gap wider than `_MIN_GAP` the rows fill the
  space and the rank is 0 (not identifiable: every candidate would pass).

  Returns:
    `basis`: `[in, rank]` orthonormal, and the rank.
  """
  g = np.asarray(kernel_grad, np.float64)
  u, s, _ = np.linalg.svd(g, full_matrices=False)
  # Directions far below float32 noise are structural zeros of the layer
  # (not rows); a gap into them is not the rank's.
  s = s[s > _STRUCTURAL * s[0]] if s.size and s[0] > 0 else s[:0]
  if s.size < 2:
    return u[:, :s.size], s.size
  ratio = s[:-1] / s[1:]
  # The gap into the noise has noise below it: the gaps between groups of
  # rows (one group per sentence, at near-uniform attention) do not count.
  ratio[s[1:] > _NOISE * s[0]] = 0.0
  k = int(np.argmax(ratio))
  if ratio[k] < _MIN_GAP:
    return u[:, :0], 0
  return u[:, :k + 1], k + 1


def residual(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
  """`[...]` relative distance of each `[..., d]` row from `span(basis)`."""
  norm2 = np.sum(np.square(rows), axis=-1)
  inside = np.sum(np.square(rows @ basis), axis=-1)
  return np.sqrt(np.maximum(norm2 - inside, 0.0) / np.maximum(norm2, 1e-60))


def _qkv_kernels(grads):
  layer = grads['layer_0']
  return np.concatenate([np.asarray(layer[k]['kernel'], np.float64)
                         for k in ('query', 'key', 'value')], axis=1)


def _bag(layer0: _Layer0, basis: np.ndarray, length: int) -> np.ndarray:
  """Vocabulary tokens whose row at some position lies in the span (step 2).

  The relative residual of `x(v, i) = gamma * e'/sigma + beta` (`e'` the
  centred `E[v] + P[i] + T[0]`) for every token and position at once: with
  `P` the projection off the span, `|P x|^2` and `|x|^2` expand into
  per-token and per-position terms and `[V, L]` tables of dot products,
  so the cost is that of projecting the vocabulary once.

  Returns:
    `[u]` the token ids (sorted).
  """
  c = layer0.ln0
  gamma, beta = c['scale'], c['bias']
  word = layer0.word - layer0.word.mean(axis=1, keepdims=True)  # [V, d]
  pos = layer0.pos[:length] + layer0.type0
  pos = pos - pos.mean(axis=1, keepdims=True)  # [L, d]
  d = word.shape[1]

  def off(x):
    return x - (x @ basis) @ basis.T

  gw, gp = gamma * word, gamma * pos
  a_w_sq = np.sum(gw * gw, axis=1) - np.sum(np.square(gw @ basis), axis=1)
  b = off(gp)  # [L, d]
  cvec = off(beta)
  cross = gw @ b.T  # [V, L], a_v . b_i (P symmetric, idempotent)
  var = (np.sum(word * word, axis=1)[:, None]
         + np.sum(pos * pos, axis=1)[None, :]
         + 2.0 * word @ pos.T) / d + layer0.config.layer_norm_eps
  sigma = np.sqrt(var)
  res_sq = ((a_w_sq[:, None] + np.sum(b * b, axis=1)[None, :] + 2 * cross)
            / var
            + 2 * ((gw @ cvec)[:, None] + (b @ cvec)[None, :]) / sigma
            + cvec @ cvec)
  norm_sq = ((np.sum(gw * gw, axis=1)[:, None]
              + np.sum(gp * gp, axis=1)[None, :] + 2 * gw @ gp.T) / var
             + 2 * ((gw @ beta)[:, None] + (gp @ beta)[None, :]) / sigma
             + beta @ beta)
  res = np.sqrt(np.maximum(res_sq, 0.0) / norm_sq)
  return np.flatnonzero(np.any(res < EXACT_TOL, axis=1))


def _widest_gap(values: np.ndarray) -> float:
  """The threshold at the widest gap of sorted log `values`."""
  v = np.sort(np.log(np.maximum(values.ravel(), 1e-30)))
  if v.size < 2:
    return float(np.exp(v[0])) * 2 if v.size else 1.0
  k = int(np.argmax(np.diff(v)))
  return float(np.exp(0.5 * (v[k] + v[k + 1])))


def analyse_batch_leak(config: bert.BertConfig, params: Params,
                       grads: Params, *, cls_id: int, sep_id: int,
                       max_labels: int | None = None) -> BatchLeak:
  """Steps 1 to 4 of the module docstring: what the gradient gives away.

  Args:
    config: the model's shape.
    params: the model the client used.
    grads: the shared gradient (`dlg_jax.text.batch.batch_gradient`).
    cls_id: id of `[CLS]` (the only token at position 0).
    sep_id: id of `[SEP]` (each sentence's last).
    max_labels: at most this many labels (None: all negative entries).

  Returns:
    The `BatchLeak`.
  """
  length = leakage.leaked_length(grads)
  layer0 = _Layer0(config, params)
  qkv_basis, qkv_rank = span(_qkv_kernels(grads))
  ranks = {'qkv': qkv_rank}
  if qkv_rank:
    bag = _bag(layer0, qkv_basis, length)
  else:
    # Tokens and positions fill the space: the largest word rows instead.
    norms = np.linalg.norm(np.asarray(grads['word_embeddings']['embedding']),
                           axis=1)
    bag = np.sort(np.argsort(norms)[::-1][:4 * length])
  attention_basis, rows = span(grads['layer_0']['attention_output']['kernel'])
  ffn_basis, ffn_rank = span(grads['layer_0']['output']['kernel'])
  ranks.update(attention_output=rows, ffn=ffn_rank)

  if not rows:
    # N not identifiable (rows fill the space, or noise filled the null
    # directions): no pair, length or sentence can be read.
    return BatchLeak(length=length, bag=bag.astype(np.int32), candidates=[],
                     lengths=np.zeros(0, np.int64), rows=0,
                     labels=leakage.leaked_labels(grads, max_labels=max_labels),
                     ranks=ranks, pair_threshold=0.0,
                     attention_basis=attention_basis)
  pos = np.arange(length)
  if ffn_rank:
    res = residual(layer0.hidden_without_context(bag[:, None], pos[None, :]),
                   ffn_basis)  # [u, L]
  else:
    res = np.zeros((bag.size, length))
  # [CLS] only at 0, and only [CLS] at 0.
  is_cls = bag == cls_id
  res[is_cls, 1:] = np.inf
  res[~is_cls, 0] = np.inf
  finite = res[np.isfinite(res)]
  threshold = _widest_gap(finite) if ffn_rank else np.inf
  keep = res <= threshold
  candidates = []
  for i in range(length):
    kept = bag[keep[:, i]]
    if kept.size == 0:  # every position holds some token: take the closest
      kept = bag[[int(np.argmin(res[:, i]))]]
    candidates.append(kept)
  lengths = np.array(sorted({i + 1 for i in range(length)
                             if sep_id in candidates[i]} | {length}),
                     np.int64)[::-1]
  return BatchLeak(length=length, bag=bag.astype(np.int32),
                   candidates=candidates, lengths=lengths, rows=rows,
                   labels=leakage.leaked_labels(grads, max_labels=max_labels),
                   ranks=ranks, pair_threshold=float(threshold),
                   attention_basis=attention_basis)


def pair_residuals(config: bert.BertConfig, params: Params, grads: Params,
                   tokens: np.ndarray, length: int) -> np.ndarray:
  """Step 4's test of `tokens` at every position below `length`.

  Returns:
    `[len(tokens), length]` the relative distance of each pair's FFN hidden
    row (attention output at its bias) from the span of the gradient of
    layer 0's FFN output kernel; zeros where that span fills the space.
  """
  basis, rank = span(grads['layer_0']['output']['kernel'])
  tokens = np.asarray(tokens)
  if not rank:
    return np.zeros((tokens.size, length))
  return residual(_Layer0(config, params).hidden_without_context(
      tokens[:, None], np.arange(length)[None, :]), basis)


# ---------------------------------------------------------------------------
# Assembly (step 5).

def sentence_residual(config: bert.BertConfig, params: Params,
                      grads: Params, ids: np.ndarray) -> float:
  """The span test of one candidate model input `ids` `[n]` (step 5).

  The mean relative distance of its attention outputs `z_r` in layer 0
  from the span of the attention-output kernel's gradient: float noise
  (below `EXACT_TOL`) iff it is one of the batch's inputs, generically.
  """
  layer0 = _Layer0(config, params)
  basis, _ = span(grads['layer_0']['attention_output']['kernel'])
  ids = np.asarray(ids)
  z = _attention(*layer0.qkv(ids, np.arange(ids.size)))
  return float(residual(z, basis).mean())


class _Slots(NamedTuple):
  """A length's candidate table: `[n, K]` ids and their q, k, v rows."""
  ids: np.ndarray
  valid: np.ndarray
  q: np.ndarray
  k: np.ndarray
  v: np.ndarray


def _slots(layer0: _Layer0, options: list[np.ndarray]) -> _Slots:
  n, width = len(options), max(o.size for o in options)
  ids = np.stack([np.concatenate([o, np.full(width - o.size, o[0])])
                  for o in options])
  valid = np.arange(width)[None, :] < np.array([o.size for o in options])[:,
                                                                          None]
  q, k, v = layer0.qkv(ids, np.arange(n)[:, None])
  return _Slots(ids, valid, q, k, v)


def _pick(table: np.ndarray, choice: np.ndarray) -> np.ndarray:
  """Rows `table[i, choice[..., i]]`: `[..., n, ...]`."""
  return table[np.arange(table.shape[0]), choice]


def _score(slots: _Slots, choices: np.ndarray, basis: np.ndarray
           ) -> np.ndarray:
  """`[...]` mean span residual of the `z_r` of each sentence `choices`."""
  z = _attention(_pick(slots.q, choices), _pick(slots.k, choices),
                 _pick(slots.v, choices))
  return residual(z, basis).mean(axis=-1)


def _relaxed_solve(slots: _Slots, choice: np.ndarray,
                   basis: np.ndarray, allowed: np.ndarray
                   ) -> np.ndarray:
  """One relaxed least-squares solve around the sentence `choice`.

  The `z_r` of a sentence sum, over its rows, to `sum_c beta_c v_c` with
  `beta_c` the attention's column sum for candidate `c` (per head), taken
  with the queries of `choice` (the normaliser with `c` in place of
  `choice`'s token at `c`'s position); every `z_r` lies in the span, so
  `P_perp` of that sum is 0: linear in one-hot choice weights `w`, relaxed
  to real weights that sum to 1 per position. The equations are `d`, of
  rank `d - N`, against `n x K` unknowns: the solve pins the sentence down
  while `d - N` is large against them.

  Returns:
    `[n, K]` the weights (-inf where not `allowed`).
  """
  n, width = slots.ids.shape
  q, k = _pick(slots.q, choice), _pick(slots.k, choice)
  scale = 1.0 / math.sqrt(q.shape[-1])
  cur = np.einsum('qhe,khe->hqk', q, k) * scale  # [h, n, n]
  cand = np.einsum('qhe,ikhe->ikhq', q, slots.k) * scale  # [n, K, h, n]
  top = np.maximum(cur.max(axis=2), cand.max(axis=(0, 1)))  # [h, n]
  e_cur = np.exp(cur - top[:, :, None])
  e_cand = np.exp(cand - top[None, None])
  total = e_cur.sum(axis=2)  # [h, n]
  own = np.transpose(e_cur, (2, 0, 1))  # [n(key i), h, n(query)]
  beta = (e_cand / (total[None, None] - own[:, None] + e_cand)).sum(-1)
  vectors = (beta[..., None] * slots.v).reshape(n, width, -1)
  vectors = vectors - (vectors @ basis) @ basis.T  # P_perp
  columns = np.flatnonzero(allowed.ravel())
  a_span = vectors.reshape(n * width, -1)[columns].T
  weight = 10.0 * np.linalg.norm(a_span) / math.sqrt(max(columns.size, 1))
  a_sum = np.zeros((n, columns.size))
  a_sum[columns // width, np.arange(columns.size)] = weight
  a = np.concatenate([a_span, a_sum])
  b = np.concatenate([np.zeros(a_span.shape[0]), np.full(n, weight)])
  w = np.full(n * width, -np.inf)
  w[columns] = np.linalg.lstsq(a, b, rcond=None)[0]
  return w.reshape(n, width)


def _descend(slots: _Slots, choice: np.ndarray, basis: np.ndarray,
             allowed: np.ndarray, sweeps: int
             ) -> tuple[np.ndarray, list[np.ndarray]]:
  """Coordinate descent on the exact span test, position by position."""
  n, width = slots.ids.shape
  history = []
  for _ in range(sweeps):
    changed = False
    for i in range(n):
      options = np.flatnonzero(allowed[i])
      if options.size < 2:
        continue
      trial = np.repeat(choice[None], options.size, axis=0)
      trial[:, i] = options
      best = options[int(np.argmin(_score(slots, trial, basis)))]
      if best != choice[i]:
        choice = choice.copy()
        choice[i] = best
        changed = True
    history.append(choice.copy())
    if not changed or _score(slots, choice, basis) < EXACT_TOL:
      break
  return choice, history


def _solve_length(slots: _Slots, basis: np.ndarray, allowed: np.ndarray,
                  start: np.ndarray, *, reweights: int, sweeps: int
                  ) -> tuple[np.ndarray, float, list[np.ndarray]]:
  """A sentence of this length: relaxed solves, rounding, then descent."""
  choice, history = start.copy(), []
  for _ in range(reweights):
    w = _relaxed_solve(slots, choice, basis, allowed)
    new = np.argmax(w, axis=1)
    history.append(new)
    if np.array_equal(new, choice) and len(history) > 1:
      break
    choice = new
  score = float(_score(slots, choice, basis))
  if score >= EXACT_TOL and sweeps:
    choice, more = _descend(slots, choice, basis, allowed, sweeps)
    history += more
    score = float(_score(slots, choice, basis))
  return choice, score, history


def descend(config: bert.BertConfig, params: Params, grads: Params,
            ids: np.ndarray, options: list[np.ndarray], *, sweeps: int = 2
            ) -> tuple[np.ndarray, float]:
  """Coordinate descent on the exact span test from the sentence `ids`.

  Position by position, the token of `options[i]` (which must hold
  `ids[i]`) of least span residual (`sentence_residual`) replaces
  `ids[i]`, for at most `sweeps` sweeps or until the test passes.

  Returns:
    `(ids, residual)`: the sentence `[n]` and its span residual.
  """
  layer0 = _Layer0(config, params)
  basis, _ = span(grads['layer_0']['attention_output']['kernel'])
  slots = _slots(layer0, [np.asarray(o) for o in options])
  ids = np.asarray(ids)
  choice = np.array([int(np.flatnonzero(slots.ids[i] == t)[0])
                     for i, t in enumerate(ids)])
  if _score(slots, choice, basis) >= EXACT_TOL:
    choice, _ = _descend(slots, choice, basis, slots.valid, sweeps)
  return (slots.ids[np.arange(ids.size), choice],
          float(_score(slots, choice, basis)))


def assemble(config: bert.BertConfig, params: Params, leak: BatchLeak, *,
             batch_size: int, cls_id: int, sep_id: int,
             reweights: int = 4, sweeps: int = 1) -> Assembly:
  """Step 5 of the module docstring: the leaked pairs into sentences.

  Args:
    config: the model's shape.
    params: the model the client used.
    leak: from `analyse_batch_leak`.
    batch_size: `B`, the number of sentences (known to the server).
    cls_id: id of `[CLS]`.
    sep_id: id of `[SEP]`.
    reweights: relaxed solves per sentence (each recomputes the attention
      weights from the previous rounding).
    sweeps: coordinate-descent sweeps when the rounding is not exact.

  Returns:
    The `Assembly`: at most `batch_size` sentences, longest first.
  """
  layer0 = _Layer0(config, params)
  basis = leak.attention_basis
  inputs, exact, scores, histories = [], [], [], []
  if not leak.rows:
    return Assembly(inputs, exact, scores, histories)

  def add(ids, score, history):
    inputs.append(ids)
    exact.append(score < EXACT_TOL)
    scores.append(score)
    histories.append(history)

  per_length = {}
  for n in leak.lengths:
    n = int(n)
    options = ([np.array([cls_id])]
               + [c[(c != sep_id) & (c != cls_id)] for c in
                  leak.candidates[1:n - 1]]
               + [np.array([sep_id])])
    options = [o if o.size else np.array([sep_id]) for o in options]
    per_length[n] = _slots(layer0, options)

  # One sentence per length first, then more of a length while B allows.
  found = {n: [] for n in per_length}
  for n, slots in per_length.items():
    if len(inputs) == batch_size:
      break
    start = np.zeros(n, np.int64)
    choice, score, history = _solve_length(
        slots, basis, slots.valid, start, reweights=reweights,
        sweeps=sweeps)
    if score < EXACT_TOL:
      found[n].append(choice)
    add(slots.ids[np.arange(n), choice], score,
        [slots.ids[np.arange(n), h] for h in history])

  # More sentences of a length: exclude a found sentence's token at one
  # position at a time. The rows left, N minus the lengths found, say which
  # lengths can still occur (the one length, when one sentence is left).
  for n, slots in per_length.items():
    i = 0
    while len(inputs) < batch_size and i < n and found[n]:
      left = leak.rows - sum(x.size for x in inputs)
      need = batch_size - len(inputs)
      if leak.rows and (n > left - 3 * (need - 1)
                        or (need == 1 and n != left)):
        break
      allowed = slots.valid.copy()
      if allowed[i].sum() > 1:
        for f in found[n]:
          allowed[i, f[i]] = False
        start = found[n][-1].copy()
        start[i] = int(np.flatnonzero(allowed[i])[0])
        choice, score, history = _solve_length(
            slots, basis, allowed, start, reweights=reweights, sweeps=0)
        if score < EXACT_TOL and not any(np.array_equal(choice, f)
                                         for f in found[n]):
          found[n].append(choice)
          add(slots.ids[np.arange(n), choice], score,
              [slots.ids[np.arange(n), h] for h in history])
          i = 0
          continue
      i += 1
  return Assembly(inputs, exact, scores, histories)


# ---------------------------------------------------------------------------
# Labels (step 6).

def _mlm_forward(config, params, inputs, valid):
  """`(h, softmax)` of the head at every position: `[B, L, d]`, `[B, L, V]`."""
  def one(ids, ok):
    _, state = bert.BertMLM(config).apply(
        {'params': params}, ids=ids, valid=ok,
        capture_intermediates=lambda m, _: m.name == 'transform_LayerNorm',
        mutable=['intermediates'])
    return state['intermediates']['transform_LayerNorm']['__call__'][0]
  h = jax.vmap(one)(inputs, valid)
  logits = (h @ params['word_embeddings']['embedding'].T
            + params['decoder_bias'][None, None, :])
  return h, jax.nn.softmax(logits, axis=-1)


_forward = jax.jit(_mlm_forward, static_argnums=0)


def _input_side(config, params, inputs, valid, labels, masked):
  """`[V, d]` the word-embedding gradient through the inputs only."""
  table = params['word_embeddings']['embedding']

  def loss(embeds):
    def one(e, ok):
      return bert.apply(config, params, embeds=e, valid=ok)
    logits = jax.vmap(one)(embeds, valid)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    w = masked.astype(jnp.float32)
    return -jnp.sum(picked * w) / jnp.maximum(jnp.sum(w), 1.0)

  g = jax.grad(loss)(table[inputs])
  return jnp.zeros_like(table).at[inputs].add(
      jnp.where(valid[..., None], g, 0.0))


_input_side_jit = jax.jit(_input_side, static_argnums=0)


def place_labels(config: bert.BertConfig, params: Params, grads: Params,
                 inputs: list[np.ndarray], *, mask_id: int, pad_id: int = 0,
                 rounds: int = 3, bucket: int = 8) -> list[np.ndarray]:
  """Step 6 of the module docstring: the masked tokens put back in place.

  Args:
    config: the model's shape.
    params: the model the client used.
    grads: the shared gradient.
    inputs: the assembled model inputs, `[MASK]` at masked positions.
    mask_id: id of `[MASK]`.
    pad_id: id of `[PAD]`.
    rounds: solves; each after the first recomputes the input side.
    bucket: the batch is padded to a multiple of this length.

  Returns:
    The sentences with every `[MASK]` replaced by its label.
  """
  if not inputs:
    return []
  # A bucketed length, so that batches share the forward's compilation.
  length = min(-(-max(x.size for x in inputs) // bucket) * bucket,
               config.max_position_embeddings)
  padded = np.stack([np.concatenate([x, np.full(length - x.size, pad_id)])
                     for x in inputs]).astype(np.int32)
  valid = np.arange(length)[None, :] < np.array([x.size for x in inputs])[
      :, None]
  masked = (padded == mask_id) & valid
  where = np.argwhere(masked)
  m = len(where)
  if m == 0:
    return [x.copy() for x in inputs]
  h, probs = map(np.asarray, _forward(config, params, jnp.asarray(padded),
                                      jnp.asarray(valid)))
  h = h[masked].astype(np.float64)  # [M, d]
  probs = probs[masked].astype(np.float64)  # [M, V]
  bias = np.asarray(grads['decoder_bias'], np.float64)
  word = np.asarray(grads['word_embeddings']['embedding'], np.float64)
  counts = np.rint(probs.sum(axis=0) - m * bias).astype(np.int64)
  labels = np.flatnonzero(counts > 0)
  if counts[labels].sum() != m:
    # Counts off (a wrong assembly): keep the most negative entries.
    labels = np.sort(np.argsort(bias)[:m])
    counts = np.zeros_like(counts)
    counts[labels] = 1
  input_side = np.zeros((labels.size, word.shape[1]))
  slots = np.repeat(labels, counts[labels])
  assignment = None
  for _ in range(rounds):
    target = (probs[:, labels].T @ h) - m * (word[labels] - input_side)
    coef = np.linalg.lstsq(h.T, target.T, rcond=None)[0]  # [M, l]
    cost = -coef[:, np.searchsorted(labels, slots)]  # [M, slots]
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    new = np.empty(m, np.int64)
    new[rows] = slots[cols]
    if assignment is not None and np.array_equal(new, assignment):
      break
    assignment = new
    filled = padded.copy()
    filled[masked] = assignment
    side = np.asarray(_input_side_jit(
        config, params, jnp.asarray(padded), jnp.asarray(valid),
        jnp.asarray(filled), jnp.asarray(masked)), np.float64)
    input_side = side[labels]
  filled = padded.copy()
  filled[masked] = assignment
  return [filled[b, :x.size] for b, x in enumerate(inputs)]


def recover_inputs(config: bert.BertConfig, params: Params, grads: Params, *,
                   batch_size: int, cls_id: int, sep_id: int, mask_id: int,
                   max_labels: int | None = None,
                   callback: Callable[[str], None] | None = None
                   ) -> tuple[BatchLeak, Assembly, list[np.ndarray]]:
  """Steps 1 to 6: `(leak, assembly, sentences)` from a batch gradient."""
  leak = analyse_batch_leak(config, params, grads, cls_id=cls_id,
                            sep_id=sep_id, max_labels=max_labels)
  if callback:
    callback(f'leak: L={leak.length}, bag of {leak.bag.size} tokens, '
             f'N={leak.rows} rows, lengths {leak.lengths.tolist()}, '
             f'ranks {leak.ranks}')
  assembly = assemble(config, params, leak, batch_size=batch_size,
                      cls_id=cls_id, sep_id=sep_id)
  sentences = place_labels(config, params, grads, assembly.inputs,
                           mask_id=mask_id)
  return leak, assembly, sentences
