r"""Sweep throughput against device count, streaming memory, and a FLOP count.

  python -m experiments.scale_benchmark --out=runs/scale_benchmark.json

Three measurements of the sweep (`dlg_jax.pipelines.sweep`) with `configs/scale.py` (DLG
LeNet, bundled CIFAR-100, no defense), each run in a fresh process because
the simulated device count must be set before JAX starts:

* `devices`: for each count in `--devices` (CPU devices simulated with
  `jax_num_cpu_devices` on a CPU host; real ones elsewhere), `--targets`
  jobs of `--steps` L-BFGS steps each, `--jobs_per_device` per device per
  chunk: jobs per second with compile excluded, compile seconds, compiles.
* `streaming`: `--stream_targets` jobs of 5 steps on every device, jobs per
  device from memory: peak host memory (max RSS) and wall time per count.
  Flat memory across counts is the point.
* `flops`: XLA's cost analysis of one attack step (objective value and
  gradient plus the L-BFGS update) for one target, times
  `--steps_to_success` (the median steps to 30 dB that
  `experiments/benchmark.py` measured), gives the work of one
  reconstruction; with an accelerator's peak FP32 rate and memory bandwidth
  it bounds the reconstructions per minute from above. That bound is an
  estimate, not a measurement, and is labelled so.

Orbax's INFO records of the sweeps' checkpoints are hidden unless
`--orbax_logs`.
"""

from absl import app
from absl import flags

from dlg_jax.core import errors
from dlg_jax.pipelines import common
from dlg_jax.pipelines import scale_benchmark

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags, defined when the launcher runs, not on import."""
  flags.DEFINE_string('out', 'runs/scale_benchmark.json', 'JSON output path.')
  flags.DEFINE_list('devices', ['1', '2', '4', '8'],
                    'Device counts for the throughput runs.')
  flags.DEFINE_integer('targets', 256, 'Jobs per throughput run.')
  flags.DEFINE_integer('steps', 100, 'Steps per job (throughput).')
  flags.DEFINE_integer(
      'jobs_per_device', 16, 'Jobs per device per chunk in the throughput '
      'runs; 0: targets / devices (one chunk). Simulated CPU devices hung '
      'XLA:CPU at 32 or more (see dlg_jax/vision/sweep.py).')
  flags.DEFINE_list('stream_targets', ['1000', '10000'],
                    'Job counts for the streaming-memory runs.')
  flags.DEFINE_integer(
      'steps_to_success', 682, 'Median L-BFGS steps to 30 dB (DLG LeNet, '
      'measured by experiments/benchmark.py).')
  # Public spec sheet figures of an NVIDIA H100 SXM: FP32 (non-tensor)
  # 67 TFLOP/s, HBM3 3.35 TB/s.
  flags.DEFINE_float('peak_flops', 67e12, 'Accelerator peak FP32 FLOP/s.')
  flags.DEFINE_float('bandwidth', 3.35e12,
                     'Accelerator memory bandwidth, bytes/s.')
  flags.DEFINE_string('child', None, 'Internal: JSON of one run.')
  flags.DEFINE_bool('orbax_logs', False,
                    'Show orbax\'s INFO records (several per checkpoint).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.quiet_orbax_logs(verbose=FLAGS.orbax_logs)
  if FLAGS.child:
    scale_benchmark.run_child(FLAGS.child, FLAGS.out)
    return
  scale_benchmark.run(
      FLAGS.out, devices=FLAGS.devices, targets=FLAGS.targets,
      steps=FLAGS.steps, jobs_per_device=FLAGS.jobs_per_device,
      stream_targets=FLAGS.stream_targets,
      steps_to_success=FLAGS.steps_to_success, peak_flops=FLAGS.peak_flops,
      bandwidth=FLAGS.bandwidth, orbax_logs=FLAGS.orbax_logs)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
