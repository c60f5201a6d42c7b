r"""Launcher: DLG on the gradient of a BERT masked LM (configs/bert.py).

  python -m experiments.attack_text --config=configs/bert.py --workdir=DIR

Writes to DIR: `text_log.txt` (the DLG figure's `[iter=k]` lines and the
`[Ground Truth]` per sentence, also logged to the console), `results.json`
and `config.json`. `results.json` holds `records`, one per sentence:
`reference`, `recovered`, `token_accuracy` (fraction of the reference's word
pieces recovered exactly in place), `rouge1`, `rouge2`, `rougeL`
(F-measures over words), `seconds` (the attacker's wall time: leak analysis
and optimisation, compilation included), `iterations`, `length` and
`recovered_length` (tokens with `[CLS]`, `[SEP]`), `masked`,
`gradient_distance` and `token_accuracy_by_iteration`; and `summary`, the
means.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.pipelines import text_attack

FLAGS = flags.FLAGS


def define_flags() -> None:
  """`--config` and `--workdir`, defined when run, not on import."""
  config_flags.DEFINE_config_file('config', None, 'Config file.')
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  text_attack.run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
