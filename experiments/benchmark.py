r"""Speed of the DLG attack: compile time, step cost, time to success, scaling.

  python -m experiments.benchmark --out=runs/benchmark.json

On a GPU host, reconstructions per minute to 30 dB at 1 / 64 / 1,024 /
8,192 vmapped targets and the step's FLOP and byte counts:

  python -m experiments.benchmark --out=runs/benchmark_gpu.json \
      --parallel=1,64,1024,8192

(The 8,192 targets' L-BFGS memories take about 20 GB of device memory.)
Old and new commits are measured by the same command; docs/step_cost.md
has this machine's figures.

Measures, for the DLG LeNet on the bundled CIFAR-100 images:
* `compile_seconds`: compiling the one-target attack (init and chunks).
* `seconds_per_evaluation`: one jitted value-and-gradient of the objective.
* `step_cost`: XLA's cost analysis of one attack step of one target
  (`flops`, `bytes_accessed`), as the runner compiles it.
* `time_to_success`: per target, attacked one at a time with the default
  attack, the seconds and steps until PSNR >= 30 dB (compile excluded).
* `parallel`: for each count N in `--parallel`, N targets in one vmapped,
  compiled call for a fixed `--budget` of steps (no early exit). Reports
  reconstructions per second (N / wall seconds) and seconds per step per
  target, and how many reached 30 dB within the budget, and those per
  minute (`reconstructions_per_minute_30db`). Targets beyond the 20
  bundled images repeat them; the work per target is the same.
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
  cost = results['step_cost']
  print(f'one step of one target: {cost["flops"] / 1e6:.1f} MFLOP, '
        f'{cost["bytes_accessed"] / 1e6:.1f} MB')
  for p in results['parallel']:
    print(f'{p["targets"]:6d} targets: '
          f'{p["seconds_per_step_per_target"] * 1e3:.3f} ms per step per '
          f'target, {p["reconstructions_per_minute_30db"]:.1f} '
          f'reconstructions per minute to 30 dB')


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
