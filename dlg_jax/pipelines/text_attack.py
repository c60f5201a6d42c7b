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
from dlg_jax.text import attack as text_attack
from dlg_jax.text import bert
from dlg_jax.text import data as text
def _fail(key: str, message: str, cause: Exception | None = None):
  raise errors.ConfigError(f'config.{key}: {message}') from cause


def _choice(config, key: str, options) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  if value not in options:
    _fail(key, f'{value!r} is not one of {sorted(options)}.')


def prepare(config: ml_collections.ConfigDict):
  """Checks `config` and loads what it names, before anything is compiled.

  Returns:
    `(model_config, params, tokenizer, sentences, ids)`.

  Raises:
    ConfigError: naming the config key at fault.
  """
  try:
    model_config = bert.get_config(config.model.size)
  except ValueError as e:
    _fail('model.size', str(e), e)
  _choice(config, 'attack.init', ('leak', 'uniform'))
  _choice(config, 'attack.distance', ('cosine', 'l2'))
  _choice(config, 'attack.length', ('leak', 'given'))
  if config.attack.steps < 0 or config.attack.log_every < 1:
    _fail('attack.steps', 'needs steps >= 0 and log_every >= 1.')
  if not 0.0 < config.client.mask_rate <= 1.0:
    _fail('client.mask_rate', f'{config.client.mask_rate} not in (0, 1].')
  if not 3 <= config.data.max_length <= model_config.max_position_embeddings:
    _fail('data.max_length',
          f'{config.data.max_length} not in [3, '
          f'{model_config.max_position_embeddings}] (the model\'s '
          'max_position_embeddings).')

  try:
    tokenizer = text.make_tokenizer(
        text.load_vocab(config.data.vocab or None))
  except (OSError, ValueError) as e:
    _fail('data.vocab', str(e), e)

  if config.data.npz:
    try:
      sentences = text.load_sentences(config.data.npz)
    except (OSError, ValueError) as e:
      _fail('data.npz', str(e), e)
  else:
    sentences = text.bundled_sentences(tokenizer, config.data.max_tokens)
  count = config.data.count
  if not 0 <= count <= len(sentences):
    _fail('data.count', f'{count} is out of range: the data has '
          f'{len(sentences)} sentences (0 takes all).')
  sentences = sentences[:count or None]
  ids = []
  for i, sentence in enumerate(sentences):
    try:
      ids.append(text.encode(tokenizer, sentence,
                             max_length=config.data.max_length,
                             truncate=config.data.truncate))
    except ValueError as e:
      _fail('data.npz', f'sentence {i}: {e} (see config.data.max_length and '
            'config.data.truncate)', e)

  key = jax.random.key(config.model.seed)
  if not config.model.weights:
    params = bert.init_params(model_config, key)
  else:
    try:
      path = (bert.minilm_weights_path() if config.model.weights == 'minilm'
              else config.model.weights)
      params = bert.load_safetensors(path, model_config, key)
    except (OSError, KeyError, ValueError) as e:
      _fail('model.weights', str(e), e)
  return model_config, params, tokenizer, sentences, ids


def attack_sentence(config: ml_collections.ConfigDict, model_config, params,
                    tokenizer, i: int, sentence: str, ids, emit
                    ) -> dict[str, Any]:
  """Attacks sentence `i`, emitting its text log; returns its record."""
  emit(f'# sentence {i}: {len(ids) - 2} word pieces')
  recovery = text_attack.recover_sentence(
      model_config, params, ids,
      mask_key=jax.random.fold_in(jax.random.key(config.client.seed), i),
      attack_key=jax.random.fold_in(jax.random.key(config.attack.seed), i),
      mask_id=text.special_ids(tokenizer)[text.MASK],
      mask_rate=config.client.mask_rate,
      given_length=config.attack.length == 'given',
      max_labels=config.attack.max_labels or None,
      steps=config.attack.steps, log_every=config.attack.log_every,
      learning_rate=config.attack.learning_rate,
      distance=config.attack.distance, init=config.attack.init,
      init_scale=config.attack.init_scale, bucket=config.attack.bucket,
      callback=lambda step, rec, loss: emit(text_attack.log_line(
          step, text.decode(tokenizer, rec))))
  emit(text_attack.ground_truth_line(sentence))
  result = recovery.result
  recovered = text.decode(tokenizer, result.ids)
  return {
      'reference': sentence,
      'recovered': recovered,
      **text.scores(result.ids[1:-1], ids[1:-1], recovered, sentence),
      'seconds': recovery.seconds,
      'iterations': int(result.steps[-1]),
      'length': int(len(ids)),
      'recovered_length': int(recovery.leak.length),
      'masked': int(np.sum(recovery.example.masked)),
      'gradient_distance': float(result.losses[-1]),
      'token_accuracy_by_iteration': {
          int(step): text.token_accuracy(h[1:-1], ids[1:-1])
          for step, h in zip(result.steps, result.history)},
  }


def summarize(config: ml_collections.ConfigDict,
              records: list[dict[str, Any]]) -> dict[str, Any]:
  """The records' means, their count and the iterations run."""
  keys = ('token_accuracy', 'rouge1', 'rouge2', 'rougeL', 'seconds')
  summary = {f'mean_{k}': float(np.mean([r[k] for r in records]))
             for k in keys}
  summary['count'] = len(records)
  summary['iterations'] = config.attack.steps // config.attack.log_every * (
      config.attack.log_every)
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
  with open(os.path.join(workdir, 'text_log.txt'), 'w',
            encoding='utf-8') as log:
    def emit(line):
      logging.info('%s', line)
      log.write(line + '\n')
      log.flush()

    for i, (sentence, ids) in enumerate(zip(sentences, all_ids)):
      record = attack_sentence(config, model_config, params, tokenizer, i,
                               sentence, ids, emit)
      records.append(record)
      logging.info('sentence %d: token accuracy %.3f, ROUGE-L %.3f, %.1f s',
                   i, record['token_accuracy'], record['rougeL'],
                   record['seconds'])
  summary = summarize(config, records)
  results = {'records': records, 'summary': summary}
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  logging.info('summary: %s', summary)
  return results
