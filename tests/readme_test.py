"""The README's library examples run as printed (with fewer attack steps)."""

import contextlib
import io
import os
import re

from absl.testing import absltest
import jax

from dlg_jax.vision import attack

_README = os.path.join(os.path.dirname(__file__), os.pardir, 'README.md')


def _library_examples() -> list[str]:
  with open(_README, encoding='utf-8') as f:
    text = f.read()
  start = text.index('## As a library')
  section = text[start:text.index('\n## ', start + 1)]
  return re.findall(r'```python\n(.*?)```', section, re.S)


class ReadmeTest(absltest.TestCase):

  def test_library_examples_run_and_read_the_label(self):
    reconstruct = attack.reconstruct

    def short(dlg, *args, **kwargs):
      # The example runs up to 6,000 steps (about a minute here); 150 are
      # enough to check that every name it uses exists and fits.
      return reconstruct(attack.replace(dlg, num_steps=150), *args,
                         chunk_size=150, **kwargs)

    examples = _library_examples()
    self.assertLen(examples, 2)  # the DLG LeNet, then a user's NNX model
    jax.config.update('jax_disable_most_optimizations', True)
    attack.reconstruct = short
    try:
      for example in examples:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
          exec(example, {})  # pylint: disable=exec-used
        self.assertRegex(out.getvalue(),
                         r'^PSNR [\d.]+ dB, label 49 \(true 49\)')
    finally:
      attack.reconstruct = reconstruct
      jax.config.update('jax_disable_most_optimizations', False)


if __name__ == '__main__':
  absltest.main()
