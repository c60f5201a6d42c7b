"""Tests of the resumable defense sweep (dlg_jax/sweep.py, experiments/sweep.py)."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from configs import defenses as defenses_config
from dlg_jax import attack as attack_lib
from dlg_jax import models
from dlg_jax import sweep
from experiments import sweep as sweep_launcher

jax.config.update('jax_numpy_rank_promotion', 'raise')


def setUpModule():
  # Compile time dominates these tests; see attack_test.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


class _Interrupt(Exception):
  pass


def _tiny():
  """A LeNet on 12x12 images, Adam for a few steps, 2 random targets."""
  model = models.get_model('lenet', num_classes=10)
  params = models.init_params(model, jax.random.key(0), (12, 12, 3))
  attack = attack_lib.Attack(
      apply_fn=models.make_apply_fn(model), image_shape=(12, 12, 3),
      num_classes=10, optimizer='adam', learning_rate=0.05, num_steps=4,
      snapshot_steps=(0,))
  x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 12, 12, 3)))
  y = np.array([3, 7])
  return attack, params, x, y


# 8 gaussian jobs in chunks of 3 (the last padded) and 4 int8 jobs: 5 chunks.
_SPEC = sweep.SweepSpec(defenses=(('gaussian', (1e-4, 1e-1)),
                                  ('int8', (0.0,))),
                        restarts=2, seed=3, jobs_per_chunk=3)


class SweepTest(absltest.TestCase):

  def test_chunks_pad_and_never_span_defenses(self):
    plan = sweep.chunks(_SPEC, num_targets=2)
    self.assertEqual([(c.defense, c.start, c.stop) for c in plan],
                     [(0, 0, 3), (0, 3, 6), (0, 6, 8), (1, 8, 11),
                      (1, 11, 12)])

  def test_interrupted_run_resumes_to_the_uninterrupted_result(self):
    attack, params, x, y = _tiny()
    full = sweep.run_sweep(attack, params, x, y, _SPEC)
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

    with self.assertRaises(_Interrupt):
      sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                      on_chunk=crash_after_two)
    ran = []
    resumed = sweep.run_sweep(attack, params, x, y, _SPEC, workdir=workdir,
                              on_chunk=lambda *a: ran.append(a[0]))
    self.assertEqual(resumed.resumed_chunks, 2)
    self.assertEqual(ran, [3, 4, 5])  # Only the unfinished chunks run.
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

  def test_workdir_of_another_spec_is_refused(self):
    attack, params, x, y = _tiny()
    spec = sweep.SweepSpec(defenses=(('float16', (0.0,)),), jobs_per_chunk=2)
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    sweep.run_sweep(attack, params, x, y, spec, workdir=workdir)
    other = sweep.SweepSpec(defenses=(('float16', (0.0,)),), jobs_per_chunk=2,
                            seed=1)
    with self.assertRaisesRegex(ValueError, 'different spec'):
      sweep.run_sweep(attack, params, x, y, other, workdir=workdir)
    with self.assertRaisesRegex(ValueError, 'different spec'):
      sweep.run_sweep(attack, params, x[::-1], y, spec, workdir=workdir)

  def test_restart_of_least_distance_wins(self):
    # A job's keys depend only on its indices, so restart 0 of a 3-restart
    # sweep is the 1-restart sweep's only job.
    attack, params, x, y = _tiny()
    one = sweep.run_sweep(attack, params, x, y, sweep.SweepSpec(
        defenses=(('gaussian', (1e-3,)),), restarts=1, jobs_per_chunk=6))
    three = sweep.run_sweep(attack, params, x, y, sweep.SweepSpec(
        defenses=(('gaussian', (1e-3,)),), restarts=3, jobs_per_chunk=6))
    self.assertTrue(np.all(three.distance <= one.distance))
    np.testing.assert_array_equal(
        three.distance[three.restart == 0], one.distance[three.restart == 0])
    self.assertTrue(np.all(three.restart >= 0) and np.all(three.restart < 3))

  def test_bad_spec_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'Unknown defense'):
      sweep.SweepSpec(defenses=(('blur', (1.0,)),))
    with self.assertRaisesRegex(ValueError, r'\[0, 1\)'):
      sweep.SweepSpec(defenses=(('prune_layer', (1.0,)),))


def _quick_config(**sweep_overrides):
  config = defenses_config.get_config('quick')
  config.data.count = 1
  config.attack.num_steps = 3
  config.attack.optimizer = 'adam'
  config.sweep.defenses = ('gaussian', 'float16')
  config.sweep.strengths.gaussian = (1e-4, 1e-1)
  config.sweep.jobs_per_chunk = 2
  for key, value in sweep_overrides.items():
    config.sweep[key] = value
  return config


class LauncherTest(parameterized.TestCase):

  def test_writes_outputs(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    results = sweep_launcher.run(_quick_config(), workdir)
    records = results['records']
    self.assertLen(records, 3)  # gaussian x 2 + float16, 1 image
    for r in records:
      for key in ('defense', 'strength', 'index', 'mse', 'psnr', 'ssim',
                  'label_correct', 'seconds'):
        self.assertIn(key, r)
    self.assertEqual([(r['defense'], r['strength']) for r in records],
                     [('gaussian', 1e-4), ('gaussian', 0.1), ('float16', 0.0)])
    with open(os.path.join(workdir, 'results.json')) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(results)))
    for name in ('table.md', 'table.csv', 'psnr_vs_strength.png',
                 'grid_gaussian.png', 'grid_float16.png', 'config.json'):
      self.assertGreater(os.path.getsize(os.path.join(workdir, name)), 0,
                         msg=name)
    with open(os.path.join(workdir, 'table.csv')) as f:
      self.assertLen(f.read().strip().splitlines(), 4)

  @parameterized.named_parameters(
      ('unknown_defense', {'defenses': ('gaussian', 'blur')},
       'config.sweep.defenses'),
      ('negative_strength', {'strengths.gaussian': (-1e-3,)},
       'config.sweep.strengths.gaussian'),
      ('pruning_of_one', {'defenses': ('prune_layer',),
                          'strengths.prune_layer': (0.5, 1.0)},
       r'config.sweep.strengths.prune_layer.*\[0, 1\)'),
      ('no_jobs_per_chunk', {'jobs_per_chunk': 0},
       'config.sweep.jobs_per_chunk'),
  )
  def test_bad_config_names_the_key(self, overrides, message):
    config = _quick_config()
    for key, value in overrides.items():
      if key.startswith('strengths.'):
        config.sweep.strengths[key.split('.', 1)[1]] = value
      else:
        config.sweep[key] = value
    with self.assertRaisesRegex(ValueError, message):
      sweep_launcher.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))

  def test_batch_above_one_names_the_key(self):
    config = _quick_config()
    config.data.batch_size = 2
    config.data.count = 2
    with self.assertRaisesRegex(ValueError, 'config.data.batch_size'):
      sweep_launcher.run(
          config, self.enter_context(tempfile.TemporaryDirectory()))


if __name__ == '__main__':
  absltest.main()
