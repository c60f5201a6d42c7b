"""dlg_jax.core.errors: user errors named by their flag or key."""

from absl.testing import absltest

from dlg_jax.core import errors


class TargetCountsTest(absltest.TestCase):

  def test_counts_are_ints_and_bad_ones_name_the_flag(self):
    self.assertEqual(errors.target_counts('--parallel', ['1', '8', 64]),
                     [1, 8, 64])
    self.assertEqual(errors.target_counts('--parallel', []), [])
    for bad in (['1', 'x'], ['0'], ['-2'], ['1.5']):
      with self.subTest(bad=bad):
        with self.assertRaisesRegex(
            errors.ConfigError,
            r"^--parallel must be target counts >= 1, got \["):
          errors.target_counts('--parallel', bad)


if __name__ == '__main__':
  absltest.main()
