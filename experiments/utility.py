r"""What each gradient defense costs learning: accuracy trained under it.

  python -m experiments.utility --config=configs/utility.py --workdir=runs/utility

Trains one small classifier per (defense, strength, seed) with the defense
applied to every step's gradient (`dlg_jax.vision.utility`) and writes into the
workdir `utility.json` (`records`, one per model, a `summary` with one row
per defense and strength, and the `config`) and `utility.md` (the table).
The file names do not clash with the defense sweep's, so both can share a
workdir and their tables sit side by side.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import utility

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
  utility.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
