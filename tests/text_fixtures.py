"""What the text tests share: a tiny BERT, `[MASK]`'s id, a bundled sentence.

Tiny models compile slowly relative to their run time, so the text test
modules switch XLA's optimisations off for their duration
(`setUpModule = text_fixtures.set_up_module`, likewise tear down).
"""

import jax

from dlg_jax.text import bert

TINY = bert.get_config('tiny')
MASK = 103
SENTENCE = 'He played my brother in Mercury Fur.'  # bundled WikiText


def set_up_module():
  jax.config.update('jax_disable_most_optimizations', True)


def tear_down_module():
  jax.config.update('jax_disable_most_optimizations', False)
