"""Label recovery read off the shared gradient, without optimisation.

`idlg_label` reads the label of one example exactly; `batch_labels` reads the
labels of a batch: `yin_labels` when they are distinct, `label_counts` with
repeated labels too.
"""

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client


def find_last_layer(grads: Any, num_classes: int) -> tuple[str, ...]:
  """The path of the classifier layer: the last Dense kernel `[d, num_classes]`.

  Args:
    grads: a gradient (or parameter) pytree of nested dicts, as Flax makes.
    num_classes: the number of classes.

  Returns:
    The key path of the layer's dict (holding 'kernel' and maybe 'bias').
  """
  found = []

  def visit(tree, path):
    if isinstance(tree, dict):
      kernel = tree.get('kernel')
      if kernel is not None and getattr(kernel, 'ndim', 0) == 2 and (
          kernel.shape[-1] == num_classes):
        found.append(path)
      for key, value in tree.items():
        visit(value, path + (key,))

  visit(grads, ())
  if not found and not isinstance(grads, dict):
    raise ValueError(
        f'The label read-out walks nested dicts, as Flax linen makes; got a '
        f'{type(grads).__name__}. For an NNX module, use '
        '`dlg_jax.vision.models.from_nnx`, whose parameters and gradients '
        'are plain dicts.')
  if not found:
    raise ValueError(
        f'No Dense layer with {num_classes} outputs in the gradient; the '
        'analytic label needs the classifier layer (check num_classes).')
  return found[-1]


def idlg_label(grads: Any, num_classes: int) -> jax.Array:
  """The label of a single-image gradient, exactly, as in iDLG.

  With softmax cross-entropy the gradient of the logits is `p - onehot(y)`:
  negative at the true class only. The classifier's bias gradient is that
  vector itself. Without a bias, each kernel column is it times the
  features, and sums of non-negative features (after sigmoid or ReLU) keep
  the sign.

  Args:
    grads: the shared gradient of ONE example.
    num_classes: the number of classes.

  Returns:
    The scalar int32 label.

  References:
    Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients",
    arXiv:2001.02610, 2020.
  """
  layer = grads
  for key in find_last_layer(grads, num_classes):
    layer = layer[key]
  if 'bias' in layer:
    return jnp.argmin(layer['bias']).astype(jnp.int32)
  return jnp.argmin(jnp.sum(layer['kernel'], axis=0)).astype(jnp.int32)


def leaked_features(grads: Any, num_classes: int) -> jax.Array:
  """The classifier's input for a single-example gradient, exactly.

  A Dense layer `z = W^T h + b` has kernel gradient `h (dL/dz)^T` and bias
  gradient `dL/dz`, so any column `k` with a non-zero bias gradient gives
  `h = dW[:, k] / db[k]`: the features the classifier saw, whatever came
  before it (Geiping et al. 2020, Proposition D.1; the step R-GAP starts
  from). The column with the largest `|db[k]|` (with cross-entropy, the
  true class: `p_y - 1`) is taken, the best conditioned. For a batch the
  gradient is a sum over examples and this does not hold.

  Args:
    grads: the shared gradient of ONE example; its classifier (the last
      Dense layer with `num_classes` outputs) must have a bias.
    num_classes: the number of classes.

  Returns:
    `[d]` float32 features, `d` the classifier kernel's rows.

  Raises:
    ValueError: the classifier has no bias.

  References:
    Geiping, Bauermeister, Droege and Moeller, "Inverting Gradients - How
    easy is it to break privacy in federated learning?", NeurIPS 2020.
  """
  layer = _last_layer(grads, num_classes)
  if 'bias' not in layer:
    raise ValueError('leaked_features needs the classifier (the last Dense '
                     f'layer with {num_classes} outputs) to have a bias.')
  bias = layer['bias']
  k = jnp.argmax(jnp.abs(bias))
  return layer['kernel'][:, k] / bias[k]


LABEL_METHODS = ('idlg', 'yin', 'count')


def _check_batch(batch: int) -> None:
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f'batch must be an int >= 1, got {batch!r}.')


def _last_layer(grads: Any, num_classes: int) -> dict[str, jax.Array]:
  layer = grads
  for key in find_last_layer(grads, num_classes):
    layer = layer[key]
  return layer


def yin_labels(grads: Any, num_classes: int, batch: int) -> jax.Array:
  """The `batch` classes whose classifier columns have the lowest minimum.

  With non-negative features (after sigmoid or ReLU) a class absent from the
  batch has a kernel-gradient column `mean_i p_ic h_i >= 0`, so a negative
  entry marks a present class. Taking the `batch` most negative column
  minima assumes that the batch's labels are distinct: a repeated label is
  returned once, and the remaining slots go to absent classes. It can also
  miss a present class whose examples the model already predicts with high
  probability (`p_ic - 1` near 0) while the others push the column up; on a
  random LeNet that happens for some batches of 8 out of 10 classes.

  Args:
    grads: the shared gradient of a batch.
    num_classes: the number of classes.
    batch: the number of examples behind the gradient.

  Returns:
    `[batch]` int32 labels, sorted.

  References:
    Yin, Mallya, Vahdat, Alvarez, Kautz and Molchanov, "See through
    Gradients: Image Batch Recovery via GradInversion", CVPR 2021, eq. (4).
  """
  _check_batch(batch)
  if batch > num_classes:
    raise ValueError(f"The 'yin' label method returns distinct labels, so "
                     f'batch ({batch}) must be <= num_classes ({num_classes}).')
  kernel = _last_layer(grads, num_classes)['kernel']
  _, top = jax.lax.top_k(-jnp.min(kernel, axis=0), batch)
  return jnp.sort(top).astype(jnp.int32)


def label_counts(grads: Any, num_classes: int, batch: int,
                 params: Any | None = None) -> jax.Array:
  """How many examples of each class are in the batch behind `grads`.

  `estimate_counts` rounded to integers summing to `batch` (largest
  remainders); see there for the method and when it is exact.

  Returns:
    `[num_classes]` int32 counts summing to `batch`.
  """
  return round_counts(estimate_counts(grads, num_classes, batch, params),
                      batch)


def estimate_counts(grads: Any, num_classes: int, batch: int,
                    params: Any | None = None) -> jax.Array:
  """Real-valued estimates of the class counts in the batch behind `grads`.

  The classifier `z = W^T h + b` under mean softmax cross-entropy has the
  bias gradient `g = (1/B) sum_i (p_i - onehot(y_i))`, so the count of class
  c is

    n_c = sum_i p_ic - B g_c,

  exactly. The attacker knows `g` but not the predictions `p_i`. This
  estimates `sum_i p_ic` by `B softmax(W^T h_bar + b)_c`, where `h_bar` is
  read off the gradient itself:

    h_bar = sum_{c: g_c > 0} G_c / sum_{c: g_c > 0} g_c,

  with `G_c` the kernel-gradient column of class c. For a class absent from
  the batch `G_c / g_c = sum_i p_ic h_i / sum_i p_ic`, a weighted mean of the
  batch's features; classes with `g_c > 0` are mostly absent ones.

  When it is exact: for `batch == 1`, every ratio `G_c / g_c` equals the
  features `h` themselves, so `p` and the count are exact (the same label as
  `idlg_label`). For larger batches the estimate replaces the mean of the
  softmax by the softmax at a mean feature, so it is approximate: the error
  grows with `batch` and with how much the logits differ between examples.
  Measured on the DLG LeNet at its random initialisation (seed 0), over
  every bundled sample set (CIFAR-100, MNIST, SVHN, LFW) and batches of 2
  to 8 (all consecutive groups, 100 random subsets and 25 draws with
  repeats per size; `experiments/batch_study.py`), the largest error of a
  real count is 0.34 (SVHN, batch 7), below the 0.5 that rounding
  forgives, so every batch's counts were exact.

  Args:
    grads: the shared gradient of a batch (the mean over examples).
    num_classes: the number of classes.
    batch: the number of examples behind the gradient.
    params: the shared model's parameters (or a `client.Victim`); needed
      for `W` and `b`.

  Returns:
    `[num_classes]` float counts summing to `batch`.

  Raises:
    ValueError: the classifier has no bias, or `params` is missing.

  References:
    Geng, Mou, Li, Li, Jiang, Wang and Wei, "Towards General Deep Leakage in
    Federated Learning", arXiv:2110.09074, 2021 (counts from the bias
    gradient and an estimated softmax).
    Wainakh, Ventola, Müßig, Keim, Cordero, Zimmer, Grube, Kersting and
    Mühlhäuser, "User-Level Label Leakage from Gradients in Federated
    Learning", PETS 2022 (LLG).
  """
  _check_batch(batch)
  path = find_last_layer(grads, num_classes)
  layer = _last_layer(grads, num_classes)
  if 'bias' not in layer:
    raise ValueError("The 'count' label method needs the classifier's bias "
                     "gradient; this classifier has no bias.")
  if params is None:
    raise ValueError("The 'count' label method needs the model's params.")
  weights = client.trainable(params)
  for key in path:
    weights = weights[key]
  g, kernel = layer['bias'], layer['kernel']
  positive = g > 0
  h_bar = (jnp.sum(jnp.where(positive[None, :], kernel, 0.0), axis=1)
           / jnp.sum(jnp.where(positive, g, 0.0)))
  p_bar = jax.nn.softmax(h_bar @ weights['kernel'] + weights['bias'])
  return batch * (p_bar - g)


def round_counts(counts: jax.Array, total: int) -> jax.Array:
  """Rounds non-negative real `[k]` counts to integers summing to `total`.

  Floors the (clipped) counts, then gives the missing units to the largest
  fractional parts (or takes surplus units from the smallest ones).
  """
  counts = jnp.maximum(counts, 0.0)
  base = jnp.floor(counts)
  frac = counts - base
  short = total - jnp.sum(base).astype(jnp.int32)
  rank_up = jnp.argsort(jnp.argsort(-frac))
  rank_down = jnp.argsort(jnp.argsort(jnp.where(base > 0, frac, jnp.inf)))
  add = (rank_up < short).astype(base.dtype)
  sub = (rank_down < -short).astype(base.dtype)
  return (base + add - sub).astype(jnp.int32)


def counts_to_labels(counts: jax.Array, batch: int) -> jax.Array:
  """`[num_classes]` counts summing to `batch` -> `[batch]` sorted labels."""
  return jnp.repeat(jnp.arange(counts.shape[0], dtype=jnp.int32), counts,
                    total_repeat_length=batch)


def batch_labels(grads: Any, num_classes: int, batch: int, *,
                 method: str = 'count', params: Any | None = None
                 ) -> jax.Array:
  """The labels of a batch read off its shared gradient, without optimisation.

  The order of the labels is not the batch's (a gradient does not keep it):
  they come sorted by class, and a reconstruction is paired with its
  original afterwards (`dlg_jax.vision.matching`).

  Args:
    grads: the shared (mean) gradient of `batch` examples.
    num_classes: the number of classes.
    batch: the number of examples.
    method: 'idlg' (batch 1 only; exact, `idlg_label`), 'yin' (distinct
      labels, `yin_labels`) or 'count' (repeated labels too, `label_counts`;
      needs `params`).
    params: the shared model's parameters ('count' only).

  Returns:
    `[batch]` int32 labels, sorted.

  Raises:
    ValueError: unknown `method`, or 'idlg' with `batch > 1`.

  Example:

    >>> labels = batch_labels(grads, 100, 4, method='count', params=params)
  """
  if method not in LABEL_METHODS:
    raise ValueError(f'Unknown label method {method!r}; choose one of '
                     f'{list(LABEL_METHODS)}.')
  _check_batch(batch)
  if method == 'idlg':
    if batch != 1:
      raise ValueError("The 'idlg' label method is for batch 1 only; got "
                       f"batch={batch}; use 'count' for batches.")
    return idlg_label(grads, num_classes)[None]
  if method == 'yin':
    return yin_labels(grads, num_classes, batch)
  return counts_to_labels(
      label_counts(grads, num_classes, batch, params), batch)


def multiset_overlap(predicted: Any, true: Any) -> int:
  """How many labels of a batch are right as multisets (order is lost).

  The batch label accuracy of the field (e.g. Yin et al. 2021): the
  reconstructions' order says nothing, so `[3, 3, 5]` against `[5, 3, 7]`
  gets 2 right.
  """
  return sum((collections.Counter(np.asarray(predicted).tolist())
              & collections.Counter(np.asarray(true).tolist())).values())
