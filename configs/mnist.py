r"""DLG on the bundled MNIST test images (28x28x1, 10 classes).

Command:
  python -m experiments.attack --config=configs/mnist.py --workdir=runs/mnist
"""

from configs import cifar100


def get_config(arg: str | None = None):
  config = cifar100.get_config(arg)
  config.data.source = 'mnist'
  config.model.num_classes = 10
  return config
