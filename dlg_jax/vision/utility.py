"""What a gradient defense costs learning: accuracy of a model trained under it.

Section 5 of the DLG paper (Zhu, Liu and Han 2019) weighs each defense
against the leak it stops and the accuracy it costs: noise loud enough to
stop DLG also hurts accuracy, low precision leaves both alone, and
gradient pruning is the most effective defense that keeps the training
setting. This module measures the accuracy side. A small classifier is trained
with mini-batch SGD where every step's gradient first passes through the
defense, exactly what a FedSGD server receiving defended gradients would
apply, and its accuracy is measured on held-out images.

The model is the DLG LeNet of `models.py` (three 5x5 convolutions of 12
channels, one dense layer) with 10 classes, but with ReLU and
uniform(-0.2, 0.2) weights (`init_scale=0.2`). The attacked model's
sigmoids with uniform(-0.5, 0.5) weights are saturated: under SGD (momentum
0.9, learning rates 0.1 to 3) they stayed at chance (7-13% held-out
accuracy) after 150 steps on the bundled MNIST samples. With ReLU, a
smaller init (0.05) sat at chance for the first ~100 steps (one seed of
five still there at step 100); at 0.2 every seed tried was at 78-87% after
50 steps. SGD rather than Adam because Adam
divides each step by the running RMS of the (defended) gradient, which
rescales added noise away and so measures a different defense than the
one a FedSGD server applies. (In a 150-step probe with Adam at 3e-3 on the
sigmoid LeNet, variance-1e-3 noise cost 23 points of 72; with SGD here it
costs about 1 of 86, see `configs/utility.py` for the measured table.)

Randomness is common across strengths: for one seed the initial weights,
the mini-batch order and the unit noise draws are the same at every
strength, so differences between strengths come from the defense alone.

Example:

  >>> from dlg_jax.vision import data, utility
  >>> ds = data.load_bundled('mnist')
  >>> split = utility.split(ds.x, ds.y, num_test=100)
  >>> acc = utility.accuracy_grid('gaussian', [1e-4, 1e-2], split,
  ...                             seeds=(0, 1), steps=250)
  >>> acc.shape  # [strengths, seeds]
  (2, 2)

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep Learning
  with Differential Privacy", CCS 2016 (DP-SGD).
"""

from collections.abc import Sequence
import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from dlg_jax.core import client
from dlg_jax.core import defenses
from dlg_jax.vision import data
from dlg_jax.vision import models
# The no-defense baseline: the mini-batch gradient as is. Its one strength
# (conventionally 0) is ignored.
BASELINE = 'none'

# The defaults measured in configs/utility.py: 16 epochs of 400 images.
DEFAULT_STEPS = 200
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 0.02
DEFAULT_MOMENTUM = 0.9
DEFAULT_CLIP_NORM = 1.0
DEFAULT_INIT_SCALE = 0.2
DEFAULT_ACTIVATION = 'relu'


class Split(NamedTuple):
  """Training and held-out images.

  Attributes:
    train_x: `[n_train, h, w, c]` float images.
    train_y: `[n_train]` int labels.
    test_x: `[n_test, h, w, c]` float images.
    test_y: `[n_test]` int labels.
  """
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def split(x: ArrayLike, y: ArrayLike, *, num_test: int = 100) -> Split:
  """Deterministically holds out the LAST `num_test` samples for testing.

  No shuffling, so a split is the same on every machine. For the bundled
  MNIST samples (the MNIST test images 0-499, in order) the default gives
  images 0-399 to train on (27-57 per class) and 400-499 to test on (8-13
  per class).

  Args:
    x: `[n, h, w, c]` images.
    y: `[n]` integer labels.
    num_test: held-out count, in `[1, n - 1]`.

  Returns:
    The `Split`.

  Raises:
    ValueError: bad shapes or `num_test`, naming the argument.
  """
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 4:
    raise ValueError(f'x must be [n, h, w, c], got shape {x.shape}.')
  if y.shape != x.shape[:1]:
    raise ValueError(
        f'y must be [n] with n = {x.shape[0]} (one label per image), got '
        f'shape {y.shape}.')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}.')
  n = x.shape[0]
  if (isinstance(num_test, bool) or not isinstance(num_test, numbers.Integral)
      or not 1 <= num_test < n):
    raise ValueError(
        f'num_test must be an int in [1, {n - 1}] (n = {n} samples), got '
        f'{num_test!r}.')
  cut = n - num_test
  return Split(x[:cut].astype(np.float32), y[:cut].astype(np.int32),
               x[cut:].astype(np.float32), y[cut:].astype(np.int32))


def check_defense(name: str, strengths: ArrayLike) -> None:
  """Validates a defense name and its (concrete) strengths for training.

  Args:
    name: `'none'` or a name in `defenses.REGISTRY`.
    strengths: a strength or an array of them (see
      `defenses.check_strength`).

  Raises:
    ValueError: naming `defense` (unknown name) or `strength` (bad value).
  """
  if not isinstance(name, str):
    raise ValueError(f'defense must be a str, got {name!r}.')
  if name == BASELINE:
    values = np.asarray(strengths, np.float64)
    if not np.all(np.isfinite(values) & (values >= 0)):
      raise ValueError(f'strength for {name!r} must be finite and >= 0 '
                       f'(it is ignored), got {strengths!r}.')
    return
  if name not in defenses.REGISTRY:
    raise ValueError(
        f'Unknown defense {name!r}; choose {BASELINE!r} or one of '
        f'{sorted(defenses.REGISTRY)}.')
  defenses.check_strength(name, strengths)


def is_per_example(name: str) -> bool:
  """Whether `name` clips per-example gradients at `clip_norm` (DP-SGD).

  Its strength is then a noise multiplier; `'none'` is not.
  """
  return name != BASELINE and defenses.lookup(name).per_example


def _shared_gradient(defense: str, apply_fn: client.ApplyFn, params,
                     x: jax.Array, labels: jax.Array, key: jax.Array,
                     strength: jax.Array, clip_norm: jax.Array):
  """The mini-batch gradient as the server receives it under `defense`."""
  if is_per_example(defense):
    # One example at a time under lax.scan, never a vmap over examples:
    # see defenses.clipped_mean_gradient.
    return defenses.dp_sgd_gradient(key, apply_fn, params, x, labels,
                                    strength, clip_norm=clip_norm)
  grads = client.gradient(apply_fn, params, x, labels)
  if defense == BASELINE:
    return grads
  return defenses.lookup(defense).fn(key, grads, strength)


def train_and_evaluate(key: jax.Array, strength: ArrayLike,
                       train_x: ArrayLike, train_y: ArrayLike,
                       test_x: ArrayLike, test_y: ArrayLike, *,
                       defense: str, steps: int,
                       batch_size: int = DEFAULT_BATCH_SIZE,
                       learning_rate: ArrayLike = DEFAULT_LEARNING_RATE,
                       momentum: ArrayLike = DEFAULT_MOMENTUM,
                       clip_norm: ArrayLike = DEFAULT_CLIP_NORM,
                       num_classes: int = 10,
                       init_scale: float = DEFAULT_INIT_SCALE,
                       activation: str = DEFAULT_ACTIVATION) -> jax.Array:
  """Trains one LeNet under one defense at one strength; its test accuracy.

  One seed and one strength: `accuracy_grid` vmaps this over both. Pure and
  traceable in `key`, `strength`, the data, `learning_rate`, `momentum` and
  `clip_norm`; `defense`, `steps`, `batch_size`, `num_classes`,
  `init_scale` and `activation` fix the program.

  The `steps` mini-batches walk through successive random permutations of
  the training set (epochs), so every image is seen once per
  `n_train / batch_size` steps. Each step's mean gradient goes through the
  defense (for DP-SGD: each example's gradient is clipped to `clip_norm`,
  averaged and noised with multiplier `strength`), then SGD with momentum
  applies it.

  Args:
    key: a PRNG key; its fold-ins 0, 1 and 2 draw the initial weights, the
      batch order and the defense's randomness (folded with the step).
    strength: the defense's scalar strength (ignored by `'none'` and the
      defenses whose `DefenseSpec.strength` is `defenses.IGNORED`).
    train_x: `[n_train, h, w, c]` images.
    train_y: `[n_train]` int labels.
    test_x: `[n_test, h, w, c]` images.
    test_y: `[n_test]` int labels.
    defense: `'none'` or a name in `defenses.REGISTRY`.
    steps: SGD steps >= 1.
    batch_size: images per step, at most `n_train`.
    learning_rate: SGD learning rate.
    momentum: heavy-ball momentum in [0, 1).
    clip_norm: the per-example L2 bound of a per-example defense (DP-SGD);
      unused by the others.
    num_classes: the classifier's outputs.
    init_scale: LeNet's uniform init bound.
    activation: LeNet's activation, a key of `models.ACTIVATIONS`.

  Returns:
    The scalar fraction of `test_x` classified right; a non-finite output
    (diverged training) counts as wrong.
  """
  train_x, test_x = jnp.asarray(train_x), jnp.asarray(test_x)
  train_y, test_y = jnp.asarray(train_y), jnp.asarray(test_y)
  model = models.LeNet(num_classes=num_classes, activation=activation,
                       init_scale=init_scale)
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.fold_in(key, 0),
                              train_x.shape[1:])
  n = train_x.shape[0]
  epochs = math.ceil(steps * batch_size / n)
  order = jax.vmap(lambda k: jax.random.permutation(k, n))(
      jax.random.split(jax.random.fold_in(key, 1), epochs))
  batches = order.reshape(-1)[:steps * batch_size].reshape(steps, batch_size)
  labels = jax.nn.one_hot(train_y, num_classes)
  noise_key = jax.random.fold_in(key, 2)
  opt = optax.sgd(learning_rate, momentum=momentum)

  def step(carry, inputs):
    params, opt_state = carry
    i, idx = inputs
    grads = _shared_gradient(defense, apply_fn, params, train_x[idx],
                             labels[idx], jax.random.fold_in(noise_key, i),
                             strength, clip_norm)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                (jnp.arange(steps), batches))
  logits = apply_fn(params, test_x)
  right = (jnp.argmax(logits, -1) == test_y) & jnp.all(
      jnp.isfinite(logits), -1)
  return jnp.mean(right.astype(jnp.float32))


@functools.partial(
    jax.jit, static_argnames=('defense', 'steps', 'batch_size', 'num_classes',
                              'init_scale', 'activation'))
def _grid(keys, strengths, train_x, train_y, test_x, test_y, learning_rate,
          momentum, clip_norm, **static):
  """`[num_strengths, num_seeds]` accuracies, one compile per static set."""
  def one(key, strength):
    return train_and_evaluate(
        key, strength, train_x, train_y, test_x, test_y,
        learning_rate=learning_rate, momentum=momentum, clip_norm=clip_norm,
        **static)
  over_seeds = jax.vmap(one, in_axes=(0, None))
  return jax.vmap(over_seeds, in_axes=(None, 0))(keys, strengths)


def _check_training(data_split: Split, *, seeds, steps, batch_size,
                    learning_rate, momentum, clip_norm, num_classes,
                    activation) -> None:
  n_train = data_split.train_x.shape[0]
  if not len(seeds):
    raise ValueError('seeds must name at least one seed, got none.')
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or (
      steps < 1):
    raise ValueError(f'steps must be an int >= 1, got {steps!r}.')
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, numbers.Integral) or not 1 <= batch_size <= n_train:
    raise ValueError(f'batch_size must be an int in [1, {n_train}] (the '
                     f'training images), got {batch_size!r}.')
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {learning_rate!r}.')
  if not 0 <= momentum < 1:
    raise ValueError(f'momentum must be in [0, 1), got {momentum!r}.')
  if not clip_norm > 0:
    raise ValueError(f'clip_norm must be > 0, got {clip_norm!r}.')
  models.get_activation(activation)
  for y, what in ((data_split.train_y, 'train_y'),
                  (data_split.test_y, 'test_y')):
    try:
      data.check_labels(y, num_classes)
    except ValueError as e:
      raise ValueError(f'{what}: {e}') from None


def accuracy_grid(defense: str, strengths: ArrayLike, data_split: Split, *,
                  seeds: Sequence[int] = (0,),
                  steps: int = DEFAULT_STEPS,
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  learning_rate: float = DEFAULT_LEARNING_RATE,
                  momentum: float = DEFAULT_MOMENTUM,
                  clip_norm: float = DEFAULT_CLIP_NORM,
                  num_classes: int = 10,
                  init_scale: float = DEFAULT_INIT_SCALE,
                  activation: str = DEFAULT_ACTIVATION) -> np.ndarray:
  """Test accuracy after training under `defense` at every strength and seed.

  One jit-compiled program per `defense` (and shapes) runs the whole
  strength grid and all seeds at once, vmapped; a second call with other
  strengths, seeds or learning rate of the same length reuses it.

  Args:
    defense: `'none'` (baseline) or a name in `defenses.REGISTRY`.
    strengths: `[num_strengths]` strengths (for a per-example defense,
      DP-SGD, noise multipliers).
    data_split: training and test images, e.g. from `split`.
    seeds: one model per seed (its init, batch order and noise).
    steps: SGD steps.
    batch_size: images per step.
    learning_rate: SGD learning rate.
    momentum: SGD momentum.
    clip_norm: DP-SGD's per-example clip norm C.
    num_classes: classifier outputs; every label must be below it.
    init_scale: LeNet's uniform init bound.
    activation: LeNet's activation.

  Returns:
    float `[num_strengths, num_seeds]` test accuracies.

  Raises:
    ValueError: a bad argument, named in the message.
  """
  strengths = np.atleast_1d(np.asarray(strengths, np.float32))
  if strengths.ndim != 1 or not strengths.size:
    raise ValueError(
        f'strengths must be a non-empty 1-D list, got {strengths!r}.')
  check_defense(defense, strengths)
  seeds = tuple(int(s) for s in np.atleast_1d(seeds))
  _check_training(data_split, seeds=seeds, steps=steps,
                  batch_size=batch_size, learning_rate=learning_rate,
                  momentum=momentum, clip_norm=clip_norm,
                  num_classes=num_classes, activation=activation)
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  acc = _grid(keys, jnp.asarray(strengths), *data_split,
              jnp.float32(learning_rate), jnp.float32(momentum),
              jnp.float32(clip_norm), defense=defense, steps=int(steps),
              batch_size=int(batch_size), num_classes=int(num_classes),
              init_scale=float(init_scale), activation=activation)
  return np.asarray(acc)


def accuracy_table(defense_strengths: Sequence[tuple[str, Sequence[float]]],
                   x: ArrayLike, y: ArrayLike, *, num_test: int = 100,
                   include_baseline: bool = True,
                   seeds: Sequence[int] = (0,),
                   **train_kwargs) -> dict[tuple[str, float], float]:
  """Mean test accuracy per (defense, strength), for a sweep's grid.

  The call a defense sweep makes to put the utility beside the leak: it
  splits `(x, y)` with `split` and runs `accuracy_grid` per defense.

  Args:
    defense_strengths: `(name, strengths)` pairs, as `SweepSpec.defenses`.
    x: `[n, h, w, c]` images (e.g. the bundled MNIST, or TFDS data).
    y: `[n]` labels.
    num_test: held-out samples (the last ones), see `split`.
    include_baseline: also train without a defense, key `('none', 0.0)`.
    seeds: models per entry; the value is their mean accuracy.
    **train_kwargs: `steps`, `batch_size`, `learning_rate`, `momentum`,
      `clip_norm`, `num_classes`, `init_scale`, `activation` of
      `accuracy_grid`.

  Returns:
    `{(name, strength): mean accuracy}`, strengths as given (as floats).

  Example:

    >>> table = utility.accuracy_table(
    ...     [('gaussian', (1e-4, 1e-1)), ('int8', (0.0,))], ds.x, ds.y)
    >>> table[('gaussian', 1e-1)], table[('none', 0.0)]
  """
  data_split = split(x, y, num_test=num_test)
  grid = [(name, tuple(float(s) for s in strengths))
          for name, strengths in defense_strengths]
  for name, strengths in grid:  # All names checked before any training.
    check_defense(name, np.asarray(strengths))
  if include_baseline:
    grid = [(BASELINE, (0.0,))] + grid
  table = {}
  for name, strengths in grid:
    acc = accuracy_grid(name, strengths, data_split, seeds=seeds,
                        **train_kwargs)
    for s, a in zip(strengths, acc.mean(axis=1)):
      table[(name, s)] = float(a)
  return table
