"""The attack step of two checkouts, interleaved in one run: `experiments/step_ab.py`.

`run(out, baseline=...)` starts, per target count, two worker processes
(`step_ab_worker.py`): one imports `dlg_jax` from this checkout, one from
`baseline`. Each compiles its checkout's attack chunk and runs it once;
then they run one chunk each in turn, which of the two goes first
alternating by round, so both see the same load and their ratio means
something on a shared machine where single timings swing by 2x. The
benchmark (`experiments/benchmark.py`) measures whole runs, which include
each call's work before and after its chunks; this measures the chunk.
"""

from collections.abc import Sequence
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from dlg_jax.core import errors

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'step_ab_worker.py')
# This checkout's root: dlg_jax/pipelines/ is two folders below it.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_WORKER)))


def check_args(*, baseline: str, targets: Sequence[Any], rounds: int,
               steps: int) -> list[int]:
  """The arguments checked before any work; returns the target counts.

  Raises:
    ConfigError: naming the flag at fault.
  """
  if not os.path.isdir(os.path.join(baseline, 'dlg_jax')):
    raise errors.ConfigError(
        f'--baseline must be the root of a dlg_jax checkout (a folder '
        f'holding dlg_jax/), got {baseline!r}.')
  counts = errors.target_counts('--targets', targets)
  if not counts:
    raise errors.ConfigError('--targets must name at least one count.')
  if rounds < 2:
    raise errors.ConfigError(f'--rounds must be >= 2, got {rounds}.')
  if steps < 1:
    raise errors.ConfigError(f'--steps must be >= 1, got {steps}.')
  return counts


def summarise(current: Sequence[float], baseline: Sequence[float]
              ) -> dict[str, Any]:
  """Best, median and ratios of two sides' per-round timings (ms)."""
  return {
      'current_ms': list(current),
      'baseline_ms': list(baseline),
      'current_best_ms': min(current),
      'baseline_best_ms': min(baseline),
      'current_median_ms': statistics.median(current),
      'baseline_median_ms': statistics.median(baseline),
      'ratio_of_bests': min(current) / min(baseline),
      'median_paired_ratio': statistics.median(
          c / b for c, b in zip(current, baseline)),
  }


class _Worker:
  """One worker process; its stderr goes to a file (a pipe could fill)."""

  def __init__(self, side: str, root: str, targets: int, steps: int):
    self.side = side
    self._err = tempfile.TemporaryFile('w+')
    self._proc = subprocess.Popen(
        [sys.executable, _WORKER, os.path.abspath(root), str(targets),
         str(steps)], cwd=root, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._err, text=True)

  def read(self) -> str:
    line = self._proc.stdout.readline()
    if not line:
      self._proc.wait()
      self._err.seek(0)
      last = (self._err.read().strip().splitlines() or ['no output'])[-1]
      raise RuntimeError(f'the {self.side} worker stopped: {last}')
    return line.strip()

  def time_chunk(self) -> float:
    self._proc.stdin.write('run\n')
    self._proc.stdin.flush()
    return float(self.read())

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      self._proc.wait()
    self._err.close()


def compare(baseline: str, targets: int, *, rounds: int, steps: int,
            root: str = ROOT) -> dict[str, Any]:
  """Interleaved chunk timings of `root` and `baseline` for one count."""
  workers = [_Worker('current', root, targets, steps),
             _Worker('baseline', baseline, targets, steps)]
  try:
    for worker in workers:
      said = worker.read()
      if said != 'ready':
        raise RuntimeError(f'the {worker.side} worker said {said!r}')
    times = {worker.side: [] for worker in workers}
    for r in range(rounds):
      for worker in (workers if r % 2 == 0 else workers[::-1]):
        times[worker.side].append(worker.time_chunk())
  finally:
    for worker in workers:
      worker.close()
  return {'targets': targets, **summarise(times['current'],
                                          times['baseline'])}


def _git_commit(root: str) -> str | None:
  try:
    return subprocess.run(['git', '-C', root, 'rev-parse', 'HEAD'],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def run(out: str, *, baseline: str, targets: Sequence[Any] = ('1', '8'),
        rounds: int = 16, steps: int = 100) -> dict[str, Any]:
  """Compares the chunks for each target count; writes `out` as JSON.

  The JSON is rewritten after each count, so a later failure keeps what
  was measured.

  Raises:
    ConfigError: a bad argument, named as its flag, before any work; or a
      worker that stopped (e.g. a baseline of an unknown layout).
  """
  counts = check_args(baseline=baseline, targets=targets, rounds=rounds,
                      steps=steps)
  results = {
      'commit': _git_commit(ROOT),
      'baseline': os.path.abspath(baseline),
      'baseline_commit': _git_commit(baseline),
      'steps': steps,
      'rounds': rounds,
      'cpu_count': os.cpu_count(),
      'platform': platform.platform(),
      'load_average_start': os.getloadavg(),
      'results': [],
  }
  for n in counts:
    try:
      row = compare(baseline, n, rounds=rounds, steps=steps)
    except RuntimeError as e:
      raise errors.ConfigError(f'--baseline={baseline}, {n} targets: '
                               f'{e}') from None
    results['results'].append(row)
    print(f'{n} targets: ms per step per target, current best / median '
          f'{row["current_best_ms"]:.3f} / {row["current_median_ms"]:.3f}, '
          f'baseline {row["baseline_best_ms"]:.3f} / '
          f'{row["baseline_median_ms"]:.3f}; ratio of bests '
          f'{row["ratio_of_bests"]:.3f}, median of paired ratios '
          f'{row["median_paired_ratio"]:.3f}', flush=True)
    results['load_average_end'] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(results, f, indent=2)
  return results
