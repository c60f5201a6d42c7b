"""DLG for text: recover a sentence from the gradient of a BERT masked LM.

The client takes one standard masked-language-model step on its sentence
(`mask_tokens`, `client_gradient`) and shares the gradient of every weight,
word embeddings included. The attacker knows the model and the gradient.

What the gradient leaks directly (`analyse_leak`), for a client batch of one
sentence of `n` tokens, `M` of them masked:

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

The attack (`attack`) is DLG restricted by these leaks: each position's dummy
token embedding is a convex combination (softmax of free logits) of the word
embeddings of the leaked input tokens, and each position's soft label a
softmax over the leaked masked tokens; the weight of a position in the dummy
loss is its probability of being `[MASK]`. The logits start from the leaked
position scores ('leak', the default) or from small noise ('uniform', only
the bag restriction), and Adam minimises the gradient distance of
`dlg_jax.core.objectives`, differentiating through the dummy's gradient as DLG
does. A position decodes to the vocabulary token nearest to its dummy
embedding; `[MASK]` positions take their label's argmax. From the 'leak'
start only the labels' places are open, and on MiniLM the soft labels settle
within 10 to 30 steps; from the 'uniform' start DLG finds the words but
not their order (configs/bert.py gives the numbers).

The leaks rest on the client's batch being one sentence, as in the DLG
paper's figure: with several, `g_i` sums over the batch and the rows no
longer say which sentence a token came from.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
  Deng et al., "TAG: Gradient Attack on Transformer-based Language Models",
  Findings of EMNLP 2021 (bag of words from the embedding gradient).
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from dlg_jax.core import client
from dlg_jax.core import objectives
from dlg_jax.text import bert
Params = Any


class MLMExample(NamedTuple):
  """One client's masked-LM training example.

  Attributes:
    ids: `[length]` the sentence's token ids, `[CLS] ... [SEP]`.
    inputs: `[length]` the model's input: `ids` with masked positions set to
      `[MASK]`.
    masked: `[length]` bool, the positions whose original token is predicted.
  """
  ids: jax.Array
  inputs: jax.Array
  masked: jax.Array


def mask_tokens(ids: ArrayLike, key: jax.Array, *, mask_id: int,
                rate: float = 0.15) -> MLMExample:
  """BERT's masking: predict `rate` of the word pieces, replaced by `[MASK]`.

  `max(1, round(rate * (length - 2)))` positions are drawn uniformly among
  the word pieces (never `[CLS]` or `[SEP]`, as in BERT). All of them become
  `[MASK]`: BERT's 80/10/10 mix of `[MASK]`, random and unchanged tokens only
  eases the mismatch between pre-training and fine-tuning inputs, which one
  federated step does not have, and a `[MASK]` hides the masked token from
  the input side of the gradient, the harder case for the attacker, who must
  then read it from the output side (the labels).

  Args:
    ids: `[length]` token ids with `[CLS]` first and `[SEP]` last.
    key: PRNG key choosing the positions.
    mask_id: the id of `[MASK]`.
    rate: fraction of word pieces to predict.

  Returns:
    The `MLMExample`.

  References:
    Devlin et al., "BERT", NAACL 2019, sec. 3.1 (Task #1: Masked LM).
  """
  ids = jnp.asarray(ids, jnp.int32)
  length = ids.shape[0]
  if length < 3:
    raise ValueError(f'mask_tokens needs [CLS], a token and [SEP]; got '
                     f'{length} ids.')
  num = max(1, int(round(rate * (length - 2))))
  chosen = 1 + jax.random.choice(key, length - 2, (num,), replace=False)
  masked = jnp.zeros((length,), bool).at[chosen].set(True)
  return MLMExample(ids, jnp.where(masked, mask_id, ids), masked)


def mlm_loss(logits: ArrayLike, labels: ArrayLike,
             weights: ArrayLike) -> jax.Array:
  """Masked-LM loss: weighted mean cross-entropy over positions.

  `sum_i w_i CE(logits_i, labels_i) / sum_i w_i`; with 0/1 weights it is
  BERT's mean over masked positions, with soft weights the attacker's
  relaxation.

  Args:
    logits: `[length, vocab]`.
    labels: `[length, vocab]` soft labels.
    weights: `[length]` non-negative position weights.

  Returns:
    A scalar.
  """
  logits, labels, weights = map(jnp.asarray, (logits, labels, weights))
  # soft_cross_entropy is linear in the labels, and averages over positions.
  mean_ce = client.soft_cross_entropy(logits, weights[:, None] * labels)
  return mean_ce * logits.shape[0] / (jnp.sum(weights) + 1e-12)


def client_gradient(config: bert.BertConfig, params: Params,
                    example: MLMExample) -> Params:
  """The gradient a FedSGD client shares for one MLM step on `example`.

  Args:
    config: the model's shape.
    params: the shared model's parameters.
    example: from `mask_tokens`.

  Returns:
    A pytree shaped like `params`: every weight, word embeddings included.
  """
  def loss(p):
    logits = bert.apply(config, p, ids=example.inputs)
    labels = jax.nn.one_hot(example.ids, config.vocab_size)
    return mlm_loss(logits, labels, example.masked.astype(jnp.float32))
  return jax.grad(loss)(params)


# ---------------------------------------------------------------------------
# What leaks without any optimisation.


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


def analyse_leak(grads: Params, *, length: int | None = None,
                 threshold: float = 0.5, rank_tol: float = 1e-4,
                 max_labels: int | None = None) -> Leak:
  """Length, input tokens with their positions, and labels from `grads`.

  See the module docstring for why the word gradient splits into position
  gradients plus a low-rank output part. The linear algebra runs once, on
  the host, in float64.

  Args:
    grads: the shared gradient of `client_gradient`.
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
  hidden = word.shape[1]
  # One pass over the [vocab, hidden] rows: their Gram matrix. Projecting it
  # off span{g_i} leaves the Gram matrix of the output part alone.
  gram = word.T @ word
  _, s, vt = np.linalg.svd(pos, full_matrices=False)
  span_pos = vt[s > 1e-9 * s[0]]
  off_pos = np.eye(hidden) - span_pos.T @ span_pos
  evals, evecs = np.linalg.eigh(off_pos @ gram @ off_pos)
  sv = np.sqrt(np.maximum(evals[::-1], 0.0))
  dense_rank = int(np.sum(sv > rank_tol * sv[0])) if sv[0] > 0 else 0
  if n + dense_rank <= hidden:
    # Every row lies in span{g_i} + span{output part}: work in coordinates
    # of that (n + rank)-dimensional space from here on.
    frame = np.concatenate([span_pos, evecs[:, ::-1][:, :dense_rank].T])
    coords = word @ frame.T
    norms = np.linalg.norm(coords, axis=1, keepdims=True)
    unit = coords[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    dense = (_output_directions(unit, dense_rank, n) if dense_rank
             else np.zeros((0, frame.shape[0])))
    basis = np.concatenate([pos @ frame.T, dense], axis=0)
    coef, *_ = np.linalg.lstsq(basis.T, coords.T, rcond=None)
    scores = coef[:n].T  # [vocab, n]
    tokens = np.flatnonzero(np.max(scores, axis=1) > threshold)
    scores = scores[tokens].T
  else:
    # Too many unknowns to separate: keep the rows with the largest norms
    # and let the optimisation place them.
    logging.warning('length %d + output rank %d > hidden size %d: the bag '
                    'of words falls back to word-gradient row norms.',
                    n, dense_rank, hidden)
    norms = np.linalg.norm(word, axis=1)
    tokens = np.sort(np.argsort(norms)[::-1][:2 * n])
    scores = np.zeros((n, tokens.size))
  return Leak(length=n, tokens=tokens.astype(np.int32),
              scores=scores.astype(np.float32),
              labels=leaked_labels(grads, max_labels=max_labels),
              dense_rank=dense_rank)


# ---------------------------------------------------------------------------
# The attack.


class AttackState(NamedTuple):
  """What the optimiser updates: token and label logits, and its state."""
  token_logits: jax.Array  # [n', k'] over the (padded) leaked tokens
  label_logits: jax.Array  # [n', l'] over the (padded) leaked labels
  opt_state: Any


class _Problem(NamedTuple):
  """The attack's fixed inputs, padded to bucket sizes (see `attack`)."""
  params: Params
  target: Params
  tokens: jax.Array       # [k'] candidate input token ids
  token_bias: jax.Array   # [k'] 0, or -1e9 for padding candidates
  labels: jax.Array       # [l'] candidate label ids
  label_bias: jax.Array   # [l'] 0, or -1e9 for padding candidates
  valid: jax.Array        # [n'] True at the sentence's n positions
  mask_index: jax.Array   # () index of [MASK] in tokens


class AttackResult(NamedTuple):
  """Output of `attack`.

  Attributes:
    ids: `[n]` the recovered sentence, `[MASK]` positions filled with their
      recovered labels.
    inputs: `[n]` the recovered model input (with `[MASK]`).
    steps: `[c + 1]` iteration of each snapshot, 0 first.
    history: `[c + 1, n]` the recovered sentence at each snapshot.
    losses: `[c + 1]` gradient distance at each snapshot.
  """
  ids: np.ndarray
  inputs: np.ndarray
  steps: np.ndarray
  history: np.ndarray
  losses: np.ndarray


def dummy_loss(config: bert.BertConfig, params: Params, tokens: ArrayLike,
               labels: ArrayLike, mask_index: ArrayLike,
               token_logits: ArrayLike, label_logits: ArrayLike,
               valid: ArrayLike | None = None) -> jax.Array:
  """The MLM loss of the relaxed dummy sentence, as a function of `params`.

  Position `i` feeds `softmax(token_logits_i) @ E[tokens]` (`E` the word
  embeddings taken from `params`, so that the dummy's gradient has the same
  input-side word rows as the client's) and predicts
  `softmax(label_logits_i)` over `labels`, weighted by its probability of
  being `[MASK]` (`tokens[mask_index]`).

  Args:
    config: the model's shape.
    params: the model's parameters.
    tokens: `[k]` candidate input token ids.
    labels: `[l]` candidate label ids.
    mask_index: index of `[MASK]` in `tokens`.
    token_logits: `[n, k]`.
    label_logits: `[n, l]`.
    valid: optional `[n]` bool; False marks padding after the sentence.

  Returns:
    A scalar.
  """
  probs = jax.nn.softmax(token_logits, axis=-1)
  embeds = probs @ bert.word_embeddings(params)[tokens]
  logits = bert.apply(config, params, embeds=embeds, valid=valid)
  q = jax.nn.softmax(label_logits, axis=-1)
  # add, not set: padding candidates repeat an id, with zero probability.
  soft_labels = jnp.zeros(logits.shape, q.dtype).at[:, labels].add(q)
  weights = probs[:, mask_index]
  if valid is not None:
    weights = jnp.where(valid, weights, 0.0)
  return mlm_loss(logits, soft_labels, weights)


def _variables(state: AttackState, problem: _Problem):
  return (state.token_logits + problem.token_bias[None, :],
          state.label_logits + problem.label_bias[None, :])


def _objective(config, distance, problem, token_logits, label_logits):
  dummy_grads = jax.grad(dummy_loss, argnums=1)(
      config, problem.params, problem.tokens, problem.labels,
      problem.mask_index, token_logits, label_logits, problem.valid)
  return objectives.get_distance(distance)(dummy_grads, problem.target)


@functools.partial(jax.jit, static_argnames=(
    'config', 'distance', 'learning_rate', 'log_every'), donate_argnums=0)
def _run_chunk(state: AttackState, problem: _Problem, *,
               config: bert.BertConfig, distance: str, learning_rate: float,
               log_every: int) -> AttackState:
  """`log_every` Adam steps on the gradient distance, in one `lax.scan`."""
  opt = optax.adam(learning_rate)

  def step(state, _):
    def loss(variables):
      shifted = _variables(AttackState(*variables, None), problem)
      return _objective(config, distance, problem, *shifted)
    variables = (state.token_logits, state.label_logits)
    grads = jax.grad(loss)(variables)
    updates, opt_state = opt.update(grads, state.opt_state, variables)
    return AttackState(*optax.apply_updates(variables, updates),
                       opt_state), None

  return jax.lax.scan(step, state, length=log_every)[0]


@functools.partial(jax.jit, static_argnames=('config', 'distance'))
def _snapshot(state: AttackState, problem: _Problem, mask_id: jax.Array, *,
              config: bert.BertConfig, distance: str):
  """The decoded sentence and input, and the gradient distance, now."""
  token_logits, label_logits = _variables(state, problem)
  value = _objective(config, distance, problem, token_logits, label_logits)
  table = bert.word_embeddings(problem.params)
  embeds = jax.nn.softmax(token_logits, axis=-1) @ table[problem.tokens]
  # Nearest vocabulary token in Euclidean distance (|e|^2 is common).
  dist = (jnp.sum(jnp.square(table), axis=1)[None, :]
          - 2.0 * embeds @ table.T)
  inputs = jnp.argmin(dist, axis=1).astype(jnp.int32)
  filled = problem.labels[jnp.argmax(label_logits, axis=1)]
  return jnp.where(inputs == mask_id, filled, inputs), inputs, value


def _bucket(size: int, multiple: int) -> int:
  return -(-size // multiple) * multiple


def attack(config: bert.BertConfig, params: Params, target: Params,
           leak: Leak, *, key: jax.Array, mask_id: int, steps: int = 30,
           log_every: int = 10, learning_rate: float = 0.1,
           distance: str = 'cosine', init: str = 'leak',
           init_scale: float = 5.0, bucket: int = 8,
           callback: Callable[[int, np.ndarray, float], None] | None = None
           ) -> AttackResult:
  """DLG on a BERT MLM gradient, restricted to what `leak` reveals.

  Each chunk of `log_every` Adam steps is one jitted `lax.scan`; the host
  only sees the state between chunks, to decode and log. The length and the
  candidate lists are padded up to multiples of `bucket` (padding positions
  hidden by the attention mask, padding candidates at logit -1e9), so that
  sentences of similar length share one compilation.

  Args:
    config: the model's shape.
    params: the model the client used.
    target: the shared gradient.
    leak: from `analyse_leak(target)`.
    key: PRNG key for the initial logits' noise.
    mask_id: id of `[MASK]`.
    steps: total Adam steps, rounded down to a multiple of `log_every`.
    log_every: steps per jitted chunk, between snapshots.
    learning_rate: Adam's step size.
    distance: 'l2' or 'cosine' (`dlg_jax.core.objectives.get_distance`).
    init: 'leak' starts the token logits at `init_scale * leak.scores`
      (each position at its leaked token); 'uniform' at small noise, leaving
      the order to the optimisation (plain DLG over the bag of words).
    init_scale: logit scale of the 'leak' start.
    bucket: padding multiple for the length and the candidate lists.
    callback: called as `callback(step, ids, loss)` at each snapshot, `ids`
      `[n]` the sentence recovered so far.

  Returns:
    The `AttackResult`.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, alg. 1.
  """
  if init not in ('leak', 'uniform'):
    raise ValueError(f"Unknown init {init!r}; choose 'leak' or 'uniform'.")
  if log_every < 1 or steps < 0 or bucket < 1:
    raise ValueError(f'Need log_every >= 1, steps >= 0 and bucket >= 1, got '
                     f'{log_every}, {steps} and {bucket}.')
  objectives.get_distance(distance)
  tokens, scores = np.asarray(leak.tokens), np.asarray(leak.scores)
  if mask_id not in tokens:
    # No [MASK] in the input means nothing was predicted; offer it anyway so
    # that the relaxation stays defined.
    tokens = np.append(tokens, mask_id)
    scores = np.concatenate([scores, np.zeros((leak.length, 1))], axis=1)
  n, k, l = leak.length, tokens.size, leak.labels.size
  n_pad = min(_bucket(n, bucket), config.max_position_embeddings)
  k_pad, l_pad = _bucket(max(k, n_pad), bucket), _bucket(l, bucket)

  def pad(x, size):
    return np.concatenate([x, np.zeros(size - x.size, x.dtype)])

  def pad_bias(size, real):
    return jnp.asarray(np.where(np.arange(size) < real, 0.0, -1e9),
                       jnp.float32)

  problem = _Problem(
      params=params, target=target,
      tokens=jnp.asarray(pad(tokens.astype(np.int32), k_pad)),
      token_bias=pad_bias(k_pad, k),
      labels=jnp.asarray(pad(leak.labels.astype(np.int32), l_pad)),
      label_bias=pad_bias(l_pad, l),
      valid=jnp.arange(n_pad) < n,
      mask_index=jnp.asarray(int(np.flatnonzero(tokens == mask_id)[0])))

  key_t, key_l = jax.random.split(key)
  token_logits = 0.01 * jax.random.normal(key_t, (n_pad, k_pad))
  if init == 'leak':
    start = np.zeros((n_pad, k_pad), np.float32)
    start[:n, :k] = init_scale * scores
    token_logits = token_logits + start
  label_logits = 0.01 * jax.random.normal(key_l, (n_pad, l_pad))
  variables = (token_logits, label_logits)
  state = AttackState(*variables, optax.adam(learning_rate).init(variables))
  static = dict(config=config, distance=distance)
  mask = jnp.asarray(mask_id, jnp.int32)

  steps_done, history, inputs_history, losses = [], [], [], []
  for chunk in range(steps // log_every + 1):
    if chunk:
      state = _run_chunk(state, problem, learning_rate=learning_rate,
                         log_every=log_every, **static)
    ids, inputs, value = jax.device_get(_snapshot(state, problem, mask,
                                                  **static))
    steps_done.append(chunk * log_every)
    history.append(ids[:n])
    inputs_history.append(inputs[:n])
    losses.append(float(value))
    if callback:
      callback(steps_done[-1], ids[:n], losses[-1])
  return AttackResult(ids=history[-1], inputs=inputs_history[-1],
                      steps=np.asarray(steps_done), history=np.stack(history),
                      losses=np.asarray(losses, np.float32))


class Recovery(NamedTuple):
  """One sentence attacked end to end (`recover_sentence`)."""
  example: MLMExample
  leak: Leak
  result: AttackResult
  seconds: float  # the attacker's wall time: leak analysis and optimisation


def recover_sentence(config: bert.BertConfig, params: Params,
                     ids: ArrayLike, *, mask_key: jax.Array,
                     attack_key: jax.Array, mask_id: int,
                     mask_rate: float = 0.15, given_length: bool = False,
                     max_labels: int | None = None, **attack_kwargs
                     ) -> Recovery:
  """The client's MLM step on `ids`, then the attack on its gradient.

  Args:
    config: the model's shape.
    params: the shared model.
    ids: `[n]` the client's sentence, `[CLS] ... [SEP]`.
    mask_key: PRNG key of the client's masking.
    attack_key: PRNG key of the attack.
    mask_id: id of `[MASK]`.
    mask_rate: fraction of word pieces the client predicts.
    given_length: whether the attacker is told `n`; otherwise it reads it
      from the position-embedding gradient.
    max_labels: cap on the leaked labels (None: all).
    **attack_kwargs: passed on to `attack`.

  Returns:
    The `Recovery`.

  Example:
    >>> tok = text.make_tokenizer()
    >>> config = bert.get_config('tiny')
    >>> params = bert.init_params(config, jax.random.key(0))
    >>> ids = text.encode(tok, 'He played my brother.', max_length=64)
    >>> rec = recover_sentence(config, params, ids, mask_key=jax.random.key(1),
    ...                        attack_key=jax.random.key(2), mask_id=103)
    >>> text.decode(tok, rec.result.ids)
    'he played my brother.'
  """
  ids = jnp.asarray(ids, jnp.int32)
  example = mask_tokens(ids, mask_key, mask_id=mask_id, rate=mask_rate)
  target = jax.block_until_ready(_client_gradient(example, params,
                                                  config=config))
  start = time.perf_counter()
  leak = analyse_leak(target, length=ids.shape[0] if given_length else None,
                      max_labels=max_labels)
  result = attack(config, params, target, leak, key=attack_key,
                  mask_id=mask_id, **attack_kwargs)
  return Recovery(example, leak, result, time.perf_counter() - start)


@functools.partial(jax.jit, static_argnames='config')
def _client_gradient(example, params, *, config):
  return client_gradient(config, params, example)


# ---------------------------------------------------------------------------
# The paper's text log.


def log_line(step: int, text: str) -> str:
  """`[iter=step] text`, a line of the DLG paper's NLP figure."""
  return f'[iter={step}] {text}'


def ground_truth_line(text: str) -> str:
  """`[Ground Truth] text`, the last line of the DLG paper's NLP figure."""
  return f'[Ground Truth] {text}'


def format_log(steps: Sequence[int], texts: Sequence[str],
               reference: str) -> list[str]:
  """The DLG figure's lines: one per snapshot, then the ground truth."""
  if len(steps) != len(texts):
    raise ValueError(f'{len(steps)} steps but {len(texts)} texts.')
  return ([log_line(s, t) for s, t in zip(steps, texts)]
          + [ground_truth_line(reference)])
