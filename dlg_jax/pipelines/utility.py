"""What each gradient defense costs learning: `experiments/utility.py`.

`run(config, workdir)` trains one small classifier per (defense, strength,
seed) with the defense applied to every step's gradient (`dlg_jax.vision.utility`)
and writes into the workdir `utility.json` (`records`, one per model, a
`summary` with one row per defense and strength, and the `config`) and
`utility.md` (the table).
"""

import os
import statistics
import time
from typing import Any

from absl import logging

from dlg_jax.core import defenses
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import common
from dlg_jax.vision import utility


def check_utility(config) -> list[tuple[str, tuple[float, ...]]]:
  """`(defense, strengths)` pairs of `config.utility`, errors naming the key."""
  cfg = config.utility
  grid = common.defense_grid('utility', cfg.defenses, cfg.strengths,
                             utility.check_defense)
  if not config.seeds:
    raise errors.ConfigError('config.seeds must name at least one seed.')
  return grid


def strength_label(name: str, strength: float, clip_norm: float) -> str:
  """The strength as the table shows it."""
  if utility.is_per_example(name):
    return f'sigma={strength:g}, C={clip_norm:g}'
  if (name == utility.BASELINE
      or defenses.lookup(name).strength == defenses.IGNORED):
    return '-'
  return f'{strength:g}'


def write_table(path: str, rows: list[dict[str, Any]],
                setup: dict[str, Any]) -> None:
  """`utility.md`: the setup in a sentence, then one row per strength."""
  lines = [
      f'Test accuracy of a {setup["model"]} trained for {setup["steps"]} SGD '
      f'steps of {setup["batch_size"]} ({setup["epochs"]:.3g} epochs of '
      f'{setup["num_train"]} {setup["data"]} images), tested on '
      f'{setup["num_test"]} held-out images; mean (min-max) over '
      f'{setup["num_seeds"]} seed(s).', '',
      '| defense | strength | test accuracy | min-max | vs. no defense |',
      '|---|---|---|---|---|']
  for r in rows:
    delta = r['change_vs_baseline']
    lines.append(
        f'| {r["defense"]} | {r["label"]} | {r["mean_accuracy"]:.3f} | '
        f'{r["min_accuracy"]:.2f}-{r["max_accuracy"]:.2f} | '
        + ('' if delta is None else f'{delta:+.3f}') + ' |')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def train_grid(config, grid, data_split
               ) -> tuple[list[dict[str, Any]], dict[str, float]]:
  """Trains every model of the grid.

  Returns:
    `(records, seconds)`: one record per (defense, strength, seed), and the
    seconds each defense took (compile included).
  """
  seeds = tuple(int(s) for s in config.seeds)
  clip_norm = float(config.utility.clip_norm)
  train_kwargs = dict(
      seeds=seeds, steps=config.train.steps,
      batch_size=config.train.batch_size,
      learning_rate=config.train.learning_rate,
      momentum=config.train.momentum, clip_norm=clip_norm,
      num_classes=config.model.num_classes,
      init_scale=config.model.init_scale,
      activation=config.model.activation)
  records, seconds = [], {}
  for name, strengths in grid:
    t = time.perf_counter()
    acc = errors.under(
        'config', utility.accuracy_grid, name, strengths, data_split,
        **train_kwargs)
    seconds[name] = time.perf_counter() - t
    logging.info('%s: %.1f s (compile included)', name, seconds[name])
    for i, s in enumerate(strengths):
      for j, seed in enumerate(seeds):
        record = {'defense': name, 'strength': s, 'seed': seed,
                  'accuracy': float(acc[i, j])}
        if utility.is_per_example(name):
          record.update(noise_multiplier=s, clip_norm=clip_norm)
        records.append(record)
  return records, seconds


def summarize(grid, records: list[dict[str, Any]], clip_norm: float
              ) -> tuple[list[dict[str, Any]], float | None]:
  """One row per (defense, strength), and the baseline's mean accuracy."""
  baseline = [r['accuracy'] for r in records
              if r['defense'] == utility.BASELINE]
  base = statistics.mean(baseline) if baseline else None
  rows = []
  for name, strengths in grid:
    for s in strengths:
      accs = [r['accuracy'] for r in records
              if r['defense'] == name and r['strength'] == s]
      mean = statistics.mean(accs)
      rows.append({
          'defense': name, 'strength': s,
          'label': strength_label(name, s, clip_norm), 'count': len(accs),
          'mean_accuracy': mean, 'min_accuracy': min(accs),
          'max_accuracy': max(accs),
          'change_vs_baseline': None if base is None else mean - base,
      })
  return rows, base


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the utility study of `config` into `workdir`; returns its JSON.

  Args:
    config: a `configs/utility.py`-style config.
    workdir: where `utility.json` and `utility.md` go.

  Raises:
    ConfigError: a bad config value or workdir, named, before any training.
  """
  grid = check_utility(config)
  common.check_workdir(workdir)
  ds = common.load_data(config)
  data_split = errors.under(
      'config.data.num_test', utility.split, ds.x, ds.y,
      num_test=config.data.num_test)
  num_train = len(data_split.train_y)
  logging.info('%d defenses, %d seeds: %d training and %d test images of %s',
               len(grid), len(config.seeds), num_train,
               len(data_split.test_y), ds.name)
  start = time.perf_counter()
  records, seconds = train_grid(config, grid, data_split)
  wall = time.perf_counter() - start
  rows, base = summarize(grid, records, float(config.utility.clip_norm))
  setup = {
      'data': ds.name, 'num_train': num_train,
      'num_test': len(data_split.test_y),
      'model': (f'LeNet ({config.model.activation}, uniform init '
                f'{config.model.init_scale:g})'),
      'steps': config.train.steps, 'batch_size': config.train.batch_size,
      'epochs': config.train.steps * config.train.batch_size / num_train,
      'num_seeds': len(config.seeds),
  }
  results = {
      'records': records,
      'summary': {**setup, 'by_defense_and_strength': rows,
                  'baseline_accuracy': base, 'seconds_by_defense': seconds,
                  'wall_seconds': wall},
      'config': config.to_dict(),
  }
  common.make_workdir(workdir)
  figures.save_json(os.path.join(workdir, 'utility.json'), results)
  write_table(os.path.join(workdir, 'utility.md'), rows, setup)
  for r in rows:
    logging.info('%s %s: test accuracy %.3f', r['defense'], r['label'],
                 r['mean_accuracy'])
  logging.info('wall %.1f s', wall)
  return results
