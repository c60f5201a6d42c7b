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

Jobs run in chunks, each chunk one call of ONE compiled, vmapped function
per defense name (strength, target and restart indices and the target's
image are the vmapped inputs; the defense is static), with the chunk's jobs
split over every device of a `parallel.make_mesh()` mesh (and every host of
a multi-host run). The last chunk of a defense is padded with copies of its
first job, whose results are dropped. Every job's keys depend on its
(defense, strength, target, restart) indices only, so the results do not
depend on the chunk size, the device count or interruptions.

With a `workdir`, each finished chunk is appended as one orbax checkpoint
holding the spec's fingerprint; a rerun with the same spec goes on after
the last finished chunk (with any chunk size or device count) and a workdir
of another spec is refused. Host memory holds one chunk at a time plus a
few numbers per job, so sweeps of many thousands of targets stream through.

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

from absl import logging
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import orbax.checkpoint as ocp

from dlg_jax import attack as attack_lib
from dlg_jax import defenses as defenses_lib
from dlg_jax import metrics
from dlg_jax import parallel

# Sub-streams of the sweep's key: the client's defense noise and the
# attacker's restarts never share randomness.
_DEFENSE_STREAM = 0
_RESTART_STREAM = 1
_CHECKPOINT_DIR = 'checkpoints'


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """What a sweep runs, apart from the attack, model and data.

  Everything here decides the results (it is part of the workdir's
  fingerprint); how the jobs are chunked and spread over devices does not,
  and is given to `run_sweep` instead.

  Attributes:
    defenses: `((name, (strength, ...)), ...)`, names from
      `defenses.DEFENSES`; casts ignore their strength (give `(0.0,)`).
    restarts: attack restarts per (defense, strength, target); the one of
      lowest gradient distance is kept.
    seed: the sweep's PRNG seed.
    num_targets: targets per (defense, strength); target `t` attacks image
      `t % len(x)` with its own noise and starts. None is one per image.
    defense_aware: the attacker knows the defense and its strength
      (`attack.aware_target`); False is the DLG attacker, who matches the
      shared gradient as it is.
  """
  defenses: tuple[tuple[str, tuple[float, ...]], ...]
  restarts: int = 1
  seed: int = 0
  num_targets: int | None = None
  defense_aware: bool = False

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
    if self.num_targets is not None and self.num_targets < 1:
      raise ValueError(
          f'num_targets must be >= 1 (or None), got {self.num_targets}.')

  def targets(self, num_images: int) -> int:
    return num_images if self.num_targets is None else self.num_targets

  def num_jobs(self, num_images: int) -> int:
    per = self.targets(num_images) * self.restarts
    return sum(len(s) for _, s in self.defenses) * per


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
    target: `[m]` target indices.
    image: `[m]` the row of `x` each target attacked (`target % len(x)`).
    x: `[k, batch, h, w, c]` the winning restart's best reconstruction, for
      the `k` records whose target is below `keep_images`.
    x_record: `[k]` the record each row of `x` belongs to.
    distance: `[m]` the winner's gradient distance.
    restart: `[m]` which restart won.
    mse, psnr, ssim: `[m]` image metrics of the winning reconstruction
      (clipped to [0, 1]) against the ground truth.
    label_correct: `[m]` whether the attacker's label is the true one.
    seconds: `[m]` attack wall time, all restarts, compile excluded (a
      chunk's time shared among its jobs).
    compile_seconds: compile time of this run (0 where all was resumed).
    resumed_chunks: chunks loaded from the workdir instead of run.
    num_devices: devices the jobs were spread over.
    jobs_per_device: jobs each device ran per chunk.
    compiles: executables compiled (one per defense run, plus a memory
      probe when `jobs_per_device` was chosen from memory).
  """
  defense: np.ndarray
  strength: np.ndarray
  target: np.ndarray
  image: np.ndarray
  x: np.ndarray
  x_record: np.ndarray
  distance: np.ndarray
  restart: np.ndarray
  mse: np.ndarray
  psnr: np.ndarray
  ssim: np.ndarray
  label_correct: np.ndarray
  seconds: np.ndarray
  compile_seconds: float
  resumed_chunks: int
  num_devices: int
  jobs_per_device: int
  compiles: int


def _offsets(spec: SweepSpec, num_images: int) -> np.ndarray:
  """First job of each defense, and the total: `[num_defenses + 1]`."""
  per = spec.targets(num_images) * spec.restarts
  sizes = [len(s) * per for _, s in spec.defenses]
  return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def job_indices(spec: SweepSpec, num_images: int, start: int,
                stop: int) -> dict[str, np.ndarray]:
  """The indices of jobs `[start, stop)`, computed, never listed in full.

  Jobs are ordered defense, strength, target, restart (restart fastest).

  Returns:
    `defense`, `strength_index`, `strength`, `target`, `restart` and
    `image` (`target % num_images`), each `[stop - start]`.
  """
  job = np.arange(start, stop, dtype=np.int64)
  offsets = _offsets(spec, num_images)
  defense = np.searchsorted(offsets, job, side='right') - 1
  local = job - offsets[defense]
  targets, r = spec.targets(num_images), spec.restarts
  strength_index = local // (targets * r)
  target = (local // r) % targets
  values = np.concatenate([np.asarray(s, np.float32) for _, s in
                           spec.defenses])
  first = np.cumsum([0] + [len(s) for _, s in spec.defenses])
  strength = values[first[defense] + strength_index]
  return {
      'defense': defense.astype(np.int32),
      'strength_index': strength_index.astype(np.int32),
      'strength': strength,
      'target': target.astype(np.int32),
      'restart': (local % r).astype(np.int32),
      'image': (target % num_images).astype(np.int32),
  }


def chunks(spec: SweepSpec, num_images: int,
           chunk_size: int | Sequence[int], first_job: int = 0) -> list[Chunk]:
  """The chunks from job `first_job` on; a chunk never spans two defenses.

  Args:
    spec: the sweep.
    num_images: images the targets cycle through.
    chunk_size: jobs per chunk, one for all defenses or one per defense.
    first_job: jobs before it are done.
  """
  sizes = ([chunk_size] * len(spec.defenses) if isinstance(chunk_size, int)
           else list(chunk_size))
  if len(sizes) != len(spec.defenses) or min(sizes) < 1:
    raise ValueError(f'chunk_size must be >= 1 (one, or one per defense), '
                     f'got {chunk_size}.')
  offsets = _offsets(spec, num_images)
  out = []
  for d, size in enumerate(sizes):
    lo, end = max(int(offsets[d]), first_job), int(offsets[d + 1])
    for start in range(lo, end, size):
      out.append(Chunk(d, start, min(start + size, end)))
  return out


def _even(need: int, cap: int) -> int:
  """Jobs per device for `need` of them at most `cap` a chunk, evened out.

  As few chunks as `cap` allows, of equal size, so the last is not mostly
  padding: 125 at most 118 a chunk run as 2 of 63, not 118 + 7.
  """
  if need <= 0:
    return 1
  num_chunks = -(-need // min(cap, need))
  return -(-need // num_chunks)


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
  covers what those cannot name, such as the model. Chunking and devices
  are not part of it: they do not change the results.
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


def _job_fn(attack: attack_lib.Attack, defense_name: str, defense_index: int,
            seed: int, aware: bool) -> Callable[..., dict[str, jax.Array]]:
  """One job, as a function of its indices and image; vmapped over jobs."""

  def job(strength, strength_index, target, restart, image, label, params):
    x = image[None]  # [1, h, w, c]
    y = label[None]
    grads = attack_lib.shared_update(
        attack, params, x, jax.nn.one_hot(y, attack.num_classes))
    base = jax.random.fold_in(jax.random.fold_in(
        jax.random.key(seed), defense_index), strength_index)
    base = jax.random.fold_in(base, target)
    defended = defenses_lib.get_defense(defense_name)(
        jax.random.fold_in(base, _DEFENSE_STREAM), grads, strength)
    if aware:
      goal = attack_lib.aware_target(attack, defense_name, strength, defended,
                                     y, x, params=params)
    else:
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

  return jax.vmap(job, in_axes=(0, 0, 0, 0, 0, 0, None))


_METRICS = ('distance', 'mse', 'psnr', 'ssim', 'label_correct', 'seconds')


class _MemoryStore:
  """Chunk results kept in memory (no workdir)."""

  def __init__(self):
    self.metrics: list[dict[str, np.ndarray]] = []
    self.images: list[tuple[np.ndarray, np.ndarray]] = []
    self.done = 0
    self.resumed_chunks = 0

  def append(self, chunk: Chunk, metrics_: dict[str, np.ndarray],
             jobs: np.ndarray, x: np.ndarray) -> None:
    self.metrics.append(metrics_)
    if len(jobs):
      self.images.append((jobs, x))
    self.done = chunk.stop

  def all_metrics(self) -> dict[str, np.ndarray]:
    return {k: np.concatenate([m[k] for m in self.metrics])
            for k in _METRICS}

  def all_images(self) -> tuple[np.ndarray, np.ndarray] | None:
    if not self.images:
      return None
    return (np.concatenate([j for j, _ in self.images]),
            np.concatenate([x for _, x in self.images]))

  def close(self) -> None:
    pass


class _OrbaxStore(_MemoryStore):
  """Chunk results appended as orbax checkpoints, one step per chunk.

  Step `s` holds the chunk that ends at job `s` (jobs always finish in
  order, so the finished jobs are `[0, latest step)`): its metrics (item
  'job_metrics': orbax reserves 'metrics'), the
  reconstructions of its jobs whose target is kept, and the fingerprint.
  Nothing is rewritten, so a save costs one chunk whatever the sweep's
  size, and a crash loses at most the chunk in flight. In a multi-host run
  every process calls `append` (orbax coordinates them; the primary host
  writes).
  """

  def __init__(self, workdir: str, fingerprint_: str):
    super().__init__()
    self.print = fingerprint_
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, _CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=False, create=True),
        item_names=('job_metrics', 'images', 'meta'))
    self.steps = sorted(self.manager.all_steps())
    self.num_images: dict[int, int] = {}
    previous = 0
    for step in self.steps:
      meta = self._meta(step)
      if meta.get('fingerprint') != self.print:
        raise ValueError(
            f'The workdir {self.manager.directory} holds a sweep of a '
            f'different spec (fingerprint {meta.get("fingerprint", "?")[:12]},'
            f' this one {self.print[:12]}); refusing to mix their results. '
            'Use a new workdir, or delete that one to start over.')
      if meta['start'] != previous or meta['stop'] != step:
        raise ValueError(
            f'The workdir {self.manager.directory} has a gap: checkpoint '
            f'{step} covers jobs [{meta["start"]}, {meta["stop"]}) after job '
            f'{previous}; it was not written by run_sweep.')
      self.num_images[step] = meta['images']
      previous = step
    self.done = previous
    self.resumed_chunks = len(self.steps)

  def _meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def append(self, chunk, metrics_, jobs, x) -> None:
    items = {'job_metrics': ocp.args.StandardSave(metrics_),
             'meta': ocp.args.JsonSave({'fingerprint': self.print,
                                        'start': chunk.start,
                                        'stop': chunk.stop,
                                        'images': int(len(jobs))})}
    if len(jobs):
      items['images'] = ocp.args.StandardSave({'job': jobs, 'x': x})
    self.manager.save(chunk.stop, args=ocp.args.Composite(**items))
    self.manager.wait_until_finished()
    self.steps.append(chunk.stop)
    self.num_images[chunk.stop] = int(len(jobs))
    self.done = chunk.stop

  def _restore(self, step: int, item: str) -> dict[str, np.ndarray]:
    out = self.manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore()}))[item]
    return {k: np.asarray(v) for k, v in out.items()}

  def all_metrics(self) -> dict[str, np.ndarray]:
    parts = [self._restore(s, 'job_metrics') for s in self.steps]
    return {k: np.concatenate([p[k] for p in parts]) for k in _METRICS}

  def all_images(self) -> tuple[np.ndarray, np.ndarray] | None:
    parts = [self._restore(s, 'images') for s in self.steps
             if self.num_images[s]]
    if not parts:
      return None
    return (np.concatenate([p['job'] for p in parts]),
            np.concatenate([p['x'] for p in parts]))

  def close(self) -> None:
    self.manager.close()


def _memory_probe(fn, inputs) -> tuple[Any, int | None]:
  """Compiles `fn` at one job per device; returns it and bytes per job."""
  compiled = fn.lower(*inputs).compile()
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    stats = None
  if stats is None:
    return compiled, None
  return compiled, int(stats.temp_size_in_bytes + stats.output_size_in_bytes
                       + stats.argument_size_in_bytes)


def run_sweep(
    attack: attack_lib.Attack,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    spec: SweepSpec,
    *,
    workdir: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    jobs_per_device: int | None = None,
    max_jobs_per_device: int = 64,
    keep_images: int | None = None,
    extra_fingerprint: dict[str, Any] | None = None,
    on_chunk: Callable[[int, int, Chunk, float], None] | None = None,
) -> SweepResult:
  """Runs every job of `spec` on images `x`, resuming from `workdir`.

  Each chunk is one call of one compiled, vmapped function per defense,
  its jobs split over `mesh`'s devices (padded with copies of the chunk's
  first job, whose results are dropped). Host memory holds one chunk at a
  time, apart from the per-job metrics (a few numbers each) and the kept
  reconstructions, so a sweep of any number of targets streams through.

  Args:
    attack: the attack (batch 1: one image per shared gradient).
    params: the shared model's parameters.
    x: `[n, h, w, c]` the images in [0, 1].
    y: `[n]` their int labels.
    spec: the defenses, strengths, restarts and targets.
    workdir: where each chunk's results are appended as an orbax
      checkpoint; None keeps them in memory only.
    mesh: a `parallel.make_mesh()` mesh; None uses every device.
    jobs_per_device: jobs each device runs per chunk; None chooses it from
      the devices' free memory (see `parallel.jobs_per_device_from_memory`)
      and `max_jobs_per_device`.
    max_jobs_per_device: the cap on that choice.
    keep_images: return (and store) reconstructions only of targets below
      this; None keeps all.
    extra_fingerprint: JSON-able facts that also decide the results (e.g.
      the model's name); part of the workdir's fingerprint.
    on_chunk: called after each chunk is run and saved, as
      `on_chunk(chunks_done, num_chunks, chunk, seconds)`; for progress
      logs (and for tests, to interrupt a run).

  Returns:
    A `SweepResult`.

  Raises:
    ValueError: batch other than 1, bad shapes or chunking, or a workdir of
      another spec.
  """
  if attack.batch != 1:
    raise ValueError(f'The sweep attacks one image per gradient; got attack '
                     f'batch {attack.batch}.')
  xs = np.asarray(x, np.float32)
  ys = np.asarray(y, np.int32)
  n = xs.shape[0]
  if xs.shape[1:] != tuple(attack.image_shape):
    raise ValueError(f'x must be [n, {", ".join(map(str, attack.image_shape))}'
                     f'] images for this attack, got shape {xs.shape}.')
  if ys.shape != (n,):
    raise ValueError(f'y must be [{n}] labels, got shape {ys.shape}.')
  if jobs_per_device is not None and jobs_per_device < 1:
    raise ValueError(f'jobs_per_device must be >= 1, got {jobs_per_device}.')
  if max_jobs_per_device < 1:
    raise ValueError(
        f'max_jobs_per_device must be >= 1, got {max_jobs_per_device}.')
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = mesh.size
  keep = spec.targets(n) if keep_images is None else keep_images
  offsets = _offsets(spec, n)

  store = (_MemoryStore() if workdir is None else _OrbaxStore(
      workdir, fingerprint(attack, params, xs, ys, spec, extra_fingerprint)))
  replicated_params = parallel.put_replicated(mesh, params)

  def inputs_for(chunk: Chunk, size: int):
    """The chunk's inputs, padded to `size` jobs with its first job."""
    jobs = job_indices(spec, n, chunk.start, chunk.stop)
    pad = np.zeros(size - (chunk.stop - chunk.start), np.int64)
    take = lambda a: np.concatenate([a, a[pad]])
    host = (take(jobs['strength']), take(jobs['strength_index']),
            take(jobs['target']), take(jobs['restart']),
            xs[take(jobs['image'])], ys[take(jobs['image'])])
    return jobs, parallel.put_jobs(mesh, host) + (replicated_params,)

  def jit_fn(d: int):
    name = spec.defenses[d][0]
    jobs, one = parallel.job_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(_job_fn(attack, name, d, spec.seed, spec.defense_aware),
                   in_shardings=(jobs,) * 6 + (one,), out_shardings=jobs)

  compiled: dict[int, Any] = {}
  compile_seconds, compiles = 0.0, 0
  try:
    # Jobs each device still needs per defense: chunks bigger than that
    # would be padding.
    need = [parallel.padded_size(
        max(0, int(offsets[d + 1] - max(offsets[d], store.done))), devices)
            // devices for d in range(len(spec.defenses))]
    if store.done < offsets[-1] and jobs_per_device is None:
      start = time.perf_counter()
      # The next job to run probes the memory one job needs.
      d = int(np.searchsorted(offsets, store.done, side='right')) - 1
      first = Chunk(d, store.done, store.done + 1)
      probe, per_job = _memory_probe(jit_fn(first.defense),
                                     inputs_for(first, devices)[1])
      compile_seconds += time.perf_counter() - start
      compiles += 1
      jobs_per_device = parallel.choose_jobs_per_device(
          mesh, per_job, max_jobs=max_jobs_per_device)
      if _even(need[first.defense], jobs_per_device) == 1:
        compiled[first.defense] = probe
      logging.info('at most %d jobs per device (%s bytes per job)',
                   jobs_per_device, per_job)
    elif jobs_per_device is None:
      jobs_per_device = 1
    # Each defense compiles its own executable, so each gets its own chunk
    # size: a defense of 4 jobs is not padded to another's 24.
    per_device = [_even(k, jobs_per_device) for k in need]
    todo = chunks(spec, n, [k * devices for k in per_device], store.done)
    total = store.resumed_chunks + len(todo)
    for i, chunk in enumerate(todo):
      jobs, inputs = inputs_for(chunk, per_device[chunk.defense] * devices)
      if chunk.defense not in compiled:
        start = time.perf_counter()
        compiled[chunk.defense] = jit_fn(chunk.defense).lower(
            *inputs).compile()
        compile_seconds += time.perf_counter() - start
        compiles += 1
      start = time.perf_counter()
      out = parallel.fetch(compiled[chunk.defense](*inputs))
      seconds = time.perf_counter() - start
      size = chunk.stop - chunk.start
      out = {k: np.asarray(v)[:size] for k, v in out.items()}
      out['seconds'] = np.full(size, seconds / size, np.float32)
      kept = jobs['target'] < keep
      store.append(chunk, {k: out[k] for k in _METRICS},
                   np.arange(chunk.start, chunk.stop)[kept], out['x'][kept])
      if on_chunk is not None:
        on_chunk(store.resumed_chunks + i + 1, total, chunk, seconds)
    return _reduce(spec, n, store, keep, compile_seconds, devices,
                   max(per_device), compiles)
  finally:
    store.close()


def _reduce(spec: SweepSpec, n: int, store: _MemoryStore, keep: int,
            compile_seconds: float, devices: int, jobs_per_device: int,
            compiles: int) -> SweepResult:
  """Keeps, per (defense, strength, target), the restart of least distance."""
  r = spec.restarts
  arrays = store.all_metrics()
  group = lambda a: a.reshape(-1, r, *a.shape[1:])
  distance = group(arrays['distance'])
  winner = np.argmin(np.where(np.isfinite(distance), distance, np.inf),
                     axis=1)
  rows = np.arange(distance.shape[0])
  pick = lambda a: group(a)[rows, winner]
  jobs = job_indices(spec, n, 0, spec.num_jobs(n))
  names = np.asarray([name for name, _ in spec.defenses])[
      pick(jobs['defense'])]
  target = pick(jobs['target'])
  x_record = rows[target < keep]
  images = store.all_images()
  if images is None:
    x = np.zeros((0, 1, 0, 0, 0), np.float32)
  else:
    job_ids, stored = images
    order = np.argsort(job_ids)
    where = order[np.searchsorted(job_ids, (rows * r + winner)[x_record],
                                  sorter=order)]
    x = stored[where]
  return SweepResult(
      defense=names, strength=pick(jobs['strength']), target=target,
      image=pick(jobs['image']), x=x, x_record=x_record,
      distance=pick(arrays['distance']), restart=winner,
      mse=pick(arrays['mse']), psnr=pick(arrays['psnr']),
      ssim=pick(arrays['ssim']), label_correct=pick(arrays['label_correct']),
      seconds=group(arrays['seconds']).sum(axis=1),
      compile_seconds=compile_seconds, resumed_chunks=store.resumed_chunks,
      num_devices=devices, jobs_per_device=jobs_per_device,
      compiles=compiles)
