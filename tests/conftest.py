"""Suite-wide settings: rank promotion raises, and a compilation cache.

Rank promotion is set to 'raise' once here, for every test (as equinox's
suite does): a silent broadcast of, say, `[batch]` against `[batch, 1]` is
a bug in one-job code that vmap would hide, so the library must never rely
on it.

Several tests compile the same programs again (tests in different modules
share models and shapes, and compile time dominates this suite on a 2-core
CPU). XLA's persistent compilation cache turns the second compile of the
same program into a read. One temporary folder serves the whole run: the
pytest process makes it, and pytest-xdist's workers (which inherit its
environment) share it, so a program one worker compiled is read by the
other. It holds nothing between runs, so no test depends on what an
earlier run left; child processes that tests start (which count their own
compiles) do not use it.
"""

import os
import shutil
import tempfile

import jax

_ENV = 'DLG_JAX_TEST_XLA_CACHE'
_CACHE_DIR = None  # Made by this process, which removes it at the end.


def pytest_configure(config):
  del config
  global _CACHE_DIR
  cache_dir = os.environ.get(_ENV)
  if cache_dir is None:
    cache_dir = _CACHE_DIR = tempfile.mkdtemp(prefix='dlg_jax_xla_cache_')
    os.environ[_ENV] = cache_dir
  jax.config.update('jax_numpy_rank_promotion', 'raise')
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  # Cache only what took a while to compile; small programs are quicker to
  # compile again than to write and read.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def pytest_unconfigure(config):
  del config
  if _CACHE_DIR:
    os.environ.pop(_ENV, None)
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
