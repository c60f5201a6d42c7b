r"""Sweeps the DLG attack over gradient defenses and strengths (DLG section 5).

  python -m experiments.sweep --config=configs/defenses.py --workdir=runs/defenses

Every (defense, strength, image, restart) is one job; jobs run in compiled
chunks of `config.sweep.jobs_per_chunk` (see `dlg_jax.sweep`), and after
each chunk the results so far are checkpointed in `<workdir>/checkpoints`.
Rerunning the same command resumes; a workdir of another config is refused.

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
import numpy as np

from dlg_jax import defenses as defenses_lib
from dlg_jax import figures
from dlg_jax import sweep as sweep_lib
from experiments import attack as attack_launcher


def check_sweep(config) -> sweep_lib.SweepSpec:
  """The sweep's spec from `config.sweep`, errors naming the config key."""
  cfg = config.sweep
  names = tuple(cfg.defenses)
  if not names:
    raise ValueError('config.sweep.defenses must name at least one defense.')
  for name in names:
    if name not in defenses_lib.DEFENSES:
      raise ValueError(
          f'config.sweep.defenses: unknown defense {name!r}; choose from '
          f'{sorted(defenses_lib.DEFENSES)}.')
  if len(set(names)) != len(names):
    raise ValueError(f'config.sweep.defenses names a defense twice: {names}.')
  defenses = []
  for name in names:
    if name not in cfg.strengths:
      raise ValueError(f'config.sweep.strengths.{name} is missing: every '
                       'defense in config.sweep.defenses needs strengths.')
    strengths = tuple(float(s) for s in cfg.strengths[name])
    if not strengths:
      raise ValueError(f'config.sweep.strengths.{name} is empty.')
    attack_launcher._under(  # pylint: disable=protected-access
        f'config.sweep.strengths.{name}', defenses_lib.check_strength, name,
        np.asarray(strengths))
    defenses.append((name, strengths))
  if cfg.jobs_per_chunk < 1:
    raise ValueError(
        f'config.sweep.jobs_per_chunk must be >= 1, got {cfg.jobs_per_chunk}.')
  if config.attack.restarts < 1:
    raise ValueError(
        f'config.attack.restarts must be >= 1, got {config.attack.restarts}.')
  if config.data.batch_size != 1:
    raise ValueError('config.data.batch_size must be 1 for the sweep (one '
                     f'image per gradient), got {config.data.batch_size}.')
  return sweep_lib.SweepSpec(defenses=tuple(defenses),
                             restarts=config.attack.restarts,
                             seed=config.seed,
                             jobs_per_chunk=cfg.jobs_per_chunk)


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
                  success_psnr: float) -> None:
  cols = ('defense', 'strength', 'count', 'mean_psnr', 'mean_ssim',
          'success_rate', 'label_accuracy', 'mean_seconds')
  with open(os.path.join(workdir, 'table.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
  lines = [f'| defense | strength | mean PSNR (dB) | success rate '
           f'(PSNR >= {success_psnr:g}, label right) | mean SSIM |',
           '|---|---|---|---|---|']
  lines += [f'| {r["defense"]} | {r["strength"]:g} | {r["mean_psnr"]:.2f} | '
            f'{r["success_rate"]:.2f} | {r["mean_ssim"]:.3f} |' for r in rows]
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the sweep of `config` into `workdir`; returns `results.json`."""
  spec = check_sweep(config)
  attack_launcher.check_workdir(workdir)
  ds, params, attack = attack_launcher.build(
      config, attack_launcher.load_data(config))
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  plan = sweep_lib.chunks(spec, len(ds.x))
  logging.info('%d defenses, %d images, %d restarts: %d chunks of %d jobs',
               len(spec.defenses), len(ds.x), spec.restarts, len(plan),
               spec.jobs_per_chunk)
  start = time.perf_counter()
  result = sweep_lib.run_sweep(
      attack, params, ds.x, ds.y, spec, workdir=workdir,
      extra_fingerprint=config.to_dict(), on_chunk=_progress_logger())
  wall = time.perf_counter() - start

  records = [{
      'defense': str(result.defense[i]),
      'strength': float(f'{result.strength[i]:.6g}'),
      'index': int(ds.index[result.target[i]]),
      'label': int(ds.y[result.target[i]]),
      'mse': float(result.mse[i]),
      'psnr': float(result.psnr[i]),
      'ssim': float(result.ssim[i]),
      'label_correct': bool(result.label_correct[i]),
      'seconds': float(result.seconds[i]),
      'distance': float(result.distance[i]),
      'restart': int(result.restart[i]),
  } for i in range(len(result.psnr))]
  rows = summarize(records, config.success_psnr)
  results = {'records': records, 'summary': {
      'success_psnr': config.success_psnr,
      'num_steps': attack.num_steps,
      'by_defense_and_strength': rows,
      'compile_seconds': result.compile_seconds,
      'wall_seconds': wall,
      'resumed_chunks': result.resumed_chunks,
  }}
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  _write_tables(workdir, rows, config.success_psnr)

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
  n = len(ds.x)
  for name, strengths in spec.defenses:
    mine = result.defense == name
    recon = result.x[mine][:, 0].reshape(len(strengths), n, *ds.x.shape[1:])
    figures.save_reconstruction_grid(
        os.path.join(workdir, f'grid_{name}.png'), ds.x, recon,
        [f'{name} {s:g}' for s in strengths],
        labels=[str(i) for i in ds.index])
  for r in rows:
    logging.info('%s %g: mean PSNR %.2f dB, success rate %.2f', r['defense'],
                 r['strength'], r['mean_psnr'], r['success_rate'])
  logging.info('wall %.1f s (compile %.1f s)', wall, result.compile_seconds)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  attack_launcher.define_flags()
  app.run(main)
