"""Tests of dlg_jax/core/parallel.py and of sweeps spread over devices and hosts.

Simulated devices need their count set before JAX starts, so the sharded
runs happen in fresh processes (tests/parallel_worker.py).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np

from dlg_jax.core import parallel
from tests import parallel_worker

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _worker(*args: str, timeout: float = 300) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.Popen(
      [sys.executable, '-m', 'tests.parallel_worker', *args], cwd=_ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
  out, _ = proc.communicate(timeout=timeout)
  if proc.returncode:
    raise AssertionError(f'worker failed ({proc.returncode}):\n{out[-3000:]}')


class FlagsTest(absltest.TestCase):

  def test_single_process_needs_no_flags(self):
    self.assertFalse(parallel.check_distributed(None, None, None))
    self.assertTrue(parallel.check_distributed('10.0.0.1:1234', 4, 3))

  def test_inconsistent_settings_name_the_flag(self):
    with self.assertRaisesRegex(ValueError, '--num_processes, --process_id'):
      parallel.check_distributed('10.0.0.1:1234', None, None)
    with self.assertRaisesRegex(ValueError, r'--process_id must be in \[0'):
      parallel.check_distributed('10.0.0.1:1234', 2, 2)
    with self.assertRaisesRegex(ValueError, '--process_id'):
      parallel.check_distributed('10.0.0.1:1234', 2, -1)
    with self.assertRaisesRegex(ValueError, '--num_processes must be >= 1'):
      parallel.check_distributed('10.0.0.1:1234', 0, 0)
    with self.assertRaisesRegex(ValueError, 'host:port'):
      parallel.check_distributed('10.0.0.1', 2, 0)

  def test_auto_excludes_explicit_settings(self):
    with self.assertRaisesRegex(ValueError, '--auto_distributed'):
      parallel.initialize('10.0.0.1:1234', 2, 1, auto=True)

  def test_unreachable_coordinator_fails_within_the_timeout(self):
    address = f'127.0.0.1:{_free_port()}'  # Nobody listens there.
    start = time.monotonic()
    with self.assertRaisesRegex(TimeoutError,
                                f'--coordinator_address={address}.*1 s'):
      parallel.initialize(address, 2, 1, timeout_s=1.0)
    self.assertLess(time.monotonic() - start, 10.0)

  def test_coordinator_port_in_use_is_refused_on_process_0(self):
    with socket.socket() as busy:
      busy.bind(('', 0))
      busy.listen()
      address = f'127.0.0.1:{busy.getsockname()[1]}'
      with self.assertRaisesRegex(ValueError, 'cannot bind port'):
        parallel.initialize(address, 2, 0, timeout_s=1.0)

  def test_more_devices_than_present(self):
    n = jax.device_count()
    with self.assertRaisesRegex(ValueError, f'num_devices={n + 1} requested'):
      parallel.make_mesh(n + 1)
    self.assertEqual(parallel.make_mesh().size, n)
    self.assertEqual(parallel.make_mesh(1).size, 1)


class ShardingHelpersTest(absltest.TestCase):

  def test_put_jobs_needs_a_divisible_axis(self):
    mesh = parallel.make_mesh(1)
    out = parallel.fetch(parallel.put_jobs(mesh, {'a': np.arange(3.0)}))
    np.testing.assert_array_equal(out['a'], np.arange(3.0))
    self.assertEqual(parallel.padded_size(18, 8), 24)
    self.assertEqual(parallel.padded_size(16, 8), 16)

  def test_jobs_per_device_from_memory(self):
    # Half of 1 GB in 10 MB jobs: 50; capped at 32; never below 1.
    self.assertEqual(parallel.jobs_per_device_from_memory(
        10_000_000, 1_000_000_000, max_jobs=64), 50)
    self.assertEqual(parallel.jobs_per_device_from_memory(
        10_000_000, 1_000_000_000, max_jobs=32), 32)
    self.assertEqual(parallel.jobs_per_device_from_memory(
        10**12, 10**9, max_jobs=32), 1)


class ShardedSweepTest(absltest.TestCase):

  def test_eight_devices_equal_one_and_compile_once_per_defense(self):
    out = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'r.json')
    _finish(_worker('--devices=8', f'--out={out}'))
    with open(out) as f:
      r = json.load(f)
    self.assertEqual(r['devices'], 8)
    # One executable per defense for all 8 devices and all chunks, and no
    # other XLA compile during the sweep.
    self.assertEqual(r['compiles'], 2)
    self.assertEqual(r['xla_compiles'], 2)
    for key in ('psnr', 'distance', 'x'):
      np.testing.assert_allclose(r[key], r['single'][key], rtol=1e-4,
                                 atol=1e-5, err_msg=key)

  def test_two_hosts_give_the_one_host_result(self):
    # Two processes of 2 CPU devices each, on this machine: a 4-device
    # mesh over 2 hosts, orbax checkpoints written jointly, outputs from
    # process 0 only.
    tmp = self.enter_context(tempfile.TemporaryDirectory())
    port = _free_port()
    procs = [_worker('--devices=2', f'--out={tmp}/r{i}.json',
                     f'--workdir={tmp}/sweep', f'--process_id={i}',
                     '--num_processes=2',
                     f'--coordinator_address=127.0.0.1:{port}')
             for i in range(2)]
    for p in procs:
      _finish(p)
    self.assertTrue(os.path.exists(f'{tmp}/r0.json'))
    self.assertFalse(os.path.exists(f'{tmp}/r1.json'))
    with open(f'{tmp}/r0.json') as f:
      r = json.load(f)
    self.assertEqual((r['devices'], r['processes']), (4, 2))
    self.assertNotEmpty(os.listdir(f'{tmp}/sweep/checkpoints'))

    # The same sweep here, on one device.
    from dlg_jax.vision import sweep  # pylint: disable=g-import-not-at-top
    attack, params, x, y, spec = parallel_worker.tiny()
    jax.config.update('jax_disable_most_optimizations', True)
    try:
      one = sweep.run_sweep(attack, params, x, y, spec,
                            mesh=parallel.make_mesh(1), jobs_per_device=5)
    finally:
      jax.config.update('jax_disable_most_optimizations', False)
    np.testing.assert_allclose(r['psnr'], one.psnr, rtol=1e-4)
    np.testing.assert_allclose(r['distance'], one.distance, rtol=1e-4)


if __name__ == '__main__':
  absltest.main()
