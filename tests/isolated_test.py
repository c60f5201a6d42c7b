"""Tests of the crash isolation that the XLA-heavy tests run under."""

from absl.testing import absltest

from tests import isolated


class IsolatedTest(absltest.TestCase):

  def test_returns_what_the_child_reports(self):
    self.assertEqual(isolated.run('report({"a": [1, 2]})'), {'a': [1, 2]})

  def test_a_segfault_fails_one_test_and_names_the_signal(self):
    # A real SIGSEGV in the child (a read of address 0), as XLA's was.
    with self.assertRaisesRegex(isolated.CrashedError, 'SIGSEGV'):
      isolated.run('import ctypes\nctypes.string_at(0)')

  def test_an_error_in_the_child_is_reported_with_its_message(self):
    with self.assertRaisesRegex(isolated.CrashedError, r'(?s)exited 1.*boom'):
      isolated.run('raise RuntimeError("boom")')


if __name__ == '__main__':
  absltest.main()
