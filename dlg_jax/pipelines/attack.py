"""The vision attack (DLG / iDLG) of a config: `experiments/attack.py`.

`run(config, workdir)` recovers images and labels from client gradients and
writes into `workdir`: `results.json` (a `records` list, one per original
image, and a `summary`), `config.json` (to rerun) and `reconstruction.png`
(ground truth, then the reconstruction over iterations). Its steps are
public so that another pipeline (the batch study) can reuse a built attack:
`prepare` (checks, data, prior, model, attack, `config.json`),
`reconstruct` (the shared gradients, the reconstruction and its records)
and `write_outputs` (the figure).
"""

import os
import statistics
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.core import objectives
from dlg_jax.pipelines import common
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import data
from dlg_jax.vision import labels as labels_lib
from dlg_jax.vision import matching
from dlg_jax.vision import metrics

# The `dlg_jax.vision.metrics` functions of each record, under the best pairing.
IMAGE_METRICS = ('mse', 'psnr', 'ssim', 'lpips')


class Setup(NamedTuple):
  """What `prepare` builds from a config.

  Attributes:
    ds: the targets, the first `common.target_count` images.
    params: the model's weights.
    attack: the attack.
    prior: the Gaussian image prior, or None.
  """
  ds: data.Dataset
  params: Any
  attack: attack_lib.Attack
  prior: objectives.GaussianPrior | None


def prior_indices(spec: str, count: int, n: int) -> list[int]:
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
  indices = prior_indices(
      a.prior_images, common.target_count(config, len(ds.x)), len(ds.x))
  logging.info('Gaussian image prior (weight %g) fitted on images %s',
               a.prior_weight, indices)
  return errors.under('config.attack.prior_floor',
                      objectives.fit_gaussian_prior, ds.x[indices],
                      floor=a.prior_floor)


def pair_by(config) -> str:
  """`config.attack.pair_by` (unset: 'psnr'), checked."""
  by = config.attack.get('pair_by') or 'psnr'
  if by not in matching.PAIR_BY:
    raise errors.ConfigError(
        f'config.attack.pair_by must be one of {list(matching.PAIR_BY)} or '
        f'unset, got {by!r}.')
  return by


def prepare(config, workdir: str) -> Setup:
  """Checks everything, builds the attack and writes `config.json`.

  Raises:
    ConfigError: a bad config value or workdir, named, before anything is
      compiled (but pretraining) or written.
  """
  common.check_workdir(workdir)
  pair_by(config)
  full = common.load_data(config)
  # The prior's checks first: build pretrains (compiles) the model.
  prior = fit_prior(config, full)
  ds, params, attack = common.build(config, full)
  common.make_workdir(workdir)
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  return Setup(ds, params, attack, prior)


def shared_gradients(setup: Setup) -> tuple[jax.Array, jax.Array, Any]:
  """The targets and their shared gradients (or FedAvg updates).

  Returns:
    `(x [targets, batch, h, w, c], y [targets, batch], grads)`.

  Raises:
    ConfigError: a target whose gradient is not finite.
  """
  ds, params, attack = setup.ds, setup.params, setup.attack
  batch = attack.batch
  num_targets = len(ds.x) // batch
  x = jnp.asarray(ds.x).reshape(num_targets, batch, *ds.x.shape[1:])
  y = jnp.asarray(ds.y).reshape(num_targets, batch)
  onehot = jax.nn.one_hot(y, attack.threat.num_classes)
  grads = jax.jit(jax.vmap(lambda xb, yb: attack.threat.shared_update(
      params, xb, yb)))(x, onehot)
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
  return x, y, grads


def _fmt(value: float | None, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def _score_each(recon: jax.Array, ref: jax.Array, labels: jax.Array,
                true_labels: jax.Array, by: str):
  """`score_target` one pairing, metric and image at a time."""
  batch = ref.shape[0]
  failed = [{} for _ in range(batch)]
  try:
    perm = matching.match(recon, ref, by=by)
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


def score_target(recon: jax.Array, ref: jax.Array, labels: jax.Array,
                 true_labels: jax.Array, *, by: str = 'psnr'
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
    by: what to pair by, one of `matching.PAIR_BY` ('psnr', the default,
      or 'lpips').

  Returns:
    `(matched_to [batch], {metric: [batch] values or None},
    label_correct [batch], [batch] {metric: error} of the failures)`.

  Raises:
    ValueError: `by` is not one of `matching.PAIR_BY`.
  """
  if by not in matching.PAIR_BY:
    raise ValueError(f'by must be one of {matching.PAIR_BY}, got {by!r}.')
  batch = ref.shape[0]
  try:
    m = matching.matched_metrics(recon, ref, labels, true_labels, by=by)
    return (m.matched_to,
            {name: [float(v) for v in getattr(m, name)]
             for name in IMAGE_METRICS},
            m.label_correct, [{} for _ in range(batch)])
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('scoring a target failed (%s: %s); scoring each metric '
                    'and image on its own', type(e).__name__, e)
  return _score_each(recon, ref, labels, true_labels, by)


def _target_records(ds: data.Dataset, result: attack_lib.Result,
                    t: int, batch: int, x: jax.Array, y: jax.Array,
                    by: str) -> tuple[list[dict[str, Any]], np.ndarray]:
  """The records of target `t`'s originals, and its pairing."""
  perm, scores, label_correct, failed = score_target(
      result.x[t], x[t], result.labels[t], y[t], by=by)
  success_step = int(result.success_step[t])
  records = []
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
        'LPIPS %s, label %s, %d steps, %.2f s', t, k, ds.index[i], slot,
        _fmt(scores['psnr'][k], '.2f'), _fmt(scores['ssim'][k], '.3f'),
        _fmt(scores['lpips'][k], '.3f'),
        'correct' if label_correct[k] else 'WRONG', result.steps[t],
        result.seconds[t])
  return records, perm


def reconstruct(config, setup: Setup
           ) -> tuple[attack_lib.Result, list[dict[str, Any]],
                      np.ndarray]:
  """Attacks every target of `setup` and scores the reconstructions.

  Returns:
    `(result, records, order)`: the attack's result, one record per
    original, and `[targets, batch]` the slot paired with each original.
  """
  ds, attack_ = setup.ds, setup.attack
  batch = attack_.batch
  num_targets = len(ds.x) // batch
  logging.info('%d devices; attacking %d %s images %s in %d batches of %d '
               'with %s', jax.device_count(), len(ds.x), ds.name,
               ds.x.shape[1:], num_targets, batch, config.model.name)
  x, y, grads = shared_gradients(setup)
  bn_stats = None
  if attack_.objective.bn_weight:
    # GradAttack's strong threat: the attacker knows each client batch's
    # BatchNorm statistics too.
    bn_stats = jax.jit(jax.vmap(
        lambda xb: attack_.threat.batch_statistics(setup.params, xb)))(x)
  result = attack_lib.reconstruct(
      attack_, setup.params, grads, y, jax.random.PRNGKey(config.seed),
      restarts=config.attack.restarts, ground_truth=x,
      chunk_size=config.runner.chunk_size,
      max_parallel=config.runner.max_parallel, prior=setup.prior,
      bn_stats=bn_stats)
  records, perms = [], []
  for t in range(num_targets):
    mine, perm = _target_records(ds, result, t, batch, x, y,
                                 pair_by(config))
    records += mine
    perms.append(perm)
  return result, records, np.stack(perms)


def write_outputs(workdir: str, setup: Setup,
                  result: attack_lib.Result,
                  records: list[dict[str, Any]], order: np.ndarray) -> None:
  """`reconstruction.png`: ground truth, then each snapshot, paired.

  Every snapshot column shows, for each original, the slot paired with it
  at the end (`order`, `[targets, batch]`).
  """
  ds, batch = setup.ds, setup.attack.batch
  steps = list(setup.attack.snapshot_steps) + ['final']
  snapshots = np.concatenate([result.snapshots, result.x[None]], axis=0)
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


# Each original's paired final reconstruction, beside results.json.
RECONSTRUCTIONS = 'reconstructions.npz'


def paired_reconstructions(result: attack_lib.Result,
                           order: np.ndarray) -> np.ndarray:
  """`[images, h, w, c]`: each original's paired reconstruction, in [0, 1]."""
  x = np.take_along_axis(np.asarray(result.x),
                         order[:, :, None, None, None], axis=1)
  return np.clip(x.reshape(-1, *x.shape[2:]), 0.0, 1.0)


def run_prepared(config, workdir: str, setup: Setup) -> dict[str, Any]:
  """`run` on what `prepare` built: attacks, writes, returns `results.json`."""
  result, records, order = reconstruct(config, setup)
  results = {'records': records,
             'summary': summarize(records, config.success_psnr,
                                  result.compile_seconds,
                                  compiles=result.compiles)}
  # The arrays first, then results.json, then the figure: a run with
  # results.json has its reconstructions, and a figure that fails loses
  # nothing.
  np.savez(os.path.join(workdir, RECONSTRUCTIONS),
           x=paired_reconstructions(result, order),
           index=np.asarray(setup.ds.index))
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  write_outputs(workdir, setup, result, records, order)
  logging.info('summary: %s', results['summary'])
  return results


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the attack described by `config` and writes the outputs to `workdir`.

  Args:
    config: a `configs/cifar100.py`-style config.
    workdir: where `results.json`, `config.json`, `reconstruction.png` and
      `reconstructions.npz` (`x`, each original's paired final
      reconstruction; `index`, the originals') go.

  Returns:
    The content of `results.json`.

  Raises:
    ConfigError: a bad config value or workdir, named, before anything is
      compiled; targets whose shared gradients are not finite.
  """
  return run_prepared(config, workdir, prepare(config, workdir))


def _stat(fn, values) -> float | None:
  """`fn` of the values that are not None (a failed metric); None if none."""
  values = [v for v in values if v is not None]
  return fn(values) if values else None


def _stdev(values) -> float | None:
  """The sample standard deviation (n - 1); None for fewer than 2 values."""
  values = [v for v in values if v is not None]
  return statistics.stdev(values) if len(values) > 1 else None


def summarize(records: list[dict[str, Any]], success_psnr: float,
              compile_seconds: float, *,
              compiles: int | None = None) -> dict[str, Any]:
  """Aggregates per-image records (and, for batches, per batch).

  A metric that failed on a record (None) is left out of its means and
  standard deviations; such a record is not a success. The standard
  deviations (`std_psnr`, `std_ssim`, `std_lpips`) are over images, the
  sample one (n - 1), None where fewer than two images have the metric.
  Records written before LPIPS (no `lpips` key) count as a failed LPIPS.
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
      # Labels right as multisets per batch (the field's batch label
      # accuracy); label_accuracy counts them under the image pairing.
      'label_multiset_accuracy': sum(
          labels_lib.multiset_overlap([r['predicted_label'] for r in b],
                                  [r['label'] for r in b])
          for b in batches.values()) / len(records),
      'mean_psnr': _stat(statistics.mean, [r['psnr'] for r in records]),
      'median_psnr': _stat(statistics.median, [r['psnr'] for r in records]),
      'mean_ssim': _stat(statistics.mean, [r['ssim'] for r in records]),
      'mean_lpips': _stat(statistics.mean,
                          [r.get('lpips') for r in records]),
      'std_psnr': _stdev(r['psnr'] for r in records),
      'std_ssim': _stdev(r['ssim'] for r in records),
      'std_lpips': _stdev(r.get('lpips') for r in records),
      'median_seconds': statistics.median(r['seconds'] for r in records),
      'median_seconds_to_success': (
          statistics.median(to_success) if to_success else None),
      'compile_seconds': compile_seconds,
      # Programs compiled by the attack (0 when an earlier call of the same
      # process had compiled them); None where not counted.
      'compiles': compiles,
      'batch_size': max(len(b) for b in batches.values()),
      # A batch succeeds when every original, paired by the best matching,
      # is at success_psnr with its label right.
      'batch_success_rate': statistics.mean(
          all(success(r) for r in b) for b in batches.values()),
  }
