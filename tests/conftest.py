"""Suite-wide settings: rank promotion raises, and a compilation cache.

Rank promotion is set to 'raise' once here, for every test (as equinox's
suite does): a silent broadcast of, say, `[batch]` against `[batch, 1]` is
a bug in one-job code that vmap would hide, so the library must never rely
on it.

Several tests compile the same programs again (each `run_sweep` call builds
its executables anew, and the attack tests share models and shapes). XLA's
persistent compilation cache, in a temporary folder per pytest process,
turns the second compile of the same program into a read. It holds nothing
between runs, so no test depends on what an earlier run left; child
processes that tests start (which count their own compiles) do not use it.
"""

import shutil
import tempfile

import jax

_CACHE_DIR = None


def pytest_configure(config):
  del config
  global _CACHE_DIR
  _CACHE_DIR = tempfile.mkdtemp(prefix='dlg_jax_xla_cache_')
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
  # Cache only what took a while to compile; small programs are quicker to
  # compile again than to write and read.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def pytest_unconfigure(config):
  del config
  if _CACHE_DIR:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
