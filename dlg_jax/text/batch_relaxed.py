"""Relaxed DLG over a whole batch, restricted to what the spans leak.

The fallback of the batch attack (`dlg_jax.text.spans`) for the sentences
its assembly could not verify exactly (on a trained model, where the pair
test and the assembly's near-uniform attention fail; or where the assembly's
least squares is underdetermined). The dummy batch has the `B` sentences'
shapes: the lengths of the exact sentences, the others read from the leak
(`batch_lengths`: `N` and `L` are exact, the rest is a guess unless the
pairs are complete); `[CLS]` and `[SEP]` fixed, padding behind the attention
mask as the client's (`dlg_jax.text.batch`). Each other position of a
sentence that is not exact is a softmax over candidate tokens, the leaked
bag (`[MASK]` among them) or, where the leaked (token, position) pairs are
complete (`pairs_complete`), the position's candidates, whose word
embeddings it mixes, as `dlg_jax.text.relaxed` does for one sentence; the
exact sentences are held fixed (one-hot). Every position predicts a softmax
over the leaked labels, weighted by its probability of being `[MASK]`, and
the loss is the mean over the batch, as the client's. Adam minimises the
gradient distance (`dlg_jax.core.objectives`) between the dummy batch's
gradient and the shared one, differentiating through the dummy's gradient,
plus `span_weight` times `span_penalty`: how far the dummy's rows lie from
the spans of the gradient (layer 0's attention outputs, every later layer's
inputs), which are exact and tie a sentence's tokens together where the
gradient distance hardly does.

The logits start at the assembly's guesses (`init_scale` on each guessed
token; a sentence without a guess on candidates dealt out at random), so the
optimisation starts where the exact method left off. The end decodes each
position by argmax (`decode`: a sentence's `[MASK]`s where their
probability is highest, as many as the client's masking rate gives), keeps
a coordinate descent on the exact span test (`spans.descend`) only where it
makes a sentence pass, places the labels exactly (`spans.place_labels`) and
re-runs the exact span test (`spans.sentence_residual`), so that a sentence
is only called exact when its span test passes.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, alg. 1.
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022 (batches, the
  relaxation over the vocabulary).
  Petrov, Dimitrov, Baader, Mueller and Vechev, "DAGER: Exact Gradient
  Inversion for Large Language Models", NeurIPS 2024.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from dlg_jax.core import objectives
from dlg_jax.core import runner
from dlg_jax.text import bert
from dlg_jax.text import spans

Params = Any

CANDIDATES = ('auto', 'bag', 'positions')


class AttackState(NamedTuple):
  """What the optimiser updates: token and label logits, and its state."""
  token_logits: jax.Array  # [B, L', k'] over the (padded) candidates
  label_logits: jax.Array  # [B, L', l'] over the (padded) leaked labels
  opt_state: Any


class Problem(NamedTuple):
  """The fallback's fixed inputs, padded to bucket sizes (`fallback`).

  Attributes:
    params: the model the client used.
    target: the shared gradient.
    tokens: `[k']` candidate input token ids.
    token_bias: `[L', k']` 0 where a candidate may sit at a position, -1e9
      elsewhere (and for padding candidates).
    labels: `[l']` candidate label ids.
    label_bias: `[l']` 0, or -1e9 for padding candidates.
    fixed: `[B, L']` the token of each position that is not relaxed.
    free: `[B, L']` bool, True where the position is relaxed.
    valid: `[B, L']` bool, False at padding.
    mask_counts: `[B]` each relaxed sentence's number of `[MASK]`s for the
      decoding (-1: plain argmax).
    mask_id: `()` the id of `[MASK]`.
    mask_index: `()` index of `[MASK]` in `tokens`.
    off_span: `[S, d, d]` projections off the spans that the batch's rows
      lie in (`span_projections`), zero for a span not read.
  """
  params: Params
  target: Params
  tokens: jax.Array
  token_bias: jax.Array
  labels: jax.Array
  label_bias: jax.Array
  fixed: jax.Array
  free: jax.Array
  valid: jax.Array
  mask_counts: jax.Array
  mask_id: jax.Array
  mask_index: jax.Array
  off_span: jax.Array


class FallbackResult(NamedTuple):
  """Output of `fallback`: `B` sentences, the held ones first.

  Attributes:
    inputs: per sentence, `[n]` the model input (`[MASK]` kept).
    sentences: per sentence, `[n]` the inputs with the labels placed.
    exact: per sentence, whether its span test passed.
    scores: per sentence, its span residual.
    fixed: per sentence, whether it was held fixed (exact from the assembly).
    source: per sentence, the assembly sentence it started from (-1: none).
    steps: `[c + 1]` Adam step of each snapshot, 0 first.
    history: per sentence, `[c + 1, n]` the sentence (soft labels at their
      argmax) at each snapshot.
    losses: `[c + 1]` the objective (gradient distance plus the weighted
      span penalty) at each snapshot.
  """
  inputs: list[np.ndarray]
  sentences: list[np.ndarray]
  exact: list[bool]
  scores: list[float]
  fixed: list[bool]
  source: list[int]
  steps: np.ndarray
  history: list[np.ndarray]
  losses: np.ndarray


def dummy_loss(config: bert.BertConfig, params: Params, problem: Problem,
               token_logits: ArrayLike, label_logits: ArrayLike
               ) -> jax.Array:
  """The masked-LM loss of the relaxed dummy batch, a function of `params`.

  A free position `(b, i)` feeds `softmax(token_logits[b, i] +
  token_bias[i]) @ E[tokens]` (`E` the word embeddings taken from
  `params`, so that the dummy's gradient has the client's input-side word
  rows), a fixed one `E[fixed[b, i]]`; each predicts the soft label
  `softmax(label_logits[b, i])` over `labels`, weighted by its probability
  of being `[MASK]` (0 or 1 where fixed), and the loss is the weighted mean
  over the batch (`dlg_jax.text.batch.batch_loss` for one-hot choices).

  Args:
    config: the model's shape.
    params: the model's parameters.
    problem: from `make_problem` (its `params` and `target` unused).
    token_logits: `[B, L', k']`.
    label_logits: `[B, L', l']`.

  Returns:
    A scalar.
  """
  p = problem
  table = bert.word_embeddings(params)
  probs = jax.nn.softmax(token_logits + p.token_bias[None], axis=-1)
  soft = probs @ table[p.tokens]
  embeds = jnp.where(p.free[..., None], soft, table[p.fixed])
  logits = jax.vmap(lambda e, v: bert.apply(config, params, embeds=e,
                                            valid=v))(embeds, p.valid)
  log_probs = jax.nn.log_softmax(logits, axis=-1)[..., p.labels]
  q = jax.nn.softmax(label_logits + p.label_bias[None, None, :], axis=-1)
  ce = -jnp.sum(q * log_probs, axis=-1)  # [B, L']
  weights = jnp.where(p.free, probs[..., p.mask_index],
                      (p.fixed == p.mask_id).astype(probs.dtype))
  weights = jnp.where(p.valid, weights, 0.0)
  return jnp.sum(weights * ce) / (jnp.sum(weights) + 1e-12)


def span_projections(config: bert.BertConfig, grads: Params) -> np.ndarray:
  """`[S, d, d]` projections off the spans of the batch's rows, per layer.

  Span 0 holds layer 0's attention outputs `z_r` (the input of its
  attention-output dense); span `l >= 1` the inputs of layer `l` (its
  stacked query, key and value kernels' gradient). Each is exact while the
  rows are fewer than `d` (`spans.span`); one that fills the space is 0.
  """
  kernels = [grads['layer_0']['attention_output']['kernel']] + [
      np.concatenate([np.asarray(grads[f'layer_{l}'][k]['kernel'])
                      for k in ('query', 'key', 'value')], axis=1)
      for l in range(1, config.num_hidden_layers)]
  out = np.zeros((len(kernels), config.hidden_size, config.hidden_size),
                 np.float32)
  for j, kernel in enumerate(kernels):
    basis, rank = spans.span(kernel)
    if rank:
      out[j] = np.eye(config.hidden_size) - basis @ basis.T
  return out


def _rows(config: bert.BertConfig, params: Params, embeds: jax.Array,
          valid: jax.Array) -> jax.Array:
  """`[S, n, d]` one sentence's rows in the spans of `span_projections`."""
  names = {'embeddings_LayerNorm'} | {
      f'layer_{l}' for l in range(config.num_hidden_layers - 1)}
  _, state = bert.BertMLM(config).apply(
      {'params': params}, embeds=embeds, valid=valid,
      capture_intermediates=lambda m, _: m.name in names,
      mutable=['intermediates'])
  caught = state['intermediates']
  x = caught['embeddings_LayerNorm']['__call__'][0]
  layer = params['layer_0']
  heads = config.num_attention_heads

  def split(name):
    y = x @ layer[name]['kernel'] + layer[name]['bias'][None, :]
    return y.reshape(y.shape[0], heads, -1)

  q, k, v = split('query'), split('key'), split('value')
  scores = jnp.einsum('qhd,khd->hqk', q, k) / jnp.sqrt(q.shape[-1])
  scores = jnp.where(valid[None, None, :], scores, -1e9)
  z = jnp.einsum('hqk,khd->qhd', jax.nn.softmax(scores, axis=-1), v)
  return jnp.stack([z.reshape(z.shape[0], -1)] + [
      caught[f'layer_{l}']['__call__'][0]
      for l in range(config.num_hidden_layers - 1)])


def span_penalty(config: bert.BertConfig, params: Params, problem: Problem,
                 token_logits: ArrayLike) -> jax.Array:
  """Mean squared relative distance of the dummy's rows from the spans.

  Zero for the client's batch: each of its rows lies in the span of its
  layer's gradient (`spans`); a relaxed dummy's rows generally do not. It
  ties the tokens of a sentence together as the gradient distance alone
  hardly does (the span test of `spans.assemble`, made differentiable and
  carried to every layer).
  """
  p = problem
  table = bert.word_embeddings(params)
  probs = jax.nn.softmax(token_logits + p.token_bias[None], axis=-1)
  embeds = jnp.where(p.free[..., None], probs @ table[p.tokens],
                     table[p.fixed])
  rows = jax.vmap(lambda e, v: _rows(config, params, e, v))(
      embeds, p.valid)  # [B, S, L', d]
  off = jnp.einsum('bsld,sed->bsle', rows, p.off_span)
  ratio = (jnp.sum(jnp.square(off), -1)
           / (jnp.sum(jnp.square(rows), -1) + 1e-12))  # [B, S, L']
  used = jnp.any(p.off_span != 0, axis=(1, 2))  # [S]
  w = p.valid[:, None, :] & used[None, :, None]
  return jnp.sum(jnp.where(w, ratio, 0.0)) / jnp.maximum(jnp.sum(w), 1)


def _objective(config, distance, span_weight, problem, token_logits,
               label_logits):
  """The gradient distance to the target, plus the span penalty."""
  dummy_grads = jax.grad(dummy_loss, argnums=1)(
      config, problem.params, problem, token_logits, label_logits)
  value = objectives.get_distance(distance)(dummy_grads, problem.target)
  if span_weight:
    value = value + span_weight * span_penalty(config, problem.params,
                                               problem, token_logits)
  return value


def _run_chunk(state: AttackState, problem: Problem, *,
               config: bert.BertConfig, distance: str, span_weight: float,
               learning_rate: float, log_every: int) -> AttackState:
  """`log_every` Adam steps on the gradient distance, in one `lax.scan`."""
  opt = optax.adam(learning_rate)

  def step(state, _):
    variables = (state.token_logits, state.label_logits)
    grads = jax.grad(lambda v: _objective(config, distance, span_weight,
                                          problem, *v))(variables)
    updates, opt_state = opt.update(grads, state.opt_state, variables)
    return AttackState(*optax.apply_updates(variables, updates),
                       opt_state), None

  return jax.lax.scan(step, state, length=log_every)[0]


def decode(problem: Problem, token_logits: ArrayLike) -> jax.Array:
  """`[B, L']` the dummy batch's tokens: fixed ones, then each relaxed one.

  A relaxed sentence takes `[MASK]` at its `mask_counts` positions of
  highest `[MASK]` probability and its best other candidate elsewhere
  (plain argmax where the count is -1).
  """
  p = problem
  logits = token_logits + p.token_bias[None]
  is_mask = jnp.arange(p.tokens.size) == p.mask_index
  plain = p.tokens[jnp.argmax(logits, axis=-1)]
  other = p.tokens[jnp.argmax(jnp.where(is_mask[None, None, :], -jnp.inf,
                                          logits), axis=-1)]
  score = jnp.where(p.free, jax.nn.log_softmax(logits)[..., p.mask_index],
                    -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-score, axis=1), axis=1)
  counted = jnp.where(rank < p.mask_counts[:, None], p.mask_id, other)
  chosen = jnp.where(p.mask_counts[:, None] < 0, plain, counted)
  return jnp.where(p.free, chosen, p.fixed)


def _snapshot(state: AttackState, problem: Problem, *,
              config: bert.BertConfig, distance: str, span_weight: float):
  """`(inputs, filled, objective)`: the decoded batch and the loss now."""
  p = problem
  value = _objective(config, distance, span_weight, p, state.token_logits,
                     state.label_logits)
  inputs = decode(p, state.token_logits)
  labels = p.labels[jnp.argmax(
      state.label_logits + p.label_bias[None, None, :], axis=-1)]
  return inputs, jnp.where(inputs == p.mask_id, labels, inputs), value


def _bucket(size: int, multiple: int) -> int:
  return -(-size // multiple) * multiple


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([x, np.full(size - x.size, x[0] if x.size else 0,
                                    x.dtype)])


def pairs_complete(leak: spans.BatchLeak, *, cls_id: int, sep_id: int
                   ) -> bool:
  """Whether every leaked token has a position among the leaked pairs.

  Each token of the bag (which is exact) sits somewhere; a token no
  position kept means the pair test (step 4 of `spans`) dropped true pairs,
  as on a trained model, so its candidates and lengths are not to be
  trusted.
  """
  if not leak.candidates:
    return False
  placed = np.concatenate([np.asarray(c) for c in leak.candidates])
  bag = np.asarray(leak.bag)
  bag = bag[(bag != cls_id) & (bag != sep_id)]
  return bool(np.all(np.isin(bag, placed)))


def batch_lengths(config: bert.BertConfig, params: Params, grads: Params,
                  leak: spans.BatchLeak, fixed: list[int], *,
                  batch_size: int, sep_id: int, trusted: bool) -> list[int]:
  """The lengths of the sentences not held fixed.

  The longest length `L` and the rows `N` are exact (`spans`), so the
  other lengths sum to `N` minus the fixed ones. With `trusted` pairs
  (`pairs_complete`) each length of `leak.lengths` occurs, and the rest are
  taken among them; otherwise the pair test of `[SEP]`
  (`spans.pair_residuals`) weighs every length: the multiset of least
  summed log residual of `[SEP]` at the last position. Ties go to lengths
  near the mean. With `B = 2` and one sentence fixed, or `N` used up, the
  lengths are exact.

  Args:
    config: the model's shape.
    params: the model the client used.
    grads: the shared gradient.
    leak: from `spans.analyse_batch_leak`.
    fixed: the lengths of the sentences held fixed.
    batch_size: `B`.
    sep_id: id of `[SEP]`.
    trusted: whether `leak.lengths` are all true lengths.

  Returns:
    `batch_size - len(fixed)` lengths, longest first; empty where `N` is
    not identifiable or no lengths fit it.
  """
  need = batch_size - len(fixed)
  rows = leak.rows - sum(fixed)
  top = leak.length
  if need <= 0 or not leak.rows:
    return []
  chosen = [top] if top not in fixed else []
  if trusted:
    must = [int(n) for n in leak.lengths if n not in fixed]
    if len(must) <= need and sum(must) + 3 * (need - len(must)) <= rows:
      chosen = must
    else:  # the leaked lengths contradict N
      trusted = False
  need, rows = need - len(chosen), rows - sum(chosen)
  if need == 0 or not 3 * need <= rows <= top * need:
    return sorted(chosen, reverse=True) if need == 0 and rows == 0 else []
  if need == 1:
    return sorted(chosen + [rows], reverse=True)
  mean = rows / need
  prior = 1e-3 * ((np.arange(1, top + 1) - mean) / top) ** 2
  rest = None
  if trusted:
    cost = np.full(top, np.inf)
    cost[np.asarray(leak.lengths) - 1] = 1.0
    rest = _cheapest_lengths(cost + prior, need, rows)
  if rest is None:
    cost = np.log(np.maximum(spans.pair_residuals(
        config, params, grads, np.array([sep_id]), top)[0], 1e-30))
    cost[:2] = np.inf  # a sentence holds [CLS], a token and [SEP]
    rest = _cheapest_lengths(cost - cost[2:].min() + 1.0 + prior, need, rows)
  return [] if rest is None else sorted(chosen + rest, reverse=True)


def _cheapest_lengths(cost: np.ndarray, count: int, total: int
                      ) -> list[int] | None:
  """`count` lengths summing to `total` of least summed `cost[n - 1]`.

  A knapsack over multisets: `best[c, s]` is the least cost of `c` lengths
  summing to `s`, `last[c, s]` the length added last. None: no such set.
  """
  best = np.full((count + 1, total + 1), np.inf)
  best[0, 0] = 0.0
  last = np.zeros(best.shape, np.int64)
  usable = [n for n in range(1, cost.size + 1)
            if n <= total and np.isfinite(cost[n - 1])]
  for c in range(1, count + 1):
    for n in usable:
      trial = best[c - 1, :total + 1 - n] + cost[n - 1]
      better = trial < best[c, n:]
      best[c, n:][better] = trial[better]
      last[c, n:][better] = n
  if not np.isfinite(best[count, total]):
    return None
  out, s = [], total
  for c in range(count, 0, -1):
    out.append(int(last[c, s]))
    s -= out[-1]
  return out


def make_problem(config: bert.BertConfig, params: Params, target: Params,
                 leak: spans.BatchLeak, inputs: list[np.ndarray],
                 free: list[bool], *, cls_id: int, sep_id: int, mask_id: int,
                 pad_id: int = 0, positions: bool = False,
                 mask_rate: float | None = None, bucket: int = 8) -> Problem:
  """The `Problem` of the dummy batch `inputs` (`free` ones relaxed).

  Args:
    config: the model's shape.
    params: the model the client used.
    target: the shared gradient.
    leak: from `spans.analyse_batch_leak`.
    inputs: per sentence, `[n]` ids (the start of a free one; its interior
      tokens are relaxed, its `[CLS]` and `[SEP]` kept).
    free: per sentence, whether it is relaxed.
    cls_id: id of `[CLS]`.
    sep_id: id of `[SEP]`.
    mask_id: id of `[MASK]`.
    pad_id: id of `[PAD]`.
    positions: whether each position takes only its leaked candidates
      (else every token of the bag).
    mask_rate: the client's masking rate, which fixes each sentence's
      number of `[MASK]`s (`dlg_jax.text.client.mask_tokens`) for the
      decoding; None decodes by plain argmax.
    bucket: padding multiple for the length and the candidate lists.

  Returns:
    The `Problem`.
  """
  bag = np.asarray(leak.bag)
  tokens = bag[(bag != cls_id) & (bag != sep_id)]
  if mask_id not in tokens:
    tokens = np.append(tokens, mask_id)
  tokens = np.sort(tokens).astype(np.int32)
  longest = max(x.size for x in inputs)
  length = min(_bucket(longest, bucket), config.max_position_embeddings)
  # Candidates are cheap to pad: a coarse bucket spares compilations.
  k_pad = _bucket(tokens.size, 4 * bucket)
  allowed = np.zeros((length, k_pad), bool)
  allowed[:, :tokens.size] = True
  if positions:
    for i, c in enumerate(leak.candidates[:length]):
      keep = np.isin(tokens, c)
      if keep.any():
        allowed[i, :tokens.size] = keep
  labels = np.asarray(leak.labels, np.int32)
  if labels.size == 0:
    labels = np.array([mask_id], np.int32)
  l_pad = _bucket(labels.size, bucket)
  fixed = np.full((len(inputs), length), pad_id, np.int32)
  valid = np.zeros((len(inputs), length), bool)
  relaxed = np.zeros((len(inputs), length), bool)
  counts = np.full(len(inputs), -1, np.int32)
  for b, (x, f) in enumerate(zip(inputs, free)):
    fixed[b, :x.size] = x
    valid[b, :x.size] = True
    relaxed[b, 1:x.size - 1] = f
    if mask_rate is not None:
      counts[b] = max(1, int(round(mask_rate * (x.size - 2))))
  return Problem(
      params=params, target=target, tokens=jnp.asarray(_pad(tokens, k_pad)),
      token_bias=jnp.asarray(np.where(allowed, 0.0, -1e9), jnp.float32),
      labels=jnp.asarray(_pad(labels, l_pad)),
      label_bias=jnp.asarray(np.where(np.arange(l_pad) < labels.size, 0.0,
                                      -1e9), jnp.float32),
      fixed=jnp.asarray(fixed), free=jnp.asarray(relaxed),
      valid=jnp.asarray(valid), mask_counts=jnp.asarray(counts),
      mask_id=jnp.asarray(mask_id, jnp.int32),
      mask_index=jnp.asarray(int(np.flatnonzero(tokens == mask_id)[0]),
                             jnp.int32),
      off_span=jnp.asarray(span_projections(config, target)))


def initial_state(problem: Problem, key: jax.Array, *, init_scale: float,
                  learning_rate: float) -> AttackState:
  """Small-noise logits plus `init_scale` on each start token (`fixed`)."""
  key_t, key_l = jax.random.split(key)
  shape = problem.free.shape + problem.tokens.shape
  start = (problem.fixed[..., None]
           == problem.tokens[None, None, :]).astype(jnp.float32)
  token_logits = (0.01 * jax.random.normal(key_t, shape)
                  + init_scale * start)
  label_logits = 0.01 * jax.random.normal(
      key_l, problem.free.shape + problem.labels.shape)
  variables = (token_logits, label_logits)
  return AttackState(*variables, optax.adam(learning_rate).init(variables))


def _starts(leak: spans.BatchLeak, assembly: spans.Assembly,
            lengths: list[int], rng: np.random.Generator, *, cls_id: int,
            sep_id: int, positions: bool
            ) -> tuple[list[np.ndarray], list[int]]:
  """A start per free length, and the assembly sentence it comes from.

  An unused assembly guess of that length where there is one; else, at
  each position, the candidates (`positions`, else the bag) dealt out at
  random to the new sentences that reach it, so that no two start alike.
  """
  used = list(assembly.exact)
  inputs, source = [], []
  for n in lengths:
    match = [j for j, x in enumerate(assembly.inputs)
             if not used[j] and x.size == n]
    if match:
      used[match[0]] = True
      inputs.append(np.asarray(assembly.inputs[match[0]], np.int32))
    else:
      inputs.append(np.zeros(n, np.int32))
    source.append(match[0] if match else -1)
  bag = np.asarray(leak.bag)
  bag = bag[(bag != cls_id) & (bag != sep_id)]
  new = [b for b, j in enumerate(source) if j < 0]
  for i in range(max(lengths) if new else 0):
    here = [b for b in new if i < lengths[b]]
    pool = bag
    if positions and i < len(leak.candidates):
      c = np.asarray(leak.candidates[i])
      c = c[(c != cls_id) & (c != sep_id)]
      pool = c if c.size else bag
    deal = rng.permutation(np.resize(rng.permutation(pool), len(here)))
    for b, t in zip(here, deal):
      inputs[b][i] = t
  for x in inputs:
    x[0], x[-1] = cls_id, sep_id
  return inputs, source


def fallback(config: bert.BertConfig, params: Params, target: Params,
             leak: spans.BatchLeak, assembly: spans.Assembly, *,
             batch_size: int, key: jax.Array, cls_id: int, sep_id: int,
             mask_id: int, pad_id: int = 0, num_steps: int = 100,
             log_every: int = 20, learning_rate: float = 0.1,
             distance: str = 'cosine', span_weight: float = 0.0,
             init_scale: float = 2.0, candidates: str = 'auto',
             mask_rate: float | None = 0.15, sweeps: int = 2,
             bucket: int = 8,
             callback: Callable[[int, float], None] | None = None
             ) -> FallbackResult | None:
  """Relaxed DLG on the batch gradient for the sentences not yet exact.

  Each chunk of `log_every` Adam steps is one jitted `lax.scan`; the host
  decodes between chunks. Shapes are padded to multiples of `bucket` so
  that batches of similar shapes share one compilation. At the end each
  relaxed sentence is decoded (its `[MASK]`s where their probability is
  highest, as many as `mask_rate` gives; elsewhere the argmax), then
  coordinate descent on the exact span test (`spans.descend`, `sweeps`
  sweeps over the same candidates) replaces it only where that makes it
  pass the test; the labels are then placed (`spans.place_labels`) and the
  span test re-run.

  Args:
    config: the model's shape.
    params: the model the client used.
    target: the shared gradient.
    leak: from `spans.analyse_batch_leak(target)`.
    assembly: from `spans.assemble`; its exact sentences are held fixed.
    batch_size: `B`.
    key: PRNG key of the starts and the initial logits' noise.
    cls_id: id of `[CLS]`.
    sep_id: id of `[SEP]`.
    mask_id: id of `[MASK]`.
    pad_id: id of `[PAD]`.
    num_steps: Adam steps, rounded down to a multiple of `log_every`.
    log_every: steps per jitted chunk, between snapshots.
    learning_rate: Adam's step size.
    distance: 'l2' or 'cosine' (`dlg_jax.core.objectives.get_distance`).
    span_weight: weight of `span_penalty` in the objective (0: the
      gradient distance alone).
    init_scale: logit boost of each start token.
    candidates: 'bag', 'positions' (`make_problem`), or 'auto': positions
      where the leaked pairs are complete (`pairs_complete`).
    mask_rate: the client's masking rate (`make_problem`); None: argmax.
    sweeps: span-test descent sweeps per relaxed sentence (0: none).
    bucket: padding multiple for the length and the candidate lists.
    callback: called as `callback(step, objective)` at each snapshot.

  Returns:
    The `FallbackResult`, or None where no lengths can be read (`N` not
    identifiable, or no lengths fit it: `batch_lengths`).

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, alg. 1.
  """
  if candidates not in CANDIDATES:
    raise ValueError(f'Unknown candidates {candidates!r}; choose one of '
                     f'{CANDIDATES}.')
  if log_every < 1 or num_steps < 0 or bucket < 1 or sweeps < 0:
    raise ValueError(f'Need log_every >= 1, num_steps >= 0, bucket >= 1 and '
                     f'sweeps >= 0, got {log_every}, {num_steps}, {bucket} '
                     f'and {sweeps}.')
  objectives.get_distance(distance)
  trusted = pairs_complete(leak, cls_id=cls_id, sep_id=sep_id)
  positions = (candidates == 'positions'
               or (candidates == 'auto' and trusted))
  held = [j for j, e in enumerate(assembly.exact) if e]
  lengths = batch_lengths(config, params, target, leak,
                          [assembly.inputs[j].size for j in held],
                          batch_size=batch_size, sep_id=sep_id,
                          trusted=trusted)
  if not lengths:
    return None
  key_start, key_init = jax.random.split(key)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key_start)))
  starts, source = _starts(leak, assembly, lengths, rng, cls_id=cls_id,
                           sep_id=sep_id, positions=positions)
  inputs = [np.asarray(assembly.inputs[j]) for j in held] + starts
  source = held + source
  free = [False] * len(held) + [True] * len(starts)
  problem = make_problem(config, params, target, leak, inputs, free,
                         cls_id=cls_id, sep_id=sep_id, mask_id=mask_id,
                         pad_id=pad_id, positions=positions,
                         mask_rate=mask_rate, bucket=bucket)
  state = initial_state(problem, key_init, init_scale=init_scale,
                        learning_rate=learning_rate)
  static = dict(config=config, distance=distance, span_weight=span_weight)
  chunk_fn = jax.jit(functools.partial(
      _run_chunk, learning_rate=learning_rate, log_every=log_every, **static),
                     donate_argnums=0)
  snapshot_fn = jax.jit(functools.partial(_snapshot, **static))
  chunk_key = ('batch_chunk', config, distance, span_weight, learning_rate,
               log_every)
  snapshot = runner.CACHE.compiled(('batch_snapshot', config, distance,
                                    span_weight), snapshot_fn, state, problem)
  run_chunk = None
  steps, history, losses, decoded = [], [], [], None
  for chunk in range(num_steps // log_every + 1):
    if chunk:
      if run_chunk is None:
        run_chunk = runner.CACHE.compiled(chunk_key, chunk_fn, state, problem)
      state = run_chunk(state, problem)
    decoded, filled, value = jax.device_get(snapshot(state, problem))
    steps.append(chunk * log_every)
    history.append(filled)
    losses.append(float(value))
    if callback:
      callback(steps[-1], losses[-1])
  out = [decoded[b, :x.size] for b, x in enumerate(inputs)]
  allowed = np.asarray(problem.token_bias) == 0
  tokens = np.asarray(problem.tokens)
  for b, x in enumerate(out):
    if free[b] and sweeps:
      options = ([np.array([cls_id])]
                 + [np.union1d(tokens[allowed[i]], x[i:i + 1])
                    for i in range(1, x.size - 1)]
                 + [np.array([sep_id])])
      ids, score = spans.descend(config, params, target, x, options,
                                 sweeps=sweeps)
      if score < spans.EXACT_TOL:
        out[b] = ids
  sentences = spans.place_labels(config, params, target, out,
                                 mask_id=mask_id, pad_id=pad_id)
  scores = [spans.sentence_residual(config, params, target, x) for x in out]
  history = np.stack(history)
  return FallbackResult(
      inputs=out, sentences=sentences,
      exact=[s < spans.EXACT_TOL for s in scores], scores=scores,
      fixed=[not f for f in free], source=source, steps=np.asarray(steps),
      history=[history[:, b, :x.size] for b, x in enumerate(inputs)],
      losses=np.asarray(losses, np.float32))
