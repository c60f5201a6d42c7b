r"""Victims x weights x attacks on held-out MNIST digits.

Four victims (`dlg_jax.pipelines.victim_study.VICTIMS`): the DLG paper's
sigmoid LeNet (`lenet`), the ReLU ConvNet (`convnet`), the same with
BatchNorm (`convnet_bn`) and ResNet-18 (`resnet18`, BatchNorm); each at
initialisation and trained (`configs/train.py`'s settings, on bundled MNIST
images 100-499); each attacked by DLG's L-BFGS (`configs/mnist.py`'s
attack), Inverting Gradients' recipe (`configs/ig.py`'s) and the IG recipe
with GradInversion's BatchNorm-statistics prior (`configs/ig.py:bn`'s:
`bn_weight` 0.01, no feature term; BatchNorm victims only, the other cells are n/a). The
attacks are copied from those config files when this one is read, so a
change there is a change here, but for the IG recipe's ReLU smoothing (and
its 3,000 steps and 1 restart), added after the study ran: the study pins
the recipe it measured. Every cell attacks MNIST images 0-3, which
the trained victims held out, one image per client gradient, 10 classes.

Command:
  python -m experiments.victim_study --config=configs/victim_study.py \
    --workdir=runs/victim_study

Writes `study.json` (a row per cell: PSNR, SSIM and LPIPS mean and standard
deviation over the images, label accuracy, seconds per image, the victim's
held-out accuracy; the checkpoints' accuracies), `study.md` (the table) and
`study.png` (the originals, then a row of reconstructions per cell). A
rerun with the same workdir reads finished cells and checkpoints back.

Measured cost with `--config.data.count=2` on the 2-core CPU, shared with
other work: the LeNet and ConvNet cells took 0.2 to 110 s per image (README);
ResNet-18's training 63 minutes and its six 300-step cells 22 minutes. The
estimate made before it ran: a step of the ConvNet
attacks costs ~13 ms per image and restart on a quiet machine
(docs/victims.md), so each ConvNet cell (4 images; DLG up to 6,000 L-BFGS
steps, IG 2,000 steps x 2 restarts) takes 3-5 minutes; the LeNet cells are
minutes in all (DLG stops early at init); training takes 21 s (LeNet) to
~6 minutes (ConvNet, 1,500 steps; configs/train.py measured 300 steps in
65 s). ResNet-18 has ~15x the ConvNet's multiply-adds per image, so its
attacks are capped at `config.study.max_steps.resnet18` = 300 steps
(~0.2 s a step and image: ~40 minutes for its 6 cells) and its 1,500
training steps take ~20 minutes. 300 steps are far fewer than the attacks
need on ResNet-18 (Inverting Gradients runs 24,000): its rows show what a
bounded attacker gets, and the cap is the first knob to raise on a GPU.

`--config=configs/victim_study.py:quick` is a smoke run: the LeNet and the
BatchNorm ConvNet, init and trained (30 training steps), DLG and IG +
BatchNorm prior (its LeNet cells n/a), one image, 20 steps, 1 restart.
Measured on the 2-core CPU while other work shared it: 164 s, nearly all
of it compilation (two trainings and three attack programs; the attacks
themselves take under a second a cell), and 4 s to read it all back when
rerun into the same workdir.
"""

import ml_collections

from configs import ig
from configs import mnist
from configs import train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The victim study; `arg='quick'` shrinks it to a smoke run."""
  if arg not in (None, '', 'quick'):
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  base = mnist.get_config()
  trainer = train.get_config()
  config = ml_collections.ConfigDict()
  config.seed = base.seed

  # The attacked images are the first `count`; the trained victims hold out
  # the first `num_test` (configs/train.py) and train on the rest.
  config.data = base.data
  config.data.count = 4
  config.data.num_test = trainer.data.num_test

  # The victims' name, activation and norm come from config.study.victims.
  config.model = base.model
  config.model.num_classes = 10
  config.runner = base.runner
  config.client = base.client
  config.success_psnr = base.success_psnr

  # The trained weights: configs/train.py's training.
  config.train = trainer.train

  # Each attack is a whole `config.attack` of experiments/attack.py.
  config.attacks = ml_collections.ConfigDict()
  config.attacks.dlg = base.attack
  config.attacks.ig = ig.get_config().attack
  # The recipe as the study measured it (README): 2 restarts of 2,000 steps,
  # before configs/ig.py gained its ReLU smoothing (3,000 steps, 1 restart).
  config.attacks.ig.num_steps = 2000
  config.attacks.ig.restarts = 2
  config.attacks.ig.relu_smoothing = ()
  config.attacks.ig_bn = ig.get_config('bn').attack

  config.study = ml_collections.ConfigDict()
  config.study.victims = ('lenet', 'convnet', 'convnet_bn', 'resnet18')
  config.study.weights = ('init', 'trained')
  config.study.attacks = ('dlg', 'ig', 'ig_bn')
  # The most steps of any attack of a victim; unset: the attack's own.
  config.study.max_steps = ml_collections.ConfigDict({'resnet18': 300})

  if arg == 'quick':
    config.data.count = 1
    config.train.steps = 30
    config.study.victims = ('lenet', 'convnet_bn')
    config.study.attacks = ('dlg', 'ig_bn')
    for attack in config.attacks.values():
      attack.num_steps = 20
      attack.restarts = 1
      attack.snapshot_steps = (0, 10)
  return config
