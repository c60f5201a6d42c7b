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
import os
import platform
import resource
import statistics
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax import attack as attack_lib
from dlg_jax import client
from dlg_jax import data
from dlg_jax import errors
from dlg_jax import models

_OUT = flags.DEFINE_string('out', 'runs/benchmark.json', 'JSON output path.')
_COUNT = flags.DEFINE_integer(
    'count', 10, 'Targets attacked one at a time for time to success.')
_PARALLEL = flags.DEFINE_list(
    'parallel', ['1', '8', '64'], 'Target counts run in one vmapped call.')
_BUDGET = flags.DEFINE_integer(
    'budget', 2000, 'Steps per target in the parallel runs.')
_STEPS = flags.DEFINE_integer(
    'steps', 6000, 'Most steps per target in the time-to-success runs.')
_MODEL = flags.DEFINE_string('model', 'lenet', 'Model name.')


def _check_flags() -> list[int]:
  """The flags checked before any work; returns the `--parallel` counts."""
  for flag in (_COUNT, _BUDGET, _STEPS):
    if flag.value < 1:
      raise errors.ConfigError(
          f'--{flag.name} must be >= 1, got {flag.value}.')
  errors.under('--model', models.get_model, _MODEL.value, num_classes=100)
  try:
    counts = [int(n) for n in _PARALLEL.value]
  except ValueError:
    counts = []
  if not all(n >= 1 for n in counts) or len(counts) != len(_PARALLEL.value):
    raise errors.ConfigError(
        f'--parallel must be target counts >= 1, got {_PARALLEL.value}.')
  return counts


def _setup(n: int):
  ds = data.load_bundled('cifar100')
  idx = np.arange(n) % len(ds.x)
  model = models.get_model(_MODEL.value, num_classes=100)
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  x, y = jnp.asarray(ds.x[idx]), jnp.asarray(ds.y[idx])
  grads = jax.jit(client.per_example_gradients, static_argnums=0)(
      apply_fn, params, x, jax.nn.one_hot(y, 100))
  return apply_fn, params, x, y, grads


def _attack(apply_fn, **kwargs) -> attack_lib.Attack:
  return attack_lib.Attack(apply_fn=apply_fn, image_shape=(32, 32, 3),
                           num_classes=100, snapshot_steps=(0,), **kwargs)


def seconds_per_evaluation(apply_fn, params, x, y, grads) -> float:
  attack = _attack(apply_fn)
  target = attack_lib.make_target(
      attack, jax.tree.map(lambda g: g[0], grads), y[:1], x[:1])
  fn = jax.jit(jax.value_and_grad(
      lambda v: attack_lib.objective(attack, params, v, target)))
  v = {'x': jnp.full((1, 32, 32, 3), 0.5)}
  jax.block_until_ready(fn(v))
  reps = 200
  start = time.perf_counter()
  for _ in range(reps):
    out = fn(v)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / reps


def time_to_success(apply_fn, params, x, y, grads):
  """Attacks the targets one after another (one compiled chunk for all)."""
  attack = _attack(apply_fn, num_steps=_STEPS.value)
  r = attack_lib.reconstruct(
      attack, params, grads, y[:, None], jax.random.PRNGKey(0),
      ground_truth=x[:, None], max_parallel=1)
  records = []
  for i in range(len(x)):
    step = int(r.success_step[i])
    records.append({
        'index': i,
        'success_step': step,
        'seconds_to_success': (float(r.seconds[i] * step / r.steps[i])
                               if step >= 0 else None),
        'steps': int(r.steps[i]),
        'seconds': float(r.seconds[i]),
    })
    logging.info('time to success %s', records[-1])
  return records, r.compile_seconds


def parallel(apply_fn, params, count: int):
  _, _, x, y, grads = _setup(count)
  attack = _attack(apply_fn, num_steps=_BUDGET.value, tol=0.0)
  start = time.perf_counter()
  r = attack_lib.reconstruct(attack, params, grads, y[:, None],
                             jax.random.PRNGKey(0), ground_truth=x[:, None],
                             chunk_size=_BUDGET.value)
  wall = time.perf_counter() - start - r.compile_seconds
  out = {
      'targets': count,
      'budget_steps': _BUDGET.value,
      'wall_seconds': wall,
      'compile_seconds': r.compile_seconds,
      'reconstructions_per_second': count / wall,
      'seconds_per_step_per_target': wall / (count * _BUDGET.value),
      'reached_30db': int(np.sum(r.success_step >= 0)),
  }
  logging.info('parallel %s', out)
  return out


def main(argv):
  del argv
  counts = _check_flags()
  apply_fn, params, x, y, grads = _setup(_COUNT.value)
  results = {
      'device': str(jax.devices()[0].device_kind),
      'backend': jax.default_backend(),
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'jax_version': jax.__version__,
      'model': _MODEL.value,
      'seconds_per_evaluation': seconds_per_evaluation(
          apply_fn, params, x, y, grads),
  }
  tts, compile_seconds = time_to_success(apply_fn, params, x, y, grads)
  ok = [r['seconds_to_success'] for r in tts
        if r['seconds_to_success'] is not None]
  results['time_to_success'] = tts
  results['compile_seconds'] = compile_seconds
  results['successes'] = len(ok)
  results['median_seconds_to_success'] = statistics.median(ok) if ok else None
  results['median_steps_to_success'] = statistics.median(
      r['success_step'] for r in tts if r['success_step'] >= 0) if ok else None
  results['parallel'] = [parallel(apply_fn, params, n) for n in counts]
  results['peak_host_memory_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    results['peak_device_memory_mb'] = stats['peak_bytes_in_use'] / 2**20
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=2)
  logging.info('wrote %s', _OUT.value)
  print(json.dumps({k: v for k, v in results.items()
                    if k not in ('time_to_success',)}, indent=2))


if __name__ == '__main__':
  app.run(errors.report_config_errors(main))
