r"""Recovers images and labels from client gradients (DLG / iDLG).

  python -m experiments.attack --config=configs/cifar100.py --workdir=runs/cifar100

Writes into the workdir `results.json` (a `records` list, one per original
image, and a `summary`), `config.json` (to rerun), and `reconstruction.png`
(ground truth, then the reconstruction over iterations, as the DLG paper's
figures). `results.json` is written as soon as the attack has run: a metric
that fails on a record is null there, with the error in the record's
`metric_errors`, and the summary's means leave it out.

The targets are the first `config.data.count` images; without a count, every
image of a user's npz (`config.data.npz`), or the first `DEFAULT_COUNT` (10)
of bundled or TFDS data.

A bad config value, flag or file is reported as one line naming the key
(`dlg_jax.errors.ConfigError`), before anything is compiled; only images
whose shared gradients are not finite are found once those are computed.

With `--config.data.batch_size=B` each shared gradient is the mean over B
consecutive images (or, with `config.client.local_steps > 1`, their FedAvg
update). A batch's reconstructions are paired with its originals by the
assignment of highest total PSNR; each record then holds `batch` (its group)
and `matched_to` (the reconstruction slot paired with it), and the figure
shows each original beside its paired reconstruction.
"""

from collections.abc import Callable, Sequence
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
from dlg_jax import data
from dlg_jax import errors
from dlg_jax import figures
from dlg_jax import matching
from dlg_jax import metrics
from dlg_jax import models
from dlg_jax import objectives
from dlg_jax import train

# Images attacked when config.data.count is None and the data are bundled (or
# TFDS): the first 10, the images of the README's results. A user's npz is
# attacked whole.
DEFAULT_COUNT = 10


def define_flags() -> None:
  """`--config` and `--workdir`, defined when a launcher runs, not on import.

  Tests import several launchers; flags defined on import would clash.
  """
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
  flags.mark_flags_as_required(['config', 'workdir'])


def defense_grid(section: str, names: Sequence[str], strengths: Any,
                 check: Callable[[str, np.ndarray], None]
                 ) -> list[tuple[str, tuple[float, ...]]]:
  """`(defense, strengths)` pairs from `config.<section>`, errors naming keys.

  Shared by the sweep (`config.sweep`) and the utility study
  (`config.utility`): `names` is `config.<section>.defenses`, `strengths`
  the `config.<section>.strengths` mapping, and `check(name, strengths)`
  validates one entry (raising ValueError).

  Raises:
    ConfigError: naming the key at fault.
  """
  names = tuple(names)
  if not names:
    raise errors.ConfigError(
        f'config.{section}.defenses must name at least one defense.')
  if len(set(names)) != len(names):
    raise errors.ConfigError(
        f'config.{section}.defenses names a defense twice: {names}.')
  grid = []
  for name in names:
    if name not in strengths:
      raise errors.ConfigError(
          f'config.{section}.strengths.{name} is missing: every defense in '
          f'config.{section}.defenses needs strengths.')
    values = tuple(float(s) for s in strengths[name])
    if not values:
      raise errors.ConfigError(f'config.{section}.strengths.{name} is empty.')
    errors.under(f'config.{section}.strengths.{name}', check, name,
                 np.asarray(values))
    grid.append((name, values))
  return grid


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that it can be written, before any work."""
  if not workdir:
    raise errors.ConfigError('--workdir is required.')
  if '://' in workdir:
    raise errors.ConfigError(
        f'--workdir {workdir!r} is a URL; outputs are written with local file '
        'calls, so give a local or mounted directory (e.g. a bucket mounted '
        'with gcsfuse).')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.ConfigError(
        f'--workdir {workdir!r} cannot be written: {e}') from None


def data_key(config) -> str:
  """The config key the data came from: `config.data.npz` or `.source`."""
  return 'config.data.npz' if config.data.npz else 'config.data.source'


def load_data(config) -> data.Dataset:
  """Every image `config.data` names, errors naming the key."""
  cfg = config.data
  if cfg.npz:
    return errors.under(data_key(config), data.load_dataset, cfg.source,
                        npz=cfg.npz, count=None)
  return errors.under(data_key(config), data.load_dataset, cfg.source,
                      data_dir=cfg.data_dir or None, split=cfg.split,
                      count=None)


def target_count(config, available: int) -> int:
  """How many of the `available` images are attacked: `config.data.count`.

  Without a count (None, the configs' default), every image of a user's npz,
  else the first `DEFAULT_COUNT` (or all, when fewer).

  Raises:
    ConfigError: a count outside [1, available], naming the key.
  """
  count = config.data.count
  if count is None:
    return available if config.data.npz else min(DEFAULT_COUNT, available)
  if isinstance(count, bool) or not isinstance(count, int) or not (
      1 <= count <= available):
    default = ('all of them' if config.data.npz else
               f'the first {min(DEFAULT_COUNT, available)}')
    raise errors.ConfigError(
        f'config.data.count must be in [1, {available}] (the images in '
        f'{config.data.npz or config.data.source!r}), got {count!r}; unset, '
        f'it attacks {default}.')
  return count


def _prior_indices(spec: str, count: int, n: int) -> list[int]:
  """The images `config.attack.prior_images` names, as sorted indices."""
  if spec == 'unattacked':
    # As pretraining: the images not attacked, or all when none are left.
    return list(range(count, n)) if count < n else list(range(n))
  indices = set()
  try:
    for part in spec.split(','):
      lo, _, hi = part.strip().partition('-')
      indices.update(range(int(lo), int(hi or lo) + 1))
  except ValueError:
    raise errors.ConfigError(
        'config.attack.prior_images must be "unattacked" or indices such as '
        f'"0-7,16-19", got {spec!r}.') from None
  if not indices or min(indices) < 0 or max(indices) >= n:
    raise errors.ConfigError(
        f'config.attack.prior_images {spec!r} must name images in [0, {n}).')
  if set(range(count)) & indices:
    logging.warning('config.attack.prior_images %r includes attacked images '
                    '(the first %d): the prior has seen them.', spec, count)
  return sorted(indices)


def fit_prior(config, ds: data.Dataset) -> objectives.GaussianPrior | None:
  """The Gaussian image prior of `config.attack`, fitted on `ds` (all images).

  None when `config.attack.prior_weight` is 0.
  """
  a = config.attack
  if a.prior_weight < 0:
    raise errors.ConfigError(
        f'config.attack.prior_weight must be >= 0, got {a.prior_weight}.')
  if not a.prior_weight:
    return None
  indices = _prior_indices(a.prior_images, target_count(config, len(ds.x)),
                           len(ds.x))
  logging.info('Gaussian image prior (weight %g) fitted on images %s',
               a.prior_weight, indices)
  return errors.under('config.attack.prior_floor',
                      objectives.fit_gaussian_prior, ds.x[indices],
                      floor=a.prior_floor)


def build(config, ds: data.Dataset):
  """Model, params and attack from the config, validated before compiling."""
  batch = config.data.batch_size
  if not 1 <= batch <= len(ds.x):
    raise errors.ConfigError(
        f'config.data.batch_size must be in [1, {len(ds.x)}] (the images in '
        f'{ds.name!r}), got {batch}.')
  count = target_count(config, len(ds.x))
  if count % batch:
    unset = '' if config.data.count is not None else ', as it is unset'
    raise errors.ConfigError(
        f'config.data.count ({count}{unset}) must be a multiple of '
        f'config.data.batch_size ({batch}): targets are whole batches of '
        'consecutive images.')
  # Pretraining uses the images not attacked, or all when none are left.
  train_x, train_y = (ds.x[count:], ds.y[count:]) if count < len(ds.x) else (
      ds.x, ds.y)
  ds = ds._replace(x=ds.x[:count], y=ds.y[:count], index=ds.index[:count])
  if config.model.pretrain_steps < 0:
    raise errors.ConfigError('config.model.pretrain_steps must be >= 0, got '
                             f'{config.model.pretrain_steps}.')
  model = errors.under('config.model', models.get_model, config.model.name,
                       num_classes=config.model.num_classes,
                       activation=config.model.activation or None)
  errors.under('config.model.num_classes', data.check_labels, ds.y,
               config.model.num_classes)
  image_shape = tuple(ds.x.shape[1:])
  # The records' metrics need a window that fits (metrics.ssim_window);
  # finding out after the attack would lose it.
  errors.under(data_key(config), metrics.ssim_window, *image_shape[:2])
  try:
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'config.model.name: model {config.model.name!r} does not take '
        f'images of shape {image_shape}: {e}') from None
  empty = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(shapes)[0] if leaf.size == 0]
  if empty:
    raise errors.ConfigError(
        f'config.model.name: model {config.model.name!r} does not take '
        f'images of shape {image_shape}: they are too small, leaving layers '
        f'{empty} with no inputs.')
  a, c = config.attack, config.client
  if a.label_method not in attack_lib.LABEL_METHODS:
    raise errors.ConfigError(
        f'config.attack.label_method must be one of '
        f'{list(attack_lib.LABEL_METHODS)}, got {a.label_method!r}.')
  if a.label_mode == 'analytic' and a.label_method == 'idlg' and batch > 1:
    raise errors.ConfigError(
        'config.attack.label_method "idlg" is exact for batch 1 only; with '
        f'config.data.batch_size={batch} use "count" (or "auto").')
  if c.local_steps < 1:
    raise errors.ConfigError(
        f'config.client.local_steps must be >= 1 (1 is FedSGD), got '
        f'{c.local_steps}.')
  if not c.learning_rate > 0:
    raise errors.ConfigError(
        f'config.client.learning_rate must be > 0, got {c.learning_rate}.')
  local_batch = c.local_batch_size or batch
  if local_batch < 1 or batch % local_batch:
    raise errors.ConfigError(
        f'config.client.local_batch_size must be 0 (the whole batch) or '
        f'divide config.data.batch_size ({batch}), got {c.local_batch_size}.')
  if local_batch != batch and c.local_steps == 1:
    raise errors.ConfigError(
        'config.client.local_batch_size must be 0 with '
        'config.client.local_steps=1 (FedSGD: one step on the whole batch), '
        f'got {c.local_batch_size}.')
  if local_batch != batch and a.label_mode == 'analytic':
    raise errors.ConfigError(
        'config.client.local_batch_size must be 0 with '
        'config.attack.label_mode "analytic": labels read off the update do '
        'not say which local mini-batch each belongs to; use "joint" or '
        '"known".')
  if a.restarts < 1:
    raise errors.ConfigError(
        f'config.attack.restarts must be >= 1, got {a.restarts}.')
  if a.chunk_size < 1:
    raise errors.ConfigError(
        f'config.attack.chunk_size must be >= 1, got {a.chunk_size}.')
  attack = errors.under(
      'config.attack', attack_lib.Attack,
      apply_fn=models.make_apply_fn(model), image_shape=image_shape,
      num_classes=config.model.num_classes, batch=batch,
      label_mode=a.label_mode, label_method=a.label_method,
      local_steps=c.local_steps, local_lr=c.learning_rate,
      local_batch_size=c.local_batch_size, distance=a.distance,
      tv_weight=a.tv_weight,
      # A negative tv_final_weight (the config's default) keeps it constant.
      tv_final_weight=(None if a.tv_final_weight < 0 else a.tv_final_weight),
      tv_decay_steps=a.tv_decay_steps, tv_stages=a.tv_stages,
      prior_weight=a.prior_weight, optimizer=a.optimizer,
      learning_rate=a.learning_rate, memory_size=a.memory_size,
      num_steps=a.num_steps, init=a.init, init_scale=a.init_scale, tol=a.tol,
      snapshot_steps=tuple(a.snapshot_steps),
      success_psnr=config.success_psnr)
  params = models.init_params(
      model, jax.random.PRNGKey(config.model.init_seed), image_shape)
  if config.model.pretrain_steps:
    errors.under('config.model.num_classes', data.check_labels, train_y,
                 config.model.num_classes)
    params, losses = train.train(
        models.make_apply_fn(model), params, train_x, train_y,
        jax.random.PRNGKey(config.model.init_seed + 1),
        num_classes=config.model.num_classes,
        steps=config.model.pretrain_steps,
        learning_rate=config.model.pretrain_lr)
    logging.info('pretrained %s for %d steps on %d images: loss %.3f -> %.3f',
                 config.model.name, config.model.pretrain_steps, len(train_x),
                 float(losses[0]), float(losses[-1]))
  return ds, params, attack


# The `dlg_jax.metrics` functions of each record, under the best pairing.
IMAGE_METRICS = ('mse', 'psnr', 'ssim')


def _fmt(value: float | None, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def score_target(recon: jax.Array, ref: jax.Array, labels: jax.Array,
                 true_labels: jax.Array
                 ) -> tuple[np.ndarray, dict[str, list[float | None]],
                            np.ndarray, list[dict[str, str]]]:
  """Scores one target's reconstructions, keeping what can be computed.

  `matching.matched_metrics` scores the whole batch at once. Should it fail,
  the pairing and each metric of each original are computed on their own: a
  metric that fails there is None, its error is logged as a warning and
  noted, and every other value is kept, so that an attack that has run is
  never lost to its scoring.

  Args:
    recon: reconstructions `[batch, h, w, c]`.
    ref: originals `[batch, h, w, c]`.
    labels: `[batch]` the attacker's label of each reconstruction slot.
    true_labels: `[batch]` the originals' labels.

  Returns:
    `(matched_to [batch], {metric: [batch] values or None},
    label_correct [batch], [batch] {metric: error} of the failures)`.
  """
  batch = ref.shape[0]
  try:
    m = matching.matched_metrics(recon, ref, labels, true_labels)
    return (m.matched_to,
            {name: [float(v) for v in getattr(m, name)]
             for name in IMAGE_METRICS},
            m.label_correct, [{} for _ in range(batch)])
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('scoring a target failed (%s: %s); scoring each metric '
                    'and image on its own', type(e).__name__, e)
  failed = [{} for _ in range(batch)]
  try:
    perm = matching.match(recon, ref)
  except Exception as e:  # pylint: disable=broad-except
    # Slot k stays with original k, as for a batch of one.
    perm = np.arange(batch)
    for f in failed:
      f['matched_to'] = f'{type(e).__name__}: {e}'
    logging.warning('pairing reconstructions with originals failed (%s: %s); '
                    'kept them in slot order', type(e).__name__, e)
  paired = jnp.clip(jnp.asarray(recon, jnp.float32)[perm], 0.0, 1.0)
  ref = jnp.asarray(ref, jnp.float32)
  scores = {}
  for name in IMAGE_METRICS:
    scores[name] = []
    for k in range(batch):
      try:
        scores[name].append(float(getattr(metrics, name)(paired[k], ref[k])))
      except Exception as e:  # pylint: disable=broad-except
        scores[name].append(None)
        failed[k][name] = f'{type(e).__name__}: {e}'
        logging.warning('%s of original %d failed (%s: %s); recorded as null',
                        name, k, type(e).__name__, e)
  label_correct = (np.asarray(labels).reshape(-1)[perm]
                   == np.asarray(true_labels).reshape(-1))
  return perm, scores, label_correct, failed


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the attack described by `config` and writes the outputs to `workdir`.

  Returns:
    The content of `results.json`.
  """
  check_workdir(workdir)
  full = load_data(config)
  # The prior's checks first: build pretrains (compiles) the model.
  prior = fit_prior(config, full)
  ds, params, attack = build(config, full)
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  batch = attack.batch
  num_targets = len(ds.x) // batch
  logging.info('%d devices; attacking %d %s images %s in %d batches of %d '
               'with %s', jax.device_count(), len(ds.x), ds.name,
               ds.x.shape[1:], num_targets, batch, config.model.name)

  x = jnp.asarray(ds.x).reshape(num_targets, batch, *ds.x.shape[1:])
  y = jnp.asarray(ds.y).reshape(num_targets, batch)
  onehot = jax.nn.one_hot(y, config.model.num_classes)
  grads = jax.jit(jax.vmap(lambda xb, yb: attack_lib.shared_update(
      attack, params, xb, yb)))(x, onehot)
  bad = [int(i) for i in np.nonzero(~np.all(np.stack([
      np.all(np.isfinite(g), axis=tuple(range(1, g.ndim)))
      for g in jax.tree.leaves(grads)]), axis=0))[0]]
  if bad:
    images = [int(ds.index[t * batch + k]) for t in bad for k in range(batch)]
    raise errors.ConfigError(
        f'config.data: the shared gradients of targets {bad} (images '
        f'{images} of {ds.name}) are not finite: the model overflows on '
        'them, so there is nothing to attack. Check those images, or '
        'config.model.')

  result = attack_lib.reconstruct(
      attack, params, grads, y, jax.random.PRNGKey(config.seed),
      restarts=config.attack.restarts, ground_truth=x,
      chunk_size=config.attack.chunk_size,
      max_parallel=config.attack.max_parallel or None, prior=prior)

  records = []
  perms = []
  for t in range(num_targets):
    perm, scores, label_correct, failed = score_target(
        result.x[t], x[t], result.labels[t], y[t])
    perms.append(perm)
    success_step = int(result.success_step[t])
    for k in range(batch):
      i = t * batch + k
      slot = int(perm[k])
      records.append({
          'index': int(ds.index[i]),
          'label': int(ds.y[i]),
          'predicted_label': int(result.labels[t, slot]),
          'label_correct': bool(label_correct[k]),
          **{name: scores[name][k] for name in IMAGE_METRICS},
          'batch': t,
          'matched_to': slot,
          'seconds': float(result.seconds[t]),
          'steps': int(result.steps[t]),
          'distance': float(result.distance[t]),
          'restart': int(result.restart[t]),
          # The step at which the whole batch first reached success_psnr.
          'success_step': success_step,
          # The target's time (all restarts) up to the step of success.
          'seconds_to_success': (
              float(result.seconds[t] * success_step / result.steps[t])
              if success_step >= 0 else None),
      })
      if failed[k]:
        records[-1]['metric_errors'] = failed[k]
      logging.info(
          'batch %d image %d (index %d, slot %d): PSNR %s dB, SSIM %s, '
          'label %s, %d steps, %.2f s', t, k, ds.index[i], slot,
          _fmt(scores['psnr'][k], '.2f'), _fmt(scores['ssim'][k], '.3f'),
          'correct' if label_correct[k] else 'WRONG', result.steps[t],
          result.seconds[t])
  results = {'records': records,
             'summary': summarize(records, config.success_psnr,
                                  result.compile_seconds)}
  figures.save_json(os.path.join(workdir, 'results.json'), results)

  # Every snapshot column shows, for each original, the slot paired with it
  # at the end.
  steps = list(attack.snapshot_steps) + ['final']
  snapshots = np.concatenate([result.snapshots, result.x[None]], axis=0)
  order = np.stack(perms)  # [num_targets, batch]
  snapshots = np.take_along_axis(
      snapshots, order[None, :, :, None, None, None], axis=2)
  snapshots = snapshots.reshape(len(steps), len(ds.x), *ds.x.shape[1:])
  names = [ds.class_names[r['label']] if r['label'] < len(ds.class_names)
           else '' for r in records]
  figures.save_reconstruction_grid(
      os.path.join(workdir, 'reconstruction.png'), ds.x, snapshots, steps,
      labels=[(f'b{r["batch"]} ' if batch > 1 else '')
              + (f'{r["index"]}: {name}' if name else str(r['index']))
              for r, name in zip(records, names)])
  logging.info('summary: %s', results['summary'])
  return results


def _stat(fn, values) -> float | None:
  """`fn` of the values that are not None (a failed metric); None if none."""
  values = [v for v in values if v is not None]
  return fn(values) if values else None


def summarize(records: list[dict[str, Any]], success_psnr: float,
              compile_seconds: float) -> dict[str, Any]:
  """Aggregates per-image records (and, for batches, per batch).

  A metric that failed on a record (None) is left out of its means; such a
  record is not a success.
  """
  def success(r):
    return (r['psnr'] is not None and r['psnr'] >= success_psnr
            and r['label_correct'])

  successes = [r for r in records if success(r)]
  batches = {}
  for r in records:
    batches.setdefault(r.get('batch', len(batches)), []).append(r)
  to_success = [r['seconds_to_success'] for r in records
                if r['seconds_to_success'] is not None]
  return {
      'count': len(records),
      'success_psnr': success_psnr,
      'successes': len(successes),
      'success_rate': len(successes) / len(records),
      'label_accuracy': statistics.mean(r['label_correct'] for r in records),
      'mean_psnr': _stat(statistics.mean, [r['psnr'] for r in records]),
      'median_psnr': _stat(statistics.median, [r['psnr'] for r in records]),
      'mean_ssim': _stat(statistics.mean, [r['ssim'] for r in records]),
      'median_seconds': statistics.median(r['seconds'] for r in records),
      'median_seconds_to_success': (
          statistics.median(to_success) if to_success else None),
      'compile_seconds': compile_seconds,
      'batch_size': max(len(b) for b in batches.values()),
      # A batch succeeds when every original, paired by the best matching,
      # is at success_psnr with its label right.
      'batch_success_rate': statistics.mean(
          all(success(r) for r in b) for b in batches.values()),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
