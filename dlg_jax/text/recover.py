"""Attacks end to end: the client's MLM step, the leak, the attack.

`recover_sentence` plays both sides for one sentence: the client masks its
sentence and shares the gradient (`dlg_jax.text.client`); the attacker
reads what the gradient leaks (`dlg_jax.text.leakage`) and runs the relaxed
optimisation (`dlg_jax.text.relaxed`) on it. `recover_batch` does the same
for a batch of sentences in one gradient (`dlg_jax.text.batch`), attacked
through the spans of the weight gradients (`dlg_jax.text.spans`), with the
relaxed batch optimisation (`dlg_jax.text.batch_relaxed`) as the fallback
where a sentence fails the exact span test.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from dlg_jax.text import batch
from dlg_jax.text import batch_relaxed
from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import leakage
from dlg_jax.text import relaxed
from dlg_jax.text import spans

Params = Any


class Recovery(NamedTuple):
  """One sentence attacked end to end (`recover_sentence`)."""
  example: client.MLMExample
  leak: leakage.Leak
  result: relaxed.AttackResult
  seconds: float  # the attacker's wall time: leak analysis and optimisation


@functools.partial(jax.jit, static_argnames='config')
def _client_gradient(example, params, *, config):
  return client.client_gradient(config, params, example)


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
    **attack_kwargs: passed on to `dlg_jax.text.relaxed.attack`.

  Returns:
    The `Recovery`.

  Example:
    >>> tok = data.make_tokenizer()
    >>> config = bert.get_config('tiny')
    >>> params = bert.init_params(config, jax.random.key(0))
    >>> ids = data.encode(tok, 'He played my brother.', max_length=64)
    >>> rec = recover_sentence(config, params, ids, mask_key=jax.random.key(1),
    ...                        attack_key=jax.random.key(2), mask_id=103)
    >>> data.decode(tok, rec.result.ids)
    'he played my brother.'
  """
  ids = jnp.asarray(ids, jnp.int32)
  example = client.mask_tokens(ids, mask_key, mask_id=mask_id,
                               rate=mask_rate)
  target = jax.block_until_ready(_client_gradient(example, params,
                                                  config=config))
  start = time.perf_counter()
  leak = leakage.analyse_leak(
      target, length=ids.shape[0] if given_length else None,
      max_labels=max_labels)
  result = relaxed.attack(config, params, target, leak, key=attack_key,
                          mask_id=mask_id, **attack_kwargs)
  return Recovery(example, leak, result, time.perf_counter() - start)


FALLBACKS = ('dlg', 'none')


class BatchRecovery(NamedTuple):
  """A batch attacked end to end (`recover_batch`).

  Attributes:
    example: the client's batch.
    leak: what the spans gave away.
    assembly: the sentences the span assembly found.
    sentences: the recovered sentences, labels in place, any order: the
      fallback's where it ran, else the assembly's.
    seconds: the attacker's wall time: leak, assembly, fallback and labels.
    fallback: the fallback's result, None where it did not run.
  """
  example: batch.BatchExample
  leak: spans.BatchLeak
  assembly: spans.Assembly
  sentences: list[np.ndarray]
  seconds: float
  fallback: batch_relaxed.FallbackResult | None = None


@functools.partial(jax.jit, static_argnames='config')
def _batch_gradient(example, params, *, config):
  return batch.batch_gradient(config, params, example)


def recover_batch(config: bert.BertConfig, params: Params,
                  sentences: Sequence[ArrayLike], *,
                  mask_keys: Sequence[jax.Array], mask_id: int, cls_id: int,
                  sep_id: int, pad_id: int = 0, mask_rate: float = 0.15,
                  bucket: int = 8, max_labels: int | None = None,
                  defense: Callable[[Params], Params] | None = None,
                  callback: Callable[[str], None] | None = None,
                  fallback: str = 'none',
                  fallback_key: jax.Array | None = None,
                  **fallback_kwargs) -> BatchRecovery:
  """The client's MLM step on a batch, then the span attack on its gradient.

  Where the span assembly leaves a sentence unverified (fewer than `B`
  sentences, or one failing the exact span test) and `fallback='dlg'`, the
  relaxed batch optimisation (`dlg_jax.text.batch_relaxed.fallback`) takes
  over from the assembly's guesses, its exact sentences held fixed; an
  exact assembly is returned as it is.

  Args:
    config: the model's shape.
    params: the shared model.
    sentences: `B` arrays of `[n_b]` ids, `[CLS] ... [SEP]`.
    mask_keys: `B` PRNG keys of the client's masking, one per sentence.
    mask_id: id of `[MASK]`.
    cls_id: id of `[CLS]`.
    sep_id: id of `[SEP]`.
    pad_id: id of `[PAD]`.
    mask_rate: fraction of word pieces the client predicts.
    bucket: the batch is padded to a multiple of this length (padding does
      not change the gradient), so that batches share a compilation.
    max_labels: cap on the leaked labels (None: all).
    defense: applied by the client to its gradient before sharing.
    callback: receives a line on what was leaked (and, in the fallback, a
      line per snapshot).
    fallback: 'dlg' or 'none' (see above).
    fallback_key: PRNG key of the fallback's starts and initial noise
      (None: key 0). The fallback assumes the client's `mask_rate` (the
      protocol's, known to the server) when it decodes.
    **fallback_kwargs: passed on to `dlg_jax.text.batch_relaxed.fallback`.

  Returns:
    The `BatchRecovery`.
  """
  if fallback not in FALLBACKS:
    raise ValueError(f'Unknown fallback {fallback!r}; choose one of '
                     f'{FALLBACKS}.')
  longest = max(int(np.asarray(s).size) for s in sentences)
  length = min(-(-longest // bucket) * bucket, config.max_position_embeddings)
  example = batch.mask_batch(sentences, mask_keys, mask_id=mask_id,
                             pad_id=pad_id, rate=mask_rate, length=length)
  target = _batch_gradient(example, params, config=config)
  if defense is not None:
    target = defense(target)
  target = jax.block_until_ready(target)
  start = time.perf_counter()
  leak, assembly, recovered = spans.recover_inputs(
      config, params, target, batch_size=len(sentences), cls_id=cls_id,
      sep_id=sep_id, mask_id=mask_id, max_labels=max_labels,
      callback=callback)
  result = None
  if fallback == 'dlg' and (len(assembly.inputs) < len(sentences)
                            or not all(assembly.exact)):
    def report(step, value):
      if callback:
        callback(f'fallback: step {step}, objective {value:.4f}')
    result = batch_relaxed.fallback(
        config, params, target, leak, assembly, batch_size=len(sentences),
        key=jax.random.key(0) if fallback_key is None else fallback_key,
        cls_id=cls_id, sep_id=sep_id, mask_id=mask_id, pad_id=pad_id,
        mask_rate=mask_rate, callback=report, **fallback_kwargs)
    if result is not None:
      recovered = result.sentences
  return BatchRecovery(example, leak, assembly, recovered,
                       time.perf_counter() - start, result)
