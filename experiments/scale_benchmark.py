r"""Sweep throughput against device count, streaming memory, and a FLOP count.

  python -m experiments.scale_benchmark --out=runs/scale_benchmark.json

Three measurements of `experiments.sweep` with `configs/scale.py` (DLG
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
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from dlg_jax import errors

_OUT = flags.DEFINE_string('out', 'runs/scale_benchmark.json',
                           'JSON output path.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'],
                             'Device counts for the throughput runs.')
_TARGETS = flags.DEFINE_integer('targets', 256,
                                'Jobs per throughput run.')
_STEPS = flags.DEFINE_integer('steps', 100, 'Steps per job (throughput).')
_JOBS_PER_DEVICE = flags.DEFINE_integer(
    'jobs_per_device', 16, 'Jobs per device per chunk in the throughput '
    'runs; 0: targets / devices (one chunk). Simulated CPU devices hung '
    'XLA:CPU at 32 or more (see dlg_jax/sweep.py).')
_STREAM = flags.DEFINE_list('stream_targets', ['1000', '10000'],
                            'Job counts for the streaming-memory runs.')
_STEPS_TO_SUCCESS = flags.DEFINE_integer(
    'steps_to_success', 682, 'Median L-BFGS steps to 30 dB (DLG LeNet, '
    'measured by experiments/benchmark.py).')
# Public spec sheet figures of an NVIDIA H100 SXM: FP32 (non-tensor)
# 67 TFLOP/s, HBM3 3.35 TB/s.
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', 67e12,
                                 'Accelerator peak FP32 FLOP/s.')
_BANDWIDTH = flags.DEFINE_float('bandwidth', 3.35e12,
                                'Accelerator memory bandwidth, bytes/s.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: JSON of one run.')


def _counts(flag, minimum: int) -> list[int]:
  """A list flag of ints >= `minimum` (empty entries dropped)."""
  try:
    counts = [int(v) for v in flag.value if v]
  except ValueError:
    counts = None
  if counts is None or any(n < minimum for n in counts):
    raise errors.ConfigError(
        f'--{flag.name} must be integers >= {minimum}, got {flag.value}.')
  return counts


def _check_flags() -> tuple[list[int], list[int]]:
  """Flags checked before any run; returns the device and job counts."""
  for flag, minimum in ((_TARGETS, 1), (_STEPS, 1), (_JOBS_PER_DEVICE, 0),
                        (_STEPS_TO_SUCCESS, 1)):
    if flag.value < minimum:
      raise errors.ConfigError(
          f'--{flag.name} must be >= {minimum}, got {flag.value}.')
  for flag in (_PEAK_FLOPS, _BANDWIDTH):
    if not flag.value > 0:
      raise errors.ConfigError(f'--{flag.name} must be > 0, got {flag.value}.')
  return _counts(_DEVICES, 1), _counts(_STREAM, 1)


def _child(spec: dict) -> dict:
  """One run of the sweep launcher in this process; returns its numbers."""
  import jax  # pylint: disable=g-import-not-at-top
  if spec.get('devices'):
    jax.config.update('jax_num_cpu_devices', spec['devices'])
  from configs import scale  # pylint: disable=g-import-not-at-top
  from experiments import sweep  # pylint: disable=g-import-not-at-top
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


def _spawn(spec: dict) -> dict:
  with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
    cmd = [sys.executable, '-m', 'experiments.scale_benchmark',
           f'--child={json.dumps(spec)}', f'--out={out.name}']
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out.name))


def _flops() -> dict:
  """XLA's FLOPs and bytes of one attack step of one target."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dlg_jax import attack as attack_lib  # pylint: disable=g-import-not-at-top
  from dlg_jax import data  # pylint: disable=g-import-not-at-top
  from dlg_jax import models  # pylint: disable=g-import-not-at-top
  ds = data.load_bundled('cifar100')
  model = models.get_model('lenet', num_classes=100)
  params = models.init_params(model, jax.random.key(0), (32, 32, 3))
  attack = attack_lib.Attack(apply_fn=models.make_apply_fn(model),
                             image_shape=(32, 32, 3), num_classes=100,
                             snapshot_steps=(0,))
  x, y = jnp.asarray(ds.x[:1]), jnp.asarray(ds.y[:1])
  grads = attack_lib.shared_update(attack, params, x,
                                   jax.nn.one_hot(y, 100))
  target = attack_lib.make_target(attack, grads, y, x, params=params)
  state = attack_lib.init_state(attack, jax.random.key(1))
  step = jax.jit(lambda s: attack_lib.attack_step(attack, params, s, target))
  cost = step.lower(state).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost['flops'])
  nbytes = float(cost.get('bytes accessed', 0.0))
  per_recon_flops = flops * _STEPS_TO_SUCCESS.value
  per_recon_bytes = nbytes * _STEPS_TO_SUCCESS.value
  bound = min(_PEAK_FLOPS.value / per_recon_flops,
              _BANDWIDTH.value / per_recon_bytes if nbytes else float('inf'))
  return {
      'flops_per_step': flops,
      'bytes_per_step': nbytes,
      'steps_to_success': _STEPS_TO_SUCCESS.value,
      'peak_flops': _PEAK_FLOPS.value,
      'bandwidth': _BANDWIDTH.value,
      'estimate_upper_bound_reconstructions_per_minute': 60.0 * bound,
      'note': 'ESTIMATE, not a measurement: roofline bound from XLA cost '
              'analysis on CPU and the device spec sheet; real throughput '
              'is below it.',
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CHILD.value:
    result = _child(json.loads(_CHILD.value))
    with open(_OUT.value, 'w') as f:
      json.dump(result, f)
    return
  devices, stream = _check_flags()
  out = {'devices': [], 'streaming': []}
  for n in devices:
    per = _JOBS_PER_DEVICE.value or -(-_TARGETS.value // n)
    out['devices'].append(_spawn({'devices': n, 'targets': _TARGETS.value,
                                  'steps': _STEPS.value,
                                  'jobs_per_device': per}))
    logging.info('%s', out['devices'][-1])
  for t in stream:
    out['streaming'].append(_spawn({'devices': 0, 'targets': t, 'steps': 5,
                                    'jobs_per_device': 0}))
    logging.info('%s', out['streaming'][-1])
  out['flops'] = _flops()
  logging.info('%s', out['flops'])
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  app.run(errors.report_config_errors(main))
