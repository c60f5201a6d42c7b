"""The relaxed token optimisation: DLG restricted by what the gradient leaks.

Each position's dummy token embedding is a convex combination (softmax of
free logits) of the word embeddings of the leaked input tokens
(`dlg_jax.text.leakage`), and each position's soft label a softmax over the
leaked masked tokens; the weight of a position in the dummy loss is its
probability of being `[MASK]` (`dummy_loss`). The logits start from the
leaked position scores ('leak', the default) or from small noise
('uniform', only the bag restriction), and Adam minimises the gradient
distance of `dlg_jax.core.objectives`, differentiating through the dummy's
gradient as DLG does. A position decodes to the vocabulary token nearest to
its dummy embedding; `[MASK]` positions take their label's argmax.

From the 'leak' start only the labels' places are open, and on MiniLM the
soft labels settle within 10 to 30 steps; from the 'uniform' start DLG finds
the words but not their order (docs/text_attack.md gives the numbers).

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, alg. 1.
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022.
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
from dlg_jax.text import client
from dlg_jax.text import leakage

Params = Any


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
  return client.mlm_loss(logits, soft_labels, weights)


def _variables(state: AttackState, problem: _Problem):
  return (state.token_logits + problem.token_bias[None, :],
          state.label_logits + problem.label_bias[None, :])


def _objective(config, distance, problem, token_logits, label_logits):
  """The gradient distance between the dummy's gradient and the target."""
  dummy_grads = jax.grad(dummy_loss, argnums=1)(
      config, problem.params, problem.tokens, problem.labels,
      problem.mask_index, token_logits, label_logits, problem.valid)
  return objectives.get_distance(distance)(dummy_grads, problem.target)


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


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([x, np.zeros(size - x.size, x.dtype)])


def _pad_bias(size: int, real: int) -> jax.Array:
  """`[size]` 0 for the `real` candidates, -1e9 for the padding after them."""
  return jnp.asarray(np.where(np.arange(size) < real, 0.0, -1e9),
                     jnp.float32)


def _candidates(leak: leakage.Leak, mask_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """The leaked tokens and scores, `[MASK]` among them."""
  tokens, scores = np.asarray(leak.tokens), np.asarray(leak.scores)
  if mask_id not in tokens:
    # No [MASK] in the input means nothing was predicted; offer it anyway so
    # that the relaxation stays defined.
    tokens = np.append(tokens, mask_id)
    scores = np.concatenate([scores, np.zeros((leak.length, 1))], axis=1)
  return tokens, scores


def _padded_problem(config: bert.BertConfig, params: Params, target: Params,
                    leak: leakage.Leak, tokens: np.ndarray, *, mask_id: int,
                    bucket: int) -> _Problem:
  """The attack's inputs, length and candidates padded to `bucket`s."""
  n, k, l = leak.length, tokens.size, leak.labels.size
  n_pad = min(_bucket(n, bucket), config.max_position_embeddings)
  k_pad, l_pad = _bucket(max(k, n_pad), bucket), _bucket(l, bucket)
  return _Problem(
      params=params, target=target,
      tokens=jnp.asarray(_pad(tokens.astype(np.int32), k_pad)),
      token_bias=_pad_bias(k_pad, k),
      labels=jnp.asarray(_pad(leak.labels.astype(np.int32), l_pad)),
      label_bias=_pad_bias(l_pad, l),
      valid=jnp.arange(n_pad) < n,
      mask_index=jnp.asarray(int(np.flatnonzero(tokens == mask_id)[0])))


def _initial_state(problem: _Problem, scores: np.ndarray, key: jax.Array, *,
                   init: str, init_scale: float, learning_rate: float
                   ) -> AttackState:
  """Small-noise logits, plus `init_scale * scores` for the 'leak' start."""
  n_pad, k_pad = problem.valid.size, problem.tokens.size
  key_t, key_l = jax.random.split(key)
  token_logits = 0.01 * jax.random.normal(key_t, (n_pad, k_pad))
  if init == 'leak':
    n, k = scores.shape
    start = np.zeros((n_pad, k_pad), np.float32)
    start[:n, :k] = init_scale * scores
    token_logits = token_logits + start
  label_logits = 0.01 * jax.random.normal(key_l, (n_pad, problem.labels.size))
  variables = (token_logits, label_logits)
  return AttackState(*variables, optax.adam(learning_rate).init(variables))


def attack(config: bert.BertConfig, params: Params, target: Params,
           leak: leakage.Leak, *, key: jax.Array, mask_id: int,
           num_steps: int = 30, log_every: int = 10,
           learning_rate: float = 0.1, distance: str = 'cosine',
           init: str = 'leak', init_scale: float = 5.0, bucket: int = 8,
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
    leak: from `dlg_jax.text.leakage.analyse_leak(target)`.
    key: PRNG key for the initial logits' noise.
    mask_id: id of `[MASK]`.
    num_steps: total Adam steps, rounded down to a multiple of `log_every`.
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
  if log_every < 1 or num_steps < 0 or bucket < 1:
    raise ValueError(f'Need log_every >= 1, num_steps >= 0 and bucket >= 1, '
                     f'got {log_every}, {num_steps} and {bucket}.')
  objectives.get_distance(distance)
  tokens, scores = _candidates(leak, mask_id)
  problem = _padded_problem(config, params, target, leak, tokens,
                            mask_id=mask_id, bucket=bucket)
  state = _initial_state(problem, scores, key, init=init,
                         init_scale=init_scale, learning_rate=learning_rate)
  static = dict(config=config, distance=distance)
  mask = jnp.asarray(mask_id, jnp.int32)
  n = leak.length
  # Programs come from the runner core's cache: sentences of the same padded
  # shapes, and later calls, reuse them.
  chunk_fn = jax.jit(functools.partial(
      _run_chunk, learning_rate=learning_rate, log_every=log_every, **static),
                     donate_argnums=0)
  snapshot_fn = jax.jit(functools.partial(_snapshot, **static))
  chunk_key = ('text_chunk', config, distance, learning_rate, log_every)
  snapshot_key = ('text_snapshot', config, distance)

  # Looked up once: every chunk has the same shapes.
  snapshot = runner.CACHE.compiled(snapshot_key, snapshot_fn, state, problem,
                                   mask)
  run_chunk = None

  steps, history, inputs_history, losses = [], [], [], []
  for chunk in range(num_steps // log_every + 1):
    if chunk:
      if run_chunk is None:
        run_chunk = runner.CACHE.compiled(chunk_key, chunk_fn, state, problem)
      state = run_chunk(state, problem)
    ids, inputs, value = jax.device_get(snapshot(state, problem, mask))
    steps.append(chunk * log_every)
    history.append(ids[:n])
    inputs_history.append(inputs[:n])
    losses.append(float(value))
    if callback:
      callback(steps[-1], ids[:n], losses[-1])
  return AttackResult(ids=history[-1], inputs=inputs_history[-1],
                      steps=np.asarray(steps), history=np.stack(history),
                      losses=np.asarray(losses, np.float32))
