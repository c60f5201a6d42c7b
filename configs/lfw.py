r"""DLG on the bundled LFW faces at 32x32x3.

The bundled set is one colour LFW photo and 80 grey LFW face crops, each its
own class (the crops carry no identity labels; see
dlg_jax/samples/PROVENANCE.md), hence 81 classes.

Command:
  python -m experiments.attack --config=configs/lfw.py --workdir=runs/lfw

Expected result (measured, 2-core CPU): all 10 of images 0-9 at PSNR >= 30 dB
with the correct label, min / median PSNR 37.2 / 40.1 dB. Full measurements:
README.md, "Measured". `:quick` is the smoke run of `configs/cifar100.py`.
"""

from configs import cifar100


def get_config(arg: str | None = None):
  config = cifar100.get_config(arg)
  config.data.source = 'lfw'
  config.model.num_classes = 81
  return config
