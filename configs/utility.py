r"""What each gradient defense costs learning (the DLG paper's section 5).

A ReLU LeNet (10 classes) trained with SGD on the bundled MNIST samples,
images 0-399, each step's mini-batch gradient passed through one defense
at one strength; accuracy on the held-out images 400-499. The defenses and
strengths are the DLG sweep's grid (`configs/defenses.PAPER_STRENGTHS`),
plus the undefended baseline (`none`) and DP-SGD (noise multipliers, clip
norm `config.utility.clip_norm`). See `dlg_jax/vision/utility.py` for why this
model and SGD.

Command:
  python -m experiments.utility --config=configs/utility.py --workdir=runs/utility

Full TFDS MNIST instead of the bundled samples (needs it prepared, see
`data.load_tfds`), holding out the last 1000 of the first 11000 training
images:
  python -m experiments.utility --config=configs/utility.py \
    --config.data.source=tfds:mnist --config.data.split='train[:11000]' \
    --config.data.num_test=1000 --workdir=runs/utility_tfds

Expected result (measured on the bundled samples, one core of a shared
2-core CPU, 371 s): mean test accuracy over seeds 0, 1, 2 of none 0.863;
Gaussian noise of variance 1e-2 0.780 and 1e-1 0.093 (chance 0.10); casts
and pruning up to 70% cost nothing measurable.

`--config=configs/utility.py:quick` is a smoke run: the baseline and two
Gaussian variances, one seed, 30 steps.

Full measurements (every defense and strength, DP-SGD, the `:quick` run):
docs/utility.md.
"""

import ml_collections

from configs import defenses

# DP-SGD noise multipliers sigma (Abadi et al. 2016); 0 is clipping alone.
DP_SGD_NOISE_MULTIPLIERS = (0.0, 0.5, 1.0, 2.0, 4.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The utility study; `arg='quick'` shrinks it to a smoke run."""
  config = ml_collections.ConfigDict()
  # One model per seed and strength; a seed fixes the init, the batch order
  # and the defense's unit noise, shared by all strengths.
  config.seeds = (0, 1, 2)

  config.data = ml_collections.ConfigDict()
  config.data.source = 'mnist'  # a bundled sample set or 'tfds:<name>'
  config.data.npz = ''          # a user's npz with x (uint8) and y (int)
  config.data.data_dir = ''     # tfds data_dir, for 'tfds:' sources
  config.data.split = 'test'    # tfds split, for 'tfds:' sources
  config.data.num_test = 100    # the LAST num_test samples are held out

  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 10
  config.model.activation = 'relu'
  config.model.init_scale = 0.2

  config.train = ml_collections.ConfigDict()
  config.train.steps = 200
  config.train.batch_size = 32
  config.train.learning_rate = 0.02
  config.train.momentum = 0.9

  config.utility = ml_collections.ConfigDict()
  config.utility.defenses = ('none', 'gaussian', 'laplacian', 'float16',
                             'bfloat16', 'int8', 'prune_layer',
                             'prune_global', 'dp_sgd')
  config.utility.strengths = ml_collections.ConfigDict(
      {'none': (0.0,), **defenses.PAPER_STRENGTHS,
       'dp_sgd': DP_SGD_NOISE_MULTIPLIERS})
  config.utility.clip_norm = 1.0  # DP-SGD's per-example L2 bound C

  if arg == 'quick':
    config.seeds = (0,)
    config.train.steps = 30
    config.utility.defenses = ('none', 'gaussian')
    config.utility.strengths.gaussian = (1e-4, 1e-1)
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  return config
