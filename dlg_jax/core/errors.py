"""User errors: a bad config value, flag, file or input, named in one line.

A launcher validates everything it was given before it compiles anything.
What it finds wrong is the user's to fix, so it is reported as one line that
names the key (`config.data.npz: ...`, `--workdir ...`) and the process
exits non-zero; a traceback is kept for what is not the user's doing (a bug).

`ConfigError` is a `ValueError`, so library callers that catch `ValueError`
keep working; launchers raise it (directly or through `under`) and wrap
their `main` in `report_config_errors`.

Example:

  >>> from dlg_jax.vision import data
  >>> from dlg_jax.core import errors
  >>> ds = errors.under('config.data.npz', data.load_npz, 'missing.npz')
  Traceback (most recent call last):
  ...
  ConfigError: config.data.npz: ... missing.npz ...
"""

from collections.abc import Callable, Sequence
import functools
import sys
from typing import Any


class ConfigError(ValueError):
  """A bad config value, flag, file or input; the message names it."""


class FieldError(ValueError):
  """A bad value of one field of a settings dataclass.

  `field` is the field's dotted path inside the object that raised (such as
  `'local_batch_size'`, or `'labels.label_method'` from a check across
  sections), so that `under` can name the config key it came from.
  """

  def __init__(self, field: str, message: str):
    super().__init__(f'{field} {message}')
    self.field = field
    self.message = message


def target_counts(flag: str, values: Sequence[Any]) -> list[int]:
  """A list flag's values as target counts (ints >= 1), or a ConfigError.

  Args:
    flag: the flag's name as typed, e.g. `'--parallel'`; it starts the
      message.
    values: the flag's values (strings from `flags.DEFINE_list`, or ints).

  Returns:
    The counts, in order (empty for an empty list).

  Raises:
    ConfigError: a value that is not an integer >= 1.
  """
  try:
    counts = [int(n) for n in values]
  except ValueError:
    counts = []
  if len(counts) != len(values) or not all(n >= 1 for n in counts):
    raise ConfigError(
        f'{flag} must be target counts >= 1, got {list(values)}.')
  return counts


def under(key: str | Callable[[str], str], fn: Callable[..., Any], *args,
          **kwargs) -> Any:
  """Calls `fn`, turning its ValueError or OSError into a `ConfigError`.

  A `FieldError` is named by its field: under `'config.client'`, a bad
  `local_steps` reads `config.client.local_steps: must be ...`.

  Args:
    key: the config key or flag the arguments came from, e.g.
      `'config.data.npz'`; it prefixes the message. A callable maps a
      `FieldError`'s field path to the full key (for an object built from
      several config sections); other errors then get `key('')`.
    fn: the function that validates or loads the value.
    *args: positional arguments of `fn`.
    **kwargs: keyword arguments of `fn`.

  Returns:
    What `fn` returns.

  Raises:
    ConfigError: `fn` raised ValueError (including a ConfigError) or OSError
      (a missing or unreadable file).
  """
  try:
    return fn(*args, **kwargs)
  except FieldError as e:
    if callable(key):
      raise ConfigError(f'{key(e.field)}: {e.message}') from None
    raise ConfigError(f'{key}.{e.field}: {e.message}') from None
  except (ValueError, OSError) as e:
    if callable(key):
      key = key('')
    message = str(e)
    if isinstance(e, OSError) and e.filename is not None and (
        str(e.filename) not in message):
      message = f'{message}: {e.filename}'
    raise ConfigError(f'{key}: {message}') from None


def report_config_errors(main: Callable[[list[str]], Any]
                         ) -> Callable[[list[str]], Any]:
  """Wraps an absl `main` so a `ConfigError` is one line on stderr, exit 2.

  Anything else propagates with its traceback: it is a bug, not a bad input.
  """
  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    try:
      return main(argv)
    except ConfigError as e:
      prog = (sys.argv[0].rsplit('/', 1)[-1] if sys.argv and sys.argv[0]
              else 'dlg_jax')
      print(f'{prog}: error: {e}', file=sys.stderr, flush=True)
      sys.exit(2)
  return wrapped
