"""Label recovery read off the shared gradient, without optimisation."""

from typing import Any

import jax
import jax.numpy as jnp


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
