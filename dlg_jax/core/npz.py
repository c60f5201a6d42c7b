"""Reading a user's npz archive safely: no pickle, one clear error per failure.

Shared by the image loaders (`dlg_jax.vision.data.load_npz`) and the text
loaders (`dlg_jax.text.data`).
"""

import os
import zipfile
import zlib

import numpy as np

# np.savez writes a zip archive; a lone array from np.save starts with this.
_NPY_MAGIC = b'\x93NUMPY'
_NPZ_FORMAT = 'an npz archive (a zip file of arrays, as np.savez writes)'


def read_npz_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Every array of the npz archive at `path`, read without pickle.

  numpy's own errors for a file that is not an archive are an `EOFError`
  (empty file) or advice to unpickle it (any other bytes); a user's file is
  never unpickled, so the file is checked here first and each failure is
  reported as what it is.

  Args:
    path: an existing file.

  Returns:
    `{name: array}` for every array in the archive.

  Raises:
    ValueError: the file is empty, a lone `.npy` array, not a zip archive,
      truncated or damaged, or holds an object array; the message names the
      path and never suggests unpickling.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(len(_NPY_MAGIC))
  if not head:
    raise ValueError(f'npz file {path!r} is empty (0 bytes); expected '
                     f'{_NPZ_FORMAT}.')
  if head.startswith(_NPY_MAGIC):
    raise ValueError(
        f'{path!r} holds one .npy array, not {_NPZ_FORMAT}; write the '
        'arrays together with np.savez(path, name=array, ...).')
  # np.load only reads as a zip what starts as one.
  if not head.startswith(b'PK') or not zipfile.is_zipfile(path):
    damage = ('it starts as a zip file but is truncated or damaged' if
              head.startswith(b'PK') else
              'it has no zip header (another kind of file named .npz?)')
    raise ValueError(f'{path!r} is not {_NPZ_FORMAT}: {damage}. Write it '
                     'with np.savez(path, name=array, ...).')
  arrays, objects = {}, None
  try:
    with np.load(path, allow_pickle=False) as f:
      for key in f.files:
        try:
          arrays[key] = f[key]
        except ValueError as e:
          # numpy's message for an object array names allow_pickle.
          if 'allow_pickle' not in str(e):
            raise
          objects = key
          break
  except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
    raise ValueError(f'{path!r} is {_NPZ_FORMAT} that cannot be read: it is '
                     f'truncated or damaged ({type(e).__name__}: {e}).'
                     ) from None
  if objects is not None:
    raise ValueError(
        f'array {objects!r} in {path!r} holds Python objects (dtype object), '
        'which are never loaded from a file; save plain numeric and string '
        'arrays.')
  return arrays
