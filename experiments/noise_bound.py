r"""How well a noisy gradient can determine the image, to first order.

  python -m experiments.noise_bound --out=runs/noise_bound.json

The setup is that of `configs/defenses.py`: the bundled CIFAR-100 images and
the DLG sigmoid LeNet with the weights that
`dlg_jax.pipelines.common.build` makes
(init_seed 0). For each image, it computes `J^T J`, with `J` the Jacobian of
the shared gradient in the image, at the image and with its true one-hot
label (iDLG reads that label exactly). It reports the eigenvalues of `J^T J`
and, for each noise variance, the expected MSE and PSNR of two estimates in
the linearised model (`dlg_jax.vision.identifiability`):
* the least-squares estimate, which is the plain DLG attacker's minimiser;
* the Bayes (MMSE) estimate under a stationary Gaussian image prior fitted
  on the bundled images that are not attacked (`--prior_images`).
Everything is in float64 (`jax.enable_x64` inside `run`).

The numbers are the expected error of an estimate in the LINEARISED model.
The least-squares ones are far outside the range where that model holds: at
variance 1e-4 they already mean an RMS error of 0.4 to 0.6 against a [0, 1]
pixel range. They say that the gradient does not pin the plain attacker's
minimiser down, not what it reaches (8.9 dB at 1e-4, configs/defenses.py).
The Bayes numbers are what an attacker with the right Gaussian prior could
reach on average over images drawn from it.

Measured (one core of a shared 2-core CPU, `taskset -c 1`, load ~4),
94 to 116 s wall (50 to 55 s of CPU), ~30 s of it compiling the Gram:

  python -m experiments.noise_bound --out=runs/noise_bound.json \
      --images=0,1 --variances=1e-4,1e-3,1e-2,1e-1

  image  eig min / median / max   frac<0.01  variance  LS PSNR  Bayes PSNR
      0  5.6e-06 / 0.0083 / 224   0.53       1e-04         4.3       26.6
                                             1e-03        -5.7       22.4
                                             1e-02       -15.7       18.5
                                             1e-01       -25.7       15.4
      1  1.2e-05 / 0.015 / 270    0.44       1e-04         8.0       27.7
                                             1e-03        -2.0       23.4
                                             1e-02       -12.0       19.5
                                             1e-01       -22.0       16.2
  prior alone (images 2-19): 11.9 dB

No eigenvalue is below the floor (`identifiability.default_floor`, ~5e-14).
"""

from absl import app
from absl import flags

from dlg_jax.core import errors
from dlg_jax.pipelines import noise_bound

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags, defined when the launcher runs, not on import."""
  flags.DEFINE_string('out', 'runs/noise_bound.json', 'JSON output path.')
  flags.DEFINE_list('images', ['0', '1'],
                    'Indices of the bundled CIFAR-100 images to analyse.')
  flags.DEFINE_list('variances', ['1e-4', '1e-3', '1e-2'],
                    'Gaussian noise variances per gradient entry.')
  flags.DEFINE_list(
      'prior_images', [],
      'Indices of the images the prior is fitted on; empty means every '
      'bundled image not in --images.')
  flags.DEFINE_integer(
      'chunk_size', 128, 'Jacobian columns computed together (memory only).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  noise_bound.run(FLAGS.images, FLAGS.variances, FLAGS.prior_images,
                  FLAGS.out, FLAGS.chunk_size)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
