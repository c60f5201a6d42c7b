"""Victims x weights x attacks: `experiments/victim_study.py`.

`run(config, workdir)` runs the vision attack (`pipelines.attack`) once per
cell of `config.study.victims` x `config.study.weights` x
`config.study.attacks`, on the same first `config.data.count` images, each
cell in `workdir/<victim>/<weights>/<attack>`, and writes `study.json`,
`study.md` and `study.png`.

* Victims are the zoo models of `VICTIMS`; weights are `WEIGHTS`: 'init'
  (`config.model.init_seed`'s) or 'trained' (`pipelines.train` with
  `config.train`, once per victim into `workdir/checkpoints/<victim>`).
  The trained victims train on the images of `config.data` but its first
  `config.data.num_test`, so the attacked images (the first
  `config.data.count`) are images they never saw.
* Attacks are the sections of `config.attacks`, each a whole
  `config.attack` of the vision attack (the config file copies them from
  `configs/mnist.py` and `configs/ig.py`). An attack with a BatchNorm prior
  (`bn_weight > 0`) on a victim without BatchNorm is not run: its cell is
  'n/a'. `config.study.max_steps.<victim>` caps the steps of every attack
  of that victim.
* Resumable: a cell whose `results.json` exists is read back, and a
  checkpoint whose `results.json` exists is reused, provided the
  `config.json` beside it is the one this config makes (else the run is
  refused, before any work).

Every check runs before anything is compiled or written.
"""

import dataclasses
import json
import os
import re
from typing import Any

from absl import logging
from matplotlib import figure
from matplotlib.backends import backend_agg
import ml_collections
import numpy as np

from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.core import npz
from dlg_jax.pipelines import attack as attack_pipeline
from dlg_jax.pipelines import common
from dlg_jax.pipelines import train as train_pipeline
from dlg_jax.vision import data


@dataclasses.dataclass(frozen=True)
class Victim:
  """A zoo model of the study: `config.model`'s name, activation and norm."""
  name: str
  activation: str | None = None
  norm: str | None = None

  @property
  def batch_norm(self) -> bool:
    return self.norm == 'batch'


VICTIMS = {
    # The DLG paper's LeNet.
    'lenet': Victim('lenet', activation='sigmoid'),
    # Inverting Gradients' ReLU ConvNet, without and with BatchNorm.
    'convnet': Victim('convnet', norm='none'),
    'convnet_bn': Victim('convnet', norm='batch'),
    # The CIFAR ResNet-18 (BatchNorm), 11.2M parameters.
    'resnet18': Victim('resnet18', norm='batch'),
}
WEIGHTS = ('init', 'trained')
# Where each cell's paired reconstructions go, beside its results.json.
RECONSTRUCTIONS = attack_pipeline.RECONSTRUCTIONS
# The keys of a cell's config.json that decide its results; a cell read back
# must match them (the runner only decides how fast it runs).
_RESULT_KEYS = ('seed', 'data', 'model', 'attack', 'client')
# `config.data`'s keys the vision attack reads.
_ATTACK_DATA_KEYS = ('source', 'npz', 'data_dir', 'split', 'count',
                     'batch_size')


def cells(config) -> list[tuple[str, str, str]]:
  """`(victim, weights, attack)` of every cell, in the study's order."""
  s = config.study
  return [(v, w, a) for v in s.victims for w in s.weights for a in s.attacks]


def not_applicable(config, victim: str, attack: str) -> str | None:
  """Why the cell of `victim` and `attack` is not run, or None."""
  if config.attacks[attack].get('bn_weight') and not (
      VICTIMS[victim].batch_norm):
    return f'{attack} matches BatchNorm statistics; {victim} has no BatchNorm'
  return None


def victims_to_train(config) -> list[str]:
  """The victims of the 'trained' cells that run (not n/a)."""
  if 'trained' not in config.study.weights:
    return []
  return [v for v in config.study.victims
          if any(not not_applicable(config, v, a)
                 for a in config.study.attacks)]


def checkpoint_workdir(workdir: str, victim: str) -> str:
  """The training workdir of `victim`'s trained weights."""
  return os.path.join(workdir, 'checkpoints', victim)


def cell_workdir(workdir: str, victim: str, weights: str, attack: str) -> str:
  return os.path.join(workdir, victim, weights, attack)


def _model(config, victim: str) -> ml_collections.ConfigDict:
  v = VICTIMS[victim]
  model = config.model.copy_and_resolve_references()
  model.name, model.activation, model.norm = v.name, v.activation, v.norm
  return model


def train_config(config, victim: str) -> ml_collections.ConfigDict:
  """The `configs/train.py`-style config that trains `victim`."""
  model = _model(config, victim)
  return ml_collections.ConfigDict({
      'data': {k: config.data[k] for k in ('source', 'npz', 'data_dir',
                                           'split', 'num_test')},
      'model': {k: model[k] for k in ('name', 'activation', 'norm',
                                      'num_classes', 'init_seed')},
      'train': config.train.to_dict(),
  })


def cell_config(config, victim: str, weights: str, attack: str,
                workdir: str) -> ml_collections.ConfigDict:
  """The vision attack config of one cell."""
  a = config.attacks[attack].copy_and_resolve_references()
  cap = config.study.max_steps.get(victim)
  if cap is not None:
    a.num_steps = min(a.num_steps, cap)
  model = _model(config, victim)
  model.checkpoint = (os.path.abspath(checkpoint_workdir(workdir, victim))
                      if weights == 'trained' else None)
  return ml_collections.ConfigDict({
      'seed': config.seed,
      'data': {k: config.data[k] for k in _ATTACK_DATA_KEYS},
      'model': model,
      'attack': a,
      'runner': config.runner.copy_and_resolve_references(),
      'client': config.client.copy_and_resolve_references(),
      'success_psnr': config.success_psnr,
  })


def _check_names(config) -> None:
  """`config.study`'s names and `config.study.max_steps`, errors naming keys."""
  s = config.study
  known = {'victims': ('victim', sorted(VICTIMS)),
           'weights': ('weights', list(WEIGHTS)),
           'attacks': ('attack', sorted(config.attacks.keys()))}
  for key, (what, choices) in known.items():
    names = tuple(s[key])
    if not names:
      raise errors.ConfigError(
          f'config.study.{key} is empty; choose from {choices}.')
    for name in names:
      if name not in choices:
        raise errors.ConfigError(
            f'config.study.{key}: unknown {what} {name!r}; '
            f'choose from {choices}.')
    if len(set(names)) != len(names):
      raise errors.ConfigError(
          f'config.study.{key} names one twice: {names}.')
  for victim, cap in s.max_steps.items():
    if victim not in VICTIMS:
      raise errors.ConfigError(
          f'config.study.max_steps: unknown victim {victim!r}; choose from '
          f'{sorted(VICTIMS)}.')
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                            or cap < 1):
      raise errors.ConfigError(
          f'config.study.max_steps.{victim} must be an int >= 1 or None, got '
          f'{cap!r}.')


def _under_attack(name: str, fn, *args) -> Any:
  """`fn(*args)`, naming `config.attack`'s keys `config.attacks.<name>`."""
  try:
    return fn(*args)
  except errors.ConfigError as e:
    raise errors.ConfigError(re.sub(r'\bconfig\.attack\b',
                                    f'config.attacks.{name}', str(e))
                             ) from None


def _check_cell(cfg, attack: str, image_shape: tuple[int, ...]) -> None:
  """A cell's model and attack, built without compiling anything."""
  model = common.make_model(cfg, image_shape)
  _under_attack(attack, common.make_attack, cfg, model, image_shape,
                cfg.data.batch_size)
  _under_attack(attack, common.check_runner_config, cfg)
  _under_attack(attack, attack_pipeline.pair_by, cfg)


def _result_part(cfg: dict[str, Any], keys) -> dict[str, Any]:
  part = {k: cfg.get(k) for k in keys}
  if isinstance(part.get('model'), dict):
    # Where the checkpoint lies is not what it holds (that is checked by
    # the checkpoint's own config.json).
    part['model'] = {k: v for k, v in part['model'].items()
                     if k != 'checkpoint'}
  return part


def _check_reusable(folder: str, cfg, keys) -> None:
  """A finished run in `folder` must be `cfg`'s, on `keys`, to be read back.

  Raises:
    ConfigError: naming `--workdir` and the folder.
  """
  if not os.path.exists(os.path.join(folder, 'results.json')):
    return
  try:
    with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.ConfigError(
        f'--workdir: {folder} holds results.json but no readable '
        f'config.json ({e}); delete that folder to run it again.') from None
  wanted = json.loads(json.dumps(cfg.to_dict()))
  saved, wanted = _result_part(saved, keys), _result_part(wanted, keys)
  if saved != wanted:
    diff = sorted(k for k in keys if saved.get(k) != wanted.get(k))
    raise errors.ConfigError(
        f'--workdir: {folder} holds a run of other settings (its config.json '
        f'differs in {", ".join(diff)}); use a new workdir or delete that '
        'folder.')


def check_study(config, workdir: str) -> data.Dataset:
  """The workdir and the config, checked before any work.

  Returns:
    Every image of `config.data`.

  Raises:
    ConfigError: naming the key at fault.
  """
  common.check_workdir(workdir)
  _check_names(config)
  if config.model.pretrain_steps:
    raise errors.ConfigError(
        'config.model.pretrain_steps must be 0: the study attacks the '
        "'init' weights as initialised and trains the 'trained' ones with "
        f'config.train; got {config.model.pretrain_steps}.')
  ds = common.load_data(config)
  count = common.check_batches(config, ds)
  image_shape = tuple(ds.x.shape[1:])
  errors.under('config.model.num_classes', data.check_labels, ds.y,
               config.model.num_classes)
  to_train = victims_to_train(config)
  if to_train:
    train_pipeline.check_train(config)
    num_test = config.data.num_test
    if not isinstance(num_test, int) or not count <= num_test < len(ds.x):
      raise errors.ConfigError(
          f'config.data.num_test must be an int in [config.data.count '
          f'({count}), {len(ds.x) - 1}]: the trained victims hold out the '
          f'first num_test images, and the attacked ones must be among '
          f'them; got {num_test!r}.')
  for victim in config.study.victims:
    if victim in to_train:
      folder = checkpoint_workdir(workdir, victim)
      if os.path.exists(train_pipeline.checkpoint_path(folder)) and not (
          os.path.exists(os.path.join(folder, 'results.json'))):
        raise errors.ConfigError(
            f'--workdir: {folder} holds a checkpoint without results.json '
            '(an interrupted training); delete that folder to train again.')
      _check_reusable(folder, train_config(config, victim),
                      ('data', 'model', 'train'))
    for attack in config.study.attacks:
      if not_applicable(config, victim, attack):
        continue
      for weights in config.study.weights:
        cfg = cell_config(config, victim, weights, attack, workdir)
        if weights == config.study.weights[0]:
          # The weights change only where the cell's parameters come from.
          _check_cell(cfg, attack, image_shape)
        _check_reusable(cell_workdir(workdir, victim, weights, attack), cfg,
                        _RESULT_KEYS)
  return ds


def read_json(path: str) -> dict[str, Any]:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def train_victim(config, workdir: str, victim: str) -> dict[str, Any]:
  """`victim` trained into its checkpoint workdir, or read back from it."""
  folder = checkpoint_workdir(workdir, victim)
  path = os.path.join(folder, 'results.json')
  if os.path.exists(path):
    logging.info('%s: reusing the checkpoint in %s', victim, folder)
    return read_json(path)
  logging.info('%s: training into %s', victim, folder)
  return train_pipeline.run(train_config(config, victim), folder)


def run_cell(cfg, folder: str) -> dict[str, Any]:
  """The vision attack of one cell: `attack_pipeline.run` into `folder`.

  Returns:
    The content of `results.json`.
  """
  return attack_pipeline.run(cfg, folder)


def read_reconstructions(folder: str, shape: tuple[int, ...]) -> np.ndarray:
  """A cell's `RECONSTRUCTIONS`, or NaN (drawn black) where missing."""
  path = os.path.join(folder, RECONSTRUCTIONS)
  try:
    x = npz.read_npz_arrays(path)['x']
    if x.shape != shape:
      raise ValueError(f'x has shape {x.shape}, not {shape}')
    return x
  except (OSError, ValueError, KeyError) as e:
    logging.warning('%s cannot be read (%s); its row of study.png is black',
                    path, e)
  return np.full(shape, np.nan, np.float32)


def cell_row(victim: str, weights: str, attack: str,
             results: dict[str, Any]) -> dict[str, Any]:
  """One row of `study.json` from a cell's `results.json`."""
  summary, records = results['summary'], results['records']
  batches = {r['batch']: r['seconds'] for r in records}
  return {
      'victim': victim, 'weights': weights, 'attack': attack,
      'status': 'done',
      'images': len(records),
      'steps': max(r['steps'] for r in records),
      'mean_psnr': summary['mean_psnr'], 'std_psnr': summary['std_psnr'],
      'mean_ssim': summary['mean_ssim'], 'std_ssim': summary['std_ssim'],
      'mean_lpips': summary['mean_lpips'],
      'std_lpips': summary['std_lpips'],
      'label_accuracy': summary['label_accuracy'],
      # Attack wall time (every restart) over the images; compilation
      # apart.
      'seconds_per_image': sum(batches.values()) / len(records),
      'compile_seconds': summary['compile_seconds'],
  }


def _fmt(value: float | None, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def _pm(row: dict[str, Any], key: str, spec: str) -> str:
  mean, std = row.get(f'mean_{key}'), row.get(f'std_{key}')
  return _fmt(mean, spec) + ('' if std is None else f' ± {std:{spec}}')


_COLUMNS = ('victim', 'weights', 'attack', 'victim test accuracy',
            'PSNR (dB)', 'SSIM', 'LPIPS', 'label accuracy', 's / image')


def markdown_table(rows: list[dict[str, Any]]) -> str:
  """The study as a Markdown table, n/a cells listed beneath."""
  lines = ['| ' + ' | '.join(_COLUMNS) + ' |',
           '|' + '---|' * len(_COLUMNS)]
  for r in rows:
    lines.append('| ' + ' | '.join([
        r['victim'], r['weights'], r['attack'],
        _fmt(r.get('test_accuracy'), '.3f'),
        _pm(r, 'psnr', '.2f'), _pm(r, 'ssim', '.3f'), _pm(r, 'lpips', '.3f'),
        _fmt(r.get('label_accuracy'), '.0%'),
        _fmt(r.get('seconds_per_image'), '.2f')]) + ' |')
  skipped = [r for r in rows if r['status'] == 'n/a']
  if skipped:
    lines += ['', 'n/a cells (not run):', '']
    lines += [f'- {r["victim"]} / {r["weights"]} / {r["attack"]}: '
              f'{r["reason"]}' for r in skipped]
  return '\n'.join(lines) + '\n'


def save_cell_grid(path: str, originals: np.ndarray,
                   rows: list[tuple[str, np.ndarray]]) -> None:
  """A PNG: the originals, then one row of reconstructions per cell.

  Args:
    path: the PNG to write.
    originals: `[n, h, w, c]` in [0, 1], `c` 1 or 3.
    rows: `(label, [n, h, w, c] reconstructions)` per row.
  """
  grid = [('original', originals)] + rows
  n = originals.shape[0]
  fig = figure.Figure(figsize=(2.2 + 0.9 * n, 0.9 * len(grid)),
                      dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(len(grid), n, squeeze=False)
  for i, (label, images) in enumerate(grid):
    for j in range(n):
      ax = axes[i, j]
      img = np.nan_to_num(np.clip(images[j], 0.0, 1.0), nan=0.0)
      if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
      else:
        ax.imshow(img)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[i, 0].set_ylabel(label, rotation=0, ha='right', va='center',
                          fontsize=8)
  fig.subplots_adjust(left=2.0 / (2.2 + 0.9 * n), right=0.98, top=0.98,
                      bottom=0.02, wspace=0.05, hspace=0.1)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)


def write_study(workdir: str, rows: list[dict[str, Any]],
                checkpoints: dict[str, Any], originals: np.ndarray,
                recons: list[tuple[str, np.ndarray]]) -> None:
  """`study.json`, `study.md` and `study.png`."""
  figures.save_json(os.path.join(workdir, 'study.json'),
                    {'cells': rows, 'checkpoints': checkpoints})
  table = markdown_table(rows)
  with open(os.path.join(workdir, 'study.md'), 'w', encoding='utf-8') as f:
    f.write(table)
  save_cell_grid(os.path.join(workdir, 'study.png'), originals, recons)
  logging.info('\n%s', table)


def _accuracy(checkpoint: dict[str, Any] | None, weights: str
              ) -> float | None:
  """The attacked weights' held-out accuracy, where a training measured it.

  Training starts from `config.model.init_seed`'s weights, the 'init'
  cells' weights, and measures them first (`initial_test_accuracy`).
  """
  if checkpoint is None:
    return None
  return checkpoint['test_accuracy' if weights == 'trained'
                    else 'initial_test_accuracy']


def run(config, workdir: str) -> list[dict[str, Any]]:
  """Runs the study and writes its outputs; returns the rows of `study.json`.

  Args:
    config: a `configs/victim_study.py`-style config.
    workdir: where the outputs go: checkpoints in `checkpoints/<victim>`,
      each cell in `<victim>/<weights>/<attack>`.

  Returns:
    One dict per cell (`cells` order): its victim, weights and attack,
    `status` ('done' or 'n/a' with a `reason`), the PSNR, SSIM and LPIPS
    mean and standard deviation over the images, `label_accuracy`,
    `seconds_per_image` and `test_accuracy`: the held-out accuracy of the
    attacked weights (the checkpoint's, or for 'init' its training's
    `initial_test_accuracy`; None where no training ran).

  Raises:
    ConfigError: a bad config value or workdir, named, before any work.
  """
  ds = check_study(config, workdir)
  common.make_workdir(workdir)
  count = common.target_count(config, len(ds.x))
  originals = ds.x[:count]
  checkpoints = {}
  for victim in victims_to_train(config):
    checkpoints[victim] = train_victim(config, workdir, victim)
  rows, recons = [], []
  for victim, weights, attack in cells(config):
    accuracy = _accuracy(checkpoints.get(victim), weights)
    reason = not_applicable(config, victim, attack)
    if reason:
      rows.append({'victim': victim, 'weights': weights, 'attack': attack,
                   'status': 'n/a', 'reason': reason,
                   'test_accuracy': accuracy})
      continue
    folder = cell_workdir(workdir, victim, weights, attack)
    path = os.path.join(folder, 'results.json')
    if os.path.exists(path):
      logging.info('%s/%s/%s: read back from %s', victim, weights, attack,
                   path)
      results = read_json(path)
    else:
      logging.info('%s/%s/%s: attacking', victim, weights, attack)
      results = run_cell(
          cell_config(config, victim, weights, attack, workdir), folder)
    row = cell_row(victim, weights, attack, results)
    row['test_accuracy'] = accuracy
    rows.append(row)
    recons.append((f'{victim} / {weights} / {attack}\n'
                   f'{_fmt(row["mean_psnr"], ".1f")} dB',
                   read_reconstructions(folder, originals.shape)))
  write_study(workdir, rows,
              {v: {k: c.get(k) for k in (
                  'test_accuracy', 'initial_test_accuracy', 'train_accuracy',
                  'steps', 'seconds', 'checkpoint')}
               for v, c in checkpoints.items()},
              originals, recons)
  return rows
