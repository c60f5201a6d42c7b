"""Sweep throughput, memory and FLOPs: `experiments/scale_benchmark.py`.

`run(out, ...)` measures the sweep pipeline (`pipelines.sweep`) with
`configs/scale.py` for each device count and job count, each in a fresh
process (`python -m experiments.scale_benchmark --child=SPEC`, which calls
`child`) because the simulated device count must be set before JAX starts,
plus XLA's cost analysis of one attack step (`flops`); it writes them to
`out` as JSON (see the launcher's docstring for each field). It takes its
flags' values, not a ConfigDict.
"""

from collections.abc import Sequence
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import logging

from dlg_jax.core import errors
# The launcher each measurement runs in (a fresh process: see the module
# docstring).
CHILD_MODULE = 'experiments.scale_benchmark'


def int_list(name: str, values: Sequence[Any], minimum: int) -> list[int]:
  """A list flag's ints >= `minimum` (empty entries dropped).

  Raises:
    ConfigError: naming the flag `--<name>`.
  """
  try:
    counts = [int(v) for v in values if v]
  except ValueError:
    counts = None
  if counts is None or any(n < minimum for n in counts):
    raise errors.ConfigError(
        f'--{name} must be integers >= {minimum}, got {values}.')
  return counts


def check_args(*, targets: int, steps: int, jobs_per_device: int,
               steps_to_success: int, peak_flops: float,
               bandwidth: float) -> None:
  """The numeric flags, checked before any run.

  Raises:
    ConfigError: naming the flag at fault.
  """
  for name, value, minimum in (
      ('targets', targets, 1), ('steps', steps, 1),
      ('jobs_per_device', jobs_per_device, 0),
      ('steps_to_success', steps_to_success, 1)):
    if value < minimum:
      raise errors.ConfigError(
          f'--{name} must be >= {minimum}, got {value}.')
  for name, value in (('peak_flops', peak_flops), ('bandwidth', bandwidth)):
    if not value > 0:
      raise errors.ConfigError(f'--{name} must be > 0, got {value}.')


def child(spec: dict[str, Any]) -> dict[str, Any]:
  """One run of the sweep pipeline in this process; returns its numbers.

  Args:
    spec: `devices` (CPU devices to simulate; 0 leaves them), `targets`,
      `steps` and `jobs_per_device` of the sweep.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if spec.get('devices'):
    jax.config.update('jax_num_cpu_devices', spec['devices'])
  from configs import scale  # pylint: disable=g-import-not-at-top
  from dlg_jax.pipelines import sweep  # pylint: disable=g-import-not-at-top
  config = scale.get_config()
  config.sweep.num_targets = spec['targets']
  config.attack.num_steps = spec['steps']
  config.sweep.jobs_per_device = spec['jobs_per_device']
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    results = sweep.run(config, workdir)
    wall = time.perf_counter() - start
  s = results['summary']
  run_seconds = sum(r['seconds'] for r in results['records'])
  return {
      'devices': s['num_devices'],
      'targets': spec['targets'],
      'steps': spec['steps'],
      'jobs_per_device': s['jobs_per_device'],
      'compiles': s['compiles'],
      'compile_seconds': s['compile_seconds'],
      'run_seconds': run_seconds,
      'jobs_per_second': spec['targets'] / run_seconds,
      'steps_per_second': spec['targets'] * spec['steps'] / run_seconds,
      'wall_seconds': wall,
      'peak_host_memory_mb': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 1024,
      'backend': jax.default_backend(),
  }


def run_child(spec: str, out: str) -> None:
  """`child` of the JSON `spec`, its numbers written to `out` as JSON."""
  result = child(json.loads(spec))
  with open(out, 'w') as f:
    json.dump(result, f)


def spawn(spec: dict[str, Any], *, orbax_logs: bool = False
          ) -> dict[str, Any]:
  """`child(spec)` in a fresh process of the launcher; returns its numbers."""
  with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
    cmd = [sys.executable, '-m', CHILD_MODULE,
           f'--child={json.dumps(spec)}', f'--out={out.name}']
    if orbax_logs:
      cmd.append('--orbax_logs')
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out.name))


def flops(*, steps_to_success: int, peak_flops: float,
          bandwidth: float) -> dict[str, Any]:
  """XLA's FLOPs and bytes of one attack step of one target, and the bound."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import attack as attack_lib  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import data  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import models  # pylint: disable=g-import-not-at-top
  ds = data.load_bundled('cifar100')
  model = models.get_model('lenet', num_classes=100)
  params = models.init_params(model, jax.random.key(0), (32, 32, 3))
  attack = attack_lib.make(apply_fn=models.make_apply_fn(model),
                           image_shape=(32, 32, 3), num_classes=100,
                           snapshot_steps=(0,))
  x, y = jnp.asarray(ds.x[:1]), jnp.asarray(ds.y[:1])
  grads = attack.threat.shared_update(params, x, jax.nn.one_hot(y, 100))
  target = attack_lib.make_target(attack, grads, y, x, params=params)
  state = attack_lib.init_state(attack, jax.random.key(1))
  step = jax.jit(lambda s: attack_lib.attack_step(attack, params, s, target))
  cost = step.lower(state).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  step_flops = float(cost['flops'])
  nbytes = float(cost.get('bytes accessed', 0.0))
  per_recon_flops = step_flops * steps_to_success
  per_recon_bytes = nbytes * steps_to_success
  bound = min(peak_flops / per_recon_flops,
              bandwidth / per_recon_bytes if nbytes else float('inf'))
  return {
      'flops_per_step': step_flops,
      'bytes_per_step': nbytes,
      'steps_to_success': steps_to_success,
      'peak_flops': peak_flops,
      'bandwidth': bandwidth,
      'estimate_upper_bound_reconstructions_per_minute': 60.0 * bound,
      'note': 'ESTIMATE, not a measurement: roofline bound from XLA cost '
              'analysis on CPU and the device spec sheet; real throughput '
              'is below it.',
  }


def run(out: str, *, devices: Sequence[Any], targets: int, steps: int,
        jobs_per_device: int, stream_targets: Sequence[Any],
        steps_to_success: int, peak_flops: float, bandwidth: float,
        orbax_logs: bool = False) -> dict[str, Any]:
  """Runs the three measurements and writes them to `out` as JSON.

  Args:
    out: the JSON path.
    devices: device counts for the throughput runs.
    targets: jobs per throughput run.
    steps: steps per job (throughput).
    jobs_per_device: jobs per device per chunk in the throughput runs; 0:
      targets / devices (one chunk).
    stream_targets: job counts for the streaming-memory runs.
    steps_to_success: median L-BFGS steps to 30 dB, for the FLOP count.
    peak_flops: the accelerator's peak FP32 FLOP/s.
    bandwidth: its memory bandwidth, bytes/s.
    orbax_logs: show orbax's INFO records in the runs.

  Raises:
    ConfigError: a bad argument, named as its flag, before any run.
  """
  check_args(targets=targets, steps=steps, jobs_per_device=jobs_per_device,
             steps_to_success=steps_to_success, peak_flops=peak_flops,
             bandwidth=bandwidth)
  device_counts = int_list('devices', devices, 1)
  stream = int_list('stream_targets', stream_targets, 1)
  results = {'devices': [], 'streaming': []}
  for n in device_counts:
    per = jobs_per_device or -(-targets // n)
    results['devices'].append(spawn(
        {'devices': n, 'targets': targets, 'steps': steps,
         'jobs_per_device': per}, orbax_logs=orbax_logs))
    logging.info('%s', results['devices'][-1])
  for t in stream:
    results['streaming'].append(spawn(
        {'devices': 0, 'targets': t, 'steps': 5, 'jobs_per_device': 0},
        orbax_logs=orbax_logs))
    logging.info('%s', results['streaming'][-1])
  results['flops'] = flops(steps_to_success=steps_to_success,
                           peak_flops=peak_flops, bandwidth=bandwidth)
  logging.info('%s', results['flops'])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(results, f, indent=1)
  return results
