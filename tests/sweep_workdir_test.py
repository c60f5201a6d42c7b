"""Tests of the sweep's workdir: refusals change nothing, resume, lock.

dlg_jax/vision/sweep.py (`check_workdir`, `lock_workdir`, `run_sweep`) and its
launcher experiments/sweep.py.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax

from configs import defenses as defenses_config
from dlg_jax.core import errors
from dlg_jax.pipelines import sweep as sweep_pipeline
from dlg_jax.vision import sweep
from tests import parallel_worker


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 jobs (one defense, 2 targets, 1 restart): at one job per device on one
# device, 2 chunks.
_SPEC = sweep.SweepSpec(defenses=(('float16', (0.0,)),))


def setUpModule():
  # Compile time dominates these tests; see attack_test.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


class _Interrupt(Exception):
  pass


def _snapshot(workdir: str) -> dict[str, tuple[str, int]]:
  """`{path: (sha256, mtime_ns)}` of every file under `workdir`."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(path, workdir)] = (digest,
                                             os.stat(path).st_mtime_ns)
  return out


def _quick_config(strengths=(1e-4, 1e-2)):
  """The launcher's smallest sweep: one image, 3 Adam steps, gaussian."""
  config = defenses_config.get_config('quick')
  config.data.count = 1
  config.attack.num_steps = 3
  config.attack.optimizer = 'adam'
  config.sweep.defenses = ('gaussian',)
  config.sweep.strengths.gaussian = strengths
  config.sweep.jobs_per_device = 2
  config.utility.steps = 0
  return config


class RefusalTest(absltest.TestCase):

  def test_launcher_refuses_another_config_and_changes_nothing(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    sweep_pipeline.run(_quick_config(), workdir)
    before = _snapshot(workdir)
    self.assertIn('config.json', before)
    self.assertIn('results.json', before)
    self.assertNotIn(sweep.LOCK_FILE, before)  # Removed when the run ended.

    with self.assertRaises(errors.ConfigError) as caught:
      sweep_pipeline.run(_quick_config(strengths=(1e-3,)), workdir)
    message = str(caught.exception)
    self.assertStartsWith(message, '--workdir: ')
    self.assertIn('different spec', message)
    self.assertIn('config.sweep.strengths.gaussian: [0.0001, 0.01] -> [0.001]',
                  message)
    self.assertIn('spec.defenses.gaussian: [0.0001, 0.01] -> [0.001]',
                  message)
    # Only what differs is named.
    self.assertNotIn('num_steps', message)
    self.assertEqual(_snapshot(workdir), before)
    with open(os.path.join(workdir, 'config.json')) as f:
      self.assertEqual(json.load(f)['sweep']['strengths']['gaussian'],
                       [1e-4, 1e-2])

  def test_library_names_the_spec_field_and_old_workdirs_still_refuse(self):
    attack, params, x, y = parallel_worker.tiny_attack(2)
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                    jobs_per_device=2)
    before = _snapshot(workdir)
    other = sweep.SweepSpec(defenses=(('float16', (0.0,)),), seed=1)
    with self.assertRaisesRegex(errors.ConfigError,
                                r'different spec .*: spec\.seed: 0 -> 1\. '):
      sweep.run_sweep(attack, params, x, y, other, workdir=workdir)
    with self.assertRaisesRegex(errors.ConfigError, r': targets: "\w+" -> '):
      sweep.check_workdir(workdir, attack, params, x[::-1], y, _SPEC)
    self.assertEqual(_snapshot(workdir), before)
    self.assertEqual(
        sweep.check_workdir(workdir, attack, params, x, y, _SPEC), 2)

    # A workdir written before the spec was stored beside the fingerprint:
    # refused by fingerprint alone.
    path = os.path.join(workdir, 'checkpoints', '2', 'meta', 'metadata')
    with open(path) as f:
      meta = json.load(f)
    self.assertIn('spec', meta)
    del meta['spec']
    with open(path, 'w') as f:
      json.dump(meta, f)
    with self.assertRaisesRegex(
        errors.ConfigError,
        rf'fingerprint {meta["fingerprint"][:12]}, this one \w{{12}}\); it '
        'predates stored specs'):
      sweep.run_sweep(attack, params, x, y, other, workdir=workdir)
    # The same spec still resumes from it.
    again = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir)
    self.assertEqual((again.resumed_chunks, again.resumed_jobs), (1, 2))

  def test_spec_changes_lists_each_key(self):
    old = {'spec': {'seed': 0, 'defenses': [['gaussian', [1e-4]],
                                            ['int8', [0.0]]]},
           'extra': {'sweep': {'num_targets': 0}}}
    new = {'spec': {'seed': 0, 'defenses': [['gaussian', [1e-3]]]},
           'extra': {'sweep': {'num_targets': 4}, 'model': 'lenet'}}
    self.assertEqual(
        sweep.spec_changes(old, new, extra_name='config'),
        ['config.model: (none) -> "lenet"',
         'config.sweep.num_targets: 0 -> 4',
         'spec.defenses.gaussian: [0.0001] -> [0.001]',
         'spec.defenses.int8: [0.0] -> (none)'])
    self.assertEqual(sweep.spec_changes(old, old), [])


class ResumeTest(absltest.TestCase):

  def test_resume_says_where_it_goes_on(self):
    attack, params, x, y = parallel_worker.tiny_attack(2)
    workdir = self.enter_context(tempfile.TemporaryDirectory())

    def crash(done, *unused):
      if done == 1:
        raise _Interrupt()

    with self.assertRaises(_Interrupt):
      sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                      jobs_per_device=1, on_chunk=crash)
    # The interrupted run let the workdir go.
    self.assertFalse(os.path.exists(os.path.join(workdir, sweep.LOCK_FILE)))
    with self.assertLogs('absl', level='INFO') as logs:
      resumed = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                                jobs_per_device=1)
    self.assertContainsSubsequence(
        logs.output, [f'INFO:absl:resuming: 1 chunk in {workdir} holds jobs '
                      '[0, 1) of 2; going on from job 1'])
    self.assertEqual((resumed.resumed_chunks, resumed.resumed_jobs), (1, 1))

    with self.assertLogs('absl', level='INFO') as logs:
      done = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir)
    self.assertContainsSubsequence(
        logs.output, [f'INFO:absl:resuming: 2 chunks in {workdir} hold jobs '
                      '[0, 2) of 2; nothing left to run'])
    self.assertEqual(done.resumed_jobs, 2)

  def test_a_new_workdir_does_not_say_resuming(self):
    attack, params, x, y = parallel_worker.tiny_attack(2)
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertLogs('absl', level='INFO') as logs:
      result = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                               jobs_per_device=2)
    self.assertFalse([line for line in logs.output if 'resuming' in line])
    self.assertEqual((result.resumed_chunks, result.resumed_jobs), (0, 0))


def _hold_lock(workdir: str) -> subprocess.Popen:
  """A process that takes `workdir`'s lock and sleeps, once it holds it."""
  code = ('import sys, time\n'
          'from dlg_jax.vision import sweep\n'
          'sweep.lock_workdir(sys.argv[1])\n'
          'print("locked", flush=True)\n'
          'time.sleep(600)\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(
                 [_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  proc = subprocess.Popen([sys.executable, '-c', code, workdir], cwd=_ROOT,
                          env=env, stdout=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if line.strip() != 'locked':
    proc.kill()
    proc.wait()
    raise AssertionError(f'the lock holder said {line!r}')
  return proc


class LockTest(absltest.TestCase):

  def test_held_workdir_is_refused_until_its_holder_is_killed(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    holder = _hold_lock(workdir)
    try:
      lock_file = os.path.join(workdir, sweep.LOCK_FILE)
      with open(lock_file) as f:
        self.assertEqual(f.read().strip(), str(holder.pid))
      before = _snapshot(workdir)
      with self.assertRaises(errors.ConfigError) as caught:
        sweep_pipeline.run(_quick_config(), workdir)
      message = str(caught.exception)
      self.assertStartsWith(message, '--workdir: ')
      self.assertIn(f'held by another sweep (pid {holder.pid}', message)
      self.assertEqual(_snapshot(workdir), before)  # Nothing written.
    finally:
      holder.send_signal(signal.SIGKILL)
      holder.wait()
    self.assertEqual(holder.returncode, -signal.SIGKILL)
    # A killed holder leaves its file, but not its lock.
    self.assertTrue(os.path.exists(lock_file))
    results = sweep_pipeline.run(_quick_config(), workdir)
    self.assertLen(results['records'], 2)
    self.assertFalse(os.path.exists(lock_file))

  def test_library_run_is_refused_while_held_and_takes_a_held_lock(self):
    attack, params, x, y = parallel_worker.tiny_attack(2)
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    lock_file = os.path.join(workdir, sweep.LOCK_FILE)
    with sweep.lock_workdir(workdir) as lock:
      with open(lock_file) as f:
        self.assertEqual(f.read(), f'{os.getpid()}\n')
      with self.assertRaisesRegex(errors.ConfigError,
                                  f'pid {os.getpid()}, lock file'):
        sweep.lock_workdir(workdir)
      with self.assertRaisesRegex(errors.ConfigError,
                                  'held by another sweep'):
        sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir)
      self.assertEqual(os.listdir(workdir), [sweep.LOCK_FILE])
      # The holder itself runs, given its lock.
      result = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                               jobs_per_device=2, workdir_lock=lock)
      self.assertEqual(result.psnr.shape, (2,))
      self.assertTrue(os.path.exists(lock_file))  # Still the caller's.
      other = self.enter_context(tempfile.TemporaryDirectory())
      with self.assertRaisesRegex(ValueError, 'workdir_lock holds'):
        sweep.run_sweep(attack, params, x, y, _SPEC, workdir=other,
                        workdir_lock=lock)
    self.assertFalse(os.path.exists(lock_file))
    with sweep.lock_workdir(workdir):
      pass


if __name__ == '__main__':
  absltest.main()
