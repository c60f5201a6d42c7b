"""The batch study of the text attack: `experiments/text_batch_study.py`.

`run(config, workdir)` runs the batch attack of `dlg_jax.pipelines.
text_attack` for every model of `config.study.models` and batch size of
`config.study.batch_sizes` on the same `config.study.count` sentences, then
each defense of `config.study.defenses` at `config.study.defense_batch_size`,
each run in its own subdirectory of `workdir`. It writes `results.json`
(one row per run: means of the LAMP protocol's scores, the fraction of
sentences whose span test passed, seconds per batch, tokens per batch) and
`table.md` (the same as a Markdown table, and per model the largest batch
size whose mean ROUGE-1 stays >= 0.95).
"""

import copy
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import text_attack
from dlg_jax.text import bert

# model name -> (config.model.size, config.model.weights)
MODELS = {
    'random': ('minilm', None),
    'pretrained': ('minilm', 'minilm'),
    'base': ('base', None),
    'tiny': ('tiny', None),
}
ROUGE1_BAR = 0.95


def _cell(config, model: str, batch_size: int, defense=None, strength=0.0
          ) -> ml_collections.ConfigDict:
  size, weights = MODELS[model]
  cell = copy.deepcopy(config.attack_config)
  cell.model.size = size
  cell.model.weights = weights
  cell.data.batch_size = batch_size
  cell.data.count = config.study.count
  if defense:
    cell.defense.name = defense
    cell.defense.strength = strength
  return cell


def cells(config: ml_collections.ConfigDict) -> list[tuple[str, Any]]:
  """`(name, attack config)` of every run, checked before any is run.

  Raises:
    ConfigError: naming the study key or the attack key at fault.
  """
  for model in config.study.models:
    if model not in MODELS:
      raise errors.ConfigError(
          f'config.study.models: {model!r} is not one of {sorted(MODELS)}.')
  if not config.study.batch_sizes or min(config.study.batch_sizes) < 1:
    raise errors.ConfigError('config.study.batch_sizes: need sizes >= 1.')
  runs = []
  for model in config.study.models:
    for b in config.study.batch_sizes:
      runs.append((f'{model}_b{b}', _cell(config, model, b)))
    for name, strength in config.study.defenses:
      runs.append((f'{model}_b{config.study.defense_batch_size}_{name}_'
                   f'{strength:g}',
                   _cell(config, model, config.study.defense_batch_size,
                         name, strength)))
  for name, cell in runs:
    try:
      text_attack.check(cell)
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{e} (study run {name})') from e
  return runs


def _row(name: str, cell, results: dict[str, Any]) -> dict[str, Any]:
  summary, records = results['summary'], results['records']
  b = cell.data.batch_size
  tokens = [sum(r['length'] for r in records[k:k + b])
            for k in range(0, len(records), b)]
  return {
      'run': name,
      'model': f'{cell.model.size}/{cell.model.weights or "random"}',
      'batch_size': b,
      'defense': cell.defense.name or 'none',
      'strength': float(cell.defense.strength) if cell.defense.name else 0.0,
      'rouge1': summary['mean_rouge1'],
      'rouge2': summary['mean_rouge2'],
      'rougeL': summary['mean_rougeL'],
      'token_accuracy': summary['mean_token_accuracy'],
      'exact_fraction': float(np.mean([r.get('exact', r['token_accuracy']
                                             == 1.0) for r in records])),
      'seconds_per_batch': float(np.mean(
          [r.get('batch_seconds', r['seconds']) for r in records[::b]])),
      'tokens_per_batch': float(np.mean(tokens)),
      'max_tokens_per_batch': int(max(tokens)),
      'hidden_size': bert.get_config(cell.model.size).hidden_size,
  }


def table(rows: list[dict[str, Any]]) -> str:
  """The rows as Markdown, then the largest B per model at ROUGE-1 >= 0.95."""
  lines = ['| model | B | defense | ROUGE-1 | ROUGE-2 | ROUGE-L | token acc. '
           '| exact | s / batch | tokens / batch (max) | hidden |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    defense = ('none' if r['defense'] == 'none'
               else f'{r["defense"]} {r["strength"]:g}')
    lines.append(
        f'| {r["model"]} | {r["batch_size"]} | {defense} | {r["rouge1"]:.3f}'
        f' | {r["rouge2"]:.3f} | {r["rougeL"]:.3f} | '
        f'{r["token_accuracy"]:.3f} | {r["exact_fraction"]:.2f} | '
        f'{r["seconds_per_batch"]:.1f} | {r["tokens_per_batch"]:.0f} '
        f'({r["max_tokens_per_batch"]}) | {r["hidden_size"]} |')
  lines.append('')
  for model, best in largest_batch(rows).items():
    lines.append(f'- {model}: largest B with mean ROUGE-1 >= {ROUGE1_BAR}: '
                 f'{best}')
  return '\n'.join(lines) + '\n'


def largest_batch(rows: list[dict[str, Any]]) -> dict[str, int | None]:
  """Per model, the largest clean B whose mean ROUGE-1 >= 0.95 (None: none)."""
  out = {}
  for r in rows:
    if r['defense'] != 'none':
      continue
    out.setdefault(r['model'], None)
    if r['rouge1'] >= ROUGE1_BAR and (out[r['model']] is None
                                      or r['batch_size'] > out[r['model']]):
      out[r['model']] = r['batch_size']
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every cell; writes `results.json` and `table.md` as it goes.

  Raises:
    ConfigError: a bad config value, named, before anything is compiled.
  """
  runs = cells(config)
  for _, cell in runs:
    text_attack.prepare(cell)  # every file and weight loads, up front
  errors.under('--workdir', os.makedirs, workdir, exist_ok=True)
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  rows = []
  for name, cell in runs:
    logging.info('study run %s', name)
    results = text_attack.run(cell, os.path.join(workdir, name))
    rows.append(_row(name, cell, results))
    logging.info('%s: %s', name, rows[-1])
    out = {'rows': rows, 'largest_batch': largest_batch(rows)}
    figures.save_json(os.path.join(workdir, 'results.json'), out)
    with open(os.path.join(workdir, 'table.md'), 'w', encoding='utf-8') as f:
      f.write(table(rows))
  return out
