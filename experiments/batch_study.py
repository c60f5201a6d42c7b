r"""How many iterations DLG needs per batch size: the DLG paper's batch figure.

  python -m experiments.batch_study --config=configs/batch.py --workdir=runs/batch_study

Runs the vision attack (as `experiments.attack`) once per batch size in
`config.study.batch_sizes` (each in `workdir/batch_<B>`), on the same first
`config.data.count` images, and writes `study.json`, `study.md` (a Markdown table) and `study.png`
(iterations to `config.success_psnr` against the batch size). A batch counts
as recovered at the first step where every image, under the best pairing of
reconstructions with originals, reaches `success_psnr`
(`dlg_jax.vision.attack.batch_success`).

It also measures batch label recovery without optimisation on every bundled
sample set (`config.study.label_sets`) and writes `labels.json` and
`labels.md`: for each batch size up to `config.study.label_max_batch`, the
share of batches whose label multiset each method recovers exactly, over all
consecutive groups and random draws.

With `config.study.joint_steps > 0` it also compares those analytic labels
with DLG's own: the attack with `label_mode='joint'` on the same batches
(`label_comparison`), written to `label_comparison.json` and `.md`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import batch_study

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
  batch_study.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
