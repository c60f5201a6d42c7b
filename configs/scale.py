r"""A streaming sweep: 10,000 DLG targets through the sharded, resumable sweep.

The DLG LeNet on the bundled CIFAR-100 images, no defense (Gaussian noise of
variance 0), 10,000 targets that cycle through the 20 images, each with its
own random start, for a few L-BFGS steps each. It exercises the machinery
of `dlg_jax.vision.sweep` at scale: chunks spread over every device, jobs per
device chosen from free memory, one orbax checkpoint appended per chunk,
and host memory that does not grow with the number of targets.

Command (all devices; add
XLA_FLAGS=--xla_force_host_platform_device_count=8 to simulate 8 on a CPU):

  python -m experiments.sweep --config=configs/scale.py --workdir=runs/scale

Expected result (measured through `experiments.scale_benchmark` on 8
simulated CPU devices, with utility training this config skips): 10,000
targets in 79 chunks, 130 s wall, peak host memory 2116 MB against 2093 MB
for 1,000 targets. Full measurements: README.md, "Scale: many devices, many
hosts".

For real reconstructions at scale raise `attack.num_steps` (DLG LeNet: a
median of about 700 L-BFGS steps to 30 dB). `:quick` is 1,000 targets.
"""

import ml_collections

from configs import defenses


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The streaming sweep; `arg='quick'` is 1,000 targets."""
  config = defenses.get_config()
  config.data.count = 20
  config.attack.num_steps = 5
  config.sweep.defenses = ('gaussian',)
  config.sweep.strengths.gaussian = (0.0,)
  config.sweep.num_targets = 10_000
  config.sweep.jobs_per_device = 0
  config.sweep.max_jobs_per_device = 256
  config.sweep.grid_images = 8
  config.utility.steps = 0  # No model training: this is about throughput.
  if arg == 'quick':
    config.sweep.num_targets = 1_000
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  return config
