"""How well a noisy gradient can determine the image, to first order.

The pipeline of `experiments/noise_bound.py` (its docstring holds the
measured table). The setup is that of `configs/defenses.py`: the bundled
CIFAR-100 images and the DLG sigmoid LeNet with the weights that
`common.build` makes (init_seed 0). For each image, `run` computes `J^T J`,
with `J` the Jacobian of the shared gradient in the image, at the image and
with its true one-hot label, and, for each noise variance, the expected MSE
and PSNR of the least-squares and the Bayes (MMSE) estimates in the
linearised model (`dlg_jax.vision.identifiability`), in float64.

It takes its flags' values, not a ConfigDict: the setup is fixed.
"""

from collections.abc import Sequence
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from configs import defenses as defenses_config
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import common
from dlg_jax.vision import identifiability


def _indices(name: str, values: Sequence[Any], count: int) -> list[int]:
  try:
    out = [int(v) for v in values]
  except (TypeError, ValueError):
    raise errors.ConfigError(
        f'{name} must be integers, got {list(values)}.') from None
  bad = [i for i in out if not 0 <= i < count]
  if bad:
    raise errors.ConfigError(
        f'{name}: no bundled CIFAR-100 image {bad}; there are {count} (0 to '
        f'{count - 1}).')
  if len(set(out)) != len(out):
    raise errors.ConfigError(f'{name} has repeats: {out}.')
  return out


def _variances(values: Sequence[Any]) -> list[float]:
  try:
    out = [float(v) for v in values]
  except (TypeError, ValueError):
    raise errors.ConfigError(
        f'--variances must be numbers, got {list(values)}.') from None
  if not out or not all(np.isfinite(v) and v > 0 for v in out):
    raise errors.ConfigError(
        f'--variances must be finite and > 0 (at least one), got {out}.')
  return out


def run(images: Sequence[Any], variances: Sequence[Any],
        prior_images: Sequence[Any] = (), out: str | None = None,
        chunk_size: int = 128) -> dict[str, Any]:
  """Computes the bounds and writes them to `out` (if given) as JSON.

  Args:
    images: the indices of the bundled CIFAR-100 images analysed.
    variances: the noise variances (> 0).
    prior_images: the indices of the images the prior is fitted on; empty
      means all the others.
    out: the JSON path, or None to skip writing.
    chunk_size: see `identifiability.gradient_jacobian_gram`.

  Returns:
    The JSON content: `images`, one record per image with its `spectrum`
    and a `bounds` list (one per variance), plus the setup and `seconds`.
  """
  start = time.time()
  config = defenses_config.get_config()
  ds = common.load_data(config)
  if not images:
    raise errors.ConfigError('--images must name at least one image.')
  images = _indices('--images', images, len(ds.x))
  variances = _variances(variances)
  prior_images = (
      _indices('--prior_images', prior_images, len(ds.x)) if prior_images
      else [i for i in range(len(ds.x)) if i not in images])
  if set(prior_images) & set(images):
    raise errors.ConfigError(
        f'--prior_images {prior_images} must not include the analysed '
        f'--images {images}.')
  if not prior_images:
    raise errors.ConfigError(
        '--prior_images: no images are left to fit the prior.')
  if chunk_size < 1:
    raise errors.ConfigError(f'--chunk_size must be >= 1, got {chunk_size}.')
  # Float64 throughout: the analysis hinges on eigenvalues 8 orders of
  # magnitude below the largest. A context, so that callers (tests) keep
  # their own setting.
  with jax.enable_x64(True):
    results = _bounds(config, ds, images, variances, prior_images,
                      chunk_size)
  results['seconds'] = time.time() - start
  _log_table(results)
  if out:
    figures.save_json(out, results)
    logging.info('wrote %s', out)
  return results


def _bounds(config, ds, images: list[int], variances: list[float],
            prior_images: list[int], chunk_size: int) -> dict[str, Any]:
  """The work of `run` on validated arguments, without `seconds`."""
  # Every image, so that any index is valid; the weights do not depend on
  # the count (no pretraining in this config).
  config.data.count = len(ds.x)
  ds, params, attack = common.build(config, ds)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
  x_all = np.asarray(ds.x, np.float64)
  prior_cov = identifiability.stationary_prior_covariance(
      x_all[prior_images])
  prior_mse = float(jnp.trace(prior_cov)) / prior_cov.shape[0]
  gram_fn = jax.jit(identifiability.gradient_jacobian_gram,
                    static_argnums=0, static_argnames='chunk_size')

  records = []
  v = np.asarray(variances)
  for i in images:
    t = time.time()
    onehot = jax.nn.one_hot(ds.y[i:i + 1], attack.threat.num_classes,
                            dtype=jnp.float64)
    gram = gram_fn(attack.threat, params, x_all[i:i + 1], onehot,
                   chunk_size=chunk_size)
    eig = jnp.linalg.eigvalsh(gram)
    floor = identifiability.default_floor(eig)
    ls = identifiability.least_squares_mse(eig, v, floor=floor)
    bayes = identifiability.bayes_mse(gram, prior_cov, v)
    records.append({
        'index': int(ds.index[i]),
        'label': int(ds.y[i]),
        'spectrum': identifiability.spectrum_summary(eig),
        'eigenvalue_floor': float(floor),
        'num_floored': int(jnp.sum(eig < floor)),
        'bounds': [{
            'variance': float(v[k]),
            'least_squares_mse': float(ls[k]),
            'least_squares_psnr': float(identifiability.mse_to_psnr(ls[k])),
            'bayes_mse': float(bayes[k]),
            'bayes_psnr': float(identifiability.mse_to_psnr(bayes[k])),
        } for k in range(len(v))],
        'seconds': time.time() - t,
    })
    logging.info('image %d: %.1f s, J^T J eigenvalues %s', i,
                 records[-1]['seconds'], records[-1]['spectrum'])

  return {
      'setup': {'config': 'configs/defenses.py', 'model': config.model.name,
                'init_seed': config.model.init_seed,
                'label': 'true one-hot', 'dtype': 'float64',
                'images': images, 'variances': variances,
                'prior_images': prior_images},
      'prior_mse': prior_mse,
      'prior_psnr': float(identifiability.mse_to_psnr(prior_mse)),
      'images': records,
  }


def _log_table(results: dict[str, Any]) -> None:
  lines = ['image  eig min / median / max      frac<0.01  variance  '
           'LS PSNR  Bayes PSNR']
  for r in results['images']:
    s = r['spectrum']
    for k, b in enumerate(r['bounds']):
      head = (f'{r["index"]:5d}  {s["min"]:.2g} / {s["median"]:.2g} / '
              f'{s["max"]:.3g}'.ljust(35) + f'{s["frac_below_0.01"]:.2f}'
              if k == 0 else '')
      lines.append(f'{head:<46}{b["variance"]:<10.0e}'
                   f'{b["least_squares_psnr"]:7.1f}  {b["bayes_psnr"]:9.1f}')
  lines.append(f'prior alone: {results["prior_psnr"]:.1f} dB; '
               f'{results["seconds"]:.0f} s')
  logging.info('expected PSNR (dB), linearised:\n%s', '\n'.join(lines))
