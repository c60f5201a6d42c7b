r"""Sweeps the DLG attack over gradient defenses and strengths (DLG section 5).

  python -m experiments.sweep --config=configs/defenses.py --workdir=runs/defenses

Every (defense, strength, target, restart) is one job; jobs run in compiled
chunks split over every device (see `dlg_jax.sweep`), each device running
`config.sweep.jobs_per_device` jobs per chunk (0: as many as half its free
memory holds, at most `config.sweep.max_jobs_per_device`). Each finished
chunk is appended to `<workdir>/checkpoints`; rerunning the same command
resumes, and a workdir of another config is refused (naming the keys that
differ) before anything in it changes. A run holds the workdir
(`<workdir>/sweep.lock`), so a second run started on it is refused; a killed
run does not hold it.

Devices and hosts (flags, as they do not change the results):

  --num_devices=N        use the first N devices (0, the default: all).
  --coordinator_address=HOST:PORT --num_processes=P --process_id=I
                         join a multi-host run (a TPU pod slice, several
                         GPU hosts): every host runs the same command with
                         its own id; only process 0 writes outputs.
  --coordinator_timeout=S
                         seconds to wait for the coordinator (default 300).
  --auto_distributed     let JAX find the hosts itself (Cloud TPU pod
                         slices, Slurm, Open MPI).

On one CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` simulates
8 devices.

Writes into the workdir: `results.json` (`records`, one per defense,
strength and image, and a `summary` per defense and strength), `table.md`
and `table.csv` (mean PSNR and success rate per defense x strength),
`psnr_vs_strength.png` (mean PSNR against log10 of the strength, one line
per defense with a strength), one `grid_<defense>.png` per defense (ground
truth, then the reconstruction at each strength) and `config.json`.
"""

import csv
import math
import os
import statistics
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax

from dlg_jax import data
from dlg_jax import defenses as defenses_lib
from dlg_jax import errors
from dlg_jax import figures
from dlg_jax import parallel
from dlg_jax import sweep as sweep_lib
from dlg_jax import utility
from experiments import attack as attack_launcher

# Config keys that decide how the jobs run, not what they compute: left out
# of the workdir's fingerprint, so a sweep may resume with other values.
_EXECUTION_KEYS = ('jobs_per_device', 'max_jobs_per_device')


def define_parallel_flags() -> None:
  """The device and multi-host flags (see the module docstring)."""
  flags.DEFINE_integer('num_devices', 0,
                       'Devices to use; 0 uses every device of every host.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for a multi-host run.')
  flags.DEFINE_integer('num_processes', None,
                       'Processes (hosts) in a multi-host run.')
  flags.DEFINE_integer('process_id', None,
                       'This process\'s id in [0, num_processes).')
  flags.DEFINE_float('coordinator_timeout', 300.0,
                     'Seconds to wait for the coordinator and the others.')
  flags.DEFINE_bool('auto_distributed', False,
                    'Join the multi-host run JAX detects itself (Cloud TPU '
                    'pod slices, Slurm, Open MPI).')


def check_sweep(config) -> sweep_lib.SweepSpec:
  """The sweep's spec from `config.sweep`, errors naming the config key."""
  cfg = config.sweep
  for name in cfg.defenses:
    if name not in defenses_lib.DEFENSES:
      raise errors.ConfigError(
          f'config.sweep.defenses: unknown defense {name!r}; choose from '
          f'{sorted(defenses_lib.DEFENSES)}.')
  defenses = attack_launcher.defense_grid(
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


def _progress_logger():
  """`on_chunk` logging each chunk's time and the ETA of the rest."""
  times = []

  def on_chunk(done, total, chunk, seconds):
    times.append(seconds)
    eta = statistics.mean(times) * (total - done)
    logging.info('chunk %d/%d (defense %d, jobs %d-%d): %.1f s; ETA %.0f s',
                 done, total, chunk.defense, chunk.start, chunk.stop - 1,
                 seconds, eta)
  return on_chunk


def summarize(records: list[dict[str, Any]],
              success_psnr: float) -> list[dict[str, Any]]:
  """Mean PSNR, SSIM and success rate per (defense, strength)."""
  groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
  for r in records:
    groups.setdefault((r['defense'], r['strength']), []).append(r)
  return [{
      'defense': d, 'strength': s, 'count': len(rs),
      'mean_psnr': statistics.mean(r['psnr'] for r in rs),
      'mean_ssim': statistics.mean(r['ssim'] for r in rs),
      'success_rate': statistics.mean(
          r['psnr'] >= success_psnr and r['label_correct'] for r in rs),
      'label_accuracy': statistics.mean(r['label_correct'] for r in rs),
      'mean_seconds': statistics.mean(r['seconds'] for r in rs),
  } for (d, s), rs in groups.items()]


def _write_tables(workdir: str, rows: list[dict[str, Any]],
                  success_psnr: float,
                  baseline_accuracy: float | None = None) -> None:
  """table.csv and table.md: the leak, and the utility when measured."""
  cols = ('defense', 'strength', 'count', 'mean_psnr', 'mean_ssim',
          'success_rate', 'label_accuracy', 'mean_seconds', 'accuracy')
  with open(os.path.join(workdir, 'table.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
  acc = lambda a: '-' if a is None else f'{a:.3f}'
  lines = [f'| defense | strength | mean PSNR (dB) | success rate '
           f'(PSNR >= {success_psnr:g}, label right) | mean SSIM | '
           'model accuracy under it |',
           '|---|---|---|---|---|---|']
  lines += [f'| {r["defense"]} | {r["strength"]:g} | {r["mean_psnr"]:.2f} | '
            f'{r["success_rate"]:.2f} | {r["mean_ssim"]:.3f} | '
            f'{acc(r.get("accuracy"))} |' for r in rows]
  if baseline_accuracy is not None:
    lines += ['', f'Accuracy without a defense: {baseline_accuracy:.3f} '
              '(dlg_jax.utility: a ReLU LeNet trained with SGD on the '
              'bundled MNIST, 100 held-out images).']
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _fingerprint_config(config) -> dict[str, Any]:
  """The config minus what does not change the attack's records."""
  out = config.to_dict()
  for key in _EXECUTION_KEYS:
    out['sweep'].pop(key, None)
  out.pop('utility', None)
  return out


def check_utility(config) -> None:
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
  attack_launcher.check_workdir(workdir)
  # Before anything is built or written: another run may hold the workdir.
  with errors.under('--workdir', sweep_lib.lock_workdir, workdir) as lock:
    return _run_locked(config, workdir, spec, mesh, lock)


def _run_locked(config, workdir: str, spec: sweep_lib.SweepSpec,
                mesh: jax.sharding.Mesh,
                lock: sweep_lib.WorkdirLock) -> dict[str, Any]:
  """`run` once the workdir is locked."""
  ds, params, attack = attack_launcher.build(
      config, attack_launcher.load_data(config))
  extra = _fingerprint_config(config)
  # A workdir of another config is refused before config.json is replaced,
  # so the file keeps matching the checkpoints beside it.
  errors.under('--workdir', sweep_lib.check_workdir, workdir, attack, params,
               ds.x, ds.y, spec, extra_fingerprint=extra, extra_name='config')
  main = parallel.is_main_process()
  if main:
    figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  targets = spec.targets(len(ds.x))
  logging.info('%d devices (%s, %d processes); %d defenses, %d targets of %d '
               'images, %d restarts: %d jobs', mesh.size,
               jax.default_backend(), jax.process_count(),
               len(spec.defenses), targets, len(ds.x), spec.restarts,
               spec.num_jobs(len(ds.x)))
  start = time.perf_counter()
  cfg = config.sweep
  result = sweep_lib.run_sweep(
      attack, params, ds.x, ds.y, spec, workdir=workdir, mesh=mesh,
      jobs_per_device=cfg.jobs_per_device or None,
      max_jobs_per_device=cfg.max_jobs_per_device,
      keep_images=min(targets, cfg.grid_images),
      extra_fingerprint=extra, workdir_lock=lock,
      on_chunk=_progress_logger())
  wall = time.perf_counter() - start
  logging.info('%d jobs per device, %d compiles', result.jobs_per_device,
               result.compiles)

  records = [{
      'defense': str(result.defense[i]),
      'strength': float(f'{result.strength[i]:.6g}'),
      'target': int(result.target[i]),
      'index': int(ds.index[result.image[i]]),
      'label': int(ds.y[result.image[i]]),
      'mse': float(result.mse[i]),
      'psnr': float(result.psnr[i]),
      'ssim': float(result.ssim[i]),
      'label_correct': bool(result.label_correct[i]),
      'seconds': float(result.seconds[i]),
      'distance': float(result.distance[i]),
      'restart': int(result.restart[i]),
  } for i in range(len(result.psnr))]
  rows = summarize(records, config.success_psnr)
  accuracy = utility_table(config, spec) if main else {}
  for r in rows:
    r['accuracy'] = accuracy.get((r['defense'], float(r['strength'])))
  results = {'records': records, 'summary': {
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
          'model': 'ReLU LeNet, SGD with momentum (dlg_jax.utility)',
      } if accuracy else None,
  }}
  for r in rows:
    logging.info('%s %g: mean PSNR %.2f dB, success rate %.2f, accuracy %s',
                 r['defense'], r['strength'], r['mean_psnr'],
                 r['success_rate'], r['accuracy'])
  logging.info('wall %.1f s (compile %.1f s)', wall, result.compile_seconds)
  if main:
    _write_outputs(workdir, spec, ds, attack, result, results, rows,
                   config.success_psnr)
  return results


def _write_outputs(workdir, spec, ds, attack, result, results, rows,
                   success_psnr) -> None:
  """results.json, the tables, the PSNR plot and one grid per defense."""
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  util = results['summary']['utility']
  _write_tables(workdir, rows, success_psnr,
                util['baseline_accuracy'] if util else None)
  series = {}
  for name, _ in spec.defenses:
    # One decimal keeps the tick labels (one per x value) from overlapping.
    points = [(round(math.log10(r['strength']), 1), r['mean_psnr'])
              for r in rows
              if r['defense'] == name and r['strength'] > 0]
    if points:
      series[name] = ([p[0] for p in points], [p[1] for p in points])
  if series:
    figures.save_line_plot(
        os.path.join(workdir, 'psnr_vs_strength.png'), series,
        xlabel='log10(strength)', ylabel='mean PSNR (dB)',
        title=f'DLG vs defenses, {attack.num_steps} steps', size=(640, 360))
  if not len(result.x_record):
    return
  # The kept reconstructions: the first targets of every (defense, strength).
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  parallel.initialize(f.coordinator_address, f.num_processes, f.process_id,
                      timeout_s=f.coordinator_timeout,
                      auto=f.auto_distributed)
  run(f.config, f.workdir, num_devices=f.num_devices)


if __name__ == '__main__':
  attack_launcher.define_flags()
  define_parallel_flags()
  app.run(errors.report_config_errors(main))
