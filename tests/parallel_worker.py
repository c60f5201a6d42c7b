"""Runs a tiny sweep on simulated devices for tests/parallel_test.py.

  python -m tests.parallel_worker --devices=8 --out=result.json
  python -m tests.parallel_worker --devices=2 --out=result.json \
      --coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I \
      --workdir=DIR

The device count must be set before JAX starts, hence a process of its own.
With 8 devices it runs the sweep sharded over all of them and again on a
one-device mesh, and counts XLA compiles during the sharded run.
"""

import json
import sys

from absl import app
from absl import flags
import flax.linen as nn
import jax


def define_flags():
  # Defined when run, not on import: the test module imports `tiny`.
  flags.DEFINE_integer('devices', 8, 'Simulated CPU devices in this process.')
  flags.DEFINE_string('out', None, 'Where process 0 writes the JSON result.')
  flags.DEFINE_string('workdir', None, 'The sweep workdir, if any.')
  flags.DEFINE_string('coordinator_address', None, 'Multi-host coordinator.')
  flags.DEFINE_integer('num_processes', None, 'Processes.')
  flags.DEFINE_integer('process_id', None, 'This process.')


class _Mlp(nn.Module):
  """One sigmoid hidden layer of 16 units, 10 classes."""

  @nn.compact
  def __call__(self, x):
    x = nn.sigmoid(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def tiny_attack(num_images: int):
  """A small MLP on 12x12 images, Adam for 4 steps, `num_images` targets.

  The tiny sweep setup of tests/sweep_test.py and of these workers. What
  these tests check (chunking, resuming, sharding, fingerprints) does not
  depend on the model, and an MLP's programs compile in about half the time
  of the LeNet's (3.6 s against 8.0 s for a sweep job here), which is most of
  what these tests cost. The targets are uniform noise: no test here
  measures recovery.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import attack as attack_lib  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import models  # pylint: disable=g-import-not-at-top
  model = _Mlp()
  params = models.init_params(model, jax.random.key(0), (12, 12, 3))
  attack = attack_lib.make(
      apply_fn=models.make_apply_fn(model), image_shape=(12, 12, 3),
      num_classes=10, optimizer='adam', learning_rate=0.05, num_steps=4,
      snapshot_steps=(0,))
  x = np.asarray(jax.random.uniform(jax.random.key(1),
                                    (num_images, 12, 12, 3)))
  y = np.array([3, 7, 1, 5][:num_images])
  return attack, params, x, y


def tiny():
  """`tiny_attack` on 3 images and a sweep of 18 jobs over 2 defenses."""
  from dlg_jax.vision import sweep  # pylint: disable=g-import-not-at-top
  spec = sweep.SweepSpec(defenses=(('gaussian', (1e-4, 1e-1)),
                                   ('int8', (0.0,))),
                         restarts=2, seed=3)
  return (*tiny_attack(3), spec)


def main(argv):
  del argv
  f = flags.FLAGS
  jax.config.update('jax_num_cpu_devices', f.devices)
  from dlg_jax.core import parallel  # pylint: disable=g-import-not-at-top
  from dlg_jax.vision import sweep  # pylint: disable=g-import-not-at-top
  parallel.initialize(f.coordinator_address, f.num_processes, f.process_id,
                      timeout_s=60)
  jax.config.update('jax_disable_most_optimizations', True)
  attack, params, x, y, spec = tiny()

  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiles.append(name)
      if name == '/jax/core/compile/backend_compile_duration' else None)
  # 18 jobs, one per device per chunk: two chunks of gaussian on 8 devices.
  sharded = sweep.run_sweep(attack, params, x, y, spec,
                            mesh=parallel.make_mesh(), jobs_per_device=1,
                            workdir=f.workdir)
  out = {
      'devices': jax.device_count(),
      'processes': jax.process_count(),
      'xla_compiles': len(compiles),
      'compiles': sharded.compiles,
      'psnr': sharded.psnr.tolist(),
      'distance': sharded.distance.tolist(),
      'x': sharded.x.reshape(len(sharded.x), -1).sum(axis=1).tolist(),
  }
  if jax.process_count() == 1 and jax.device_count() > 1:
    single = sweep.run_sweep(attack, params, x, y, spec,
                             mesh=parallel.make_mesh(1), jobs_per_device=4)
    out['single'] = {'psnr': single.psnr.tolist(),
                     'distance': single.distance.tolist(),
                     'x': single.x.reshape(len(single.x), -1).sum(
                         axis=1).tolist()}
  if parallel.is_main_process() and f.out:
    with open(f.out, 'w') as fh:
      json.dump(out, fh)


if __name__ == '__main__':
  define_flags()
  sys.exit(app.run(main))
