r"""Recovers images and labels from client gradients (DLG / iDLG).

  python -m experiments.attack --config=configs/cifar100.py --workdir=runs/cifar100

Writes into the workdir `results.json` (a `records` list, one per target,
and a `summary`), `config.json` (to rerun), and `reconstruction.png` (ground
truth, then the reconstruction over iterations, as the DLG paper's figures).
"""

from collections.abc import Callable
import os
import statistics
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from dlg_jax import attack as attack_lib
from dlg_jax import client
from dlg_jax import data
from dlg_jax import figures
from dlg_jax import metrics
from dlg_jax import models

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the outputs.')


def _under(key: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls `fn`, prefixing a ValueError with the config key it came from."""
  try:
    return fn(*args, **kwargs)
  except ValueError as e:
    raise ValueError(f'{key}: {e}') from None


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that it can be written, before any work."""
  if not workdir:
    raise ValueError('--workdir is required.')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir {workdir!r} cannot be written: {e}') from None


def load_data(config) -> data.Dataset:
  """The targets named by `config.data`, errors naming the key."""
  cfg = config.data
  if cfg.npz:
    return _under('config.data.npz', data.load_dataset, cfg.source,
                  npz=cfg.npz, count=None)
  return _under('config.data.source', data.load_dataset, cfg.source,
                data_dir=cfg.data_dir or None, split=cfg.split, count=None)


def build(config, ds: data.Dataset):
  """Model, params and attack from the config, validated before compiling."""
  count = config.data.count
  if not 1 <= count <= len(ds.x):
    raise ValueError(f'config.data.count must be in [1, {len(ds.x)}] for '
                     f'{ds.name!r}, got {count}.')
  ds = ds._replace(x=ds.x[:count], y=ds.y[:count], index=ds.index[:count])
  model = _under('config.model', models.get_model, config.model.name,
                 num_classes=config.model.num_classes,
                 activation=config.model.activation or None)
  _under('config.model.num_classes', data.check_labels, ds.y,
         config.model.num_classes)
  image_shape = tuple(ds.x.shape[1:])
  try:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'config.model.name: model {config.model.name!r} does not take '
        f'images of shape {image_shape}: {e}') from None
  params = models.init_params(
      model, jax.random.PRNGKey(config.model.init_seed), image_shape)
  a = config.attack
  if a.restarts < 1:
    raise ValueError(f'config.attack.restarts must be >= 1, got {a.restarts}.')
  if a.chunk_size < 1:
    raise ValueError(
        f'config.attack.chunk_size must be >= 1, got {a.chunk_size}.')
  attack = _under(
      'config.attack', attack_lib.Attack,
      apply_fn=models.make_apply_fn(model), image_shape=image_shape,
      num_classes=config.model.num_classes, label_mode=a.label_mode,
      distance=a.distance, tv_weight=a.tv_weight, optimizer=a.optimizer,
      learning_rate=a.learning_rate, memory_size=a.memory_size,
      num_steps=a.num_steps, init=a.init, init_scale=a.init_scale, tol=a.tol,
      snapshot_steps=tuple(a.snapshot_steps),
      success_psnr=config.success_psnr)
  return ds, params, attack


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the attack described by `config` and writes the outputs to `workdir`.

  Returns:
    The content of `results.json`.
  """
  check_workdir(workdir)
  ds, params, attack = build(config, load_data(config))
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  logging.info('%d devices; attacking %d %s targets %s with %s',
               jax.device_count(), len(ds.x), ds.name, ds.x.shape[1:],
               config.model.name)

  x = jnp.asarray(ds.x)
  y = jnp.asarray(ds.y)
  onehot = jax.nn.one_hot(y, config.model.num_classes)
  grads = jax.jit(jax.vmap(lambda xi, yi: client.gradient(
      attack.apply_fn, params, xi[None], yi[None])))(x, onehot)
  bad = [int(i) for i in np.nonzero(~np.all(np.stack([
      np.all(np.isfinite(g), axis=tuple(range(1, g.ndim)))
      for g in jax.tree.leaves(grads)]), axis=0))[0]]
  if bad:
    raise ValueError(f'The shared gradients of targets {bad} are not finite.')

  result = attack_lib.reconstruct(
      attack, params, grads, y[:, None], jax.random.PRNGKey(config.seed),
      restarts=config.attack.restarts, ground_truth=x[:, None],
      chunk_size=config.attack.chunk_size,
      max_parallel=config.attack.max_parallel or None)

  recon = jnp.clip(jnp.asarray(result.x[:, 0]), 0.0, 1.0)
  mse = np.asarray(jax.vmap(metrics.mse)(recon, x))
  psnr = np.asarray(jax.vmap(metrics.psnr)(recon, x))
  ssim = np.asarray(jax.vmap(metrics.ssim)(recon, x))
  records = []
  for i in range(len(ds.x)):
    success_step = int(result.success_step[i])
    records.append({
        'index': int(ds.index[i]),
        'label': int(ds.y[i]),
        'predicted_label': int(result.labels[i, 0]),
        'label_correct': bool(result.labels[i, 0] == ds.y[i]),
        'mse': float(mse[i]),
        'psnr': float(psnr[i]),
        'ssim': float(ssim[i]),
        'seconds': float(result.seconds[i]),
        'steps': int(result.steps[i]),
        'distance': float(result.distance[i]),
        'restart': int(result.restart[i]),
        'success_step': success_step,
        # The target's time (all restarts) up to the step of success.
        'seconds_to_success': (
            float(result.seconds[i] * success_step / result.steps[i])
            if success_step >= 0 else None),
    })
    logging.info('target %d (index %d): PSNR %.2f dB, SSIM %.3f, label %s, '
                 '%d steps, %.2f s', i, ds.index[i], psnr[i], ssim[i],
                 'correct' if records[-1]['label_correct'] else 'WRONG',
                 result.steps[i], result.seconds[i])
  results = {'records': records,
             'summary': summarize(records, config.success_psnr,
                                  result.compile_seconds)}
  figures.save_json(os.path.join(workdir, 'results.json'), results)

  steps = list(attack.snapshot_steps) + ['final']
  snapshots = np.concatenate([result.snapshots[:, :, 0],
                              result.x[None, :, 0]], axis=0)
  figures.save_reconstruction_grid(
      os.path.join(workdir, 'reconstruction.png'), ds.x, snapshots, steps,
      labels=[f'{r["index"]}: {ds.class_names[r["label"]]}'
              if r['label'] < len(ds.class_names) else str(r['index'])
              for r in records])
  logging.info('summary: %s', results['summary'])
  return results


def summarize(records: list[dict[str, Any]], success_psnr: float,
              compile_seconds: float) -> dict[str, Any]:
  """Aggregates per-target records."""
  successes = [r for r in records
               if r['psnr'] >= success_psnr and r['label_correct']]
  to_success = [r['seconds_to_success'] for r in records
                if r['seconds_to_success'] is not None]
  return {
      'count': len(records),
      'success_psnr': success_psnr,
      'successes': len(successes),
      'success_rate': len(successes) / len(records),
      'label_accuracy': statistics.mean(r['label_correct'] for r in records),
      'mean_psnr': statistics.mean(r['psnr'] for r in records),
      'median_psnr': statistics.median(r['psnr'] for r in records),
      'mean_ssim': statistics.mean(r['ssim'] for r in records),
      'median_seconds': statistics.median(r['seconds'] for r in records),
      'median_seconds_to_success': (
          statistics.median(to_success) if to_success else None),
      'compile_seconds': compile_seconds,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
