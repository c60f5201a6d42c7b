"""The victim study, dlg_jax/pipelines/victim_study.py, end to end.

The `:quick` study with its LeNet alone (1 victim x 2 weights x 2 attacks,
the BatchNorm prior's cells n/a; one image, 20 steps) is run once for the
module; the tests read its outputs, rerun it (which must compute nothing)
and refuse bad configs before any work. The whole `:quick` study (with the
BatchNorm ConvNet) compiles three times as much, over a minute on 2 cores;
its cells of the ConvNet are checked here as configs.
"""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from configs import ig as ig_config
from configs import mnist as mnist_config
from configs import victim_study as study_config
from dlg_jax.core import errors
from dlg_jax.pipelines import attack as attack_pipeline
from dlg_jax.pipelines import train as train_pipeline
from dlg_jax.pipelines import victim_study

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CELLS = [('lenet', w, a) for w in ('init', 'trained')
          for a in ('dlg', 'ig_bn')]
_NA = {('lenet', 'init', 'ig_bn'), ('lenet', 'trained', 'ig_bn')}


def setUpModule():
  # Small models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


def _outputs(workdir):
  """`{path: mtime}` of every file a study wrote below `workdir`."""
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(workdir) for f in files}


def _config():
  config = study_config.get_config('quick')
  config.study.victims = ('lenet',)
  return config


def _key(row):
  return row['victim'], row['weights'], row['attack']


class QuickStudyTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.workdir = os.path.join(cls.tmp.name, 'study')
    cls.rows = victim_study.run(_config(), cls.workdir)
    with open(os.path.join(cls.workdir, 'study.json')) as f:
      cls.study = json.load(f)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_every_cell_is_a_row_in_order(self):
    self.assertEqual([_key(r) for r in self.study['cells']], _CELLS)
    self.assertEqual(self.study['cells'], json.loads(json.dumps(self.rows)))

  def test_run_cells_have_finite_metrics_and_reconstructions(self):
    for row in self.study['cells']:
      if _key(row) in _NA:
        continue
      with self.subTest(cell=_key(row)):
        self.assertEqual(row['status'], 'done')
        self.assertEqual((row['images'], row['steps']), (1, 20))
        for key in ('mean_psnr', 'mean_ssim', 'mean_lpips',
                    'seconds_per_image'):
          self.assertTrue(np.isfinite(row[key]), key)
        self.assertBetween(row['label_accuracy'], 0.0, 1.0)
        x = np.load(os.path.join(self.workdir, *_key(row),
                                 victim_study.RECONSTRUCTIONS))['x']
        self.assertEqual(x.shape, (1, 28, 28, 1))
        self.assertTrue(np.all((x >= 0) & (x <= 1)))

  def test_bn_prior_cells_are_na_without_batch_norm(self):
    na = {_key(r): r for r in self.study['cells'] if r['status'] == 'n/a'}
    self.assertEqual(set(na), _NA)
    for key, row in na.items():
      self.assertNotIn('mean_psnr', row)
      self.assertIn('no BatchNorm', row['reason'])
      self.assertFalse(os.path.exists(os.path.join(self.workdir, *key)))
    with open(os.path.join(self.workdir, 'study.md')) as f:
      table = f.read()
    self.assertIn('| lenet | init | ig_bn | 0.', table)
    self.assertIn('- lenet / trained / ig_bn: ig_bn matches BatchNorm', table)
    self.assertLen([l for l in table.splitlines() if l.startswith('| ')],
                   1 + len(_CELLS))
    self.assertGreater(
        os.path.getsize(os.path.join(self.workdir, 'study.png')), 1000)

  def test_cells_attack_their_weights(self):
    for weights in ('init', 'trained'):
      with open(os.path.join(self.workdir, 'lenet', weights, 'dlg',
                             'config.json')) as f:
        cfg = json.load(f)
      self.assertEqual((cfg['model']['name'], cfg['model']['activation'],
                        cfg['attack']['optimizer']),
                       ('lenet', 'sigmoid', 'lbfgs'))
      self.assertEqual(cfg['model']['checkpoint'], os.path.abspath(
          victim_study.checkpoint_workdir(self.workdir, 'lenet'))
                       if weights == 'trained' else None)

  def test_checkpoint_accuracy_is_recorded(self):
    folder = victim_study.checkpoint_workdir(self.workdir, 'lenet')
    with open(os.path.join(folder, 'results.json')) as f:
      trained = json.load(f)
    checkpoint = self.study['checkpoints']['lenet']
    self.assertEqual(list(self.study['checkpoints']), ['lenet'])
    self.assertEqual(checkpoint['steps'], 30)
    self.assertEqual(checkpoint['test_accuracy'], trained['test_accuracy'])
    self.assertNotEqual(trained['test_accuracy'],
                        trained['initial_test_accuracy'])
    for row in self.study['cells']:
      self.assertEqual(row['test_accuracy'], trained[
          'test_accuracy' if row['weights'] == 'trained'
          else 'initial_test_accuracy'])

  def test_rerun_reads_every_cell_back(self):
    before = _outputs(self.workdir)
    boom = AssertionError('recomputed')
    with mock.patch.object(attack_pipeline, 'reconstruct', side_effect=boom), \
        mock.patch.object(train_pipeline, 'fit', side_effect=boom):
      rows = victim_study.run(_config(), self.workdir)
    self.assertEqual(json.loads(json.dumps(rows)), self.study['cells'])
    after = _outputs(self.workdir)
    study = {os.path.join(self.workdir, f)
             for f in ('study.json', 'study.md', 'study.png')}
    self.assertEqual({p: t for p, t in after.items() if p not in study},
                     {p: t for p, t in before.items() if p not in study})

  def test_a_finished_cell_of_other_settings_is_refused(self):
    config = _config()
    config.attacks.dlg.num_steps = 21
    before = _outputs(self.workdir)
    with self.assertRaisesRegex(
        errors.ConfigError,
        r'^--workdir: .*lenet/init/dlg holds a run of other settings '
        r'\(its config\.json differs in attack\)'):
      victim_study.run(config, self.workdir)
    self.assertEqual(_outputs(self.workdir), before)


class ConfigTest(parameterized.TestCase):

  def test_attacks_are_the_source_configs(self):
    config = study_config.get_config()
    self.assertEqual(config.attacks.dlg.to_dict(),
                     mnist_config.get_config().attack.to_dict())
    # The IG recipe as the study measured it: before its ReLU smoothing.
    ig = {**ig_config.get_config().attack.to_dict(), 'num_steps': 2000,
          'restarts': 2, 'relu_smoothing': ()}
    self.assertEqual(config.attacks.ig.to_dict(), ig)
    self.assertEqual(config.attacks.ig_bn.to_dict(),
                     {**ig, 'bn_weight': 0.01, 'feature_weight': 0.0})
    self.assertEqual(config.attacks.ig_bn.to_dict(),
                     ig_config.get_config('bn').attack.to_dict())
    self.assertEqual(len(victim_study.cells(config)), 4 * 2 * 3)

  def test_batch_norm_cells(self):
    config = study_config.get_config('quick')
    self.assertEqual(victim_study.victims_to_train(config),
                     ['lenet', 'convnet_bn'])
    cfg = victim_study.cell_config(config, 'convnet_bn', 'trained', 'ig_bn',
                                   'runs/x')
    self.assertEqual((cfg.model.name, cfg.model.norm, cfg.attack.bn_weight),
                     ('convnet', 'batch', 0.01))
    self.assertEqual(cfg.model.checkpoint,
                     os.path.abspath('runs/x/checkpoints/convnet_bn'))
    self.assertIsNone(victim_study.not_applicable(config, 'convnet_bn',
                                                  'ig_bn'))
    self.assertIsNotNone(victim_study.not_applicable(config, 'lenet',
                                                     'ig_bn'))
    # Only the BatchNorm prior's cells are n/a: nothing to train for it.
    config.study.attacks = ('ig_bn',)
    self.assertEqual(victim_study.victims_to_train(config), ['convnet_bn'])

  def test_resnet18_steps_are_capped(self):
    config = study_config.get_config()
    cap = config.study.max_steps.resnet18
    for attack in config.study.attacks:
      steps = config.attacks[attack].num_steps
      self.assertEqual(victim_study.cell_config(
          config, 'resnet18', 'init', attack, 'w').attack.num_steps,
                       min(steps, cap))
      self.assertEqual(victim_study.cell_config(
          config, 'convnet', 'init', attack, 'w').attack.num_steps, steps)

  def test_full_study_passes_its_checks_without_writing(self):
    workdir = os.path.join(self.enter_context(
        tempfile.TemporaryDirectory()), 'study')
    ds = victim_study.check_study(study_config.get_config(), workdir)
    self.assertEqual(ds.x.shape[1:], (28, 28, 1))
    self.assertFalse(os.path.exists(workdir))

  @parameterized.named_parameters(
      ('victim', 'victims', ('lenet', 'vgg'),
       r"config\.study\.victims: unknown victim 'vgg'; choose from "
       r"\['convnet', 'convnet_bn', 'lenet', 'resnet18'\]"),
      ('weights', 'weights', ('pretrained',),
       r"config\.study\.weights: unknown weights 'pretrained'; choose from "
       r"\['init', 'trained'\]"),
      ('attack', 'attacks', ('dlg', 'gi'),
       r"config\.study\.attacks: unknown attack 'gi'; choose from "
       r"\['dlg', 'ig', 'ig_bn'\]"),
      ('empty', 'attacks', (), r'config\.study\.attacks is empty'),
      ('twice', 'victims', ('lenet', 'lenet'),
       r'config\.study\.victims names one twice'),
  )
  def test_bad_names_are_refused_before_any_work(self, key, names, message):
    config = study_config.get_config('quick')
    config.study[key] = names
    workdir = os.path.join(self.enter_context(
        tempfile.TemporaryDirectory()), 'new', 'study')
    with mock.patch.object(attack_pipeline, 'prepare') as prepare:
      with self.assertRaisesRegex(errors.ConfigError, '^' + message):
        victim_study.run(config, workdir)
    prepare.assert_not_called()
    self.assertFalse(os.path.exists(os.path.dirname(workdir)))

  @parameterized.named_parameters(
      ('max_steps', lambda c: c.study.max_steps.update({'vgg': 10}),
       r"config\.study\.max_steps: unknown victim 'vgg'"),
      ('attack_value', lambda c: setattr(c.attacks.ig_bn, 'optimizer', 'sgd'),
       r'config\.attacks\.ig_bn\.optimizer'),
      ('count_not_held_out', lambda c: setattr(c.data, 'num_test', 0),
       r'config\.data\.num_test must be an int in \[config\.data\.count'),
      ('train', lambda c: setattr(c.train, 'steps', 0),
       r'config\.train\.steps must be an int >= 1'),
  )
  def test_bad_values_name_the_key(self, change, message):
    config = study_config.get_config('quick')
    change(config)
    workdir = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'study')
    with self.assertRaisesRegex(errors.ConfigError, '^' + message):
      victim_study.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_command_line_bad_name_is_one_line(self):
    workdir = os.path.join(
        self.enter_context(tempfile.TemporaryDirectory()), 'study')
    proc = subprocess.run(
        [sys.executable, '-m', 'experiments.victim_study',
         '--config=configs/victim_study.py:quick', f'--workdir={workdir}',
         "--config.study.victims=('lenet', 'vgg')"],
        cwd=_REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    last = [l for l in proc.stderr.splitlines() if l.strip()][-1]
    self.assertRegex(last, r"error: config\.study\.victims: unknown victim "
                     r"'vgg'; choose from")
    self.assertFalse(os.path.exists(workdir))


if __name__ == '__main__':
  absltest.main()
