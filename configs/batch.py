r"""Batched DLG on the bundled CIFAR-100 images: B images behind one gradient.

The client shares the mean gradient of a batch of `data.batch_size`
consecutive images; the attack optimises that many dummy images, with labels
read off the gradient by counting (`dlg_jax.vision.labels.label_counts`), and pairs
reconstructions with originals by the best total PSNR.

A total-variation prior (weight 0.01) is on. Counting shows why B >= 4 needs
one: the last layer's gradient fixes at most each image's 768 features, and
the other 2304 numbers of a 32x32x3 image must come from the 8,136 convolution
weight gradients, which are sums over the batch; 4 x 2304 > 8136, so many
batches share one gradient. Measured without the prior, the reconstructions
stay mixtures of the batch: 16 and 21 dB for B = 2 after 3000 steps, 12 to
18 dB for B = 4 after 10000; with it, 34 and 35 dB for the same B = 2 batch.

Command:
  python -m experiments.attack --config=configs/batch.py --workdir=runs/batch

Expected result (measured, 2-core CPU): 4 batches of 4 (images 0-15), all 16
images matched at PSNR >= 25 dB (26.4 to 35.5 dB, mean 29.9), 7 of them at
>= 30 dB, every label right; 6000 steps, about 24 s of attack per batch.
With `--config.data.batch_size=8`: 9 of 16 at >= 25 dB (4 and 5 per batch),
mean 26.2 dB, labels all right. With batch_size 2: all 16 at >= 30 dB.

B = 8 stops at about 4 of 8 at 25 dB whatever the attack setting; measured on
images 0-7 (`--config.data.batch_size=8 --config.data.count=8`, 6000 steps,
one core): TV 0.01 4/8 (mean 25.8 dB), 0.005 3/8 (25.3), 0.02 4/8 (25.6),
0.05 3/8 (25.0); uniform start 3/8 (25.6); 2 restarts at init_scale 0.3 3/8
(25.6); L-BFGS memory 300 4/8 (25.9); cosine distance 0/8 (18.4, stalls by
step 2000); layer weights Conv_0 x100, Conv_1 x10 (library only) 0/8 (19.5).
Grey, uniform and wider starts and memory 100 and 300 end at the same
objective (6.93e-4 to 6.99e-4), within 0.3 dB per image (images 2, 3, 5, 7
always at 22.6-24.9 dB). The true batch scores worse: gradient distance 0
plus 0.01 x its mean TV is 1.02e-3 (9.2e-4 for images 8-15), against 6.95e-4
found; at TV 0.005, 5.1e-4 against 3.64e-4. The objective's minimum is not
the batch, so restarts and more steps (earlier: 6000 to 12000 steps, 4 and 5
of 8) cannot reach it; a better image prior, or fewer unknowns, would have to.

Annealing the TV weight (`config.attack.tv_final_weight`, cosine from
`tv_weight`; `tv_stages` holds it over equal stages) does not get there
either; same images and setting, per image 0-7 in dB:
  0.01 -> 0.001, every step: 3/8 (mean 25.5) 22.6 25.5 24.4 23.2 32.7 24.6
    26.8 23.8; image 0 drifts into a mixture as the weight falls.
  0.05 -> 0.005, every step: 4/8 (25.9) 26.8 25.3 24.5 22.9 32.8 25.0 26.4
    23.6 (image 5 at 24.98).
  0.01 -> 0 by step 3000 (`tv_decay_steps=3000`), then 3000 steps without
    the prior: 0/8 (21.1) 14.4 22.4 21.1 20.7 24.0 20.8 23.6 21.6.
  0.03 -> 0.003 in 4 stages (`tv_stages=4`): 5/8 (26.0) 26.8 25.5 24.6 23.0
    32.9 25.05 26.6 23.7; images 8-15 (`--config.data.count=16`): 5/8, 32.0
    26.2 29.0 24.8 24.1 27.0 23.9 29.3; 10/16 and mean 26.5 against 9/16
    and 26.2 at constant 0.01.
  0.05 -> 0.005 in 4 stages: 4/8 (25.9) 26.7 25.3 24.5 22.8 32.8 24.9 26.4
    23.5.
  0.03 -> 0.003 in 4 stages over 12000 steps: 3/8 (25.5) 26.1 24.9 24.1 22.4
    32.5 24.4 26.0 23.2.
Every label was right. Images 2, 3 and 7 stay at 22.4-24.6 dB under every
schedule: their reconstructions have the right layout and colours but lose
fine detail, which the gradient does not pin down (a weak or no prior fills
it with noise, not with the original's detail). The default stays constant.

A stationary Gaussian image prior (`config.attack.prior_weight`, fitted on
the bundled images not attacked; `dlg_jax.core.objectives.fit_gaussian_prior`)
in place of TV reaches every image; weight 1e-6, `tv_weight=0`, one core:
  images 0-7 (prior on 8-19; `--config.data.batch_size=8
    --config.data.count=8 --config.attack.prior_weight=1e-6
    --config.attack.tv_weight=0`): 8/8 at >= 25 dB (mean 28.9) 29.1 29.9
    27.0 26.2 32.6 27.8 30.1 28.7.
  images 8-15 (prior on 0-7 and 16-19; `--config.data.count=16
    --config.attack.prior_images=0-7,16-19`, batch 1): 8/8 (mean 28.5) 27.5
    27.8 29.0 29.5 25.7 29.0 27.8 31.7.
Images 0-7 at other settings: weight 3e-7 8/8 (29.3), 3e-6 8/8 (28.2),
1e-6 with TV 0.01 8/8 (28.9). Every label was right.

Larger batches (6000 steps unless said; labels counted):
  B = 16, CIFAR-100 images 0-15: 3/16 at >= 25 dB, mean 23.7, 18.4 to 30.3,
    labels 16/16 (`--config.data.batch_size=16`).
  The 20 bundled CIFAR-100 images do not fill B = 32; LFW (81 images, 81
  classes, 32x32x3) does, with `--config.data.source=lfw
  --config.model.num_classes=81`:
  B = 8, LFW 0-7: 5/8 at >= 25 dB, mean 25.5, labels 8/8.
  B = 32, LFW 0-31, 3000 steps: 1/32 at >= 25 dB, 20 at >= 20, mean 20.7,
    17.3 to 25.4, labels 32/32: blurred, colour-shifted faces.
  B = 64, LFW 0-63, 1500 steps: 0/64 at >= 25 dB, 3 at >= 20, mean 16.7,
    12.9 to 23.1, labels 64/64: near each image against its batch's mean
    image (15.3 dB), so broken; the labels still count exactly.
  (B = 16 took 255 s, B = 32 and 64 about 260 s each on one shared core.)

Other batch sizes: `--config.data.batch_size=8` (count must be a multiple).
FedAvg: `--config.client.local_steps=4` unrolls 4 local SGD steps.

The study of iterations per batch size (the DLG paper's batch figure):
  python -m experiments.batch_study --config=configs/batch.py --workdir=runs/batch_study

It also compares labels counted off the gradient with DLG's joint
optimisation (`study.joint_steps` steps of `label_mode='joint'` on the same
batches of the first `study.joint_count` images). Measured with 2000 joint
steps and TV 0.01 on one core: joint optimisation got every label right, as
counting (and iDLG at B = 1) did, for B = 1, 2, 4, 8 on CIFAR-100 images 0-7
(distinct labels) and on MNIST images 0-15, whose batches of 4 and 8 repeat
labels (`--config.data.source=mnist --config.model.num_classes=10
--config.study.joint_count=16`). Joint images, mean PSNR for B = 1, 2, 4, 8:
CIFAR-100 44.7, 33.0, 24.2, 20.6 dB; MNIST 88.7, 80.1, 69.2, 49.3 dB.

`--config=configs/batch.py:quick` attacks one batch of 2 images for 300
steps, a smoke run.
"""

import ml_collections

from configs import cifar100


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The batched DLG config; `arg='quick'` shrinks it.

  `arg='prior'` swaps the TV prior for the Gaussian image prior fitted on
  the images not attacked (weight 1e-6): with
  `--config.data.batch_size=8 --config.data.count=8`, 8 of 8 at >= 25 dB.
  """
  if arg not in (None, '', 'quick', 'prior'):
    raise ValueError(
        f'Unknown config argument {arg!r}; use "quick", "prior" or none.')
  config = cifar100.get_config('quick' if arg == 'quick' else None)
  config.data.batch_size = 4
  config.data.count = 16
  config.attack.tv_weight = 0.01
  config.attack.num_steps = 6000
  config.attack.chunk_size = 500
  config.attack.snapshot_steps = (0, 50, 100, 200, 500, 1000, 2000, 4000)

  config.study = ml_collections.ConfigDict()
  config.study.batch_sizes = (1, 2, 4, 8)
  # Label recovery without optimisation: bundled set -> number of classes.
  config.study.label_sets = (('cifar100', 100), ('mnist', 10), ('svhn', 10),
                             ('lfw', 81))
  config.study.label_max_batch = 8
  config.study.label_random_batches = 100
  # Labels by joint optimisation (DLG) against counting, on the same
  # batches of the first `joint_count` images; 0 steps skips it.
  config.study.joint_steps = 2000
  config.study.joint_count = 8
  if arg == 'prior':
    config.attack.tv_weight = 0.0
    config.attack.prior_weight = 1e-6
  if arg == 'quick':
    config.data.batch_size = 2
    config.data.count = 2
    config.attack.num_steps = 300
    config.attack.chunk_size = 300
    config.attack.snapshot_steps = (0, 100, 200)
    config.study.batch_sizes = (1, 2)
    config.study.label_sets = (('cifar100', 100),)
    config.study.label_max_batch = 2
    config.study.label_random_batches = 4
    config.study.joint_steps = 100
    config.study.joint_count = 2
  return config
