r"""Inverting Gradients' recipe on one image at ImageNet size.

ResNet-18 with the ImageNet stem (`resnet18_imagenet`: torchvision's
resnet18, BatchNorm in training mode, 1,000 classes) at initialisation,
one client gradient of the bundled LFW photo's centre 224x224
(`data.source='lfw_photo'`), attacked with configs/ig.py's recipe.
Inverting Gradients and breaching's example notebook attack a trained
ResNet-18 and one ImageNet image this way (breaching reports 14.21 dB PSNR
and LPIPS 0.42); README.md, "Realistic victims", compares.

Command:
  python -m experiments.attack --config=configs/imagenet.py --workdir=runs/imagenet

`:bn` is GradAttack's strong attacker, with GradInversion's BatchNorm
prior (configs/ig.py:bn). `:quick` (or `:bn,quick`) runs 20 steps, a smoke
run of the 224x224 program.
"""

from configs import ig


def get_config(arg: str | None = None):
  """The IG recipe on ResNet-18 at 224x224; `arg` as configs/ig.py's."""
  options = set(arg.split(',')) if arg else set()
  if options - {'bn', 'quick'}:
    raise ValueError(f'Unknown config argument {arg!r}; use "bn", "quick", '
                     '"bn,quick" or none.')
  config = ig.get_config('bn' if 'bn' in options else None)
  config.data.source = 'lfw_photo'
  config.data.count = 1
  config.model.name = 'resnet18_imagenet'
  config.model.norm = 'batch'
  config.model.num_classes = 1000
  config.attack.restarts = 1
  config.attack.num_steps = 1000
  # As measured (README): without configs/ig.py's later ReLU smoothing.
  config.attack.relu_smoothing = ()
  config.attack.snapshot_steps = (0, 100, 200, 500)
  config.runner.chunk_size = 100

  if 'quick' in options:
    config.attack.num_steps = 20
    config.runner.chunk_size = 20
    config.attack.snapshot_steps = (0, 10)
  return config
