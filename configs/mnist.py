r"""DLG on the bundled MNIST test images (28x28x1, 10 classes).

Command:
  python -m experiments.attack --config=configs/mnist.py --workdir=runs/mnist

Expected result (measured, 2-core CPU): all 10 of images 0-9 at PSNR >= 30 dB
with the correct label, min / median PSNR 69.5 / 96.9 dB. Full measurements:
README.md, "Measured". `:quick` is the smoke run of `configs/cifar100.py`.
"""

from configs import cifar100


def get_config(arg: str | None = None):
  config = cifar100.get_config(arg)
  config.data.source = 'mnist'
  config.model.num_classes = 10
  return config
