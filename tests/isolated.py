"""Runs a test's body in a fresh Python process, so a crash is one failure.

A segmentation fault in XLA kills the process it happens in; under pytest
that is the whole suite, and every test after it goes unreported. Tests
whose programs have crashed XLA:CPU on some machine (see
`defenses.clipped_mean_gradient`) run their computation through `run`: the
child prints one JSON line, and a child killed by a signal fails only the
test that started it, naming the signal.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = 'ISOLATED_RESULT='

# Prepended to every child program: the suite's settings, then a `report`
# function for the child's one result.
_PRELUDE = f'''
import json, sys
import jax
jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_disable_most_optimizations', True)

def report(value):
  print({_MARK!r} + json.dumps(value), flush=True)
'''


class CrashedError(AssertionError):
  """The child process died (a signal or a non-zero exit)."""


def run(code: str, *, timeout: float = 600.0) -> object:
  """Runs `code` in a new interpreter; returns what it passed to `report`.

  Args:
    code: Python source that calls `report(value)` once with a
      JSON-serialisable value; the repository root is the working
      directory, so `dlg_jax` imports.
    timeout: seconds before the child is killed (and the test fails).

  Returns:
    The reported value, decoded from JSON.

  Raises:
    CrashedError: the child was killed by a signal, exited non-zero, timed
      out or reported nothing; the message names the signal and holds the
      end of its stderr.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  try:
    proc = subprocess.run(
        [sys.executable, '-c', _PRELUDE + textwrap.dedent(code)],
        cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        check=False)
  except subprocess.TimeoutExpired:
    raise CrashedError(f'the isolated test ran past {timeout:.0f} s') from None
  tail = '\n'.join(proc.stderr.strip().splitlines()[-15:])
  if proc.returncode < 0:
    name = signal.Signals(-proc.returncode).name
    raise CrashedError(
        f'the isolated test was killed by {name} (exit {proc.returncode}); '
        f'the rest of the suite went on. stderr ends:\n{tail}')
  if proc.returncode:
    raise CrashedError(
        f'the isolated test exited {proc.returncode}; stderr ends:\n{tail}')
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(_MARK):
      return json.loads(line[len(_MARK):])
  raise CrashedError(f'the isolated test reported nothing; stderr ends:\n{tail}')
