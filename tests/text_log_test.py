"""Tests of the DLG paper's text log, dlg_jax/text/log.py."""

from absl.testing import absltest

from dlg_jax.text import log


class LogTest(absltest.TestCase):

  def test_format_log(self):
    lines = log.format_log([0, 10], ['a b', 'c d'], 'C D')
    self.assertEqual(lines, ['[iter=0] a b', '[iter=10] c d',
                             '[Ground Truth] C D'])

  def test_lines_match_format_log(self):
    self.assertEqual([log.log_line(5, 'x'), log.ground_truth_line('X')],
                     log.format_log([5], ['x'], 'X'))

  def test_steps_and_texts_must_pair(self):
    with self.assertRaisesRegex(ValueError, '2 steps but 1 texts'):
      log.format_log([0, 10], ['a b'], 'C D')


if __name__ == '__main__':
  absltest.main()
