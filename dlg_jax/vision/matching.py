"""Pairing a batch's reconstructions with its originals.

A shared batch gradient is a mean over examples, so it does not keep their
order: the attack's slot j may hold any original. `match` pairs them by the
assignment that maximises the total PSNR (the Hungarian method), or with
`by='lpips'` that minimises the total LPIPS, and `matched_metrics` reports
MSE, PSNR, SSIM, LPIPS and label accuracy per original under that pairing.

Example:

  >>> import numpy as np
  >>> from dlg_jax.vision import matching
  >>> ref = np.random.rand(3, 32, 32, 3).astype(np.float32)
  >>> matching.match(ref[[2, 0, 1]], ref).tolist()
  [1, 2, 0]

References:
  Kuhn, "The Hungarian method for the assignment problem", Naval Research
  Logistics Quarterly 2(1-2), 1955.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import scipy.optimize

from dlg_jax.vision import metrics

# What `match` can pair by: PSNR (the default) or LPIPS.
PAIR_BY = ('psnr', 'lpips')


def psnr_matrix(x: ArrayLike, ref: ArrayLike) -> jax.Array:
  """PSNR of every reconstruction against every original.

  Args:
    x: reconstructions `[batch, h, w, c]`, clipped to [0, 1] here.
    ref: originals `[batch, h, w, c]` in [0, 1].

  Returns:
    float32 `[batch, batch]`, entry `[j, i]` the PSNR of `x[j]` against
    `ref[i]`.
  """
  x, ref = metrics.image_pair(x, ref, batched=True)
  x = jnp.clip(x, 0.0, 1.0)
  return jax.vmap(lambda a: jax.vmap(lambda b: metrics.psnr(a, b))(ref))(x)


def lpips_matrix(x: ArrayLike, ref: ArrayLike) -> jax.Array:
  """LPIPS of every reconstruction against every original.

  Args:
    x: reconstructions `[batch, h, w, c]`, clipped to [0, 1] here.
    ref: originals `[batch, h, w, c]` in [0, 1].

  Returns:
    float32 `[batch, batch]`, entry `[j, i]` the LPIPS of `x[j]` against
    `ref[i]`.
  """
  x, ref = metrics.image_pair(x, ref, batched=True)
  x = jnp.clip(x, 0.0, 1.0)
  n = x.shape[0]
  return metrics.lpips_batch(jnp.repeat(x, n, axis=0),
                             jnp.tile(ref, (n, 1, 1, 1))).reshape(n, n)


def match(x: ArrayLike, ref: ArrayLike, *, by: str = 'psnr') -> np.ndarray:
  """Which reconstruction goes with each original, by the best total score.

  Args:
    x: reconstructions `[batch, h, w, c]`.
    ref: originals `[batch, h, w, c]`.
    by: 'psnr' maximises the total PSNR; 'lpips' minimises the total LPIPS
      (the perceptual distance, `metrics.lpips`). The two can pair a batch
      differently: PSNR weighs every pixel error alike, LPIPS the features
      an ImageNet AlexNet sees.

  Returns:
    int `[batch]` permutation: `x[perm[i]]` is paired with `ref[i]`.

  Raises:
    ValueError: `by` is not in `PAIR_BY`, or bad shapes.
  """
  if by not in PAIR_BY:
    raise ValueError(f'by must be one of {PAIR_BY}, got {by!r}.')
  if by == 'psnr':
    cost = -np.asarray(psnr_matrix(x, ref), np.float64)
  else:
    cost = np.asarray(lpips_matrix(x, ref), np.float64)
  rows, cols = scipy.optimize.linear_sum_assignment(cost.T)
  perm = np.empty(len(rows), int)
  perm[rows] = cols
  return perm


class Matched(NamedTuple):
  """Per-original metrics under the best pairing, each `[batch]`.

  Attributes:
    matched_to: the reconstruction slot paired with each original.
    mse, psnr, ssim, lpips: image metrics of that pair (reconstruction
      clipped to [0, 1]).
    label_correct: whether the label in that slot is the original's.
  """
  matched_to: np.ndarray
  mse: np.ndarray
  psnr: np.ndarray
  ssim: np.ndarray
  lpips: np.ndarray
  label_correct: np.ndarray

  def mean(self) -> dict[str, float]:
    """Means over the batch of mse, psnr, ssim, lpips and label accuracy."""
    return {'mse': float(np.mean(self.mse)), 'psnr': float(np.mean(self.psnr)),
            'ssim': float(np.mean(self.ssim)),
            'lpips': float(np.mean(self.lpips)),
            'label_accuracy': float(np.mean(self.label_correct))}


def matched_metrics(x: ArrayLike, ref: ArrayLike, labels: ArrayLike,
                    true_labels: ArrayLike, *, by: str = 'psnr') -> Matched:
  """Pairs reconstructions with originals (`match`) and scores each pair.

  Args:
    x: reconstructions `[batch, h, w, c]`.
    ref: originals `[batch, h, w, c]`.
    labels: `[batch]` the attacker's label of each reconstruction slot.
    true_labels: `[batch]` the originals' labels.
    by: what to pair by, 'psnr' or 'lpips' (see `match`).

  Returns:
    A `Matched`, indexed by original.
  """
  x, ref = metrics.image_pair(x, ref, batched=True)
  labels = np.asarray(labels).reshape(-1)
  true_labels = np.asarray(true_labels).reshape(-1)
  if labels.shape != (x.shape[0],) or true_labels.shape != (x.shape[0],):
    raise ValueError(
        f'labels and true_labels must be [{x.shape[0]}], got {labels.shape} '
        f'and {true_labels.shape}.')
  perm = match(x, ref, by=by)
  paired = jnp.clip(x[perm], 0.0, 1.0)
  return Matched(
      matched_to=perm,
      mse=np.asarray(jax.vmap(metrics.mse)(paired, ref)),
      psnr=np.asarray(jax.vmap(metrics.psnr)(paired, ref)),
      ssim=np.asarray(jax.vmap(metrics.ssim)(paired, ref)),
      lpips=np.asarray(metrics.lpips_batch(paired, ref)),
      label_correct=labels[perm] == true_labels)
