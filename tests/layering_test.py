"""The layers a reader can see: thin launchers, pipelines, a pure library.

* `experiments/*.py` are thin absl mains: no launcher imports another or
  reaches a private name of another module, each is under `_MAX_LINES`, and
  none defines flags on import (tests import them side by side).
* `dlg_jax/pipelines/` is the only library code that reads ConfigDicts; no
  other `dlg_jax` module imports `absl.flags` or `ml_collections`, and no
  pipeline imports `absl.flags` (a pipeline takes values, not flags).
* The library is layered: `dlg_jax.core` imports none of `vision`, `text`
  or `pipelines`; `vision` and `text` import `core` and not each other (nor
  the pipelines).
* No code outside the tests silences pylint's protected-access: what one
  module needs from another is public.
"""

import ast
import glob
import importlib
import os

from absl.testing import absltest
from absl.testing import parameterized

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_LINES = 120
_LAUNCHERS = sorted(
    p for p in glob.glob(os.path.join(_ROOT, 'experiments', '*.py'))
    if os.path.basename(p) != '__init__.py')
_LIBRARY = sorted(glob.glob(os.path.join(_ROOT, 'dlg_jax', '**', '*.py'),
                            recursive=True))
_PIPELINES = os.path.join(_ROOT, 'dlg_jax', 'pipelines') + os.sep


def _tree(path: str) -> ast.Module:
  with open(path, encoding='utf-8') as f:
    return ast.parse(f.read(), filename=path)


def _imported_modules(tree: ast.Module) -> set[str]:
  """Every module a file imports, `from a import b` counted as `a.b`."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f'{node.module}.{alias.name}' for alias in node.names)
  return out


def _private_attributes(tree: ast.Module) -> list[str]:
  """`x._name` accesses (dunders aside), as `x._name` where x is a name."""
  out = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith('_')
        and not (node.attr.startswith('__') and node.attr.endswith('__'))):
      owner = node.value.id if isinstance(node.value, ast.Name) else '...'
      out.append(f'{owner}.{node.attr} (line {node.lineno})')
  return out


def _reads_flags_or_configdicts(modules: set[str]) -> list[str]:
  return sorted(m for m in modules
                if m == 'absl.flags' or m.startswith('absl.flags.')
                or m == 'ml_collections' or m.startswith('ml_collections.'))


class LaunchersTest(parameterized.TestCase):

  def test_there_are_launchers(self):
    self.assertGreaterEqual(len(_LAUNCHERS), 8)

  @parameterized.parameters(*_LAUNCHERS)
  def test_launcher_is_thin(self, path):
    tree = _tree(path)
    others = sorted(m for m in _imported_modules(tree)
                    if m == 'experiments' or m.startswith('experiments.'))
    self.assertEqual(others, [], f'{path} imports another launcher')
    self.assertEqual(_private_attributes(tree), [],
                     f'{path} reaches a private name')
    with open(path, encoding='utf-8') as f:
      lines = len(f.read().splitlines())
    self.assertLess(lines, _MAX_LINES, path)
    self.assertIn('__main__', ast.unparse(tree.body[-1].test)
                  if isinstance(tree.body[-1], ast.If) else '',
                  f'{path} ends without `if __name__ == "__main__":`')

  def test_launchers_import_side_by_side(self):
    # Flags defined on import would clash here (DuplicateFlagError).
    for path in _LAUNCHERS:
      name = os.path.splitext(os.path.basename(path))[0]
      importlib.import_module(f'experiments.{name}')


class LibraryTest(absltest.TestCase):

  def test_only_pipelines_read_configdicts(self):
    offenders = {}
    for path in _LIBRARY:
      found = _reads_flags_or_configdicts(_imported_modules(_tree(path)))
      if path.startswith(_PIPELINES):
        # Pipelines read ConfigDicts, never flags.
        found = [m for m in found if m.startswith('absl.flags')]
      if found:
        offenders[os.path.relpath(path, _ROOT)] = found
    self.assertEqual(offenders, {})

  def test_pipelines_cover_every_launcher(self):
    pipelines = {os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(_PIPELINES + '*.py')}
    self.assertContainsSubset(
        {'common', 'attack', 'sweep', 'utility', 'batch_study',
         'noise_bound', 'text_attack', 'benchmark', 'scale_benchmark'},
        pipelines)

  def test_layers_import_only_the_layers_below(self):
    forbidden = {
        'core': ('vision', 'text', 'pipelines'),
        'vision': ('text', 'pipelines'),
        'text': ('vision', 'pipelines'),
    }
    offenders = {}
    for layer, others in forbidden.items():
      paths = glob.glob(os.path.join(_ROOT, 'dlg_jax', layer, '*.py'))
      self.assertNotEmpty(paths, layer)
      for path in paths:
        found = sorted(m for m in _imported_modules(_tree(path))
                       for other in others
                       if m == f'dlg_jax.{other}'
                       or m.startswith(f'dlg_jax.{other}.'))
        if found:
          offenders[os.path.relpath(path, _ROOT)] = found
    self.assertEqual(offenders, {})

  def test_no_modules_beside_the_layers(self):
    flat = sorted(os.path.basename(p)
                  for p in glob.glob(os.path.join(_ROOT, 'dlg_jax', '*.py')))
    self.assertEqual(flat, ['__init__.py'])

  def test_no_protected_access_outside_tests(self):
    paths = _LIBRARY + _LAUNCHERS + glob.glob(
        os.path.join(_ROOT, 'configs', '*.py'))
    offenders = []
    for path in paths:
      with open(path, encoding='utf-8') as f:
        if 'disable=protected-access' in f.read():
          offenders.append(os.path.relpath(path, _ROOT))
    self.assertEqual(offenders, [])


if __name__ == '__main__':
  absltest.main()
