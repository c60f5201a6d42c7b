"""experiments/step_ab.py and its pipeline: the step of two checkouts, interleaved.

Its timings are not asserted (speed is measured, not tested); what is: bad
flags are refused in one line before any work, the summary's arithmetic,
and that a run against a checkout writes a row with a timing per round
from each side.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from dlg_jax.core import errors
from dlg_jax.pipelines import step_ab

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags, env=None):
  return subprocess.run(
      [sys.executable, '-m', 'experiments.step_ab', *flags], cwd=_REPO,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


class CheckArgsTest(absltest.TestCase):

  def test_bad_arguments_name_their_flag(self):
    ok = dict(baseline=_REPO, targets=['1', '8'], rounds=4, steps=10)
    self.assertEqual(step_ab.check_args(**ok), [1, 8])
    for bad, flag in ((dict(baseline='/nonexistent'), '--baseline'),
                      (dict(baseline=tempfile.gettempdir()), '--baseline'),
                      (dict(targets=['1', 'x']), '--targets'),
                      (dict(targets=['0']), '--targets'),
                      (dict(targets=[]), '--targets'),
                      (dict(rounds=1), '--rounds'),
                      (dict(steps=0), '--steps')):
      with self.subTest(flag=flag, bad=bad):
        with self.assertRaisesRegex(errors.ConfigError, '^' + flag):
          step_ab.check_args(**{**ok, **bad})

  def test_summary_pairs_the_rounds(self):
    row = step_ab.summarise([1.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    self.assertEqual(row['current_best_ms'], 1.0)
    self.assertEqual(row['baseline_median_ms'], 2.0)
    self.assertEqual(row['ratio_of_bests'], 0.5)
    self.assertEqual(row['median_paired_ratio'], 1.0)


class LauncherTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.tmp = tmp.name

  def test_a_bad_baseline_is_one_line_and_writes_nothing(self):
    out = os.path.join(self.tmp, 'ab.json')
    proc = _run('--baseline=/nonexistent', f'--out={out}')
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    last = [l for l in proc.stderr.splitlines() if l.strip()][-1]
    self.assertRegex(last, r'--baseline must be the root of a dlg_jax '
                     r"checkout .*'/nonexistent'")
    self.assertFalse(os.path.exists(out))

  def test_against_this_checkout_writes_each_sides_rounds(self):
    out = os.path.join(self.tmp, 'ab.json')
    proc = _run(f'--baseline={_REPO}', '--targets=2', '--rounds=3',
                '--steps=2', f'--out={out}',
                env={'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'})
    self.assertEqual(proc.returncode, 0, proc.stderr)
    with open(out) as f:
      results = json.load(f)
    self.assertEqual(results['baseline'], _REPO)
    [row] = results['results']
    self.assertEqual(row['targets'], 2)
    self.assertLen(row['current_ms'], 3)
    self.assertLen(row['baseline_ms'], 3)
    self.assertGreater(row['ratio_of_bests'], 0)
    self.assertIn('2 targets: ms per step per target', proc.stdout)


if __name__ == '__main__':
  absltest.main()
