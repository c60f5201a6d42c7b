"""DLG on the gradient of a BERT masked LM: `experiments/attack_text.py`.

`run(config, workdir)` attacks every sentence of `config.data` (a
`configs/bert.py`-style config) and writes into `workdir` `text_log.txt`
(the DLG figure's `[iter=k]` lines and the `[Ground Truth]` per sentence,
also logged), `results.json` (one record per sentence and the means) and
`config.json`. `prepare` checks the config and loads what it names before
anything is compiled.
"""

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.core import runner
from dlg_jax.text import bert
from dlg_jax.text import data
from dlg_jax.text import log
from dlg_jax.text import recover


def _fail(key: str, message: str, cause: Exception | None = None):
  raise errors.ConfigError(f'config.{key}: {message}') from cause


def _choice(config, key: str, options) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value not in options:
    _fail(key, f'{value!r} is not one of {sorted(options)}.')


def _check(config: ml_collections.ConfigDict):
  """The model's shape, after checking the values nothing needs loaded."""
  try:
    model_config = bert.get_config(config.model.size)
  except ValueError as e:
    _fail('model.size', str(e), e)
  _choice(config, 'attack.init', ('leak', 'uniform'))
  _choice(config, 'attack.distance', ('cosine', 'l2'))
  _choice(config, 'attack.length', ('leak', 'given'))
  if config.attack.num_steps < 0 or config.attack.log_every < 1:
    _fail('attack.num_steps', 'needs num_steps >= 0 and log_every >= 1.')
  if config.attack.max_labels is not None and config.attack.max_labels < 1:
    _fail('attack.max_labels', f'{config.attack.max_labels} < 1; unset '
          'keeps every leaked label.')
  if not 0.0 < config.client.mask_rate <= 1.0:
    _fail('client.mask_rate', f'{config.client.mask_rate} not in (0, 1].')
  if not 3 <= config.data.max_length <= model_config.max_position_embeddings:
    _fail('data.max_length',
          f'{config.data.max_length} not in [3, '
          f'{model_config.max_position_embeddings}] (the model\'s '
          'max_position_embeddings).')
  return model_config


def _sentences(config: ml_collections.ConfigDict):
  """`(tokenizer, sentences, ids)` of `config.data`."""
  try:
    tokenizer = data.make_tokenizer(data.load_vocab(config.data.vocab))
  except (OSError, ValueError) as e:
    _fail('data.vocab', str(e), e)

  if config.data.npz:
    try:
      sentences = data.load_sentences(config.data.npz)
    except (OSError, ValueError) as e:
      _fail('data.npz', str(e), e)
  else:
    sentences = data.bundled_sentences(tokenizer, config.data.max_tokens)
  count = config.data.count
  if count is not None and not 1 <= count <= len(sentences):
    _fail('data.count', f'{count} is out of range: the data has '
          f'{len(sentences)} sentences (unset takes all).')
  sentences = sentences[:count]
  ids = []
  for i, sentence in enumerate(sentences):
    try:
      ids.append(data.encode(tokenizer, sentence,
                             max_length=config.data.max_length,
                             truncate=config.data.truncate))
    except ValueError as e:
      _fail('data.npz', f'sentence {i}: {e} (see config.data.max_length and '
            'config.data.truncate)', e)
  return tokenizer, sentences, ids


def _params(config: ml_collections.ConfigDict, model_config):
  """The model: `config.model.weights`, else `config.model.init_seed`."""
  key = jax.random.key(config.model.init_seed)
  if not config.model.weights:
    return bert.init_params(model_config, key)
  try:
    path = (bert.minilm_weights_path() if config.model.weights == 'minilm'
            else config.model.weights)
    return bert.load_safetensors(path, model_config, key)
  except (OSError, KeyError, ValueError) as e:
    _fail('model.weights', str(e), e)


def prepare(config: ml_collections.ConfigDict):
  """Checks `config` and loads what it names, before anything is compiled.

  Returns:
    `(model_config, params, tokenizer, sentences, ids)`.

  Raises:
    ConfigError: naming the config key at fault.
  """
  model_config = _check(config)
  tokenizer, sentences, ids = _sentences(config)
  params = _params(config, model_config)
  return model_config, params, tokenizer, sentences, ids


def attack_sentence(config: ml_collections.ConfigDict, model_config, params,
                    tokenizer, i: int, sentence: str, ids, emit
                    ) -> dict[str, Any]:
  """Attacks sentence `i`, emitting its text log; returns its record."""
  emit(f'# sentence {i}: {len(ids) - 2} word pieces')
  recovery = recover.recover_sentence(
      model_config, params, ids,
      mask_key=jax.random.fold_in(jax.random.key(config.client.mask_seed), i),
      attack_key=jax.random.fold_in(jax.random.key(config.seed), i),
      mask_id=data.special_ids(tokenizer)[data.MASK],
      mask_rate=config.client.mask_rate,
      given_length=config.attack.length == 'given',
      max_labels=config.attack.max_labels,
      num_steps=config.attack.num_steps, log_every=config.attack.log_every,
      learning_rate=config.attack.learning_rate,
      distance=config.attack.distance, init=config.attack.init,
      init_scale=config.attack.init_scale, bucket=config.attack.bucket,
      callback=lambda step, rec, loss: emit(log.log_line(
          step, data.decode(tokenizer, rec))))
  emit(log.ground_truth_line(sentence))
  result = recovery.result
  recovered = data.decode(tokenizer, result.ids)
  return {
      'reference': sentence,
      'recovered': recovered,
      **data.scores(result.ids[1:-1], ids[1:-1], recovered, sentence),
      'seconds': recovery.seconds,
      'iterations': int(result.steps[-1]),
      'length': int(len(ids)),
      'recovered_length': int(recovery.leak.length),
      'masked': int(np.sum(recovery.example.masked)),
      'gradient_distance': float(result.losses[-1]),
      'token_accuracy_by_iteration': {
          int(step): data.token_accuracy(h[1:-1], ids[1:-1])
          for step, h in zip(result.steps, result.history)},
  }


def summarize(config: ml_collections.ConfigDict,
              records: list[dict[str, Any]]) -> dict[str, Any]:
  """The records' means, their count and the iterations run."""
  keys = ('token_accuracy', 'rouge1', 'rouge2', 'rougeL', 'seconds')
  summary = {f'mean_{k}': float(np.mean([r[k] for r in records]))
             for k in keys}
  summary['count'] = len(records)
  summary['iterations'] = (config.attack.num_steps // config.attack.log_every
                           * config.attack.log_every)
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Attacks every configured sentence; writes the log and JSON files.

  Raises:
    ConfigError: a bad config value or workdir, named, before anything is
      compiled.
  """
  model_config, params, tokenizer, sentences, all_ids = prepare(config)
  errors.under('--workdir', os.makedirs, workdir, exist_ok=True)
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  logging.info('BERT %s (%d parameters, weights: %s), %d sentences.',
               config.model.size, bert.num_params(params),
               config.model.weights or 'random', len(sentences))
  records = []
  counter = runner.CompileCounter()
  with open(os.path.join(workdir, 'text_log.txt'), 'w',
            encoding='utf-8') as log_file:
    def emit(line):
      logging.info('%s', line)
      log_file.write(line + '\n')
      log_file.flush()

    for i, (sentence, ids) in enumerate(zip(sentences, all_ids)):
      record = attack_sentence(config, model_config, params, tokenizer, i,
                               sentence, ids, emit)
      records.append(record)
      logging.info('sentence %d: token accuracy %.3f, ROUGE-L %.3f, %.1f s',
                   i, record['token_accuracy'], record['rougeL'],
                   record['seconds'])
  summary = summarize(config, records)
  summary['compiles'] = counter.compiles
  summary['compile_seconds'] = counter.seconds
  results = {'records': records, 'summary': summary}
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  logging.info('summary: %s', summary)
  return results
