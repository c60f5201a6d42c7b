"""Speed of the DLG attack: `experiments/benchmark.py`.

`run(out, ...)` measures, for a model (the DLG LeNet by default) on the
bundled CIFAR-100 images, the compile time, the cost of one evaluation of
the objective and of one attack step (XLA's count of its FLOPs and bytes),
the time to success of targets attacked one at a time, the throughput of
targets attacked together, and peak memory, and writes them to `out` as
JSON (see the launcher's docstring for each field). It takes its flags'
values, not a ConfigDict: the setup is fixed.
"""

from collections.abc import Sequence
import json
import os
import platform
import resource
import statistics
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import data
from dlg_jax.vision import models
def check_args(*, count: int, parallel_counts: Sequence[Any], budget: int,
               steps: int, model: str) -> list[int]:
  """The arguments checked before any work; returns the parallel counts.

  Raises:
    ConfigError: naming the flag at fault.
  """
  for name, value in (('count', count), ('budget', budget),
                      ('steps', steps)):
    if value < 1:
      raise errors.ConfigError(f'--{name} must be >= 1, got {value}.')
  errors.under('--model', models.get_model, model, num_classes=100)
  return errors.target_counts('--parallel', parallel_counts)


def setup(n: int, model_name: str):
  """The first `n` bundled CIFAR-100 targets (repeated) and their gradients.

  Returns:
    `(apply_fn, params, x [n, 32, 32, 3], y [n], per-example grads)`.
  """
  ds = data.load_bundled('cifar100')
  idx = np.arange(n) % len(ds.x)
  model = models.get_model(model_name, num_classes=100)
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  x, y = jnp.asarray(ds.x[idx]), jnp.asarray(ds.y[idx])
  grads = jax.jit(client.per_example_gradients, static_argnums=0)(
      apply_fn, params, x, jax.nn.one_hot(y, 100))
  return apply_fn, params, x, y, grads


def _attack(apply_fn, **kwargs) -> attack_lib.Attack:
  return attack_lib.make(apply_fn=apply_fn, image_shape=(32, 32, 3),
                         num_classes=100, snapshot_steps=(0,), **kwargs)


def seconds_per_evaluation(apply_fn, params, x, y, grads) -> float:
  """Seconds of one jitted value-and-gradient of the objective."""
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


def step_cost(apply_fn, params, x, y, grads) -> dict[str, float]:
  """XLA's cost analysis of one attack step of one target (the default attack).

  The step as the runner runs it: the model's parameters an argument, the
  state donated (updated in place). FLOPs and bytes accessed are XLA's
  estimates for the compiled program, per step; they do not depend on the
  machine's speed, so they compare backends and commits.
  """
  attack = _attack(apply_fn)
  target = attack_lib.make_target(
      attack, jax.tree.map(lambda g: g[0], grads), y[:1], x[:1])
  state = attack_lib.init_state(attack, jax.random.key(0))
  compiled = jax.jit(
      lambda s, p: attack_lib.attack_step(attack, p, s, target),
      donate_argnums=0).lower(state, params).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'flops': float(cost.get('flops', float('nan'))),
          'bytes_accessed': float(cost.get('bytes accessed', float('nan')))}


def time_to_success(apply_fn, params, x, y, grads, *, steps: int):
  """Attacks the targets one after another (one compiled chunk for all)."""
  attack = _attack(apply_fn, num_steps=steps)
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


def parallel(apply_fn, params, count: int, *, budget: int,
             model: str) -> dict[str, Any]:
  """`count` targets in one vmapped call for `budget` steps."""
  _, _, x, y, grads = setup(count, model)
  attack = _attack(apply_fn, num_steps=budget, tol=0.0)
  start = time.perf_counter()
  r = attack_lib.reconstruct(attack, params, grads, y[:, None],
                             jax.random.PRNGKey(0), ground_truth=x[:, None],
                             chunk_size=budget)
  wall = time.perf_counter() - start - r.compile_seconds
  reached = int(np.sum(r.success_step >= 0))
  out = {
      'targets': count,
      'budget_steps': budget,
      'wall_seconds': wall,
      'compile_seconds': r.compile_seconds,
      'reconstructions_per_second': count / wall,
      'seconds_per_step_per_target': wall / (count * budget),
      'reached_30db': reached,
      # Targets at 30 dB or more per minute of the run (compile excluded).
      'reconstructions_per_minute_30db': 60.0 * reached / wall,
  }
  logging.info('parallel %s', out)
  return out


def run(out: str, *, count: int = 10, parallel_counts: Sequence[Any] = (
    '1', '8', '64'), budget: int = 2000, steps: int = 6000,
        model: str = 'lenet') -> dict[str, Any]:
  """Runs every measurement and writes them to `out` as JSON.

  Args:
    out: the JSON path.
    count: targets attacked one at a time for time to success.
    parallel_counts: target counts run in one vmapped call.
    budget: steps per target in the parallel runs.
    steps: most steps per target in the time-to-success runs.
    model: the model's name (`dlg_jax.vision.models`).

  Returns:
    The JSON content.

  Raises:
    ConfigError: a bad argument, named as its flag, before any work.
  """
  counts = check_args(count=count, parallel_counts=parallel_counts,
                      budget=budget, steps=steps, model=model)
  apply_fn, params, x, y, grads = setup(count, model)
  results = {
      'device': str(jax.devices()[0].device_kind),
      'backend': jax.default_backend(),
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'jax_version': jax.__version__,
      'model': model,
      'seconds_per_evaluation': seconds_per_evaluation(
          apply_fn, params, x, y, grads),
      'step_cost': step_cost(apply_fn, params, x, y, grads),
  }
  tts, compile_seconds = time_to_success(apply_fn, params, x, y, grads,
                                         steps=steps)
  ok = [r['seconds_to_success'] for r in tts
        if r['seconds_to_success'] is not None]
  results['time_to_success'] = tts
  results['compile_seconds'] = compile_seconds
  results['successes'] = len(ok)
  results['median_seconds_to_success'] = statistics.median(ok) if ok else None
  results['median_steps_to_success'] = statistics.median(
      r['success_step'] for r in tts if r['success_step'] >= 0) if ok else None
  results['parallel'] = [parallel(apply_fn, params, n, budget=budget,
                                  model=model) for n in counts]
  results['peak_host_memory_mb'] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    results['peak_device_memory_mb'] = stats['peak_bytes_in_use'] / 2**20
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out, 'w') as f:
    json.dump(results, f, indent=2)
  logging.info('wrote %s', out)
  return results
