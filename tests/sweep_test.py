"""Tests of the resumable defense sweep (dlg_jax/vision/sweep.py, dlg_jax/pipelines/sweep.py)."""

import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from configs import defenses as defenses_config
from dlg_jax.pipelines import sweep as sweep_pipeline
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import models
from dlg_jax.vision import sweep
from tests import parallel_worker


def setUpModule():
  # Compile time dominates these tests; see attack_test.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


class _Interrupt(Exception):
  pass


def _tiny():
  """A small MLP on 12x12 images, Adam for a few steps, 2 random targets."""
  return parallel_worker.tiny_attack(2)


# 8 gaussian jobs in chunks of 3 (the last padded) and 4 int8 jobs: 5 chunks.
_SPEC = sweep.SweepSpec(defenses=(('gaussian', (1e-4, 1e-1)),
                                  ('int8', (0.0,))),
                        restarts=2, seed=3)
_CHUNK = 3


class SweepTest(absltest.TestCase):

  def test_chunks_pad_and_never_span_defenses(self):
    plan = sweep.chunks(_SPEC, num_images=2, chunk_size=_CHUNK)
    self.assertEqual([(c.defense, c.start, c.stop) for c in plan],
                     [(0, 0, 3), (0, 3, 6), (0, 6, 8), (1, 8, 11),
                      (1, 11, 12)])
    # Resuming after job 7 (any chunk size) starts at job 7.
    plan = sweep.chunks(_SPEC, num_images=2, chunk_size=4, first_job=7)
    self.assertEqual([(c.defense, c.start, c.stop) for c in plan],
                     [(0, 7, 8), (1, 8, 12)])

  def test_job_indices_count_restarts_fastest(self):
    spec = sweep.SweepSpec(defenses=(('gaussian', (1e-4, 1e-1)),
                                     ('int8', (0.0,))),
                           restarts=2, num_targets=3)
    jobs = sweep.job_indices(spec, num_images=2, start=0, stop=18)
    np.testing.assert_array_equal(jobs['defense'], [0] * 12 + [1] * 6)
    np.testing.assert_array_equal(jobs['strength_index'],
                                  [0] * 6 + [1] * 6 + [0] * 6)
    np.testing.assert_array_equal(jobs['target'][:6], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(jobs['restart'][:4], [0, 1, 0, 1])
    # Three targets cycle through two images.
    np.testing.assert_array_equal(jobs['image'][:6], [0, 0, 1, 1, 0, 0])
    np.testing.assert_allclose(jobs['strength'][[0, 6, 12]],
                               [1e-4, 1e-1, 0.0])
    part = sweep.job_indices(spec, num_images=2, start=5, stop=14)
    for k, v in part.items():
      np.testing.assert_array_equal(v, jobs[k][5:14], err_msg=k)

  def test_interrupted_run_resumes_to_the_uninterrupted_result(self):
    attack, params, x, y = _tiny()
    full = sweep.run_sweep(attack, params, x, y, _SPEC,
                           jobs_per_device=_CHUNK)
    self.assertEqual(full.psnr.shape, (6,))  # 3 strengths x 2 targets
    self.assertEqual(list(full.defense),
                     ['gaussian'] * 4 + ['int8'] * 2)
    np.testing.assert_array_equal(full.target, [0, 1, 0, 1, 0, 1])
    self.assertTrue(np.all(np.isfinite(full.psnr)))
    self.assertTrue(np.all(full.seconds > 0))

    workdir = self.enter_context(tempfile.TemporaryDirectory())

    def crash_after_two(done, total, chunk, seconds):
      del total, chunk, seconds
      if done == 2:
        raise _Interrupt()

    # The first two chunks are stored as before LPIPS (no 'lpips' metric):
    # such a workdir resumes, its old jobs' LPIPS NaN.
    old_metrics = tuple(k for k in sweep._METRICS  # pylint: disable=protected-access
                        if k != 'lpips')
    with self.assertRaises(_Interrupt), mock.patch.object(
        sweep, '_METRICS', old_metrics):
      sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                      jobs_per_device=_CHUNK, on_chunk=crash_after_two)
    ran = []
    resumed = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                              jobs_per_device=_CHUNK,
                              on_chunk=lambda *a: ran.append(a[0]),
                              lpips=True)
    self.assertEqual(resumed.resumed_chunks, 2)
    self.assertEqual(ran, [3, 4, 5])  # Only the unfinished chunks run.
    self.assertTrue(np.all(np.isnan(full.lpips)))  # run without lpips
    # Jobs 0-5 (the old chunks) are records 0-2, 2 restarts each; the
    # rest were scored, each record its winning restart's LPIPS.
    np.testing.assert_array_equal(np.isnan(resumed.lpips),
                                  [True, True, True, False, False, False])
    np.testing.assert_array_less(0.0, resumed.lpips[3:])
    for field in ('x', 'distance', 'restart', 'mse', 'psnr', 'ssim',
                  'label_correct', 'strength', 'target'):
      np.testing.assert_array_equal(getattr(resumed, field),
                                    getattr(full, field), err_msg=field)
    np.testing.assert_array_equal(resumed.defense, full.defense)

    # A finished workdir reloads everything and runs nothing.
    again = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                            on_chunk=lambda *a: self.fail('ran a chunk'))
    self.assertEqual(again.resumed_chunks, 5)
    np.testing.assert_array_equal(again.psnr, full.psnr)

  def test_resume_with_another_chunk_size(self):
    # Chunking is not part of the results: a run cut after 3 jobs goes on
    # in chunks of 5 to the same records.
    attack, params, x, y = _tiny()
    full = sweep.run_sweep(attack, params, x, y, _SPEC,
                           jobs_per_device=_CHUNK)
    workdir = self.enter_context(tempfile.TemporaryDirectory())

    def crash(done, *unused):
      if done == 1:
        raise _Interrupt()

    with self.assertRaises(_Interrupt):
      sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                      jobs_per_device=_CHUNK, on_chunk=crash)
    chunks = []
    resumed = sweep.run_sweep(
        attack, params, x, y, _SPEC, workdir=workdir, jobs_per_device=5,
        on_chunk=lambda done, total, chunk, s: chunks.append(chunk[1:]))
    self.assertEqual(chunks, [(3, 8), (8, 12)])
    np.testing.assert_allclose(resumed.psnr, full.psnr, rtol=1e-5)
    np.testing.assert_allclose(resumed.x, full.x, atol=1e-5)

  def test_jobs_per_device_from_memory_gives_the_same_records(self):
    attack, params, x, y = _tiny()
    fixed = sweep.run_sweep(attack, params, x, y, _SPEC,
                            jobs_per_device=_CHUNK)
    auto = sweep.run_sweep(attack, params, x, y, _SPEC)
    # Plenty of host memory for 8 tiny jobs: one chunk per defense.
    self.assertEqual(auto.jobs_per_device, 8)
    np.testing.assert_allclose(auto.psnr, fixed.psnr, rtol=1e-5)

  def test_keep_images_and_cyclic_targets(self):
    attack, params, x, y = _tiny()
    spec = sweep.SweepSpec(defenses=(('float16', (0.0,)),), num_targets=5)
    result = sweep.run_sweep(attack, params, x, y, spec, jobs_per_device=2,
                             keep_images=2)
    np.testing.assert_array_equal(result.target, np.arange(5))
    np.testing.assert_array_equal(result.image, [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(result.x_record, [0, 1])
    self.assertEqual(result.x.shape, (2, 1, 12, 12, 3))
    # Targets 0 and 2 attack the same image with their own starts.
    self.assertNotEqual(result.distance[0], result.distance[2])

  def test_workdir_of_another_spec_is_refused(self):
    attack, params, x, y = _tiny()
    spec = sweep.SweepSpec(defenses=(('float16', (0.0,)),))
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    sweep.run_sweep(attack, params, x, y, spec, workdir=workdir,
                    jobs_per_device=2)
    other = sweep.SweepSpec(defenses=(('float16', (0.0,)),), seed=1)
    with self.assertRaisesRegex(ValueError, 'different spec'):
      sweep.run_sweep(attack, params, x, y, other, workdir=workdir)
    with self.assertRaisesRegex(ValueError, 'different spec'):
      sweep.run_sweep(attack, params, x[::-1], y, spec, workdir=workdir)

  def test_restart_of_least_distance_wins(self):
    # A job's keys depend only on its indices, so restart 0 of a 3-restart
    # sweep is the 1-restart sweep's only job.
    attack, params, x, y = _tiny()
    one = sweep.run_sweep(attack, params, x, y, sweep.SweepSpec(
        defenses=(('gaussian', (1e-3,)),), restarts=1), jobs_per_device=6)
    three = sweep.run_sweep(attack, params, x, y, sweep.SweepSpec(
        defenses=(('gaussian', (1e-3,)),), restarts=3), jobs_per_device=6)
    self.assertTrue(np.all(three.distance <= one.distance))
    # Equal up to float rounding: the two run in chunks of other sizes.
    np.testing.assert_allclose(
        three.distance[three.restart == 0], one.distance[three.restart == 0],
        rtol=1e-6)
    self.assertTrue(np.all(three.restart >= 0) and np.all(three.restart < 3))

  def test_defense_aware_attacker_is_part_of_the_spec(self):
    attack, params, x, y = _tiny()
    spec = sweep.SweepSpec(defenses=(('prune_layer', (0.7,)),))
    aware = sweep.SweepSpec(defenses=(('prune_layer', (0.7,)),),
                            defense_aware=True)
    plain = sweep.run_sweep(attack, params, x, y, spec, jobs_per_device=2)
    knows = sweep.run_sweep(attack, params, x, y, aware, jobs_per_device=2)
    # Matching only the surviving 30% changes the distance the attack sees.
    self.assertTrue(np.all(knows.distance < plain.distance))
    self.assertNotEqual(sweep.fingerprint(attack, params, x, y, spec),
                        sweep.fingerprint(attack, params, x, y, aware))

  def test_bad_spec_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'Unknown defense'):
      sweep.SweepSpec(defenses=(('blur', (1.0,)),))
    with self.assertRaisesRegex(ValueError, r'\[0, 1\)'):
      sweep.SweepSpec(defenses=(('prune_layer', (1.0,)),))
    with self.assertRaisesRegex(ValueError, 'num_targets'):
      sweep.SweepSpec(defenses=(('float16', (0.0,)),), num_targets=0)
    attack, params, x, y = _tiny()
    spec = sweep.SweepSpec(defenses=(('float16', (0.0,)),))
    with self.assertRaisesRegex(ValueError, 'jobs_per_device'):
      sweep.run_sweep(attack, params, x, y, spec, jobs_per_device=0)
    with self.assertRaisesRegex(ValueError, r'x must be \[n, 12, 12, 3\]'):
      sweep.run_sweep(attack, params, x[..., :1], y, spec)


def _quick_config(**sweep_overrides):
  config = defenses_config.get_config('quick')
  config.data.count = 1
  config.attack.num_steps = 3
  config.attack.optimizer = 'adam'
  config.sweep.defenses = ('gaussian', 'float16')
  config.sweep.strengths.gaussian = (1e-4, 1e-1)
  config.sweep.jobs_per_device = 2
  config.utility.steps = 0
  for key, value in sweep_overrides.items():
    config.sweep[key] = value
  return config


class LauncherTest(parameterized.TestCase):

  def test_writes_outputs(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    results = sweep_pipeline.run(_quick_config(), workdir)
    records = results['records']
    self.assertLen(records, 3)  # gaussian x 2 + float16, 1 image
    for r in records:
      for key in ('defense', 'strength', 'index', 'mse', 'psnr', 'ssim',
                  'lpips', 'label_correct', 'seconds'):
        self.assertIn(key, r)
      self.assertIsInstance(r['lpips'], float)
      self.assertGreaterEqual(r['lpips'], 0.0)
    self.assertEqual([(r['defense'], r['strength']) for r in records],
                     [('gaussian', 1e-4), ('gaussian', 0.1), ('float16', 0.0)])
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    for name in ('table.md', 'table.csv', 'psnr_vs_strength.png',
                 'grid_gaussian.png', 'grid_float16.png', 'config.json'):
      self.assertGreater(os.path.getsize(os.path.join(workdir, name)), 0,
                         msg=name)
    with open(os.path.join(workdir, 'table.csv')) as f:
      lines = f.read().strip().splitlines()
    self.assertLen(lines, 4)
    self.assertTrue(lines[0].endswith(',accuracy,mean_lpips'), lines[0])
    self.assertIsNone(results['summary']['utility'])

  def test_utility_beside_the_leak(self):
    config = _quick_config()
    config.sweep.defenses = ('gaussian',)
    config.sweep.strengths.gaussian = (1e-4, 1e1)
    config.utility.steps = 30
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    results = sweep_pipeline.run(config, workdir)
    rows = results['summary']['by_defense_and_strength']
    accuracy = {r['strength']: r['accuracy'] for r in rows}
    baseline = results['summary']['utility']['baseline_accuracy']
    # Variance 10 noise drowns 30 SGD steps; 1e-4 does not.
    self.assertGreater(baseline, 0.5)
    self.assertGreater(accuracy[1e-4], 0.5)
    self.assertLess(accuracy[10.0], 0.3)
    with open(os.path.join(workdir, 'table.md')) as f:
      table = f.read()
    self.assertIn('model accuracy under it', table)
    self.assertIn('mean LPIPS', table)

  @parameterized.named_parameters(
      ('unknown_defense', {'defenses': ('gaussian', 'blur')},
       'config.sweep.defenses'),
      ('negative_strength', {'strengths.gaussian': (-1e-3,)},
       'config.sweep.strengths.gaussian'),
      ('pruning_of_one', {'defenses': ('prune_layer',),
                          'strengths.prune_layer': (0.5, 1.0)},
       r'config.sweep.strengths.prune_layer.*\[0, 1\)'),
      ('negative_jobs_per_device', {'jobs_per_device': -1},
       'config.sweep.jobs_per_device'),
      ('no_targets', {'num_targets': -2}, 'config.sweep.num_targets'),
      ('negative_utility_steps', {'utility.steps': -1},
       'config.utility.steps'),
  )
  def test_bad_config_names_the_key(self, overrides, message):
    config = _quick_config()
    for key, value in overrides.items():
      if key.startswith('strengths.'):
        config.sweep.strengths[key.split('.', 1)[1]] = value
      elif key.startswith('utility.'):
        config.utility[key.split('.', 1)[1]] = value
      else:
        config.sweep[key] = value
    with self.assertRaisesRegex(ValueError, message):
      sweep_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_gaussian_prior_is_refused_by_name(self):
    config = _quick_config()
    config.attack.prior_weight = 1e-6
    with self.assertRaisesRegex(ValueError, 'config.attack.prior_weight'):
      sweep_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_batch_above_one_names_the_key(self):
    config = _quick_config()
    config.data.batch_size = 2
    config.data.count = 2
    with self.assertRaisesRegex(ValueError, 'config.data.batch_size'):
      sweep_pipeline.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))


class FingerprintTest(absltest.TestCase):

  def test_fields_added_at_their_defaults_keep_old_fingerprints(self):
    # The value at d9a3d4f, before Adam's schedule / signed / box and the
    # BatchNorm prior's weight: a workdir written then still resumes.
    atk = attack_lib.make(
        apply_fn=models.make_apply_fn(models.get_model('lenet',
                                                       num_classes=10)),
        image_shape=(8, 8, 1), num_classes=10, optimizer='adam',
        tv_weight=0.01)
    args = ({'w': np.ones(3, np.float32)}, np.zeros((1, 8, 8, 1), np.float32),
            np.zeros(1, np.int32),
            sweep.SweepSpec(defenses=(('gaussian', (0.0, 0.1)),)))
    self.assertEqual(
        sweep.fingerprint(atk, *args),
        '71fed6fbc734cff6a2498631a272653f831170e298d9879022566b4136f5ad62')
    self.assertNotEqual(
        sweep.fingerprint(attack_lib.replace(atk, signed=True), *args),
        sweep.fingerprint(atk, *args))


if __name__ == '__main__':
  absltest.main()
