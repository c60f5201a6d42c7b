"""The README's library example runs as printed (with fewer attack steps)."""

import contextlib
import io
import os
import re

from absl.testing import absltest
import jax

from dlg_jax.vision import attack

_README = os.path.join(os.path.dirname(__file__), os.pardir, 'README.md')


def _library_example() -> str:
  with open(_README, encoding='utf-8') as f:
    text = f.read()
  section = text[text.index('## As a library'):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


class ReadmeTest(absltest.TestCase):

  def test_library_example_runs_and_reads_the_label(self):
    reconstruct = attack.reconstruct

    def short(dlg, *args, **kwargs):
      # The example runs up to 6,000 steps (about a minute here); 150 are
      # enough to check that every name it uses exists and fits.
      return reconstruct(attack.replace(dlg, num_steps=150), *args,
                         chunk_size=150, **kwargs)

    out = io.StringIO()
    jax.config.update('jax_disable_most_optimizations', True)
    attack.reconstruct = short
    try:
      with contextlib.redirect_stdout(out):
        exec(_library_example(), {})  # pylint: disable=exec-used
    finally:
      attack.reconstruct = reconstruct
      jax.config.update('jax_disable_most_optimizations', False)
    printed = out.getvalue()
    self.assertRegex(printed, r'^PSNR [\d.]+ dB, label 49 \(true 49\)$')


if __name__ == '__main__':
  absltest.main()
