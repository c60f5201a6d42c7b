r"""DLG against gradient defenses (the DLG paper's section 5) on CIFAR-100.

The bundled CIFAR-100 test images, the DLG sigmoid LeNet, one image per
gradient, label read off the DEFENDED gradient (iDLG). Each job perturbs the
client's true gradient with one defense at one strength and runs the attack
for a fixed `config.attack.num_steps` L-BFGS steps: Gaussian and Laplacian
noise of variance 1e-4 to 1e-1, float16, bfloat16, int8 and per-layer
pruning of 1% to 70% of the smallest entries.

Command:
  python -m experiments.sweep --config=configs/defenses.py --workdir=runs/defenses

It is resumable: rerun the same command after a crash and finished chunks
are loaded from the workdir's checkpoints.

Expected result (measured, 4 images, 3000 steps, 2-core CPU; README,
Defenses): 4/4 recovered (>= 30 dB, label right) under float16, bfloat16
and 1% per-layer pruning; 0/4 under int8, pruning >= 10% and every noise,
Gaussian noise of variance 1e-4 already down to 9.6 dB mean PSNR.

`--config=configs/defenses.py:quick` is a smoke run: 4 defenses x 3
strengths x 2 images, 1 restart, 1500 steps.
`--config.attack.defense_aware=True` is the attacker who knows the defense.

Full measurements (the `:quick` run, 2 images, why variance 1e-4 noise
stops the attack, TV priors, the defense-aware attacker): docs/defenses.md.
"""

import ml_collections

from configs import cifar100
from dlg_jax.core import defenses

# Every defense of a batch gradient, with its registered default grid (the
# DLG paper's section 5 grid, figure 6, where it has one).
PAPER_STRENGTHS = {name: spec.sweep_strengths
                   for name, spec in defenses.REGISTRY.items()
                   if not spec.per_example}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The defense sweep; `arg='quick'` shrinks it to a smoke run."""
  config = cifar100.get_config()
  config.attack.num_steps = 3000
  # An attacker who knows the defense and its strength (attack.aware_target):
  # surviving coordinates only under pruning, a TV prior weighted by the
  # noise variance under noise. False is the paper's attacker.
  config.attack.defense_aware = False
  config.attack.snapshot_steps = (0,)
  config.data.count = 4

  config.sweep = ml_collections.ConfigDict()
  config.sweep.defenses = ('gaussian', 'laplacian', 'float16', 'bfloat16',
                           'int8', 'prune_layer')
  # Every defense registered in dlg_jax.core.defenses has an entry; only
  # those named in `defenses` run.
  config.sweep.strengths = ml_collections.ConfigDict(
      {k: v for k, v in PAPER_STRENGTHS.items()})
  # Jobs per device per chunk; 0 chooses from free memory, capped by
  # max_jobs_per_device. Neither changes the results.
  config.sweep.jobs_per_device = 0
  config.sweep.max_jobs_per_device = 64
  # Targets per (defense, strength): 0 is one per image; more cycle through
  # the images, each target with its own noise and starts.
  config.sweep.num_targets = 0
  # Reconstructions kept for the grids: of the first this many targets.
  config.sweep.grid_images = 8

  # What each defense costs learning, beside its leak in the table
  # (dlg_jax.vision.utility): a ReLU LeNet trained with SGD on the bundled MNIST
  # (400 train, 100 test) under each (defense, strength); mean test
  # accuracy over the seeds. steps = 0 skips it.
  config.utility = ml_collections.ConfigDict()
  config.utility.source = 'mnist'
  config.utility.steps = 200
  config.utility.seeds = (0, 1, 2)

  if arg == 'quick':
    config.data.count = 2
    config.attack.num_steps = 1500
    config.sweep.defenses = ('gaussian', 'laplacian', 'prune_layer',
                             'prune_global')
    config.sweep.strengths.gaussian = (1e-4, 1e-2, 1e-1)
    config.sweep.strengths.laplacian = (1e-4, 1e-2, 1e-1)
    config.sweep.strengths.prune_layer = (0.1, 0.5, 0.7)
    config.sweep.strengths.prune_global = (0.1, 0.5, 0.7)
    config.sweep.jobs_per_device = 6
    config.utility.steps = 30
    config.utility.seeds = (0,)
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use "quick" or none.')
  return config
