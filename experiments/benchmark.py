r"""Speed of the DLG attack: compile time, objective cost, time to success, scaling.

  python -m experiments.benchmark --out=runs/benchmark.json

Measures, for the DLG LeNet on the bundled CIFAR-100 images:
* `compile_seconds`: compiling the one-target attack (init and chunks).
* `seconds_per_evaluation`: one jitted value-and-gradient of the objective.
* `time_to_success`: per target, attacked one at a time with the default
  attack, the seconds and steps until PSNR >= 30 dB (compile excluded).
* `parallel`: for each count N in `--parallel`, N targets in one vmapped,
  compiled call for a fixed `--budget` of steps (no early exit). Reports
  reconstructions per second (N / wall seconds) and seconds per step per
  target, and how many reached 30 dB within the budget. Targets beyond the
  20 bundled images repeat them; the work per target is the same.
* `peak_host_memory_mb` (max RSS) and, on accelerators, peak device memory.
"""

import json

from absl import app
from absl import flags

from dlg_jax.core import errors
from dlg_jax.pipelines import benchmark

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags, defined when the launcher runs, not on import."""
  flags.DEFINE_string('out', 'runs/benchmark.json', 'JSON output path.')
  flags.DEFINE_integer(
      'count', 10, 'Targets attacked one at a time for time to success.')
  flags.DEFINE_list(
      'parallel', ['1', '8', '64'], 'Target counts run in one vmapped call.')
  flags.DEFINE_integer(
      'budget', 2000, 'Steps per target in the parallel runs.')
  flags.DEFINE_integer(
      'steps', 6000, 'Most steps per target in the time-to-success runs.')
  flags.DEFINE_string('model', 'lenet', 'Model name.')


def main(argv):
  del argv
  results = benchmark.run(
      FLAGS.out, count=FLAGS.count, parallel_counts=FLAGS.parallel,
      budget=FLAGS.budget, steps=FLAGS.steps, model=FLAGS.model)
  print(json.dumps({k: v for k, v in results.items()
                    if k not in ('time_to_success',)}, indent=2))


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
