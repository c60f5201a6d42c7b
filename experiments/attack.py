r"""Recovers images and labels from client gradients (DLG / iDLG).

  python -m experiments.attack --config=configs/cifar100.py --workdir=runs/cifar100

Writes into the workdir `results.json` (a `records` list, one per original
image, and a `summary`), `config.json` (to rerun), and `reconstruction.png`
(ground truth, then the reconstruction over iterations, as the DLG paper's
figures). `results.json` is written as soon as the attack has run: a metric
that fails on a record is null there, with the error in the record's
`metric_errors`, and the summary's means leave it out.

The targets are the first `config.data.count` images; without a count, every
image of a user's npz (`config.data.npz`), or the first `DEFAULT_COUNT` (10)
of bundled or TFDS data.

A bad config value, flag or file is reported as one line naming the key
(`dlg_jax.core.errors.ConfigError`), before anything is compiled; only images
whose shared gradients are not finite are found once those are computed.

With `--config.data.batch_size=B` each shared gradient is the mean over B
consecutive images (or, with `config.client.local_steps > 1`, their FedAvg
update). A batch's reconstructions are paired with its originals by the
assignment of highest total PSNR; each record then holds `batch` (its group)
and `matched_to` (the reconstruction slot paired with it), and the figure
shows each original beside its paired reconstruction.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import attack

FLAGS = flags.FLAGS


def define_flags() -> None:
  """`--config` and `--workdir`, defined when run, not on import."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  attack.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
