"""Tests of dlg_jax/pipelines/common.py's logging and the sweep's progress."""

import logging
import os

from absl.testing import absltest
from absl.testing import parameterized

from dlg_jax.pipelines import common
from dlg_jax.pipelines import sweep as sweep_pipeline
from dlg_jax.vision import sweep as sweep_lib


def _record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord('absl', level, pathname, 1, 'saved step %d', (3,),
                           None)


class _Collect(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.records = []

  def emit(self, record):
    self.records.append(record)


class QuietOrbaxLogsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.handler = _Collect()
    self.logger = logging.getLogger('absl')
    self.old_level = self.logger.level
    self.logger.setLevel(logging.DEBUG)
    self.logger.addHandler(self.handler)
    self.addCleanup(self.logger.removeHandler, self.handler)
    self.addCleanup(self.logger.setLevel, self.old_level)
    self.addCleanup(common.quiet_orbax_logs, verbose=True)

  def _shown(self, pathname, level):
    self.handler.records.clear()
    self.logger.handle(_record(pathname, level))
    return bool(self.handler.records)

  def test_hides_orbax_info_only(self):
    orbax = os.path.join(os.sep, 'venv', 'site-packages', 'orbax',
                         'checkpoint', 'checkpointer.py')
    ours = os.path.join(os.sep, 'repo', 'dlg_jax', 'sweep.py')
    common.quiet_orbax_logs()
    common.quiet_orbax_logs()  # Idempotent.
    self.assertFalse(self._shown(orbax, logging.INFO))
    self.assertTrue(self._shown(orbax, logging.WARNING))
    self.assertTrue(self._shown(ours, logging.INFO))
    common.quiet_orbax_logs(verbose=True)
    self.assertTrue(self._shown(orbax, logging.INFO))


class ProgressTest(absltest.TestCase):

  def test_chunk_line_names_the_defense_jobs_and_eta(self):
    spec = sweep_lib.SweepSpec(defenses=(('gaussian', (1e-3, 1e-2)),
                                         ('float16', (0.0,))))
    on_chunk = sweep_pipeline.progress_logger(spec, 6)
    with self.assertLogs('absl', level='INFO') as logs:
      on_chunk(1, 3, sweep_lib.Chunk(0, 0, 2), 2.0)
      on_chunk(3, 3, sweep_lib.Chunk(1, 4, 6), 4.0)
    first, last = logs.output
    self.assertIn('chunk 1/3 (gaussian, jobs 0-1 of 6)', first)
    self.assertIn('checkpointed: 2.0 s; ETA 4 s', first)
    self.assertIn('chunk 3/3 (float16, jobs 4-5 of 6)', last)
    self.assertIn('ETA 0 s', last)


if __name__ == '__main__':
  absltest.main()
