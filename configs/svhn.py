r"""DLG on the bundled SVHN digits (32x32x3, 10 classes).

Command:
  python -m experiments.attack --config=configs/svhn.py --workdir=runs/svhn
"""

from configs import cifar100


def get_config(arg: str | None = None):
  config = cifar100.get_config(arg)
  config.data.source = 'svhn'
  config.model.num_classes = 10
  return config
