"""Training the shared model before the attack, to study leakage from trained weights.

DLG's headline results use a randomly initialised model. Training changes what
the gradient reveals: a trained model's loss and gradients on its own training
data are small. `train` gives the attacked model that history, `evaluate`
measures it, and `save_model` / `restore_model` keep it as an orbax
checkpoint (`dlg_jax.core.checkpoint`) that describes the model it belongs
to, so that weights are never restored into another model.

A model with BatchNorm trains in training mode, as a client computes its
gradient: each minibatch is normalised by its own statistics, and the
running statistics (the model's `batch_stats` state) follow them, as
`model.apply(..., mutable=['batch_stats'])` updates them.
"""

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from dlg_jax.core import checkpoint
from dlg_jax.core import client
from dlg_jax.vision import models

# The checkpoint's folder inside a training workdir; `restore_model` takes
# the workdir or this folder.
CHECKPOINT_DIR = 'checkpoint'
# What a checkpoint of `save_model` says it is, and its layout's version.
FORMAT, VERSION = 'dlg_jax.vision.train', 1


def forward(apply_fn: client.ApplyFn, params: Any,
            x: jax.Array) -> tuple[jax.Array, Any]:
  """Logits of a training-mode forward pass, and the state it leaves.

  Args:
    apply_fn: `(params, x) -> logits`; one with a `with_state` method
      (`models.ModelApply`, `models.NnxApply`) also gives the updated state.
    params: plain parameters, or a `client.Victim`.
    x: `[batch, h, w, c]` images.

  Returns:
    `(logits [batch, num_classes], state)`: the state after the pass
    (BatchNorm's running statistics moved towards this batch's), None for
    plain parameters, and the given state for another `apply_fn` (which
    cannot say how it changes).
  """
  if not isinstance(params, client.Victim):
    return apply_fn(params, x), None
  if hasattr(apply_fn, 'with_state'):
    return apply_fn.with_state(params, x)
  return apply_fn(params, x), params.state


@functools.partial(jax.jit, static_argnames=(
    'apply_fn', 'num_classes', 'steps', 'learning_rate', 'batch_size'))
def _fit(params, state, x, y, key, *, apply_fn, num_classes, steps,
         learning_rate, batch_size):
  """`train`'s loop, compiled once per model, data shape and settings."""
  opt = optax.adam(learning_rate)
  labels = jax.nn.one_hot(y, num_classes)

  def step(carry, step_key):
    params, state, opt_state = carry
    idx = jax.random.randint(step_key, (batch_size,), 0, x.shape[0])

    def loss_fn(p):
      full = p if state is None else client.Victim(p, state)
      logits, new_state = forward(apply_fn, full, x[idx])
      return client.soft_cross_entropy(logits, labels[idx]), new_state

    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), state, opt_state), loss

  (params, state, _), losses = jax.lax.scan(
      step, (params, state, opt.init(params)), jax.random.split(key, steps))
  return params, state, losses


def train(apply_fn: client.ApplyFn, params: Any, x: ArrayLike, y: ArrayLike,
          key: ArrayLike, *, num_classes: int, steps: int,
          learning_rate: float = 1e-3,
          batch_size: int = 32) -> tuple[Any, jax.Array]:
  """Trains `params` with Adam on `(x, y)` for `steps` minibatch steps.

  Adam rather than SGD: the DLG LeNet's sigmoids with uniform(-0.5, 0.5)
  weights barely move under SGD (held-out MNIST accuracy 8% after 300
  steps), while Adam at 3e-3 reaches 86% on the bundled samples.

  The loop is one compiled `lax.scan`; a second call with the same model,
  shapes and settings does not compile again.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the initial parameters, or a `client.Victim`: its parameters
      are trained and its state follows the minibatches (`forward`: the
      BatchNorm running statistics of a `models.ModelApply` or
      `models.NnxApply`).
    x: `[n, h, w, c]` training images.
    y: `[n]` int labels.
    key: PRNG key for minibatch sampling.
    num_classes: the classifier's output count.
    steps: number of Adam steps (0 returns `params` unchanged).
    learning_rate: Adam's learning rate.
    batch_size: minibatch size, sampled with replacement.

  Returns:
    The trained parameters (a `client.Victim` with its updated state when
    given one) and the `[steps]` training losses.

  Raises:
    ValueError: `steps < 0` or `batch_size < 1`.
  """
  if steps < 0:
    raise ValueError(f'steps must be >= 0, got {steps}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if not steps:
    return params, jnp.zeros((0,), jnp.float32)
  victim = isinstance(params, client.Victim)
  trained, state, losses = _fit(
      client.trainable(params), params.state if victim else None,
      jnp.asarray(x), jnp.asarray(y), key, apply_fn=apply_fn,
      num_classes=num_classes, steps=steps, learning_rate=learning_rate,
      batch_size=batch_size)
  return (client.Victim(trained, state) if victim else trained), losses


@functools.partial(jax.jit, static_argnames=('apply_fn', 'num_classes'))
def _score(params, x, y, *, apply_fn, num_classes):
  logits = apply_fn(params, x)
  loss = client.soft_cross_entropy(logits, jax.nn.one_hot(y, num_classes))
  return jnp.sum(jnp.argmax(logits, -1) == y), loss * x.shape[0]


def evaluate(apply_fn: client.ApplyFn, params: Any, x: ArrayLike,
             y: ArrayLike, *, num_classes: int,
             batch_size: int = 100) -> dict[str, float]:
  """Accuracy and mean loss of the model on `(x, y)`, in batches.

  A model with BatchNorm is evaluated as it computes a client's gradient,
  in training mode: each batch of `batch_size` images (the last one may be
  smaller) is normalised by its own statistics.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the parameters, or a `client.Victim`.
    x: `[n, h, w, c]` images.
    y: `[n]` int labels.
    num_classes: the classifier's output count.
    batch_size: images per compiled call (at most two programs compile:
      full batches and the remainder).

  Returns:
    `{'accuracy': ..., 'loss': ...}` over all `n` images.
  """
  x, y = np.asarray(x), np.asarray(y)
  if not len(x) or batch_size < 1:
    raise ValueError(f'evaluate needs images and batch_size >= 1, got '
                     f'{len(x)} images and batch_size {batch_size}.')
  correct, loss = 0, 0.0
  for start in range(0, len(x), batch_size):
    c, l = _score(params, x[start:start + batch_size],
                  y[start:start + batch_size], apply_fn=apply_fn,
                  num_classes=num_classes)
    correct, loss = correct + int(c), loss + float(l)
  return {'accuracy': correct / len(x), 'loss': loss / len(x)}


def _jsonable(value: Any) -> Any:
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return repr(value)


def describe(model: nn.Module, name: str,
             image_shape: tuple[int, ...]) -> dict[str, Any]:
  """What a checkpoint says its weights belong to: model, fields and images.

  Args:
    model: the flax module.
    name: its zoo name (`models.MODELS`), for messages.
    image_shape: `(h, w, c)` of the images it takes.
  """
  fields = {f.name: _jsonable(getattr(model, f.name))
            for f in dataclasses.fields(model)
            if f.name not in ('parent', 'name')}
  return {'format': FORMAT, 'version': VERSION, 'model': name,
          'module': type(model).__name__, 'fields': fields,
          'image_shape': [int(d) for d in image_shape]}


def checkpoint_dir(path: str) -> str:
  """The checkpoint folder of `path`: a training workdir or the folder."""
  inner = os.path.join(path, CHECKPOINT_DIR)
  return inner if os.path.isdir(inner) else path


def save_model(directory: str, model: nn.Module, name: str,
               image_shape: tuple[int, ...], params: Any, *,
               meta: dict[str, Any] | None = None) -> None:
  """Saves `params` (and a `client.Victim`'s state) as an orbax checkpoint.

  Args:
    directory: the checkpoint folder (must not exist).
    model: the module the weights belong to.
    name: its zoo name.
    image_shape: `(h, w, c)` of its images.
    params: its parameters, or a `client.Victim`.
    meta: more JSON to store (how it was trained, its accuracy).
  """
  state = params.state if isinstance(params, client.Victim) else None
  checkpoint.save(directory, client.trainable(params), state=state,
                  meta={**(meta or {}), **describe(model, name, image_shape)})


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """`key saved != wanted` for each part of the description that differs."""
  out = [f'{key} {saved.get(key)!r} != {wanted[key]!r}'
         for key in ('model', 'module', 'image_shape')
         if saved.get(key) != wanted[key]]
  fields = saved.get('fields') or {}
  out += [f'{key} {fields.get(key)!r} != {value!r}'
          for key, value in wanted['fields'].items()
          if fields.get(key) != value]
  return out


def restore_model(path: str, model: nn.Module, name: str,
                  image_shape: tuple[int, ...]) -> Any:
  """The weights `save_model` wrote for this model, checked against it.

  Args:
    path: a training workdir (`experiments/train.py`) or its checkpoint
      folder.
    model: the module to restore into.
    name: its zoo name.
    image_shape: `(h, w, c)` of its images.

  Returns:
    The parameters, or a `client.Victim` with the saved state (BatchNorm's
    running statistics), as `models.init_params` returns them.

  Raises:
    FileNotFoundError: no folder at `path`.
    ValueError: not a checkpoint, unreadable, or of another model, number
      of classes or image shape (each difference named: saved != wanted).
  """
  directory = checkpoint_dir(path)
  meta = checkpoint.read_meta(directory)
  if meta.get('format') != FORMAT:
    raise ValueError(f'{directory} is not a checkpoint of a dlg_jax vision '
                     f'model (its format is {meta.get("format")!r}).')
  if meta.get('version') != VERSION:
    raise ValueError(f'{directory} has layout version '
                     f'{meta.get("version")!r}; this dlg_jax reads {VERSION}.')
  wanted = describe(model, name, image_shape)
  diffs = _differences(meta, wanted)
  if diffs:
    raise ValueError(f'{directory} holds the weights of another model '
                     f'(saved != wanted): {"; ".join(diffs)}.')
  like = jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0), image_shape))
  victim = isinstance(like, client.Victim)
  params, state = checkpoint.restore(
      directory, client.trainable(like), like.state if victim else None)
  return client.Victim(params, state) if victim else params

