"""What a federated client computes on a batch of sentences: one MLM step.

The client masks each of its `B` sentences as `dlg_jax.text.client` masks
one (15% of the word pieces become `[MASK]`), pads them to a common length
with `[PAD]` behind an attention mask, and shares the gradient of BERT's
masked-LM loss, the mean cross-entropy over all masked positions of the
batch (as Hugging Face's `BertForMaskedLM` computes it).

Padding takes no part in the gradient, exactly: a padded position is hidden
from every query by the attention mask (its softmax weight underflows to 0)
and its loss weight is 0, so its rows of every weight gradient are zero, as
for a client that never padded. That is why the position-embedding gradient
still ends at the longest sentence (`dlg_jax.text.spans`).

References:
  Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for
  Language Understanding", NAACL 2019, sec. 3.1.
  Balunovic, Dimitrov, Jovanovic and Vechev, "LAMP: Extracting Text from
  Gradients with Language Model Priors", NeurIPS 2022 (batches of B
  sentences, one shared gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from dlg_jax.text import bert
from dlg_jax.text import client

Params = Any


class BatchExample(NamedTuple):
  """A client's masked-LM batch, padded to a common length.

  Attributes:
    ids: `[B, L]` the sentences' token ids, `[CLS] ... [SEP]`, then `pad_id`.
    inputs: `[B, L]` the model's input: `ids` with masked positions set to
      `[MASK]`.
    masked: `[B, L]` bool, the positions whose original token is predicted.
    valid: `[B, L]` bool, False at padding.
  """
  ids: jax.Array
  inputs: jax.Array
  masked: jax.Array
  valid: jax.Array

  @property
  def lengths(self) -> np.ndarray:
    """`[B]` each sentence's length, `[CLS]` and `[SEP]` included."""
    return np.asarray(self.valid).sum(axis=1)


def mask_batch(sentences: Sequence[ArrayLike], keys: Sequence[jax.Array], *,
               mask_id: int, pad_id: int = 0, rate: float = 0.15,
               length: int | None = None) -> BatchExample:
  """Masks each sentence as `client.mask_tokens` does, then pads them.

  Args:
    sentences: `B` arrays of `[n_b]` ids, each `[CLS] ... [SEP]`.
    keys: `B` PRNG keys, one per sentence (so that sentence `b` is masked as
      it would be alone with `keys[b]`).
    mask_id: the id of `[MASK]`.
    pad_id: the id of `[PAD]`.
    rate: fraction of word pieces to predict.
    length: the padded length `L`; None pads to the longest sentence.

  Returns:
    The `BatchExample`.
  """
  if len(sentences) != len(keys) or not sentences:
    raise ValueError(f'Need one key per sentence and at least one sentence; '
                     f'got {len(sentences)} sentences and {len(keys)} keys.')
  examples = [client.mask_tokens(s, k, mask_id=mask_id, rate=rate)
              for s, k in zip(sentences, keys)]
  longest = max(int(e.ids.shape[0]) for e in examples)
  length = longest if length is None else int(length)
  if length < longest:
    raise ValueError(f'length={length} is shorter than the longest sentence '
                     f'({longest} ids).')

  def pad(x, value):
    x = np.asarray(x)
    return np.concatenate([x, np.full(length - x.size, value, x.dtype)])

  return BatchExample(
      ids=jnp.asarray(np.stack([pad(e.ids, pad_id) for e in examples])),
      inputs=jnp.asarray(np.stack([pad(e.inputs, pad_id) for e in examples])),
      masked=jnp.asarray(np.stack([pad(e.masked, False) for e in examples])),
      valid=jnp.asarray(np.stack([np.arange(length) < e.ids.shape[0]
                                  for e in examples])))


def batch_loss(config: bert.BertConfig, params: Params,
               example: BatchExample) -> jax.Array:
  """Mean cross-entropy over every masked position of the batch."""
  logits = jax.vmap(lambda x, v: bert.apply(config, params, ids=x, valid=v))(
      example.inputs, example.valid)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, example.ids[..., None], axis=-1)
  weights = example.masked.astype(jnp.float32)
  return -jnp.sum(picked[..., 0] * weights) / jnp.maximum(jnp.sum(weights),
                                                          1.0)


def batch_gradient(config: bert.BertConfig, params: Params,
                   example: BatchExample) -> Params:
  """The gradient a FedSGD client shares for one MLM step on a batch.

  Args:
    config: the model's shape.
    params: the shared model's parameters.
    example: from `mask_batch`.

  Returns:
    A pytree shaped like `params`.
  """
  return jax.grad(lambda p: batch_loss(config, p, example))(params)
