"""The attack over gradient defenses and strengths: `experiments/sweep.py`.

`run(config, workdir)` runs every (defense, strength, target, restart) job
of `config.sweep` in compiled chunks over the devices (`dlg_jax.vision.sweep`),
appending each finished chunk to `<workdir>/checkpoints` so that a rerun
resumes, and writes into the workdir (from process 0 only): `results.json`,
`table.md`, `table.csv`, `psnr_vs_strength.png`, one `grid_<defense>.png`
per defense and `config.json`.
"""

import csv
import math
import os
import statistics
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from dlg_jax.core import defenses as defenses_lib
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.core import parallel
from dlg_jax.pipelines import common
from dlg_jax.vision import data
from dlg_jax.vision import sweep as sweep_lib
from dlg_jax.vision import utility

# Config keys that decide how the jobs run, not what they compute: left out
# of the workdir's fingerprint, so a sweep may resume with other values.
EXECUTION_KEYS = ('jobs_per_device', 'max_jobs_per_device')


def check_sweep(config) -> sweep_lib.SweepSpec:
  """The sweep's spec from `config.sweep`, errors naming the config key."""
  cfg = config.sweep
  for name in cfg.defenses:
    # DEFENSES: the registered defenses of a batch gradient, which is what
    # the sweep defends; the utility study takes per-example ones too.
    if name not in defenses_lib.DEFENSES:
      why = ('acts on per-example gradients, which the sweep (one image per '
             'gradient) does not form' if name in defenses_lib.REGISTRY
             else 'is not a registered defense')
      raise errors.ConfigError(
          f'config.sweep.defenses: {name!r} {why}; choose from '
          f'{sorted(defenses_lib.DEFENSES)}.')
  defenses = common.defense_grid(
      'sweep', cfg.defenses, cfg.strengths, defenses_lib.check_strength)
  if cfg.jobs_per_device < 0:
    raise errors.ConfigError(
        'config.sweep.jobs_per_device must be >= 1, or 0 to choose from '
        f'memory; got {cfg.jobs_per_device}.')
  if cfg.max_jobs_per_device < 1:
    raise errors.ConfigError(
        'config.sweep.max_jobs_per_device must be >= 1, got '
        f'{cfg.max_jobs_per_device}.')
  if cfg.num_targets < 0:
    raise errors.ConfigError(
        'config.sweep.num_targets must be >= 1, or 0 for one per image; got '
        f'{cfg.num_targets}.')
  if cfg.grid_images < 0:
    raise errors.ConfigError(
        f'config.sweep.grid_images must be >= 0, got {cfg.grid_images}.')
  if config.attack.restarts < 1:
    raise errors.ConfigError(
        f'config.attack.restarts must be >= 1, got {config.attack.restarts}.')
  if config.attack.get('prior_weight', 0.0):
    raise errors.ConfigError(
        'config.attack.prior_weight must be 0 for the sweep: it has no '
        'Gaussian image prior (the TV prior and config.attack.defense_aware '
        'are there).')
  if config.data.batch_size != 1:
    raise errors.ConfigError(
        'config.data.batch_size must be 1 for the sweep (one image per '
        f'gradient), got {config.data.batch_size}.')
  return sweep_lib.SweepSpec(defenses=tuple(defenses),
                             restarts=config.attack.restarts,
                             seed=config.seed,
                             num_targets=cfg.num_targets or None,
                             defense_aware=bool(config.attack.defense_aware))


def progress_logger(spec: sweep_lib.SweepSpec, num_jobs: int):
  """`on_chunk` logging each chunk: its defense, jobs, time, and the ETA.

  One line per chunk, once it is checkpointed in the workdir: the progress
  of a sweep, in place of orbax's own records of each save
  (`common.quiet_orbax_logs`).
  """
  times = []

  def on_chunk(done, total, chunk, seconds):
    times.append(seconds)
    eta = statistics.mean(times) * (total - done)
    logging.info('chunk %d/%d (%s, jobs %d-%d of %d) attacked and '
                 'checkpointed: %.1f s; ETA %.0f s', done, total,
                 spec.defenses[chunk.defense][0], chunk.start,
                 chunk.stop - 1, num_jobs, seconds, eta)
  return on_chunk


def _mean_lpips(records: list[dict[str, Any]]) -> float | None:
  """Mean LPIPS of the records that have it; None if none does."""
  values = [r['lpips'] for r in records if r.get('lpips') is not None]
  return statistics.mean(values) if values else None


def summarize(records: list[dict[str, Any]],
              success_psnr: float) -> list[dict[str, Any]]:
  """Mean PSNR, SSIM, LPIPS and success rate per (defense, strength)."""
  groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
  for r in records:
    groups.setdefault((r['defense'], r['strength']), []).append(r)
  return [{
      'defense': d, 'strength': s, 'count': len(rs),
      'mean_psnr': statistics.mean(r['psnr'] for r in rs),
      'mean_ssim': statistics.mean(r['ssim'] for r in rs),
      'mean_lpips': _mean_lpips(rs),
      'success_rate': statistics.mean(
          r['psnr'] >= success_psnr and r['label_correct'] for r in rs),
      'label_accuracy': statistics.mean(r['label_correct'] for r in rs),
      'mean_seconds': statistics.mean(r['seconds'] for r in rs),
  } for (d, s), rs in groups.items()]


def write_tables(workdir: str, rows: list[dict[str, Any]],
                 success_psnr: float,
                 baseline_accuracy: float | None = None) -> None:
  """table.csv and table.md: the leak, and the utility when measured."""
  cols = ('defense', 'strength', 'count', 'mean_psnr', 'mean_ssim',
          'success_rate', 'label_accuracy', 'mean_seconds', 'accuracy',
          'mean_lpips')
  with open(os.path.join(workdir, 'table.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
  acc = lambda a: '-' if a is None else f'{a:.3f}'
  lines = [f'| defense | strength | mean PSNR (dB) | success rate '
           f'(PSNR >= {success_psnr:g}, label right) | mean SSIM | '
           'mean LPIPS | model accuracy under it |',
           '|---|---|---|---|---|---|---|']
  lines += [f'| {r["defense"]} | {r["strength"]:g} | {r["mean_psnr"]:.2f} | '
            f'{r["success_rate"]:.2f} | {r["mean_ssim"]:.3f} | '
            f'{acc(r.get("mean_lpips"))} | {acc(r.get("accuracy"))} |'
            for r in rows]
  if baseline_accuracy is not None:
    lines += ['', f'Accuracy without a defense: {baseline_accuracy:.3f} '
              '(dlg_jax.vision.utility: a ReLU LeNet trained with SGD on the '
              'bundled MNIST, 100 held-out images).']
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


# Config keys added after sweeps were first written: `(section, key)`.
ADDED_KEYS = (('model', 'norm'), ('model', 'checkpoint'),
              ('attack', 'pair_by'))


def fingerprint_config(config) -> dict[str, Any]:
  """The config minus what does not change the attack's records."""
  out = config.to_dict()
  for key in EXECUTION_KEYS:
    out['sweep'].pop(key, None)
  out.pop('utility', None)
  # Keys added since, when unset, leave the fingerprint as it was, so
  # workdirs written before them resume.
  for section, key in ADDED_KEYS:
    if out.get(section, {}).get(key, 0) is None:
      del out[section][key]
  return out


def check_utility(config) -> None:
  """`config.utility` of the sweep, errors naming the key."""
  cfg = config.utility
  if cfg.steps < 0:
    raise errors.ConfigError(
        f'config.utility.steps must be >= 0, got {cfg.steps}.')
  if cfg.steps and not cfg.seeds:
    raise errors.ConfigError(
        'config.utility.seeds must name at least one seed.')


def utility_table(config, spec: sweep_lib.SweepSpec
                  ) -> dict[tuple[str, float], float]:
  """Accuracy of a model trained under each (defense, strength).

  `{}` when `config.utility.steps` is 0; includes `('none', 0.0)`.
  """
  cfg = config.utility
  if not cfg.steps:
    return {}
  ds = errors.under('config.utility.source', data.load_dataset, cfg.source)
  start = time.perf_counter()
  table = utility.accuracy_table(spec.defenses, ds.x, ds.y, steps=cfg.steps,
                                 seeds=tuple(cfg.seeds))
  logging.info('utility: %d models trained in %.1f s', len(table) *
               len(cfg.seeds), time.perf_counter() - start)
  return table


def run(config, workdir: str, *, num_devices: int = 0) -> dict[str, Any]:
  """Runs the sweep of `config` into `workdir`; returns `results.json`.

  Args:
    config: a `configs/defenses.py`-style config.
    workdir: where checkpoints and outputs go (outputs from process 0 only).
    num_devices: devices to spread the jobs over; 0 is all.

  Raises:
    ConfigError: a bad config value or flag, named; a workdir of another
      config (the keys that differ named) or held by another run, refused
      before anything in it changes.
  """
  spec = check_sweep(config)
  check_utility(config)
  mesh = errors.under('--num_devices', parallel.make_mesh, num_devices)
  common.check_workdir(workdir)
  common.make_workdir(workdir)
  # Before anything is built or written: another run may hold the workdir.
  with errors.under('--workdir', sweep_lib.lock_workdir, workdir) as lock:
    return run_locked(config, workdir, spec, mesh, lock)


def run_locked(config, workdir: str, spec: sweep_lib.SweepSpec,
               mesh: jax.sharding.Mesh,
               lock: sweep_lib.WorkdirLock) -> dict[str, Any]:
  """`run` once the workdir is locked."""
  ds, params, attack = common.build(config, common.load_data(config))
  extra = fingerprint_config(config)
  # A workdir of another config is refused before config.json is replaced,
  # so the file keeps matching the checkpoints beside it.
  errors.under('--workdir', sweep_lib.check_workdir, workdir, attack, params,
               ds.x, ds.y, spec, extra_fingerprint=extra, extra_name='config')
  main = parallel.is_main_process()
  if main:
    figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  targets = spec.targets(len(ds.x))
  num_jobs = spec.num_jobs(len(ds.x))
  logging.info('%d devices (%s, %d processes); %d defenses, %d targets of %d '
               'images, %d restarts: %d jobs', mesh.size,
               jax.default_backend(), jax.process_count(),
               len(spec.defenses), targets, len(ds.x), spec.restarts,
               num_jobs)
  start = time.perf_counter()
  cfg = config.sweep
  result = sweep_lib.run_sweep(
      attack, params, ds.x, ds.y, spec, workdir=workdir, mesh=mesh,
      jobs_per_device=cfg.jobs_per_device or None,
      max_jobs_per_device=cfg.max_jobs_per_device,
      keep_images=min(targets, cfg.grid_images),
      extra_fingerprint=extra, workdir_lock=lock,
      on_chunk=progress_logger(spec, num_jobs), lpips=True)
  wall = time.perf_counter() - start
  logging.info('%d jobs per device, %d compiles', result.jobs_per_device,
               result.compiles)
  accuracy = utility_table(config, spec) if main else {}
  results = make_results(config, ds, attack, result, wall, accuracy)
  rows = results['summary']['by_defense_and_strength']
  for r in rows:
    logging.info('%s %g: mean PSNR %.2f dB, success rate %.2f, accuracy %s',
                 r['defense'], r['strength'], r['mean_psnr'],
                 r['success_rate'], r['accuracy'])
  logging.info('wall %.1f s (compile %.1f s)', wall, result.compile_seconds)
  if main:
    write_outputs(workdir, spec, ds, result, results)
  return results


def records_of(ds: data.Dataset,
               result: sweep_lib.SweepResult) -> list[dict[str, Any]]:
  """One record per (defense, strength, target) of the sweep's result."""
  return [{
      'defense': str(result.defense[i]),
      'strength': float(f'{result.strength[i]:.6g}'),
      'target': int(result.target[i]),
      'index': int(ds.index[result.image[i]]),
      'label': int(ds.y[result.image[i]]),
      'mse': float(result.mse[i]),
      'psnr': float(result.psnr[i]),
      'ssim': float(result.ssim[i]),
      # None for chunks resumed from a workdir written before LPIPS.
      'lpips': (None if np.isnan(result.lpips[i])
                else float(result.lpips[i])),
      'label_correct': bool(result.label_correct[i]),
      'seconds': float(result.seconds[i]),
      'distance': float(result.distance[i]),
      'restart': int(result.restart[i]),
  } for i in range(len(result.psnr))]


def make_results(config, ds: data.Dataset, attack, result, wall: float,
                 accuracy: dict[tuple[str, float], float]) -> dict[str, Any]:
  """The content of `results.json`: the records and their summary."""
  records = records_of(ds, result)
  rows = summarize(records, config.success_psnr)
  for r in rows:
    r['accuracy'] = accuracy.get((r['defense'], float(r['strength'])))
  return {'records': records, 'summary': {
      'success_psnr': config.success_psnr,
      'num_steps': attack.num_steps,
      'by_defense_and_strength': rows,
      'compile_seconds': result.compile_seconds,
      'wall_seconds': wall,
      'resumed_chunks': result.resumed_chunks,
      'resumed_jobs': result.resumed_jobs,
      'num_devices': result.num_devices,
      'num_processes': jax.process_count(),
      'jobs_per_device': result.jobs_per_device,
      'compiles': result.compiles,
      'utility': {
          'baseline_accuracy': accuracy.get((utility.BASELINE, 0.0)),
          'source': config.utility.source,
          'steps': config.utility.steps,
          'seeds': list(config.utility.seeds),
          'model': 'ReLU LeNet, SGD with momentum (dlg_jax.vision.utility)',
      } if accuracy else None,
  }}


def plot_psnr_vs_strength(path: str, rows: list[dict[str, Any]],
                          defenses: list[str], num_steps: int) -> None:
  """Mean PSNR against log10(strength), one series per defense.

  A strength of 0 (the casts) has no place on a log axis: its x is None,
  drawn as a level line, so every defense is on the figure.

  Args:
    path: the PNG to write.
    rows: `summary.by_defense_and_strength` of a sweep's results.json.
    defenses: the defenses to draw, in order.
    num_steps: the attack's steps, for the title.
  """
  series = {}
  for name in defenses:
    points = [(math.log10(r['strength']) if r['strength'] > 0 else None,
               r['mean_psnr'])
              for r in rows if r['defense'] == name]
    if points:
      series[name] = ([p[0] for p in points], [p[1] for p in points])
  if series:
    figures.save_line_plot(
        path, series, xlabel='log10(strength)', ylabel='mean PSNR (dB)',
        title=f'DLG vs defenses, {num_steps} steps', size=(640, 360),
        no_x_label='no strength')


def write_outputs(workdir: str, spec: sweep_lib.SweepSpec, ds: data.Dataset,
                  result: sweep_lib.SweepResult,
                  results: dict[str, Any]) -> None:
  """results.json, the tables, the PSNR plot and one grid per defense."""
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  summary = results['summary']
  rows, util = summary['by_defense_and_strength'], summary['utility']
  write_tables(workdir, rows, summary['success_psnr'],
               util['baseline_accuracy'] if util else None)
  plot_psnr_vs_strength(os.path.join(workdir, 'psnr_vs_strength.png'),
                        rows, [name for name, _ in spec.defenses],
                        summary['num_steps'])
  if len(result.x_record):
    write_grids(workdir, spec, ds, result)


def write_grids(workdir: str, spec: sweep_lib.SweepSpec, ds: data.Dataset,
                result: sweep_lib.SweepResult) -> None:
  """One `grid_<defense>.png` per defense: the kept reconstructions.

  They are the first targets of every (defense, strength).
  """
  kept = result.target[result.x_record]
  shown = int(kept.max()) + 1
  images = result.image[result.x_record][:shown]
  for name, strengths in spec.defenses:
    mine = result.defense[result.x_record] == name
    recon = result.x[mine][:, 0].reshape(len(strengths), shown,
                                         *ds.x.shape[1:])
    figures.save_reconstruction_grid(
        os.path.join(workdir, f'grid_{name}.png'), ds.x[images], recon,
        [f'{name} {s:g}' for s in strengths],
        labels=[str(ds.index[i]) for i in images])
