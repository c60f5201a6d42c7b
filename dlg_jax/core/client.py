"""What a federated client computes and shares.

A FedSGD client shares the gradient of its loss on a batch (`gradient`); a
FedAvg client runs several local SGD steps and shares the weight difference
(`fedavg_update`). The loss is cross-entropy against soft labels, so that the
same functions serve the client (one-hot labels) and the attacker (softmax of
dummy label logits, as in DLG), and the attacker differentiates through them.

`Client` names what a client does (FedSGD or FedAvg, with its settings);
`Victim` is the shared model with its state (BatchNorm statistics), for
models that have one: every function here takes either plain parameters or
a `Victim`, and differentiates the parameters only.
"""

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlg_jax.core import errors

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class Victim(NamedTuple):
  """The shared model: its parameters and the state its forward pass reads.

  Attributes:
    params: the trainable parameters; gradients and updates are shaped like
      them.
    state: the model's other variable collections, such as
      `{'batch_stats': ...}` of a Flax model with BatchNorm. The client's
      `apply_fn` reads it (`dlg_jax.vision.models.ModelApply` passes it to
      `model.apply`), nothing differentiates it. What the attacker knows of
      it is part of the threat: the server sent it, so an attacker who is
      the server knows it.
  """
  params: Params
  state: Any


def trainable(params: Params | Victim) -> Params:
  """The parameters of plain parameters or of a `Victim`."""
  return params.params if isinstance(params, Victim) else params


def rebuild(params: Params | Victim) -> Callable[[Params], Params | Victim]:
  """A function putting new trainable parameters back where `params` had them.

  Plain parameters are replaced; a `Victim` keeps its state.
  """
  if isinstance(params, Victim):
    return lambda p: params._replace(params=p)
  return lambda p: p


def soft_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Mean cross-entropy of `[batch, k]` logits against `[batch, k]` soft labels."""
  return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))


def loss(apply_fn: ApplyFn, params: Params, x: ArrayLike,
         labels: ArrayLike) -> jax.Array:
  """The client's training loss on a batch.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters (the shared global model), or a `Victim`.
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
    params: the model's parameters, or a `Victim` (its state is held fixed).
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels.

  Returns:
    A pytree shaped like the (trainable) parameters.
  """
  put = rebuild(params)
  return jax.grad(lambda p: loss(apply_fn, put(p), x, labels))(
      trainable(params))


def check_fedavg(batch: int, *, local_steps: int, learning_rate: float,
                 local_batch_size: int) -> int:
  """Validates FedAvg settings; returns the local batch size (0 -> `batch`).

  Raises:
    ValueError: naming the bad setting.
  """
  if isinstance(local_steps, bool) or not isinstance(local_steps, int) or (
      local_steps < 1):
    raise ValueError(f'local_steps must be an int >= 1, got {local_steps!r}.')
  if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {learning_rate!r}.')
  size = local_batch_size or batch
  if size < 1 or batch % size:
    raise ValueError(
        f'local_batch_size must divide the batch ({batch}) or be 0 (the '
        f'whole batch), got {local_batch_size!r}.')
  return size


def fedavg_update(apply_fn: ApplyFn, params: Params, x: ArrayLike,
                  labels: ArrayLike, *, local_steps: int,
                  learning_rate: float, local_batch_size: int = 0) -> Params:
  """The update a FedAvg client shares: its weights before minus after.

  The client splits its `batch` examples, in order, into mini-batches of
  `local_batch_size` and takes `local_steps` plain SGD steps, step k on
  mini-batch `k mod (batch / local_batch_size)` (so `local_steps` equal to
  that number is one local epoch). It shares `params - params_after`, which
  for one step on the whole batch is `learning_rate * gradient(...)`.

  The steps run under `lax.scan`, so an attacker differentiates through all
  of them at the cost of one unrolled pass (Geiping et al. 2020, section 5).

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the global model the client starts from, or a `Victim` (its
      state is held at the global model's: the update covers parameters).
    x: `[batch, h, w, c]` the client's inputs.
    labels: `[batch, num_classes]` soft labels.
    local_steps: SGD steps K >= 1.
    learning_rate: the client's SGD learning rate.
    local_batch_size: examples per step; 0 uses the whole batch each step.

  Returns:
    A pytree shaped like the (trainable) parameters.

  Example:

    >>> update = fedavg_update(apply_fn, params, x, onehot, local_steps=4,
    ...                        learning_rate=0.1)

  References:
    McMahan, Moore, Ramage, Hampson and Aguera y Arcas,
    "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017 (FedAvg).
    Geiping, Bauermeister, Droege and Moeller, "Inverting Gradients - How
    easy is it to break privacy in federated learning?", NeurIPS 2020.
  """
  x = jnp.asarray(x)
  labels = jnp.asarray(labels)
  batch = x.shape[0]
  size = check_fedavg(batch, local_steps=local_steps,
                      learning_rate=learning_rate,
                      local_batch_size=local_batch_size)
  num_batches = batch // size
  xs = x.reshape(num_batches, size, *x.shape[1:])
  ys = labels.reshape(num_batches, size, *labels.shape[1:])

  put = rebuild(params)

  def step(p, k):
    if num_batches == 1:
      g = gradient(apply_fn, put(p), x, labels)
    else:
      j = k % num_batches
      g = gradient(apply_fn, put(p), xs[j], ys[j])
    return jax.tree.map(lambda a, b: a - learning_rate * b, p, g), None

  start = trainable(params)
  final, _ = jax.lax.scan(step, start, jnp.arange(local_steps))
  return jax.tree.map(lambda a, b: a - b, start, final)


def per_example_gradients(apply_fn: ApplyFn, params: Params,
                          x: ArrayLike, labels: ArrayLike) -> Params:
  """Each example's own gradient, as a batch of one (`vmap` of the client).

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters, or a `Victim`.
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels.

  Returns:
    A pytree shaped like the (trainable) parameters with a leading
    `[batch]` axis on every leaf; its mean over that axis is
    `client.gradient` of the whole batch.
  """
  def one(xi, yi):
    return gradient(apply_fn, params, xi[None], yi[None])
  return jax.vmap(one)(jnp.asarray(x), jnp.asarray(labels))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Client:
  """What a client does with its batch, and so what it shares.

  Attributes:
    local_steps: local SGD steps K; 1 is FedSGD (the client shares its
      gradient), K > 1 is FedAvg (it shares the weight difference,
      `fedavg_update`).
    learning_rate: the local SGD learning rate (FedAvg only).
    local_batch_size: examples per local step (FedAvg only); 0 is the whole
      batch.
  """
  local_steps: int = 1
  learning_rate: float = 0.1
  local_batch_size: int = 0

  def __post_init__(self):
    if isinstance(self.local_steps, bool) or not isinstance(
        self.local_steps, int) or self.local_steps < 1:
      raise errors.FieldError(
          'local_steps', f'must be an int >= 1 (1 is FedSGD), got '
          f'{self.local_steps!r}.')
    if not self.learning_rate > 0:
      raise errors.FieldError(
          'learning_rate', f'must be > 0, got {self.learning_rate!r}.')
    if self.local_batch_size < 0:
      raise errors.FieldError(
          'local_batch_size', f'must be >= 0 (0 is the whole batch), got '
          f'{self.local_batch_size!r}.')

  @property
  def fedavg(self) -> bool:
    """Whether the client shares a multi-step FedAvg update."""
    return self.local_steps > 1

  def check_batch(self, batch: int) -> None:
    """Checks these settings against a client batch of `batch` examples.

    Raises:
      FieldError: `local_batch_size` does not divide `batch`, or is not the
        whole batch under FedSGD.
    """
    size = self.local_batch_size or batch
    if batch % size:
      raise errors.FieldError(
          'local_batch_size', f'must divide the batch ({batch}) or be 0 (the '
          f'whole batch), got {self.local_batch_size}.')
    if size != batch and not self.fedavg:
      raise errors.FieldError(
          'local_batch_size', 'must be 0 or the batch with local_steps=1 '
          f'(FedSGD: one step on the whole batch), got '
          f'{self.local_batch_size}.')

  def update(self, apply_fn: ApplyFn, params: Params | Victim, x: ArrayLike,
             labels: ArrayLike) -> Params:
    """What the client shares: its gradient (FedSGD) or FedAvg update."""
    if not self.fedavg:
      return gradient(apply_fn, params, x, labels)
    return fedavg_update(apply_fn, params, x, labels,
                         local_steps=self.local_steps,
                         learning_rate=self.learning_rate,
                         local_batch_size=self.local_batch_size)
