"""DLG on the gradient of a BERT masked LM: `experiments/attack_text.py`.

`run(config, workdir)` attacks every sentence of `config.data` (a
`configs/bert.py`-style config) and writes into `workdir` `text_log.txt`
(the DLG figure's `[iter=k]` lines and the `[Ground Truth]` per sentence,
also logged), `results.json` (one record per sentence and the means) and
`config.json`. `prepare` checks the config and loads what it names before
anything is compiled.

With `config.data.batch_size = B > 1` the client takes one MLM step on each
`B` consecutive sentences and shares one gradient (`dlg_jax.text.batch`);
the attack reads the batch off the spans of the weight gradients
(`dlg_jax.text.spans`), with `config.attack.fallback='dlg'` the relaxed
batch optimisation (`dlg_jax.text.batch_relaxed`) where a sentence fails the
exact span test, and each reference is scored against the reconstruction a
Hungarian assignment on ROUGE-1 pairs it with (the LAMP protocol,
`dlg_jax.text.lamp`). `config.defense` perturbs the shared
gradient with a defense of `dlg_jax.core.defenses` first.
"""

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from dlg_jax.core import defenses
from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.core import runner
from dlg_jax.text import batch_relaxed
from dlg_jax.text import bert
from dlg_jax.text import data
from dlg_jax.text import lamp
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


def check(config: ml_collections.ConfigDict):
  """The model's shape, after checking the values nothing needs loaded."""
  try:
    model_config = bert.get_config(config.model.size)
  except ValueError as e:
    _fail('model.size', str(e), e)
  _choice(config, 'attack.init', ('leak', 'uniform'))
  _choice(config, 'attack.distance', ('cosine', 'l2'))
  _choice(config, 'attack.length', ('leak', 'given'))
  if 'method' in config.attack:
    _choice(config, 'attack.method', ('auto', 'spans'))
  if config.attack.num_steps < 0 or config.attack.log_every < 1:
    _fail('attack.num_steps', 'needs num_steps >= 0 and log_every >= 1.')
  if 'fallback' in config.attack:
    _choice(config, 'attack.fallback', recover.FALLBACKS)
    _choice(config, 'attack.fallback_candidates', batch_relaxed.CANDIDATES)
    if config.attack.fallback_steps < 0:
      _fail('attack.fallback_steps', f'{config.attack.fallback_steps} < 0.')
    if config.attack.fallback_log_every < 1:
      _fail('attack.fallback_log_every',
            f'{config.attack.fallback_log_every} < 1.')
    if not config.attack.fallback_learning_rate > 0:
      _fail('attack.fallback_learning_rate',
            f'{config.attack.fallback_learning_rate} is not > 0.')
    if not config.attack.fallback_span_weight >= 0:
      _fail('attack.fallback_span_weight',
            f'{config.attack.fallback_span_weight} < 0.')
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
  batch_size = config.data.get('batch_size', 1)
  if batch_size < 1:
    _fail('data.batch_size', f'{batch_size} < 1.')
  max_tokens = config.data.get('max_batch_tokens', None)
  if (max_tokens is not None
      and batch_size * config.data.max_length > max_tokens):
    _fail('data.batch_size',
          f'{batch_size} sentences of up to data.max_length='
          f'{config.data.max_length} ids exceed data.max_batch_tokens='
          f'{max_tokens} in one gradient.')
  defense = config.get('defense', None)
  if defense is not None and defense.name:
    try:
      defenses.get_defense(defense.name)
    except ValueError as e:
      _fail('defense.name', str(e), e)
    if not _spans(config):
      _fail('defense.name', 'defenses apply to the span attack; set '
            'data.batch_size > 1 or attack.method=spans.')
    try:
      defenses.check_strength(defense.name, defense.strength)
    except ValueError as e:
      _fail('defense.strength', str(e), e)
  return model_config


def _spans(config: ml_collections.ConfigDict) -> bool:
  """Whether the span attack runs: batches, or `attack.method='spans'`."""
  return (config.data.get('batch_size', 1) > 1
          or config.attack.get('method', 'auto') == 'spans')


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
  batch_size = config.data.get('batch_size', 1)
  if batch_size > len(sentences):
    _fail('data.batch_size', f'{batch_size} > the {len(sentences)} sentences '
          'attacked (data.count).')
  if len(sentences) % batch_size:
    _fail('data.count', f'{len(sentences)} sentences are not a multiple of '
          f'data.batch_size={batch_size}.')
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
  model_config = check(config)
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


def _defense(config: ml_collections.ConfigDict, k: int):
  """The client's defense of batch `k` as `grads -> grads`, or None."""
  defense = config.get('defense', None)
  if defense is None or not defense.name:
    return None
  fn = defenses.get_defense(defense.name)
  key = jax.random.fold_in(jax.random.key(defense.seed), k)
  return lambda grads: fn(key, grads, defense.strength)


def _fallback_kwargs(config: ml_collections.ConfigDict, k: int
                     ) -> dict[str, Any]:
  """`recover_batch`'s fallback arguments for batch `k`."""
  attack = config.attack
  if attack.get('fallback', 'none') == 'none':
    return {}
  return dict(fallback=attack.fallback,
              fallback_key=jax.random.fold_in(jax.random.key(config.seed), k),
              num_steps=attack.fallback_steps,
              log_every=attack.fallback_log_every,
              learning_rate=attack.fallback_learning_rate,
              span_weight=attack.fallback_span_weight,
              candidates=attack.fallback_candidates,
              distance=attack.distance)


def _history(recovery: recover.BatchRecovery, r: int
             ) -> tuple[list[int], list[np.ndarray], bool, float, bool]:
  """`(steps, sentences, exact, residual, fallback)` of reconstruction `r`.

  The assembly's iterations, then (where the fallback relaxed it) the
  fallback's snapshots, then the sentence with its labels in place.
  """
  fb = recovery.fallback
  if fb is None:
    history = recovery.assembly.history[r] + [recovery.sentences[r]]
    return (list(range(len(history))), history, recovery.assembly.exact[r],
            recovery.assembly.scores[r], False)
  source = fb.source[r]
  history = list(recovery.assembly.history[source]) if source >= 0 else []
  steps = list(range(len(history)))
  if not fb.fixed[r]:
    steps += [len(history) + int(s) for s in fb.steps]
    history += list(fb.history[r])
  steps.append(steps[-1] + 1 if steps else 0)
  history.append(fb.sentences[r])
  return steps, history, fb.exact[r], fb.scores[r], not fb.fixed[r]


def attack_batch(config: ml_collections.ConfigDict, model_config, params,
                 tokenizer, k: int, sentences: list[str], ids: list, emit
                 ) -> list[dict[str, Any]]:
  """Attacks batch `k` (sentences `k * B` on); returns one record each.

  Each reference is paired with a reconstruction by the Hungarian
  assignment on ROUGE-1 (LAMP); its text log is that reconstruction after
  each assembly iteration, then (where the fallback relaxed it) at each of
  the fallback's snapshots, `[iter=k]` counting on from the assembly's, then
  with the labels in place.
  """
  size = len(sentences)
  first = k * size
  special = data.special_ids(tokenizer)
  emit(f'# batch {k}: sentences {first} to {first + size - 1}, '
       f'{sum(len(x) for x in ids)} tokens')
  recovery = recover.recover_batch(
      model_config, params, ids,
      mask_keys=[jax.random.fold_in(jax.random.key(config.client.mask_seed),
                                    first + j) for j in range(size)],
      mask_id=special[data.MASK], cls_id=special[data.CLS],
      sep_id=special[data.SEP], pad_id=special[data.PAD],
      mask_rate=config.client.mask_rate, max_labels=config.attack.max_labels,
      defense=_defense(config, k), callback=emit,
      **_fallback_kwargs(config, k))
  texts = [data.decode(tokenizer, x) for x in recovery.sentences]
  pairs = lamp.pair_by_rouge1(texts, sentences)
  masked = np.asarray(recovery.example.masked).sum(axis=1)
  records = []
  for j, (sentence, ref) in enumerate(zip(sentences, ids)):
    r = pairs[j]
    emit(f'# sentence {first + j}: {len(ref) - 2} word pieces')
    if r is None:
      rec, steps, history = np.zeros(0, np.int32), [], []
      exact, score, relaxed = False, 1.0, False
    else:
      rec = recovery.sentences[r]
      steps, history, exact, score, relaxed = _history(recovery, r)
    for step, h in zip(steps, history):
      emit(log.log_line(step, data.decode(tokenizer, h)))
    emit(log.ground_truth_line(sentence))
    recovered = data.decode(tokenizer, rec)
    records.append({
        'reference': sentence,
        'recovered': recovered,
        **data.scores(rec[1:-1], ref[1:-1], recovered, sentence),
        'seconds': recovery.seconds / size,
        'batch': k,
        'batch_seconds': recovery.seconds,
        'iterations': steps[-1] if steps else 0,
        'length': int(len(ref)),
        'recovered_length': int(rec.size),
        'masked': int(masked[j]),
        'exact': bool(exact),
        'span_residual': float(score),
        'fallback': bool(relaxed),
        'token_accuracy_by_iteration': {
            step: data.token_accuracy(h[1:-1], ref[1:-1])
            for step, h in zip(steps, history)},
    })
  leak = recovery.leak
  fb = recovery.fallback
  exact = recovery.assembly.exact if fb is None else fb.exact
  emit(f'# batch {k}: {len(recovery.sentences)} of {size} sentences '
       f'recovered, {sum(exact)} exact'
       + ('' if fb is None else f' ({sum(not f for f in fb.fixed)} by the '
          f'fallback, gradient objective {fb.losses[0]:.4f} -> '
          f'{fb.losses[-1]:.4f})')
       + f', {recovery.seconds:.1f} s (ranks {leak.ranks})')
  return records


def summarize(config: ml_collections.ConfigDict,
              records: list[dict[str, Any]]) -> dict[str, Any]:
  """The records' means, their count and the iterations run."""
  keys = ('token_accuracy', 'rouge1', 'rouge2', 'rougeL', 'seconds')
  summary = {f'mean_{k}': float(np.mean([r[k] for r in records]))
             for k in keys}
  summary['count'] = len(records)
  batch_size = config.data.get('batch_size', 1)
  if not _spans(config):
    summary['iterations'] = (config.attack.num_steps
                             // config.attack.log_every
                             * config.attack.log_every)
  else:
    summary['batch_size'] = batch_size
    summary['batches'] = len(records) // batch_size
    summary['mean_seconds_per_batch'] = float(np.mean(
        [r['batch_seconds'] for r in records[::batch_size]]))
    summary['exact_fraction'] = float(np.mean([r['exact'] for r in records]))
    summary['fallback_fraction'] = float(np.mean(
        [r.get('fallback', False) for r in records]))
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

    batch_size = config.data.get('batch_size', 1)
    if not _spans(config):
      for i, (sentence, ids) in enumerate(zip(sentences, all_ids)):
        record = attack_sentence(config, model_config, params, tokenizer, i,
                                 sentence, ids, emit)
        records.append(record)
        logging.info('sentence %d: token accuracy %.3f, ROUGE-L %.3f, '
                     '%.1f s', i, record['token_accuracy'], record['rougeL'],
                     record['seconds'])
    else:
      for k in range(len(sentences) // batch_size):
        part = slice(k * batch_size, (k + 1) * batch_size)
        batch_records = attack_batch(config, model_config, params, tokenizer,
                                     k, sentences[part], all_ids[part], emit)
        records += batch_records
        logging.info('batch %d: mean ROUGE-1 %.3f, ROUGE-2 %.3f, token '
                     'accuracy %.3f, %.1f s', k,
                     np.mean([r['rouge1'] for r in batch_records]),
                     np.mean([r['rouge2'] for r in batch_records]),
                     np.mean([r['token_accuracy'] for r in batch_records]),
                     batch_records[0]['batch_seconds'])
  summary = summarize(config, records)
  summary['compiles'] = counter.compiles
  summary['compile_seconds'] = counter.seconds
  results = {'records': records, 'summary': summary}
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  logging.info('summary: %s', summary)
  return results
