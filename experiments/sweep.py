r"""Sweeps the DLG attack over gradient defenses and strengths (DLG section 5).

  python -m experiments.sweep --config=configs/defenses.py --workdir=runs/defenses

Every (defense, strength, target, restart) is one job; jobs run in compiled
chunks split over every device (see `dlg_jax.pipelines.sweep` and
`dlg_jax.vision.sweep`), each device running
`config.sweep.jobs_per_device` jobs per chunk (0: as many as half its free
memory holds, at most `config.sweep.max_jobs_per_device`). Each finished
chunk is appended to `<workdir>/checkpoints`; rerunning the same command
resumes, and a workdir of another config is refused (naming the keys that
differ) before anything in it changes. A run holds the workdir
(`<workdir>/sweep.lock`), so a second run started on it is refused; a killed
run does not hold it.

Devices and hosts (flags, as they do not change the results):

  --num_devices=N        use the first N devices (0, the default: all).
  --coordinator_address=HOST:PORT --num_processes=P --process_id=I
                         join a multi-host run (a TPU pod slice, several
                         GPU hosts): every host runs the same command with
                         its own id; only process 0 writes outputs.
  --coordinator_timeout=S
                         seconds to wait for the coordinator (default 300).
  --auto_distributed     let JAX find the hosts itself (Cloud TPU pod
                         slices, Slurm, Open MPI).

Logs: one line per chunk (its defense and jobs, its seconds, the ETA) once
it is attacked and checkpointed; orbax's own INFO records of each save are
hidden unless `--orbax_logs`.

On one CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` simulates
8 devices.

Writes into the workdir: `results.json` (`records`, one per defense,
strength and image, and a `summary` per defense and strength), `table.md`
and `table.csv` (mean PSNR and success rate per defense x strength),
`psnr_vs_strength.png` (mean PSNR against log10 of the strength, one line
per defense with a strength), one `grid_<defense>.png` per defense (ground
truth, then the reconstruction at each strength) and `config.json`.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from dlg_jax.core import errors
from dlg_jax.core import parallel
from dlg_jax.pipelines import common
from dlg_jax.pipelines import sweep

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags (see the module docstring), defined when the launcher runs."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (configs/*.py).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
  flags.mark_flags_as_required(['config', 'workdir'])
  flags.DEFINE_integer('num_devices', 0,
                       'Devices to use; 0 uses every device of every host.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for a multi-host run.')
  flags.DEFINE_integer('num_processes', None,
                       'Processes (hosts) in a multi-host run.')
  flags.DEFINE_integer('process_id', None,
                       'This process\'s id in [0, num_processes).')
  flags.DEFINE_float('coordinator_timeout', 300.0,
                     'Seconds to wait for the coordinator and the others.')
  flags.DEFINE_bool('auto_distributed', False,
                    'Join the multi-host run JAX detects itself (Cloud TPU '
                    'pod slices, Slurm, Open MPI).')
  flags.DEFINE_bool('orbax_logs', False,
                    'Show orbax\'s INFO records (several per checkpoint).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  common.quiet_orbax_logs(verbose=FLAGS.orbax_logs)
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                      FLAGS.process_id, timeout_s=FLAGS.coordinator_timeout,
                      auto=FLAGS.auto_distributed)
  sweep.run(FLAGS.config, FLAGS.workdir, num_devices=FLAGS.num_devices)


if __name__ == '__main__':
  define_flags()
  app.run(errors.report_config_errors(main))
