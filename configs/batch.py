r"""Batched DLG on the bundled CIFAR-100 images: B images behind one gradient.

The client shares the mean gradient of a batch of `data.batch_size`
consecutive images; the attack optimises that many dummy images, with labels
read off the gradient by counting (`dlg_jax.labels.label_counts`), and pairs
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

Other batch sizes: `--config.data.batch_size=8` (count must be a multiple).
FedAvg: `--config.client.local_steps=4` unrolls 4 local SGD steps.

The study of iterations per batch size (the DLG paper's batch figure):
  python -m experiments.batch_study --config=configs/batch.py --workdir=runs/batch_study

`--config=configs/batch.py:quick` attacks one batch of 2 images for 300
steps, a smoke run.
"""

import ml_collections

from configs import cifar100


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The batched DLG config; `arg='quick'` shrinks it."""
  config = cifar100.get_config(arg)
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
  return config
