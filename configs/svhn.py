r"""DLG on the bundled SVHN digits (32x32x3, 10 classes).

Command:
  python -m experiments.attack --config=configs/svhn.py --workdir=runs/svhn

Expected result (measured, 2-core CPU): all 10 of images 0-9 at PSNR >= 30 dB
with the correct label, min / median PSNR 32.2 / 39.5 dB. Full measurements:
README.md, "Measured". `:quick` is the smoke run of `configs/cifar100.py`.
"""

from configs import cifar100


def get_config(arg: str | None = None):
  config = cifar100.get_config(arg)
  config.data.source = 'svhn'
  config.model.num_classes = 10
  return config
