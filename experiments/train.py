r"""Trains a zoo model with Adam and saves it for the attacks.

  python -m experiments.train --config=configs/train.py --workdir=runs/train_lenet

Trains `config.model` on `config.data` (a bundled set, a user's npz or a
prepared TFDS dataset) holding out its first `config.data.num_test` images,
and writes into the workdir `checkpoint/` (an orbax checkpoint of the
weights and, for a model with BatchNorm, its running statistics),
`results.json` (`test_accuracy` on the held-out images, `train_accuracy`,
the losses, steps and seconds) and `config.json`.

Attack those weights with the same `--config.model.*` values:

  python -m experiments.attack --config=configs/mnist.py \
    --config.model.checkpoint=runs/train_lenet --workdir=runs/mnist_trained

A bad config value, dataset or workdir (one that already holds a
checkpoint) is reported as one line naming the key, before anything is
compiled or written. orbax's INFO records are hidden unless `--orbax_logs`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import common
from dlg_jax.pipelines import train

FLAGS = flags.FLAGS


def define_flags() -> None:
  """`--config`, `--workdir` and `--orbax_logs`, defined when run."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/train.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
  flags.mark_flags_as_required(['config', 'workdir'])
  flags.DEFINE_bool('orbax_logs', False, 'Show orbax\'s INFO records.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.quiet_orbax_logs(verbose=FLAGS.orbax_logs)
  train.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
