"""The runner core: many independent jobs in compiled, vmapped chunks.

Every attack here is written for one job (one target, one restart) and
batched with `jax.vmap`; a runner then calls the compiled batch in chunks of
steps. What the vision attack (`dlg_jax.vision.attack.reconstruct`), the
defense sweep (`dlg_jax.vision.sweep.run_sweep`) and the text attack share
is here:

* `CompileCache`: compiled executables keyed by what decides the program
  (a static key and the arguments' shapes, dtypes and shardings). The
  module-level `CACHE` outlives a call, so a second reconstruction of the
  same shapes (a notebook loop, a test, the next batch of targets) compiles
  nothing; it counts compiles and their seconds for the run's report.
* `Batch` / `next_size`: which batch size a shrinking set of jobs runs at.
  Compiling a size costs far more than running a few padded jobs on this
  project's CPUs (see `next_size`), so a run compiles at most `max_sizes`
  sizes and pads (repeats a running job, whose copy is ignored) otherwise.
* `chunk_lengths`: equal chunks of steps, so the last chunk is not a new
  program.
* `best_restart`: the restart of least final objective, diverged ones never
  winning.
* `Progress`: one log line per chunk, at most every few seconds, with an
  estimate of the time left.
"""

from collections.abc import Callable, Hashable, Sequence
import collections
import math
import time
from typing import Any

from absl import logging
import jax
import numpy as np


def _signature(args: Sequence[Any]) -> tuple[Any, ...]:
  """What of `args` decides a compiled program: structure, avals, shardings."""
  leaves, treedef = jax.tree.flatten(args)
  avals = []
  for leaf in leaves:
    shape = tuple(np.shape(leaf))
    dtype = getattr(leaf, 'dtype', None) or np.asarray(leaf).dtype
    sharding = getattr(leaf, 'sharding', None)
    avals.append((shape, str(dtype), sharding))
  return treedef, tuple(avals)


def _config_state() -> tuple[Any, ...]:
  """The global JAX settings a compiled program may depend on.

  All of them (e.g. `jax_disable_most_optimizations`, which the tests set
  per module), plus the matmul precision's context value; a conservative
  key, since a program is only reused under the settings it was built with.
  """
  return (tuple(sorted((k, repr(v)) for k, v in jax.config.values.items())),
          repr(jax.config.jax_default_matmul_precision))


class CompileCache:
  """Compiled executables that outlive a call, with compile counts.

  `compiled(key, jitted, *args)` returns the executable of `jitted` (a
  `jax.jit`-wrapped function) for `args`, lowering and compiling it only the
  first time that `key` (hashable: whatever the Python closure depends on,
  e.g. the attack and the chunk length) meets these argument shapes under
  these JAX settings. The oldest entries are dropped beyond `max_entries`.

  Attributes:
    compiles: compiles done since the cache was made.
    compile_seconds: their total wall time.
  """

  def __init__(self, max_entries: int = 64):
    self._executables: collections.OrderedDict[Any, Any] = (
        collections.OrderedDict())
    self._max_entries = max_entries
    self.compiles = 0
    self.compile_seconds = 0.0

  def compiled(self, key: Hashable, jitted: Any, *args: Any) -> Any:
    """The executable of `jitted(*args)` under `key`, compiled if missing."""
    full_key = (key, _signature(args), _config_state())
    if full_key in self._executables:
      self._executables.move_to_end(full_key)
      return self._executables[full_key]
    start = time.perf_counter()
    executable = jitted.lower(*args).compile()
    self.compile_seconds += time.perf_counter() - start
    self.compiles += 1
    self._executables[full_key] = executable
    while len(self._executables) > self._max_entries:
      self._executables.popitem(last=False)
    return executable

  def clear(self) -> None:
    self._executables.clear()


# The process's cache: executables of the attack runners.
CACHE = CompileCache()


class CompileCounter:
  """Compiles and compile seconds of `cache` from now on (for one run)."""

  def __init__(self, cache: CompileCache = CACHE):
    self._cache = cache
    self._compiles = cache.compiles
    self._seconds = cache.compile_seconds

  @property
  def compiles(self) -> int:
    return self._cache.compiles - self._compiles

  @property
  def seconds(self) -> float:
    return self._cache.compile_seconds - self._seconds


def next_size(active: int, current: int, compiled: Sequence[int], *,
              max_sizes: int = 2) -> int:
  """The batch size that `active` running jobs take, now at size `current`.

  A batch never grows and never holds fewer than `active` slots. It takes
  a new size, `active`, when that at least halves it and fewer than
  `max_sizes` sizes are compiled; otherwise the smallest compiled size that
  fits, the spare slots repeating a running job (their results ignored).

  The budget reflects what compiles cost here: on this project's 2-core
  CPU, compiling the main job's chunk (a LeNet, 250 L-BFGS steps) takes
  longer than running 1000 of its steps on 10 jobs, and the jobs of a run
  usually converge in one wave with a straggler or two after it. Two sizes,
  all the jobs and the stragglers, cover that.

  Args:
    active: jobs still running, >= 1.
    current: the batch's size now, >= `active`.
    compiled: sizes compiled so far in this run.
    max_sizes: the most sizes a run compiles.

  Returns:
    The size of the next chunk.
  """
  fits = sorted(s for s in set(compiled) if active <= s <= current)
  if fits and fits[0] == active:
    return active
  if len(set(compiled)) < max_sizes and 2 * active <= current:
    return active
  return fits[0] if fits else current


def chunk_lengths(num_steps: int, chunk_size: int) -> tuple[int, int]:
  """`(length, chunks)`: `chunks` equal chunks of `length` cover `num_steps`.

  `length * chunks >= num_steps`, with less than one step per chunk over;
  a runner stops a job at `num_steps` inside its last chunk, so every chunk
  is the same program.
  """
  if num_steps < 1 or chunk_size < 1:
    raise ValueError(f'num_steps and chunk_size must be >= 1, got '
                     f'{num_steps} and {chunk_size}.')
  chunks = math.ceil(num_steps / chunk_size)
  return math.ceil(num_steps / chunks), chunks


def best_restart(values: np.ndarray) -> np.ndarray:
  """`[n]` index of each row's least finite value in `[n, restarts]`.

  A restart whose value is NaN or infinite (it diverged) never wins unless
  every restart of the row did, in which case the first one is returned.
  """
  values = np.asarray(values)
  return np.argmin(np.where(np.isfinite(values), values, np.inf), axis=1)


class Progress:
  """One log line per chunk, at most every `every_seconds`, with time left.

  `update(done, total, detail)` after each chunk: `done` of `total` units
  (jobs, steps or chunks, whichever the runner counts) and a short phrase of
  the runner's own. The time left is the elapsed time per unit done times
  the units left, a rough estimate while jobs finish early.
  """

  def __init__(self, what: str, *, every_seconds: float = 10.0,
               log: Callable[..., None] = logging.info):
    self._what = what
    self._every = every_seconds
    self._log = log
    self._start = time.perf_counter()
    self._last = -math.inf

  def update(self, done: float, total: float, detail: str = '',
             force: bool = False) -> None:
    now = time.perf_counter()
    if not force and now - self._last < self._every:
      return
    self._last = now
    elapsed = now - self._start
    left = (f', about {elapsed / done * (total - done):.0f} s left'
            if 0 < done < total else '')
    self._log('%s: %s%s (%.0f s)', self._what, detail, left, elapsed)
