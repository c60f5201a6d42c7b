"""One sentence end to end: the client's MLM step, the leak, the attack.

`recover_sentence` plays both sides: the client masks its sentence and
shares the gradient (`dlg_jax.text.client`); the attacker reads what the
gradient leaks (`dlg_jax.text.leakage`) and runs the relaxed optimisation
(`dlg_jax.text.relaxed`) on it.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlg_jax.text import bert
from dlg_jax.text import client
from dlg_jax.text import leakage
from dlg_jax.text import relaxed

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
