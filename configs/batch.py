r"""Batched DLG on the bundled CIFAR-100 images: B images behind one gradient.

The client shares the mean gradient of a batch of `data.batch_size`
consecutive images; the attack optimises that many dummy images, with labels
read off the gradient by counting (`dlg_jax.vision.labels.label_counts`), and pairs
reconstructions with originals by the best total PSNR. A total-variation
prior (weight 0.01) is on: for B >= 4 the gradient holds fewer numbers than
the batch has unknown pixels.

Command:
  python -m experiments.attack --config=configs/batch.py --workdir=runs/batch

Expected result (measured, 2-core CPU): 4 batches of 4 (images 0-15), all 16
images matched at PSNR >= 25 dB (26.4 to 35.5 dB, mean 29.9), 7 of them at
>= 30 dB, every label right; 6000 steps, about 24 s of attack per batch.

The study of iterations per batch size (the DLG paper's batch figure), which
also compares counted labels with DLG's joint optimisation:
  python -m experiments.batch_study --config=configs/batch.py --workdir=runs/batch_study

Variants: `:prior` swaps TV for a Gaussian image prior (weight 1e-6); with
`--config.data.batch_size=8 --config.data.count=8`, 8 of 8 at >= 25 dB.
`:quick` attacks one batch of 2 images for 300 steps, a smoke run.
Other batch sizes: `--config.data.batch_size=8` (count must be a multiple).
FedAvg: `--config.client.local_steps=4` unrolls 4 local SGD steps.

Full measurements (B = 2 to 64, TV weights and schedules, the Gaussian
prior, joint labels): docs/batch.md.
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
  config.runner.chunk_size = 500
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
    config.runner.chunk_size = 300
    config.attack.snapshot_steps = (0, 100, 200)
    config.study.batch_sizes = (1, 2)
    config.study.label_sets = (('cifar100', 100),)
    config.study.label_max_batch = 2
    config.study.label_random_batches = 4
    config.study.joint_steps = 100
    config.study.joint_count = 2
  return config
