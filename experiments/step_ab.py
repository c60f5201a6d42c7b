r"""The attack step of this checkout against another's, interleaved in one run.

  git worktree add /tmp/wt341 341dfae
  python -m experiments.step_ab --baseline=/tmp/wt341 --targets=1,8 \
      --rounds=16 --out=runs/step_ab.json

Two worker processes, one importing `dlg_jax` from this checkout and one
from `--baseline`, each compile the attack's chunk of `--steps` steps as
that checkout's runner compiles it (the DLG LeNet, the first N bundled
CIFAR-100 images as targets, the state donated), then run one chunk each
in turn, which goes first alternating by round, so both see the same load.
Writes, per target count, each side's milliseconds per step per target
(every round, best, median), the ratio of the bests and the median of the
rounds' ratios; prints the last two. The baseline may be this project's
current layout or 341dfae's (the step-cost issue's baseline).
docs/step_cost.md has this machine's figures.
"""

from absl import app
from absl import flags

from dlg_jax.core import errors
from dlg_jax.pipelines import step_ab

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags, defined when the launcher runs, not on import."""
  flags.DEFINE_string('baseline', None, 'Root of the checkout to compare '
                      'against (e.g. a git worktree of 341dfae).')
  flags.DEFINE_list('targets', ['1', '8'],
                    'Target counts, one chunk program each.')
  flags.DEFINE_integer('rounds', 16, 'Chunks each side runs, alternating.')
  flags.DEFINE_integer('steps', 100, 'Steps per chunk.')
  flags.DEFINE_string('out', 'runs/step_ab.json', 'JSON output path.')
  flags.mark_flag_as_required('baseline')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  step_ab.run(FLAGS.out, baseline=FLAGS.baseline, targets=FLAGS.targets,
              rounds=FLAGS.rounds, steps=FLAGS.steps)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
