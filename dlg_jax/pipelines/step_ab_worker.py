"""A worker of `dlg_jax.pipelines.step_ab`: one checkout's attack chunk, timed.

  python dlg_jax/pipelines/step_ab_worker.py ROOT TARGETS STEPS

Run by path, never imported: it imports `dlg_jax` from the checkout at
ROOT, which may be another commit's. It compiles that checkout's attack
chunk of STEPS steps as its runner compiles it (the DLG LeNet, the first
TARGETS bundled CIFAR-100 images as targets, the state donated), runs it
once and prints `ready`; then, for each line on stdin, runs one chunk and
prints its milliseconds per step per target.

It knows two layouts of the library, told apart by ROOT's folders (an
editable install of another checkout would answer an import that fails
here, and mix the two): the current one (`dlg_jax.vision`, `dlg_jax.core`)
and 341dfae's, the step-cost issue's baseline (one flat `dlg_jax`).
"""

import os
import sys

if __name__ == '__main__':
  # ROOT first, and not this folder, whose modules would shadow others.
  sys.path[0] = os.path.abspath(sys.argv[1])

# pylint: disable=g-import-not-at-top,wrong-import-position
import time

import jax
import numpy as np
# pylint: enable=g-import-not-at-top,wrong-import-position


def _library(root: str):
  """`(attack, client, data, models, make_attack)` of the checkout at root."""
  # pylint: disable=g-import-not-at-top
  if os.path.isdir(os.path.join(root, 'dlg_jax', 'vision')):
    from dlg_jax.core import client
    from dlg_jax.vision import attack, data, models
    make_attack = attack.make
  else:  # 341dfae's layout.
    from dlg_jax import attack, client, data, models
    make_attack = attack.Attack
  # pylint: enable=g-import-not-at-top
  for module in (attack, client, data, models):
    if not os.path.abspath(module.__file__).startswith(
        os.path.join(os.path.abspath(root), '')):
      raise ImportError(f'{module.__name__} came from {module.__file__}, '
                        f'not from {root}')
  return attack, client, data, models, make_attack


def chunk(root: str, targets: int, steps: int):
  """`(run, state)`: the compiled chunk as a function of the state."""
  attack, client, data, models, make_attack = _library(root)
  ds = data.load_bundled('cifar100')
  idx = np.arange(targets) % len(ds.x)
  model = models.get_model('lenet', num_classes=100)
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  x, y = jax.numpy.asarray(ds.x[idx]), jax.numpy.asarray(ds.y[idx])
  grads = jax.jit(client.per_example_gradients, static_argnums=0)(
      apply_fn, params, x, jax.nn.one_hot(y, 100))
  # The benchmark's attack, never stopping: every chunk does its steps.
  atk = make_attack(apply_fn=apply_fn, image_shape=(32, 32, 3),
                    num_classes=100, snapshot_steps=(0,), num_steps=10**9,
                    tol=0.0)
  made = jax.vmap(lambda g, t, gt: attack.make_target(
      atk, g, t, gt, params=params))(grads, y[:, None], x[:, None])
  keys = jax.random.split(jax.random.PRNGKey(0), targets)
  if hasattr(attack, 'over_jobs'):  # As `attack.reconstruct` compiles it.
    fn = jax.jit(attack.over_jobs(
        lambda s, k, t, p: attack.run_steps(
            atk, p, attack.start_if_unstarted(atk, s, k), t, steps),
        (0, 0, 0, None)), donate_argnums=0)
    state = attack.unstarted_states(atk, targets)
    compiled = fn.lower(state, keys, made, params).compile()
    return lambda s: compiled(s, keys, made, params), state
  fn = jax.jit(jax.vmap(lambda s, t, p: attack.run_steps(atk, p, s, t, steps),
                        in_axes=(0, 0, None)), donate_argnums=0)
  state = jax.jit(jax.vmap(lambda k: attack.init_state(atk, k)))(keys)
  compiled = fn.lower(state, made, params).compile()
  return lambda s: compiled(s, made, params), state


def main(root: str, targets: int, steps: int) -> None:
  run, state = chunk(root, targets, steps)
  state = jax.block_until_ready(run(state))
  print('ready', flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    state = jax.block_until_ready(run(state))
    seconds = time.perf_counter() - start
    print(f'{seconds / steps / targets * 1e3:.6f}', flush=True)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
