"""What a federated client computes and shares: the gradient of its loss.

The loss is cross-entropy against soft labels, so that the same function serves
the client (one-hot labels) and the attacker (softmax of dummy label logits, as
in DLG).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


def soft_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Mean cross-entropy of `[batch, k]` logits against `[batch, k]` soft labels."""
  return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def loss(apply_fn: ApplyFn, params: Params, x: ArrayLike,
         labels: ArrayLike) -> jax.Array:
  """The client's training loss on a batch.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters (the shared global model).
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels (one-hot for true labels).

  Returns:
    The scalar mean cross-entropy.
  """
  return soft_cross_entropy(apply_fn(params, x), labels)


def gradient(apply_fn: ApplyFn, params: Params, x: ArrayLike,
             labels: ArrayLike) -> Params:
  """The gradient a FedSGD client shares: `jax.grad` of its mean loss.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters.
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels.

  Returns:
    A pytree shaped like `params`.
  """
  return jax.grad(loss, argnums=1)(apply_fn, params, x, labels)
