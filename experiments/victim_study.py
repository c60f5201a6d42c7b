r"""Victims x weights x attacks: how well each attack recovers each victim.

  python -m experiments.victim_study --config=configs/victim_study.py --workdir=runs/victim_study

Runs the vision attack (as `experiments.attack`) once per cell of
`config.study.victims` x `config.study.weights` x `config.study.attacks`
(each in `workdir/<victim>/<weights>/<attack>`), on the same first
`config.data.count` images, training each victim once for the 'trained'
cells (as `experiments.train`, into `workdir/checkpoints/<victim>`). Writes
`study.json`, `study.md` (a Markdown table: PSNR, SSIM, LPIPS, label
accuracy, seconds per image, the victim's held-out accuracy; n/a cells
listed) and `study.png` (the originals, then each cell's reconstructions).

A rerun with the same workdir reads finished cells and checkpoints back. A
bad config value or workdir is reported as one line naming the key, before
anything is compiled or written. orbax's INFO records are hidden unless
`--orbax_logs`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import common
from dlg_jax.pipelines import victim_study

FLAGS = flags.FLAGS


def define_flags() -> None:
  """`--config`, `--workdir` and `--orbax_logs`, defined when run."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/victim_study.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
  flags.mark_flags_as_required(['config', 'workdir'])
  flags.DEFINE_bool('orbax_logs', False, 'Show orbax\'s INFO records.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.quiet_orbax_logs(verbose=FLAGS.orbax_logs)
  victim_study.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
