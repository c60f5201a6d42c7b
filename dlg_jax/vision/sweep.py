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
holding the spec's fingerprint and the JSON it hashes; a rerun with the same
spec goes on after the last finished chunk (with any chunk size or device
count), and a workdir of another spec is refused, naming the keys that
differ, before anything is written. A sweep holds the workdir for its run
(`lock_workdir`), so a second sweep started on it is refused. Host memory
holds one chunk at a time plus a few numbers per job, so sweeps of many
thousands of targets stream through.

Example:

  >>> spec = SweepSpec(defenses=(('gaussian', (1e-4, 1e-2)),
  ...                            ('float16', (0.0,))), restarts=1)
  >>> result = run_sweep(attack, params, x, y, spec, workdir='/tmp/sweep')
  >>> result.psnr  # [num_records], one per (defense, strength, target)

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
"""

from collections.abc import Callable, Sequence
import contextlib
import dataclasses
import errno
import fcntl
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

from dlg_jax.core import defenses as defenses_lib
from dlg_jax.core import errors
from dlg_jax.core import parallel
from dlg_jax.core import runner
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import metrics
# Sub-streams of the sweep's key: the client's defense noise and the
# attacker's restarts never share randomness.
_DEFENSE_STREAM = 0
_RESTART_STREAM = 1
_CHECKPOINT_DIR = 'checkpoints'
# In the workdir while a sweep runs (and after one was killed): the holder's
# pid, under `fcntl.flock`.
LOCK_FILE = 'sweep.lock'
# Differing keys a refusal lists, at most.
_MAX_CHANGES = 8
_MISSING = object()


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
    lpips: `[m]` its LPIPS (`metrics.lpips`, AlexNet) against the ground
      truth, computed on the host from each chunk's reconstructions (not in
      the compiled attack); NaN where `run_sweep` ran without `lpips`, or
      for chunks resumed from a workdir written before LPIPS.
    label_correct: `[m]` whether the attacker's label is the true one.
    seconds: `[m]` attack wall time, all restarts, compile excluded (a
      chunk's time shared among its jobs).
    compile_seconds: compile time of this run (0 where all was resumed, or
      where `runner.CACHE` held every executable from an earlier call).
    resumed_chunks: chunks loaded from the workdir instead of run.
    resumed_jobs: jobs those chunks hold (`[0, resumed_jobs)`).
    num_devices: devices the jobs were spread over.
    jobs_per_device: jobs each device ran per chunk.
    compiles: executables compiled by this run: one per defense run, plus a
      memory probe (one job per device) when `jobs_per_device` was chosen
      from memory and no chunk has that size; none that `runner.CACHE`
      held from an earlier call.
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
  lpips: np.ndarray
  label_correct: np.ndarray
  seconds: np.ndarray
  compile_seconds: float
  resumed_chunks: int
  resumed_jobs: int
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


# `Attack` fields added after workdirs were written, with their defaults.
_ADDED_FIELDS = {'schedule': 'cosine', 'signed': False, 'box': False,
                 'bn_weight': 0.0, 'feature_weight': 0.0,
                 'relu_smoothing': ()}


def _attack_fields(attack: attack_lib.Attack) -> dict[str, Any]:
  """The attack's settings as one flat dict, its `apply_fn` left out.

  The names are the sections' fields (unique across them) and the threat's,
  with the client's learning rate as `local_lr`: the same dict, and so the
  same fingerprint, as before `Attack` had sections, so older workdirs
  resume.
  """
  threat, fl_client = attack.threat, attack.threat.client
  fields = {'image_shape': threat.image_shape,
            'num_classes': threat.num_classes, 'batch': threat.batch,
            'local_steps': fl_client.local_steps,
            'local_lr': fl_client.learning_rate,
            'local_batch_size': fl_client.local_batch_size,
            'snapshot_steps': attack.snapshot_steps,
            'success_psnr': attack.success_psnr}
  for section in (attack.labels, attack.objective, attack.optimization,
                  attack.start):
    fields.update(dataclasses.asdict(section))
  # Fields added since, at their defaults, leave the fingerprint as it was.
  for name, default in _ADDED_FIELDS.items():
    if fields[name] == default:
      del fields[name]
  return fields


def _fingerprinted(attack: attack_lib.Attack, params: Any, x: ArrayLike,
                  y: ArrayLike, spec: SweepSpec,
                  extra: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
  """`fingerprint` and the JSON it hashes, read back as a dict."""
  canonical = {
      'attack': _attack_fields(attack),
      'spec': dataclasses.asdict(spec),
      'params': _sha(*jax.tree.leaves(jax.device_get(params))),
      'targets': _sha(x, y),
      'extra': extra or {},
  }
  text = json.dumps(canonical, sort_keys=True, default=repr)
  return hashlib.sha256(text.encode()).hexdigest(), json.loads(text)


def fingerprint(attack: attack_lib.Attack, params: Any, x: ArrayLike,
                y: ArrayLike, spec: SweepSpec,
                extra: dict[str, Any] | None = None) -> str:
  """sha256 of the canonical JSON of everything that decides the results.

  The attack's fields (not its `apply_fn`), the spec, and hashes
  of the parameters and the targets; `extra` (e.g. the launcher's config)
  covers what those cannot name, such as the model. Chunking and devices
  are not part of it: they do not change the results.
  """
  return _fingerprinted(attack, params, x, y, spec, extra)[0]


def _flatten(tree: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
  """`{'a.b': leaf}` of a JSON tree; lists of `[name, value]` by name."""
  pairs = isinstance(tree, list) and tree and all(
      isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
      for p in tree)
  if isinstance(tree, dict) or pairs:
    # The spec's defenses are such pairs: `spec.defenses.gaussian` reads
    # better than the whole list.
    for key, value in (tree.items() if isinstance(tree, dict) else tree):
      _flatten(value, f'{prefix}.{key}' if prefix else key, out)
  else:
    out[prefix] = tree
  return out


def spec_changes(old: dict[str, Any], new: dict[str, Any], *,
                 extra_name: str = 'extra') -> list[str]:
  """The keys in which two fingerprinted specs differ, one line each.

  Args:
    old: the JSON a workdir's fingerprint hashed (its checkpoints' meta).
    new: this run's.
    extra_name: what to call the `extra` section (e.g. `'config'`, where
      it is a launcher's config).

  Returns:
    Sorted lines such as `spec.seed: 0 -> 1` (`(none)` where a key is
    missing on one side).
  """
  def name(key):
    if key == 'extra' or key.startswith('extra.'):
      return extra_name + key[len('extra'):]
    return key

  def show(value):
    if value is _MISSING:
      return '(none)'
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + '...'

  a, b = _flatten(old, '', {}), _flatten(new, '', {})
  return sorted(
      f'{name(k)}: {show(a.get(k, _MISSING))} -> {show(b.get(k, _MISSING))}'
      for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


def _job_fn(attack: attack_lib.Attack, defense_name: str, defense_index: int,
            seed: int, aware: bool) -> Callable[..., dict[str, jax.Array]]:
  """One job, as a function of its indices and image; vmapped over jobs."""

  def job(strength, strength_index, target, restart, image, label, params):
    x = image[None]  # [1, h, w, c]
    y = label[None]
    grads = attack.threat.shared_update(
        params, x, jax.nn.one_hot(y, attack.threat.num_classes))
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
    if attack.objective.bn_weight:
      goal = goal._replace(bn_stats=attack.threat.batch_statistics(params, x))
    start = attack_lib.init_state(
        attack, jax.random.fold_in(
            jax.random.fold_in(base, _RESTART_STREAM), restart))
    state = attack_lib.run_steps(attack, params, start, goal,
                                 attack.num_steps)
    best = state.best['x']
    if attack.joint:
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


_METRICS = ('distance', 'mse', 'psnr', 'ssim', 'lpips', 'label_correct',
            'seconds')


def _chunk_metrics(parts: list[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
  """`_METRICS` of stored chunks; NaN LPIPS for chunks stored before it."""
  def column(part, k):
    if k == 'lpips' and k not in part:
      return np.full(len(part['psnr']), np.nan, np.float32)
    return part[k]
  return {k: np.concatenate([column(p, k) for p in parts]) for k in _METRICS}


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
    return _chunk_metrics(self.metrics)

  def all_images(self) -> tuple[np.ndarray, np.ndarray] | None:
    if not self.images:
      return None
    return (np.concatenate([j for j, _ in self.images]),
            np.concatenate([x for _, x in self.images]))

  def close(self) -> None:
    pass


_ITEMS = ('job_metrics', 'images', 'meta')


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def _refusal(workdir: str, meta: dict[str, Any], print_: str,
             spec_json: dict[str, Any], extra_name: str) -> str:
  """Why a workdir of another sweep is refused, naming what differs."""
  old = meta.get('fingerprint') or '?'
  head = (f'{workdir} holds a sweep of a different spec (fingerprint '
          f'{old[:12]}, this one {print_[:12]})')
  if 'spec' not in meta:
    what = '; it predates stored specs, so which keys differ is not known'
  else:
    changes = spec_changes(meta['spec'], spec_json, extra_name=extra_name)
    if len(changes) > _MAX_CHANGES:
      changes = changes[:_MAX_CHANGES] + [
          f'and {len(changes) - _MAX_CHANGES} more']
    what = ': ' + '; '.join(changes) if changes else ''
  return (f'{head}{what}. Refusing to mix their results: use a new workdir, '
          'or delete that one to start over.')


def _read_checkpoints(workdir: str, print_: str, spec_json: dict[str, Any],
                      extra_name: str = 'extra'
                      ) -> tuple[list[int], dict[int, int]]:
  """The finished chunks in `workdir`, checked against this sweep.

  Opens the checkpoints read-only and writes nothing, so a refused run
  leaves the workdir as it was.

  Returns:
    The checkpoint steps (the jobs each chunk ends at), ascending, and the
    reconstructions each holds.

  Raises:
    ConfigError: a checkpoint of another fingerprint, or a gap.
  """
  directory = os.path.join(os.path.abspath(workdir), _CHECKPOINT_DIR)
  try:
    if not os.path.isdir(directory):
      return [], {}
    return _check_checkpoints(directory, workdir, print_, spec_json,
                              extra_name)
  finally:
    # Every process of a multi-host run looks before any of them creates
    # the directory (orbax does, with its own barrier, right after): one
    # that looked late would open a manager the others did not.
    parallel.sync_processes('dlg_jax.vision.sweep.read_checkpoints')


def _check_checkpoints(directory: str, workdir: str, print_: str,
                       spec_json: dict[str, Any], extra_name: str
                       ) -> tuple[list[int], dict[int, int]]:
  """`_read_checkpoints` of an existing checkpoint directory."""
  # Never saved to, so it writes nothing (read_only=True would say so in
  # two warnings each run).
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_names=_ITEMS)
  try:
    steps = sorted(manager.all_steps())
    num_images: dict[int, int] = {}
    previous = 0
    for step in steps:
      meta = _restore_meta(manager, step)
      if meta.get('fingerprint') != print_:
        raise errors.ConfigError(
            _refusal(workdir, meta, print_, spec_json, extra_name))
      if meta['start'] != previous or meta['stop'] != step:
        raise errors.ConfigError(
            f'{workdir} has a gap: checkpoint {step} covers jobs '
            f'[{meta["start"]}, {meta["stop"]}) after job {previous}; it was '
            'not written by run_sweep.')
      num_images[step] = meta['images']
      previous = step
  finally:
    manager.close()
  return steps, num_images


class _OrbaxStore(_MemoryStore):
  """Chunk results appended as orbax checkpoints, one step per chunk.

  Step `s` holds the chunk that ends at job `s` (jobs always finish in
  order, so the finished jobs are `[0, latest step)`): its metrics (item
  'job_metrics': orbax reserves 'metrics'), the reconstructions of its jobs
  whose target is kept, and in 'meta' the fingerprint and the JSON it
  hashes (so a refusal can name what differs). Nothing is rewritten, so a
  save costs one chunk whatever the sweep's size, and a crash loses at most
  the chunk in flight. In a multi-host run every process calls `append`
  (orbax coordinates them; the primary host writes).
  """

  def __init__(self, workdir: str, fingerprint_: str,
               spec_json: dict[str, Any]):
    super().__init__()
    self.print = fingerprint_
    self.spec = spec_json
    # Checked read-only first: opening for writing may write orbax's own
    # metadata, which a refused run must not.
    self.steps, self.num_images = _read_checkpoints(workdir, fingerprint_,
                                                    spec_json)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, _CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=False, create=True),
        item_names=_ITEMS)
    self.done = self.steps[-1] if self.steps else 0
    self.resumed_chunks = len(self.steps)

  def append(self, chunk, metrics_, jobs, x) -> None:
    items = {'job_metrics': ocp.args.StandardSave(metrics_),
             'meta': ocp.args.JsonSave({'fingerprint': self.print,
                                        'spec': self.spec,
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
    return _chunk_metrics(parts)

  def all_images(self) -> tuple[np.ndarray, np.ndarray] | None:
    parts = [self._restore(s, 'images') for s in self.steps
             if self.num_images[s]]
    if not parts:
      return None
    return (np.concatenate([p['job'] for p in parts]),
            np.concatenate([p['x'] for p in parts]))

  def close(self) -> None:
    self.manager.close()


class WorkdirLock:
  """A sweep's hold on its workdir, from `lock_workdir`.

  A context manager: leaving it, or `release()`, lets the workdir go.

  Attributes:
    workdir: the workdir, absolute.
    path: the lock file, or None where this process holds no lock (not
      process 0, or a file system without `flock`).
  """

  def __init__(self, workdir: str, path: str | None = None,
               fd: int | None = None):
    self.workdir = workdir
    self.path = path
    self._fd = fd

  def release(self) -> None:
    """Removes the lock file and lets the lock go; idempotent."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    # Removed while still locked: whoever opened this file meanwhile finds,
    # once it gets the lock, that the path is gone and locks a new file.
    with contextlib.suppress(FileNotFoundError):
      os.unlink(self.path)
    os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def lock_workdir(workdir: str) -> WorkdirLock:
  """Takes `workdir` for one sweep; refuses if another sweep holds it.

  The lock is `fcntl.flock` on `<workdir>/sweep.lock`, which holds the
  holder's pid while it runs and is removed when it ends. The kernel lets a
  `flock` go when its process dies, even by SIGKILL, so a killed sweep
  never leaves the workdir stuck: its stale file is simply locked again.
  Only process 0 of a multi-host run locks (the processes of one run share
  the workdir); the others get a `WorkdirLock` that holds nothing. Where
  the file system has no `flock`, a warning is logged and the sweep runs
  unlocked.

  Example:

    >>> with lock_workdir('/tmp/sweep') as lock:
    ...   run_sweep(attack, params, x, y, spec, workdir='/tmp/sweep',
    ...             workdir_lock=lock)

  Args:
    workdir: the sweep's workdir; created if missing.

  Returns:
    The held lock, a context manager that releases it.

  Raises:
    ConfigError: another sweep (or another `lock_workdir` of this process)
      holds the workdir.
  """
  workdir = os.path.abspath(workdir)
  if not parallel.is_main_process():
    return WorkdirLock(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      pid = os.pread(fd, 32, 0).decode(errors='replace').strip()
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        logging.warning('cannot lock %s (%s); running without a lock, so do '
                        'not start another sweep on this workdir', path, e)
        return WorkdirLock(workdir)
      raise errors.ConfigError(
          f'{workdir} is held by another sweep (pid {pid or "unknown"}, '
          f'lock file {path}); wait for it to end, or use another workdir.'
      ) from None
    try:
      now = os.stat(path)
    except FileNotFoundError:
      now = None
    mine = os.fstat(fd)
    if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev,
                                                        mine.st_ino):
      break
    # The holder before us removed the file between our open and our lock.
    os.close(fd)
  os.ftruncate(fd, 0)
  os.write(fd, f'{os.getpid()}\n'.encode())
  return WorkdirLock(workdir, path, fd)


def check_workdir(workdir: str, attack: attack_lib.Attack, params: Any,
                  x: ArrayLike, y: ArrayLike, spec: SweepSpec, *,
                  extra_fingerprint: dict[str, Any] | None = None,
                  extra_name: str = 'extra') -> int:
  """Checks `workdir`'s finished chunks against this sweep; writes nothing.

  The check `run_sweep` makes when it opens the workdir, for a caller that
  writes beside the sweep (a launcher's `config.json`) and must not do so
  into a workdir that `run_sweep` would refuse.

  Args:
    workdir: the sweep's workdir; one without checkpoints passes.
    attack, params, x, y, spec, extra_fingerprint: as for `run_sweep`.
    extra_name: what to call `extra_fingerprint`'s keys in the refusal
      (`'config'` for a launcher's config: `config.sweep.seed: 0 -> 1`).

  Returns:
    The jobs the workdir has finished (0 for a new one).

  Raises:
    ConfigError: the workdir holds a sweep of another spec (the message
      lists the keys that differ, old and new), or chunks that `run_sweep`
      did not write.
  """
  print_, spec_json = _fingerprinted(
      attack, params, np.asarray(x, np.float32), np.asarray(y, np.int32),
      spec, extra_fingerprint)
  steps, _ = _read_checkpoints(workdir, print_, spec_json, extra_name)
  return steps[-1] if steps else 0


def _bytes_per_job(compiled: Any) -> int | None:
  """Memory one job of a one-job-per-device executable needs, if known."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    stats = None
  if stats is None:
    return None
  return int(stats.temp_size_in_bytes + stats.output_size_in_bytes
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
    workdir_lock: WorkdirLock | None = None,
    on_chunk: Callable[[int, int, Chunk, float], None] | None = None,
    lpips: bool = False,
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
    workdir_lock: the `lock_workdir(workdir)` the caller holds (a launcher
      that writes beside the sweep); None takes the lock for the run.
    on_chunk: called after each chunk is run and saved, as
      `on_chunk(chunks_done, num_chunks, chunk, seconds)`; for progress
      logs (and for tests, to interrupt a run).
    lpips: also score every job's reconstruction by LPIPS
      (`metrics.lpips_batch`, on the host after each chunk, outside the
      compiled attack and its timing); False stores NaN. Not part of the
      fingerprint: a workdir resumes either way.

  Returns:
    A `SweepResult`.

  Raises:
    ConfigError: a workdir of another spec (the keys that differ named) or
      held by another sweep; checked before anything is written or compiled.
    ValueError: batch other than 1, bad shapes or chunking.
  """
  xs, ys = _check_inputs(attack, x, y, jobs_per_device, max_jobs_per_device)
  n = xs.shape[0]
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = mesh.size
  keep = spec.targets(n) if keep_images is None else keep_images
  offsets = _offsets(spec, n)

  with contextlib.ExitStack() as stack:
    if workdir is None:
      store = _MemoryStore()
    else:
      if workdir_lock is None:
        # Before anything is written or compiled.
        stack.enter_context(lock_workdir(workdir))
      elif workdir_lock.workdir != os.path.abspath(workdir):
        raise ValueError(f'workdir_lock holds {workdir_lock.workdir}, not the '
                         f'workdir {workdir}.')
      store = _OrbaxStore(workdir, *_fingerprinted(
          attack, params, xs, ys, spec, extra_fingerprint))
      _log_resume(workdir, store, int(offsets[-1]))
    stack.callback(store.close)
    resumed_jobs = store.done
    jobs_fn = _Chunks(attack, spec, mesh, xs, ys, params)
    counter = runner.CompileCounter()
    if jobs_per_device is None:
      jobs_per_device = _probe_jobs_per_device(
          jobs_fn, offsets, store.done, max_jobs_per_device)
    # Jobs each device still needs per defense: chunks bigger than that
    # would be padding. Each defense compiles its own executable, so each
    # gets its own chunk size: a defense of 4 jobs is not padded to another's
    # 24.
    per_device = [_even(parallel.padded_size(max(0, int(
        offsets[d + 1] - max(offsets[d], store.done))), devices) // devices,
                        jobs_per_device) for d in range(len(spec.defenses))]
    todo = chunks(spec, n, [k * devices for k in per_device], store.done)
    total = store.resumed_chunks + len(todo)
    for i, chunk in enumerate(todo):
      jobs, inputs = jobs_fn.inputs(chunk, per_device[chunk.defense] * devices)
      fn = jobs_fn.executable(chunk.defense, inputs)
      start = time.perf_counter()
      out = parallel.fetch(fn(*inputs))
      seconds = time.perf_counter() - start
      size = chunk.stop - chunk.start
      out = {k: np.asarray(v)[:size] for k, v in out.items()}
      out['seconds'] = np.full(size, seconds / size, np.float32)
      out['lpips'] = (
          np.asarray(metrics.lpips_batch(np.clip(out['x'][:, 0], 0.0, 1.0),
                                         xs[jobs['image']]))
          if lpips else np.full(size, np.nan, np.float32))
      kept = jobs['target'] < keep
      store.append(chunk, {k: out[k] for k in _METRICS},
                   np.arange(chunk.start, chunk.stop)[kept], out['x'][kept])
      if on_chunk is not None:
        on_chunk(store.resumed_chunks + i + 1, total, chunk, seconds)
    return _reduce(spec, n, store, keep, counter.seconds, devices,
                   max(per_device), counter.compiles, resumed_jobs)


def _check_inputs(attack: attack_lib.Attack, x: ArrayLike, y: ArrayLike,
                  jobs_per_device: int | None, max_jobs_per_device: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """`run_sweep`'s images and labels as arrays, its arguments checked."""
  if attack.batch != 1:
    raise ValueError(f'The sweep attacks one image per gradient; got attack '
                     f'batch {attack.batch}.')
  xs = np.asarray(x, np.float32)
  ys = np.asarray(y, np.int32)
  n = xs.shape[0]
  image_shape = attack.threat.image_shape
  if xs.shape[1:] != tuple(image_shape):
    raise ValueError(f'x must be [n, {", ".join(map(str, image_shape))}'
                     f'] images for this attack, got shape {xs.shape}.')
  if ys.shape != (n,):
    raise ValueError(f'y must be [{n}] labels, got shape {ys.shape}.')
  if jobs_per_device is not None and jobs_per_device < 1:
    raise ValueError(f'jobs_per_device must be >= 1, got {jobs_per_device}.')
  if max_jobs_per_device < 1:
    raise ValueError(
        f'max_jobs_per_device must be >= 1, got {max_jobs_per_device}.')
  return xs, ys


class _Chunks:
  """A sweep's chunks as device inputs and compiled functions."""

  def __init__(self, attack: attack_lib.Attack, spec: SweepSpec,
               mesh: jax.sharding.Mesh, xs: np.ndarray, ys: np.ndarray,
               params: Any):
    self.attack, self.spec, self.mesh = attack, spec, mesh
    self.xs, self.ys = xs, ys
    self.params = parallel.put_replicated(mesh, params)

  def inputs(self, chunk: Chunk, size: int):
    """The chunk's job indices, and inputs padded with its first job."""
    jobs = job_indices(self.spec, self.xs.shape[0], chunk.start, chunk.stop)
    pad = np.zeros(size - (chunk.stop - chunk.start), np.int64)
    take = lambda a: np.concatenate([a, a[pad]])
    host = (take(jobs['strength']), take(jobs['strength_index']),
            take(jobs['target']), take(jobs['restart']),
            self.xs[take(jobs['image'])], self.ys[take(jobs['image'])])
    return jobs, parallel.put_jobs(self.mesh, host) + (self.params,)

  def executable(self, d: int, inputs):
    """The defense's compiled chunk, from `runner.CACHE` when it has it."""
    spec, attack = self.spec, self.attack
    name = spec.defenses[d][0]
    jobs = parallel.job_sharding(self.mesh)
    one = parallel.replicated(self.mesh)
    fn = jax.jit(_job_fn(attack, name, d, spec.seed, spec.defense_aware),
                 in_shardings=(jobs,) * 6 + (one,), out_shardings=jobs)
    return runner.CACHE.compiled(
        ('sweep', attack, name, d, spec.seed, spec.defense_aware), fn,
        *inputs)


def _probe_jobs_per_device(jobs_fn: _Chunks, offsets: np.ndarray, done: int,
                           max_jobs: int) -> int:
  """Jobs per device that fit in memory, probed on the next job to run."""
  if done >= offsets[-1]:
    return 1
  d = int(np.searchsorted(offsets, done, side='right')) - 1
  first = Chunk(d, done, done + 1)
  devices = jobs_fn.mesh.size
  per_job = _bytes_per_job(jobs_fn.executable(
      first.defense, jobs_fn.inputs(first, devices)[1]))
  jobs_per_device = parallel.choose_jobs_per_device(
      jobs_fn.mesh, per_job, max_jobs=max_jobs)
  logging.info('at most %d jobs per device (%s bytes per job)',
               jobs_per_device, per_job)
  return jobs_per_device


def _log_resume(workdir: str, store: _MemoryStore, num_jobs: int) -> None:
  """One line on what a workdir already holds, where it has anything."""
  count = store.resumed_chunks
  if not count:
    return
  found = '1 chunk in %s holds' if count == 1 else '%d chunks in %s hold'
  rest = (f'going on from job {store.done}' if store.done < num_jobs
          else 'nothing left to run')
  args = (workdir,) if count == 1 else (count, workdir)
  logging.info('resuming: ' + found + ' jobs [0, %d) of %d; %s', *args,
               store.done, num_jobs, rest)


def _reduce(spec: SweepSpec, n: int, store: _MemoryStore, keep: int,
            compile_seconds: float, devices: int, jobs_per_device: int,
            compiles: int, resumed_jobs: int) -> SweepResult:
  """Keeps, per (defense, strength, target), the restart of least distance."""
  r = spec.restarts
  arrays = store.all_metrics()
  group = lambda a: a.reshape(-1, r, *a.shape[1:])
  distance = group(arrays['distance'])
  winner = runner.best_restart(distance)
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
      ssim=pick(arrays['ssim']), lpips=pick(arrays['lpips']),
      label_correct=pick(arrays['label_correct']),
      seconds=group(arrays['seconds']).sum(axis=1),
      compile_seconds=compile_seconds, resumed_chunks=store.resumed_chunks,
      resumed_jobs=resumed_jobs, num_devices=devices,
      jobs_per_device=jobs_per_device,
      compiles=compiles)
