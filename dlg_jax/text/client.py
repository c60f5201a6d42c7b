"""What a federated client computes on one sentence: a masked-LM step.

The client takes one standard BERT masked-language-model step on its
sentence (`mask_tokens`, then `client_gradient`) and shares the gradient of
every weight, word embeddings included, as a FedSGD client does. The
attacker knows the model and this gradient.

The client's batch is one sentence, as in the DLG paper's figure; the leaks
of `dlg_jax.text.leakage` rest on it.

References:
  Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for
  Language Understanding", NAACL 2019, sec. 3.1.
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, sec. 4.2.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlg_jax.core import client as core_client
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
  relaxation (`dlg_jax.text.relaxed.dummy_loss`).

  Args:
    logits: `[length, vocab]`.
    labels: `[length, vocab]` soft labels.
    weights: `[length]` non-negative position weights.

  Returns:
    A scalar.
  """
  logits, labels, weights = map(jnp.asarray, (logits, labels, weights))
  # soft_cross_entropy is linear in the labels, and averages over positions.
  mean_ce = core_client.soft_cross_entropy(logits, weights[:, None] * labels)
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
