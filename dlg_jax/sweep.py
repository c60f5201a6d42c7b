"""A resumable sweep of the DLG attack against gradient defenses.

Section 5 of the DLG paper (Zhu, Liu and Han 2019) attacks gradients that a
client perturbed before sharing: noise of growing variance, half precision,
int8 and pruning. A sweep here is the grid of jobs

    defense x strength x target x restart,

where one job applies defense `d` at strength `s` to the client's true
gradient of target `t` (noise key from `fold_in`, the same for every
restart: the client shares one gradient), makes the attacker's target from
the defended gradient (so 'analytic' labels are read off the DEFENDED
gradient) and runs the attack for exactly `attack.num_steps` steps from the
restart's start.

Jobs run in chunks of `jobs_per_chunk`, each chunk one call of ONE jitted,
vmapped function per defense name (strength, target and restart indices are
the vmapped inputs; the defense is static). The last chunk of a defense is
padded with copies of its first job, whose results are dropped. Every job's
keys depend on its (defense, strength, target, restart) indices only, so a
run's results do not depend on the chunking or on interruptions.

With a `workdir`, the results so far are saved with orbax after every chunk
with the spec's fingerprint; a rerun with the same spec skips the finished
chunks and a workdir of another spec is refused.

Example:

  >>> spec = SweepSpec(defenses=(('gaussian', (1e-4, 1e-2)),
  ...                            ('float16', (0.0,))), restarts=1)
  >>> result = run_sweep(attack, params, x, y, spec, workdir='/tmp/sweep')
  >>> result.psnr  # [num_records], one per (defense, strength, target)

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
"""

from collections.abc import Callable, Sequence
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import orbax.checkpoint as ocp

from dlg_jax import attack as attack_lib
from dlg_jax import defenses as defenses_lib
from dlg_jax import metrics

# Sub-streams of the sweep's key: the client's defense noise and the
# attacker's restarts never share randomness.
_DEFENSE_STREAM = 0
_RESTART_STREAM = 1
_CHECKPOINT_DIR = 'checkpoints'


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """What a sweep runs, apart from the attack, model and data.

  Attributes:
    defenses: `((name, (strength, ...)), ...)`, names from
      `defenses.DEFENSES`; casts ignore their strength (give `(0.0,)`).
    restarts: attack restarts per (defense, strength, target); the one of
      lowest gradient distance is kept.
    seed: the sweep's PRNG seed.
    jobs_per_chunk: jobs per compiled call (the vmapped batch).
  """
  defenses: tuple[tuple[str, tuple[float, ...]], ...]
  restarts: int = 1
  seed: int = 0
  jobs_per_chunk: int = 8

  def __post_init__(self):
    if not self.defenses:
      raise ValueError('defenses must name at least one defense.')
    names = [name for name, _ in self.defenses]
    if len(set(names)) != len(names):
      raise ValueError(f'defenses are named more than once: {names}.')
    for name, strengths in self.defenses:
      defenses_lib.get_defense(name)
      if not strengths:
        raise ValueError(f'defense {name!r} has no strengths.')
      defenses_lib.check_strength(name, np.asarray(strengths, np.float64))
    if self.restarts < 1:
      raise ValueError(f'restarts must be >= 1, got {self.restarts}.')
    if self.jobs_per_chunk < 1:
      raise ValueError(
          f'jobs_per_chunk must be >= 1, got {self.jobs_per_chunk}.')


class Chunk(NamedTuple):
  """One compiled call: jobs `[start, stop)` of the flat job list."""
  defense: int
  start: int
  stop: int


class SweepResult(NamedTuple):
  """Per (defense, strength, target) records, restarts reduced.

  Records are ordered defense-major, then strength, then target.

  Attributes:
    defense: `[m]` defense names.
    strength: `[m]` strengths.
    target: `[m]` target indices (into the `x` given to `run_sweep`).
    x: `[m, batch, h, w, c]` the winning restart's best reconstruction.
    distance: `[m]` its gradient distance.
    restart: `[m]` which restart won.
    mse, psnr, ssim: `[m]` image metrics of the winning reconstruction
      (clipped to [0, 1]) against the ground truth.
    label_correct: `[m]` whether the attacker's label is the true one.
    seconds: `[m]` attack wall time, all restarts, compile excluded.
    compile_seconds: compile time of this run (0 where all was resumed).
    resumed_chunks: chunks loaded from the workdir instead of run.
  """
  defense: np.ndarray
  strength: np.ndarray
  target: np.ndarray
  x: np.ndarray
  distance: np.ndarray
  restart: np.ndarray
  mse: np.ndarray
  psnr: np.ndarray
  ssim: np.ndarray
  label_correct: np.ndarray
  seconds: np.ndarray
  compile_seconds: float
  resumed_chunks: int


def _jobs(spec: SweepSpec, num_targets: int) -> dict[str, np.ndarray]:
  """The flat job list: defense, strength indices, target and restart."""
  cols = {'defense': [], 'strength_index': [], 'strength': [], 'target': [],
          'restart': []}
  for d, (_, strengths) in enumerate(spec.defenses):
    for s, value in enumerate(strengths):
      for t in range(num_targets):
        for r in range(spec.restarts):
          for name, v in zip(cols, (d, s, value, t, r)):
            cols[name].append(v)
  out = {k: np.asarray(v, np.int32) for k, v in cols.items()
         if k != 'strength'}
  out['strength'] = np.asarray(cols['strength'], np.float32)
  return out


def chunks(spec: SweepSpec, num_targets: int) -> list[Chunk]:
  """The chunks of the sweep, in order; a chunk never spans two defenses."""
  out, start = [], 0
  per = num_targets * spec.restarts
  for d, (_, strengths) in enumerate(spec.defenses):
    end = start + len(strengths) * per
    for lo in range(start, end, spec.jobs_per_chunk):
      out.append(Chunk(d, lo, min(lo + spec.jobs_per_chunk, end)))
    start = end
  return out


def _sha(*arrays: Any) -> str:
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(str((a.dtype, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def fingerprint(attack: attack_lib.Attack, params: Any, x: ArrayLike,
                y: ArrayLike, spec: SweepSpec,
                extra: dict[str, Any] | None = None) -> str:
  """sha256 of the canonical JSON of everything that decides the results.

  The attack's fields (its `apply_fn` by name only), the spec, and hashes
  of the parameters and the targets; `extra` (e.g. the launcher's config)
  covers what those cannot name, such as the model.
  """
  fields = {f.name: getattr(attack, f.name)
            for f in dataclasses.fields(attack) if f.name != 'apply_fn'}
  canonical = {
      'attack': fields,
      'spec': dataclasses.asdict(spec),
      'params': _sha(*jax.tree.leaves(jax.device_get(params))),
      'targets': _sha(x, y),
      'extra': extra or {},
  }
  text = json.dumps(canonical, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest()


def _job_fn(attack: attack_lib.Attack, defense: defenses_lib.Defense,
            defense_index: int) -> Callable[..., dict[str, jax.Array]]:
  """One job, as a function of its indices; `jax.vmap` it over jobs."""

  def job(strength, strength_index, target, restart, key, params, xs, ys):
    x = xs[target][None]  # [1, h, w, c]
    y = ys[target][None]
    grads = attack_lib.shared_update(
        attack, params, x, jax.nn.one_hot(y, attack.num_classes))
    base = jax.random.fold_in(
        jax.random.fold_in(key, defense_index), strength_index)
    base = jax.random.fold_in(base, target)
    defended = defense(jax.random.fold_in(base, _DEFENSE_STREAM), grads,
                       strength)
    goal = attack_lib.make_target(attack, defended, y, x, params=params)
    start = attack_lib.init_state(
        attack, jax.random.fold_in(
            jax.random.fold_in(base, _RESTART_STREAM), restart))
    state = attack_lib.run_steps(attack, params, start, goal,
                                 attack.num_steps)
    best = state.best['x']
    if attack.label_mode == 'joint':
      label = jnp.argmax(state.best['logits'][0])
    else:
      label = jnp.argmax(goal.labels[0])
    recon = jnp.clip(best[0], 0.0, 1.0)
    return {
        'x': best,
        'distance': state.best_value,
        'mse': metrics.mse(recon, x[0]),
        'psnr': metrics.psnr(recon, x[0]),
        'ssim': metrics.ssim(recon, x[0]),
        'label_correct': label == y[0],
    }

  return jax.vmap(job, in_axes=(0, 0, 0, 0, None, None, None, None))


def _empty(num_jobs: int, image_shape: Sequence[int],
           batch: int) -> dict[str, np.ndarray]:
  nan = lambda *shape: np.full(shape, np.nan, np.float32)
  return {
      'x': nan(num_jobs, batch, *image_shape),
      'distance': nan(num_jobs), 'mse': nan(num_jobs),
      'psnr': nan(num_jobs), 'ssim': nan(num_jobs),
      'label_correct': np.zeros(num_jobs, bool),
      'seconds': nan(num_jobs),
  }


class _Store:
  """The sweep's orbax checkpoints: job arrays, finished chunks, fingerprint.

  Each save is one step (the count of finished chunks) holding the plain
  numpy arrays of every job (NaN where not run) and the `done` mask; the
  previous step is deleted only after the new one is complete, so a crash
  never loses a finished chunk.
  """

  def __init__(self, workdir: str, fingerprint_: str):
    self.print = fingerprint_
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, _CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, enable_async_checkpointing=False, create=True),
        item_names=('arrays', 'spec'))

  def load(self) -> dict[str, np.ndarray] | None:
    step = self.manager.latest_step()
    if step is None:
      return None
    saved = self.manager.restore(
        step, args=ocp.args.Composite(spec=ocp.args.JsonRestore()))['spec']
    if saved.get('fingerprint') != self.print:
      raise ValueError(
          f'The workdir {self.manager.directory} holds a sweep of a different '
          f'spec (fingerprint {saved.get("fingerprint", "?")[:12]}, this one '
          f'{self.print[:12]}); refusing to mix their results. Use a new '
          'workdir, or delete that one to start over.')
    arrays = self.manager.restore(
        step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore()))
    return {k: np.asarray(v) for k, v in arrays['arrays'].items()}

  def save(self, arrays: dict[str, np.ndarray]) -> None:
    step = int(arrays['done'].sum())
    self.manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays),
        spec=ocp.args.JsonSave({'fingerprint': self.print})), force=True)
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def run_sweep(
    attack: attack_lib.Attack,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    spec: SweepSpec,
    *,
    workdir: str | None = None,
    extra_fingerprint: dict[str, Any] | None = None,
    on_chunk: Callable[[int, int, Chunk, float], None] | None = None,
) -> SweepResult:
  """Runs every job of `spec` on targets `x`, resuming from `workdir`.

  Args:
    attack: the attack (batch 1: one image per shared gradient).
    params: the shared model's parameters.
    x: `[n, h, w, c]` the targets' images in [0, 1].
    y: `[n]` their int labels.
    spec: the defenses, strengths, restarts and chunking.
    workdir: where the progress is checkpointed after each chunk; None
      keeps nothing.
    extra_fingerprint: JSON-able facts that also decide the results (e.g.
      the model's name); part of the workdir's fingerprint.
    on_chunk: called after each chunk is run and saved, as
      `on_chunk(chunks_done, num_chunks, chunk, seconds)`; for progress
      logs (and for tests, to interrupt a run).

  Returns:
    A `SweepResult`.

  Raises:
    ValueError: batch other than 1, or a workdir of another spec.
  """
  if attack.batch != 1:
    raise ValueError(f'The sweep attacks one image per gradient; got attack '
                     f'batch {attack.batch}.')
  xs = jnp.asarray(x, jnp.float32)
  ys = jnp.asarray(y, jnp.int32)
  n = xs.shape[0]
  if ys.shape != (n,):
    raise ValueError(f'y must be [{n}] labels, got shape {ys.shape}.')
  jobs = _jobs(spec, n)
  plan = chunks(spec, n)
  num_jobs = len(jobs['target'])
  arrays = _empty(num_jobs, attack.image_shape, attack.batch)
  arrays['done'] = np.zeros(len(plan), bool)

  store = None
  resumed = 0
  if workdir is not None:
    store = _Store(workdir, fingerprint(attack, params, np.asarray(x),
                                        np.asarray(y), spec,
                                        extra_fingerprint))
    loaded = store.load()
    if loaded is not None:
      arrays = loaded
      resumed = int(arrays['done'].sum())

  key = jax.random.key(spec.seed)
  compiled: dict[int, Any] = {}
  compile_seconds = 0.0
  try:
    for i, chunk in enumerate(plan):
      if arrays['done'][i]:
        continue
      size = chunk.stop - chunk.start
      # Padding repeats the chunk's first job; its outputs are dropped.
      index = np.concatenate([
          np.arange(chunk.start, chunk.stop),
          np.full(spec.jobs_per_chunk - size, chunk.start)])
      inputs = (jobs['strength'][index], jobs['strength_index'][index],
                jobs['target'][index], jobs['restart'][index], key, params,
                xs, ys)
      if chunk.defense not in compiled:
        name = spec.defenses[chunk.defense][0]
        fn = jax.jit(_job_fn(attack, defenses_lib.get_defense(name),
                             chunk.defense))
        start = time.perf_counter()
        compiled[chunk.defense] = fn.lower(*inputs).compile()
        compile_seconds += time.perf_counter() - start
      start = time.perf_counter()
      out = jax.device_get(jax.block_until_ready(
          compiled[chunk.defense](*inputs)))
      seconds = time.perf_counter() - start
      for k, v in out.items():
        arrays[k][chunk.start:chunk.stop] = np.asarray(v)[:size]
      arrays['seconds'][chunk.start:chunk.stop] = seconds / size
      arrays['done'][i] = True
      if store is not None:
        store.save(arrays)
      if on_chunk is not None:
        on_chunk(int(arrays['done'].sum()), len(plan), chunk, seconds)
  finally:
    if store is not None:
      store.close()
  return _reduce(spec, jobs, arrays, n, compile_seconds, resumed)


def _reduce(spec: SweepSpec, jobs: dict[str, np.ndarray],
            arrays: dict[str, np.ndarray], n: int, compile_seconds: float,
            resumed: int) -> SweepResult:
  """Keeps, per (defense, strength, target), the restart of least distance."""
  r = spec.restarts
  group = lambda a: a.reshape(-1, r, *a.shape[1:])
  distance = group(arrays['distance'])
  winner = np.argmin(np.where(np.isfinite(distance), distance, np.inf),
                     axis=1)
  rows = np.arange(distance.shape[0])
  pick = lambda a: group(a)[rows, winner]
  names = np.asarray([spec.defenses[d][0] for d in jobs['defense']])
  return SweepResult(
      defense=pick(names), strength=pick(jobs['strength']),
      target=pick(jobs['target']), x=pick(arrays['x']),
      distance=pick(arrays['distance']), restart=winner,
      mse=pick(arrays['mse']), psnr=pick(arrays['psnr']),
      ssim=pick(arrays['ssim']), label_correct=pick(arrays['label_correct']),
      seconds=group(arrays['seconds']).sum(axis=1),
      compile_seconds=compile_seconds, resumed_chunks=resumed)
