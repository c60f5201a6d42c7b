r"""Trains a zoo model with Adam, for the attack of trained weights.

The DLG paper's sigmoid LeNet on the bundled MNIST test images (500): the
first 100 (indices 0-99) are held out for `test_accuracy`, and the model
trains on the other 400 (indices 100-499). The attack configs attack images
0-9, so an attack of this checkpoint targets images it never trained on.

Command:
  python -m experiments.train --config=configs/train.py --workdir=runs/train_lenet

then attack its weights:
  python -m experiments.attack --config=configs/mnist.py \
    --config.model.checkpoint=runs/train_lenet --workdir=runs/mnist_trained

Expected result (measured, 2-core CPU with other work on it): test_accuracy
0.88 (0.02 before training), train_accuracy 1.000, 20.8 s of training
(compile included). The attack of `configs/mnist.py` then recovers 5 of
images 0-9 at 30 dB (median PSNR 17.2 dB), against 10/10 (median 95.3 dB)
at random init.

Other models: `--config.model.name=convnet --config.model.norm=batch
--config.train.steps=300` trains the ReLU ConvNet with BatchNorm (its
running statistics are saved too; test_accuracy 0.96 in 65 s); attack it
with the same `--config.model.*` values. A user's npz
(`--config.data.npz`) or a prepared TFDS dataset
(`--config.data.source=tfds:mnist --config.data.split=train[:5000]`) trains
on those images instead, the first `num_test` held out likewise.

`--config=configs/train.py:quick` trains for 150 steps, a smoke run of
seconds (held-out accuracy 0.79, measured).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The training config; `arg='quick'` shrinks it."""
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  # A bundled sample set (cifar100, mnist, svhn, lfw) or 'tfds:<name>'.
  config.data.source = 'mnist'
  config.data.npz = ''          # a user's npz with x (uint8) and y (int)
  config.data.data_dir = ''     # tfds data_dir, for 'tfds:' sources
  config.data.split = 'train'   # tfds split (slicing allowed), for 'tfds:'
  # The FIRST num_test images are held out (test_accuracy); the model
  # trains on the rest. For bundled MNIST: test 0-99, train 100-499.
  config.data.num_test = 100

  # As the attack configs' config.model: the attack restores these weights
  # only into the same model (name, activation, norm, num_classes).
  config.model = ml_collections.ConfigDict()
  config.model.name = 'lenet'   # lenet, convnet, resnet
  # An activation name (sigmoid, relu, ...); unset keeps the model's own.
  config.model.activation = ml_collections.config_dict.placeholder(str)
  # none, batch (BatchNorm: the state is saved too) or group; unset: none.
  config.model.norm = ml_collections.config_dict.placeholder(str)
  config.model.num_classes = 10
  config.model.init_seed = 0

  # Adam on minibatches sampled with replacement (dlg_jax.vision.train).
  config.train = ml_collections.ConfigDict()
  config.train.steps = 1500
  config.train.batch_size = 32
  config.train.learning_rate = 3e-3
  config.train.seed = 0             # minibatch sampling
  # Images per evaluation call; a model with BatchNorm is evaluated in
  # training mode, by each batch's statistics. 100 divides both parts of
  # bundled MNIST, so one program evaluates both.
  config.train.eval_batch_size = 100

  if arg == 'quick':
    config.train.steps = 150
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  return config
