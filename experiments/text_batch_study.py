r"""Launcher: the text attack over batch sizes (configs/text_batch_study.py).

  python -m experiments.text_batch_study \
      --config=configs/text_batch_study.py --workdir=DIR

Writes to DIR one subdirectory per run (as experiments/attack_text.py
writes), `results.json` (one row per run: mean ROUGE-1/2/L and token
accuracy under the LAMP protocol, the exact fraction, seconds and tokens
per batch), `table.md` and `config.json`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import text_batch_study

FLAGS = flags.FLAGS


def define_flags() -> None:
  """`--config` and `--workdir`, defined when run, not on import."""
  config_flags.DEFINE_config_file('config', None, 'Config file.')
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  text_batch_study.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
