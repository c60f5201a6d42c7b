"""Spreading independent reconstructions over devices and hosts.

A sweep's jobs (defense strength x target x restart) never talk to each
other, so parallelism is plain data parallelism over one mesh axis, `'jobs'`:
each compiled call gets a chunk of jobs whose leading axis is sharded over
every device of every process (`NamedSharding(mesh, P('jobs'))`), while the
model's parameters are replicated. The per-job code is a `jax.vmap` of the
one-target attack and does not change; XLA partitions the vmapped program
with no communication, and one compile serves every device.

Multi-host runs (TPU pod slices, several GPU hosts) start with `initialize`,
which wraps `jax.distributed.initialize` with the checks JAX leaves to a
crash: consistent process count and id, and a coordinator that answers
within a stated timeout. Every process then runs the same program on the
same host data; `fetch` brings results to every process, and only
`is_main_process()` writes files.

Example (8 simulated CPU devices):

  >>> jax.config.update('jax_num_cpu_devices', 8)  # before any computation
  >>> mesh = make_mesh()
  >>> jobs = put_jobs(mesh, np.arange(16.0))          # 2 per device
  >>> fetch(jax.jit(lambda v: v * 2)(jobs))
"""

from collections.abc import Sequence
import os
import socket
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

JOBS = 'jobs'

# Of a device's free memory, the share a chunk may plan to use: the rest
# is for XLA's own buffers and the estimate's error.
MEMORY_FRACTION = 0.5
# The most jobs per device chosen for simulated CPU devices (several CPU
# devices in one process, xla_force_host_platform_device_count): with jax
# 0.10.2 on a 2-core host, 32 or more hung XLA:CPU for good (2 devices x
# 64 and 8 x 32 did; 8 x 16 did not).
SIMULATED_CPU_MAX_JOBS = 16


def check_distributed(coordinator_address: str | None,
                      num_processes: int | None,
                      process_id: int | None) -> bool:
  """Validates the multi-host settings; returns whether to initialise.

  Args:
    coordinator_address: `host:port` of process 0's coordinator.
    num_processes: how many processes take part.
    process_id: this process's id, in `[0, num_processes)`.

  Returns:
    False when none is set (one process), True when all are.

  Raises:
    ValueError: some set and others not, a count below 1, an id out of
      range, or an address without a port; the message names the flag.
  """
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if all(v is None for v in given.values()):
    return False
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(
        f'--{", --".join(missing)} missing: a multi-host run needs '
        '--coordinator_address, --num_processes and --process_id together.')
  if num_processes < 1:
    raise ValueError(f'--num_processes must be >= 1, got {num_processes}.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id must be in [0, --num_processes='
                     f'{num_processes}), got {process_id}.')
  _host_port(coordinator_address)
  return True


def _host_port(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise ValueError(f'--coordinator_address must be host:port, got '
                     f'{address!r}.')
  return host.strip('[]'), int(port)


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once `address` accepts TCP connections, or raises in time."""
  host, port = _host_port(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise TimeoutError(
            f'--coordinator_address={address}: no coordinator answered within '
            f'--coordinator_timeout={timeout_s:g} s ({e}). Start process 0 '
            'first, check the host and port, or raise the timeout.') from e
      time.sleep(0.2)


def _check_bindable(address: str) -> None:
  """Process 0 serves the coordinator: its port must be free here."""
  _, port = _host_port(address)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(('', port))
    except OSError as e:
      raise ValueError(
          f'--coordinator_address={address}: process 0 serves the coordinator '
          f'and cannot bind port {port} on this host ({e}).') from e


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               timeout_s: float = 300.0, auto: bool = False) -> None:
  """Joins a multi-host run; a no-op when no setting is given.

  With `auto`, JAX finds the settings itself, as it does on Cloud TPU pod
  slices, under Slurm and under Open MPI.

  Call it before any other JAX computation. JAX itself aborts the process
  (no Python exception) when the coordinator never answers; this checks
  first, so an unreachable coordinator is a `TimeoutError` after
  `timeout_s` naming the flag. Once connected, processes that never join
  still make JAX abort after `timeout_s`.

  Args:
    coordinator_address: `host:port` where process 0 serves the coordinator.
    num_processes: how many processes take part.
    process_id: this process's id.
    timeout_s: how long to wait for the coordinator and the other processes.
    auto: let JAX detect the cluster (no other setting may be given).

  Raises:
    ValueError: inconsistent settings (see `check_distributed`), or process
      0 unable to serve on the address's port.
    TimeoutError: the coordinator did not answer within `timeout_s`.
  """
  explicit = check_distributed(coordinator_address, num_processes, process_id)
  if auto:
    if explicit:
      raise ValueError('--auto_distributed detects the cluster; do not also '
                       'give --coordinator_address, --num_processes or '
                       '--process_id.')
    logging.info('joining the cluster JAX detects (timeout %g s)', timeout_s)
    jax.distributed.initialize(initialization_timeout=int(max(1, timeout_s)))
    return
  if not explicit:
    return
  if process_id == 0:
    _check_bindable(coordinator_address)
  else:
    _wait_for_coordinator(coordinator_address, timeout_s)
  logging.info('process %d of %d: joining the coordinator at %s (timeout '
               '%g s)', process_id, num_processes, coordinator_address,
               timeout_s)
  # CPU processes need a collectives library for cross-process transfers;
  # GPU and TPU backends ignore this. (Asking for the backend here would
  # start it, too early for `jax.distributed`.)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, initialization_timeout=int(max(1, timeout_s)))


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis `('jobs',)` mesh over the first `num_devices` devices.

  Args:
    num_devices: how many devices to use; None or 0 uses every device of
      every process. A subset is allowed with one process only (each
      process must hold part of the mesh).

  Raises:
    ValueError: more devices than present, or a subset in a multi-host run.
  """
  devices = jax.devices()
  if not num_devices:
    return Mesh(np.asarray(devices), (JOBS,))
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(
        f'num_devices={num_devices} requested, but {len(devices)} '
        f'{jax.default_backend()} devices are present.')
  if jax.process_count() > 1 and num_devices != len(devices):
    raise ValueError(
        f'num_devices={num_devices}: a multi-host run uses all '
        f'{len(devices)} devices (0 for all).')
  return Mesh(np.asarray(devices[:num_devices]), (JOBS,))


def job_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (jobs) axis split over the mesh; the rest whole."""
  return NamedSharding(mesh, P(JOBS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _put(tree: Any, sharding: NamedSharding) -> Any:
  # From host data every process holds in full: works with one process or
  # many, where `device_put` cannot address the other hosts' devices.
  def put(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])
  return jax.tree.map(put, tree)


def put_jobs(mesh: Mesh, tree: Any) -> Any:
  """Host arrays with a leading jobs axis, split over the mesh's devices.

  Raises:
    ValueError: a leading axis that the mesh's device count does not
      divide (pad first, see `padded_size`).
  """
  for a in jax.tree.leaves(tree):
    if np.shape(a)[0] % mesh.size:
      raise ValueError(f'A jobs axis of {np.shape(a)[0]} does not split over '
                       f'{mesh.size} devices; pad it to a multiple.')
  return _put(tree, job_sharding(mesh))


def put_replicated(mesh: Mesh, tree: Any) -> Any:
  """Host arrays copied whole to every device of the mesh."""
  return _put(tree, replicated(mesh))


def fetch(tree: Any) -> Any:
  """Global arrays as numpy on every process (one transfer per leaf)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def sync_processes(name: str) -> None:
  """A barrier across the processes of a multi-host run; a no-op alone."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_main_process() -> bool:
  """Whether this process writes outputs (process 0)."""
  return jax.process_index() == 0


def padded_size(count: int, num_devices: int) -> int:
  """`count` rounded up to a multiple of `num_devices`."""
  return -(-count // num_devices) * num_devices


def free_bytes_per_device(devices: Sequence[jax.Device]) -> int:
  """Free memory one device can count on.

  Accelerators report their allocator's limit and use; CPU devices share
  the host's available memory (`MemAvailable`), split between this
  process's devices.
  """
  stats = devices[0].memory_stats()
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  local = [d for d in devices if d.process_index == jax.process_index()]
  return _host_available_bytes() // max(1, len(local))


def _host_available_bytes() -> int:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES'))


def jobs_per_device_from_memory(bytes_per_job: int, free_bytes: int, *,
                                max_jobs: int,
                                fraction: float = MEMORY_FRACTION) -> int:
  """How many jobs one device runs per chunk: memory-bound, capped.

  Args:
    bytes_per_job: one job's device memory (temporaries and outputs), as
      `compiled.memory_analysis()` of a one-job-per-device probe gives.
    free_bytes: the device's free memory (`free_bytes_per_device`).
    max_jobs: the cap, e.g. so that chunks finish often enough to
      checkpoint.
    fraction: the share of `free_bytes` a chunk may use.

  Returns:
    At least 1, at most `max_jobs`.
  """
  fit = int(fraction * free_bytes) // max(1, int(bytes_per_job))
  return int(max(1, min(max_jobs, fit)))


def choose_jobs_per_device(mesh: Mesh, bytes_per_job: int | None, *,
                           max_jobs: int) -> int:
  """Jobs per device per chunk for `mesh`: memory-bound, capped.

  Args:
    mesh: the mesh the chunks run on.
    bytes_per_job: one job's device memory (None if unknown: `max_jobs`).
    max_jobs: the cap.

  Returns:
    `jobs_per_device_from_memory` of the devices' free memory, at most
    `SIMULATED_CPU_MAX_JOBS` on several simulated CPU devices.
  """
  jobs = max_jobs
  if bytes_per_job is not None:
    jobs = jobs_per_device_from_memory(
        bytes_per_job, free_bytes_per_device(mesh.devices.reshape(-1)),
        max_jobs=max_jobs)
  if mesh.size > 1 and mesh.devices.flat[0].platform == 'cpu':
    jobs = min(jobs, SIMULATED_CPU_MAX_JOBS)
  return jobs
