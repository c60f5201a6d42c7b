"""Image data for the attack: bundled real samples, user files and TFDS.

Every loader returns a `Dataset` of float32 images in [0, 1] laid out
`[n, h, w, c]` with int32 labels, so the attack never needs to know where the
images came from. `load_dataset` is the one entry point the launchers use.

The bundled samples (`dlg_jax/samples/`, see `PROVENANCE.md` there) are real
CIFAR-100, MNIST, SVHN and LFW images; they are the offline default because no
machine this project runs on can download datasets. `load_tfds` is the path for
users who have prepared the full TFDS datasets themselves.

Example:

  >>> from dlg_jax.vision import data
  >>> ds = data.load_dataset('cifar100', count=4)
  >>> ds.x.shape, ds.y.dtype
  ((4, 32, 32, 3), dtype('int32'))
"""

from __future__ import annotations

from collections.abc import Sequence
import os
from typing import NamedTuple

from jax.typing import ArrayLike
import numpy as np
from PIL import Image

from dlg_jax.core import npz

BUNDLED = ('cifar100', 'mnist', 'svhn', 'lfw', 'lfw_photo')

_SAMPLES_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'samples')
_BUNDLED_FILES = {
    'cifar100': 'cifar100_samples.npz',
    'mnist': 'mnist_samples.npz',
    'svhn': 'svhn_samples.npz',
    'lfw': 'lfw_samples.npz',
    'lfw_photo': 'lfw_samples.npz',
}
# ImageNet's evaluation crop: the bundled 250x250 LFW photo's centre.
_PHOTO_SIZE = 224
# The DLG paper attacks 32x32 LFW images; the bundled 25x25 crops are brought
# to the same size so every LFW sample fits one model.
_LFW_SIZE = 32
_TFDS_PREFIX = 'tfds:'


class Dataset(NamedTuple):
  """Images and labels ready for the attack.

  Attributes:
    x: float32 images `[n, h, w, c]` with values in [0, 1]; `c` is 1 (grey) or
      3 (RGB).
    y: int32 labels `[n]`, each in `[0, len(class_names))`.
    index: int64 `[n]`, each sample's position in its source (the dataset
      split, the bundled file or the user's file), so results can name it.
    class_names: one name per class id.
    name: where the data came from, e.g. `'cifar100'` or `'tfds:mnist'`.
  """

  x: np.ndarray
  y: np.ndarray
  index: np.ndarray
  class_names: tuple[str, ...]
  name: str

  @property
  def num_classes(self) -> int:
    """The number of classes, `len(class_names)`."""
    return len(self.class_names)


def _to_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 `[n, h, w, c]` to float32 in [0, 1]."""
  return images.astype(np.float32) / np.float32(255.0)


def _check_count(count: int | None, available: int) -> int:
  """Returns how many samples to keep, rejecting impossible `count`s."""
  if count is None:
    return available
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
    raise ValueError(f'count must be an int or None, got {count!r}.')
  if count < 1 or count > available:
    raise ValueError(
        f'count must be in [1, {available}] (the number of samples '
        f'available), got {count}.')
  return int(count)


def _take(ds: Dataset, count: int | None) -> Dataset:
  n = _check_count(count, ds.x.shape[0])
  return ds._replace(x=ds.x[:n], y=ds.y[:n], index=ds.index[:n])


def _grey_to_rgb_32(face: np.ndarray) -> np.ndarray:
  """One grey uint8 crop `[h, w]` to uint8 `[32, 32, 3]`."""
  resized = Image.fromarray(face).resize(
      (_LFW_SIZE, _LFW_SIZE), resample=Image.Resampling.BICUBIC)
  return np.repeat(np.asarray(resized)[..., None], 3, axis=-1)


def load_bundled(name: str) -> Dataset:
  """Loads the real samples bundled with the package.

  * `'cifar100'`: CIFAR-100 test images 0-19, `[20, 32, 32, 3]`, fine labels
    (100 classes).
  * `'mnist'`: MNIST test images 0-499, `[500, 28, 28, 1]`, 10 classes.
  * `'svhn'`: 25 SVHN digits cut from real SVHN photos with their official
    boxes, `[25, 32, 32, 3]`, 10 classes. They have no index in an official
    split, so `index` is the position in the bundled file.
  * `'lfw'`: 81 LFW faces `[81, 32, 32, 3]`. Sample 0 is the colour photo
    Anthony_Hopkins_0001 resized to 32x32 (class 0, `'Anthony_Hopkins'`).
    Samples 1-80 are scikit-image's `lfw_subset` 25x25 grey face crops,
    resized to 32x32 with Pillow bicubic and repeated to 3 channels. That
    source carries no identity for the crops, so each crop gets its own
    class: crop k (sample k + 1) has label k + 1 and class name
    `'lfw_face_k'`. The labels are thus distinct placeholders, not
    identities: they still exercise label recovery on distinct labels, but a
    model for this data needs `num_classes >= 81`. `index` is the position
    in this dataset (0 for the photo, k + 1 for crop k).
  * `'lfw_photo'`: that colour photo at ImageNet's size, `[1, 224, 224, 3]`:
    the centre 224x224 of the 250x250 original, not resized (class 0,
    `'Anthony_Hopkins'`, the only class).

  Args:
    name: one of `BUNDLED`.

  Returns:
    The samples as a `Dataset` named `name`.

  Raises:
    ValueError: `name` is not one of `BUNDLED`.
  """
  if name not in _BUNDLED_FILES:
    raise ValueError(
        f'name must be one of {BUNDLED} (the bundled samples), got {name!r}.')
  with np.load(os.path.join(_SAMPLES_DIR, _BUNDLED_FILES[name]),
               allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}

  if name == 'lfw_photo':
    offset = (arrays['x'].shape[1] - _PHOTO_SIZE) // 2
    images = arrays['x'][:, offset:offset + _PHOTO_SIZE,
                         offset:offset + _PHOTO_SIZE]
    labels = arrays['y'].astype(np.int32)
    class_names = (str(arrays['class_names'][0]),)
    index = np.zeros(1, dtype=np.int64)
  elif name == 'lfw':
    faces = np.stack([_grey_to_rgb_32(face) for face in arrays['faces25']])
    images = np.concatenate([arrays['x_32'], faces])
    num_faces = faces.shape[0]
    labels = np.concatenate(
        [arrays['y'], np.arange(1, num_faces + 1)]).astype(np.int32)
    class_names = (str(arrays['class_names'][0]),) + tuple(
        f'lfw_face_{k}' for k in range(num_faces))
    index = np.arange(images.shape[0], dtype=np.int64)
  else:
    images = arrays['x']
    if images.ndim == 3:
      images = images[..., None]
    labels = arrays['y'].astype(np.int32)
    class_names = tuple(str(c) for c in arrays['class_names'])
    index = arrays.get('index', np.arange(images.shape[0]))
    index = np.asarray(index, dtype=np.int64)
  return Dataset(x=_to_unit_float(images), y=labels, index=index,
                 class_names=class_names, name=name)


def _validate_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
  """Checks user labels `[n]` and returns them as int32."""
  if y.ndim != 1:
    raise ValueError(f'{what} must be 1-D [n], got shape {y.shape}.')
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
    raise ValueError(f'{what} must hold integers, got dtype {y.dtype}.')
  if y.shape[0] != n:
    raise ValueError(
        f'{what} must have one label per image: expected length {n} (the '
        f'number of images), got {y.shape[0]}.')
  if n and y.min() < 0:
    raise ValueError(
        f'{what} must hold non-negative class ids, got minimum {y.min()}.')
  if n and y.max() > np.iinfo(np.int32).max:
    raise ValueError(f'{what} has a label too large for int32: {y.max()}.')
  return y.astype(np.int32)


def _class_names_for(y: np.ndarray, class_names: Sequence[str] | None,
                     what: str) -> tuple[str, ...]:
  """Given class names checked against labels, or `'0'..'max(y)'`."""
  if class_names is None:
    return tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
  names = tuple(str(c) for c in class_names)
  if y.size and y.max() >= len(names):
    raise ValueError(
        f'{what} has label {y.max()} but class_names has only {len(names)} '
        'entries; every label must index class_names.')
  return names


def load_npz(path: str | os.PathLike[str]) -> Dataset:
  """Loads a user's images and labels from an `.npz` file.

  The file is read without pickle and must hold `x`, uint8 images
  `[n, h, w, c]` (`c` 1 or 3) or `[n, h, w]` (grey), and `y`, non-negative
  integer labels `[n]`. An optional `class_names` array `[num_classes]` of
  strings names the classes; without it the classes are named `'0'`,
  `'1'`, ... up to the largest label.

  Args:
    path: the `.npz` file.

  Returns:
    The samples as a `Dataset` named `'npz:<file name>'`, `index` being the
    position in the file.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not an npz archive (empty, another format,
      truncated or damaged), holds Python objects, or an array is missing
      or has the wrong shape, dtype or values; the message names the path
      and the array.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'npz file not found: path={path!r}.')
  arrays = npz.read_npz_arrays(path)
  for key in ('x', 'y'):
    if key not in arrays:
      raise ValueError(
          f'npz file {path!r} has no array {key!r}; expected x (uint8 '
          f'[n, h, w, c] or [n, h, w]) and y (int [n]), found '
          f'{sorted(arrays)}.')
  x, y = arrays['x'], arrays['y']
  if x.dtype != np.uint8:
    raise ValueError(
        f'x in {path!r} must be uint8 (values 0-255), got dtype {x.dtype}.')
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(
        f'x in {path!r} must have shape [n, h, w, c] or [n, h, w], got '
        f'{arrays["x"].shape}.')
  if x.shape[-1] not in (1, 3):
    raise ValueError(
        f'x in {path!r} must have 1 (grey) or 3 (RGB) channels, got shape '
        f'{x.shape}.')
  if x.shape[0] == 0:
    raise ValueError(f'x in {path!r} holds no images.')
  y = _validate_labels(y, x.shape[0], f'y in {path!r}')
  class_names = arrays.get('class_names')
  if class_names is not None and class_names.ndim != 1:
    raise ValueError(
        f'class_names in {path!r} must be 1-D, got shape {class_names.shape}.')
  names = _class_names_for(y, class_names, f'y in {path!r}')
  return Dataset(x=_to_unit_float(x), y=y,
                 index=np.arange(x.shape[0], dtype=np.int64),
                 class_names=names, name=f'npz:{os.path.basename(path)}')


def _read_image(path: str) -> np.ndarray:
  """One image file as uint8 `[h, w, c]`, `c` 1 (grey) or 3 (RGB)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'image file not found: paths entry {path!r}.')
  with Image.open(path) as im:
    # Grey (with or without alpha, any bit depth) stays grey, the rest is
    # RGB: the attack models take 1 or 3 channels and alpha is not data.
    if im.mode in ('1', 'L', 'LA', 'I', 'I;16', 'F'):
      if im.mode in ('I', 'I;16', 'F'):
        # 16-bit and float grey would be clipped by convert('L'); rescale.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode != 'F' else max(float(arr.max()), 1.0)
        grey = np.round(np.clip(arr / hi, 0, 1) * 255).astype(np.uint8)
        return grey[..., None]
      return np.asarray(im.convert('L'))[..., None]
    return np.asarray(im.convert('RGB'))


def load_image_files(paths: Sequence[str | os.PathLike[str]],
                     labels: ArrayLike,
                     *,
                     class_names: Sequence[str] | None = None) -> Dataset:
  """Loads PNG/JPEG (any Pillow format) images with their labels.

  All images must have the same height and width. Grey images stay one
  channel and alpha is dropped; if grey and colour files are mixed, the grey
  ones are repeated to 3 channels.

  Args:
    paths: image files, one per sample.
    labels: non-negative integer labels `[n]`, one per path.
    class_names: optional names of the classes; defaults to `'0'`, `'1'`, ...

  Returns:
    The images as a `Dataset` named `'files'`, `index` being the position in
    `paths`.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: no paths, sizes differ, or bad labels.
  """
  paths = [os.fspath(p) for p in paths]
  if not paths:
    raise ValueError('paths must name at least one image file.')
  images = [_read_image(p) for p in paths]
  h, w = images[0].shape[:2]
  for p, im in zip(paths, images):
    if im.shape[:2] != (h, w):
      raise ValueError(
          f'All images in paths must have the same size: {paths[0]!r} is '
          f'{w}x{h} but {p!r} is {im.shape[1]}x{im.shape[0]} (width x '
          'height). Resize them first.')
  if any(im.shape[-1] == 3 for im in images):
    images = [np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im
              for im in images]
  y = _validate_labels(np.asarray(labels), len(paths), 'labels')
  names = _class_names_for(y, class_names, 'labels')
  return Dataset(x=_to_unit_float(np.stack(images)), y=y,
                 index=np.arange(len(paths), dtype=np.int64),
                 class_names=names, name='files')


def load_tfds(name: str,
              *,
              split: str = 'test',
              data_dir: str | os.PathLike[str] | None = None,
              count: int | None = None,
              image_key: str = 'image',
              label_key: str = 'label') -> Dataset:
  """Loads a prepared TFDS image dataset (cifar100, mnist, svhn_cropped, lfw).

  Reads through `tfds.data_source`, which needs no TensorFlow but does need
  the dataset already prepared in a random-access format (ArrayRecord, and
  the `array_record` package). This never downloads: it checks
  `builder.is_prepared()` first and fails at once otherwise, because a
  download is impossible on offline machines and would otherwise hang in
  retries.

  Class labels (`ClassLabel` features) keep their ids and names. String
  labels (`lfw` names each person) are mapped to ids in sorted order of the
  names present in the loaded samples, so ids are only meaningful within
  one call and `class_names` lists just those people.

  Args:
    name: the TFDS name, optionally with config/version (`'mnist'`,
      `'cifar100:3.0.2'`).
    split: the split, TFDS slicing allowed (`'test'`, `'train[:100]'`).
      Note that `lfw` has only `'train'`.
    data_dir: the TFDS data directory; TFDS's default (`$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`) when None.
    count: keep only the first `count` samples of the split; all when None.
    image_key: the image feature, uint8 `[h, w, c]`.
    label_key: the label feature, a class id or a string.

  Returns:
    The samples as a `Dataset` named `'tfds:<name>'`, `index` being the
    position within `split`.

  Raises:
    FileNotFoundError: the dataset is not prepared in `data_dir`.
    ValueError: unknown dataset, split or feature key, or bad `count`.
  """
  # Deferred: importing TFDS costs time that the bundled path never needs.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  where = 'the default TFDS data_dir' if data_dir is None else (
      f'data_dir={os.fspath(data_dir)!r}')
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in {where} (looked in '
        f'{builder.data_path}). dlg_jax never downloads it. Prepare it on a '
        f'machine with internet, e.g. `tfds build {name} '
        '--file_format=array_record --data_dir=DIR`, and pass data_dir=DIR; '
        f'or use the bundled real samples: one of {BUNDLED}.')
  try:
    # download=False: the check above is the gate, this makes sure no
    # download can start even if it was wrong.
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              download=False)
  except ImportError as e:
    raise ImportError(
        f'Reading TFDS dataset {name!r} needs the array_record package '
        f'(pip install array_record): {e}') from e
  except (KeyError, ValueError) as e:
    raise ValueError(
        f'Could not open split={split!r} of TFDS dataset {name!r} in {where}; '
        f'its splits are {sorted(builder.info.splits)}: {e}') from e

  n = _check_count(count, len(source))
  examples = [source[i] for i in range(n)]
  keys = set(examples[0])
  for key, arg in ((image_key, 'image_key'), (label_key, 'label_key')):
    if key not in keys:
      raise ValueError(
          f'{arg}={key!r} is not a feature of TFDS dataset {name!r}; its '
          f'features are {sorted(keys)}.')

  images = [np.asarray(ex[image_key]) for ex in examples]
  if images[0].ndim == 2:
    images = [im[..., None] for im in images]
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(
        f'TFDS dataset {name!r} has images of several sizes {sorted(shapes)}; '
        'the attack needs one size.')
  x = np.stack(images)
  if x.dtype != np.uint8:
    raise ValueError(
        f'{image_key!r} of TFDS dataset {name!r} must be uint8, got {x.dtype}.')

  raw = [ex[label_key] for ex in examples]
  label_feature = builder.info.features[label_key]
  if isinstance(raw[0], (bytes, str, np.bytes_, np.str_)):
    strings = [r.decode('utf-8') if isinstance(r, bytes) else str(r)
               for r in raw]
    class_names = tuple(sorted(set(strings)))
    ids = {c: i for i, c in enumerate(class_names)}
    y = np.array([ids[s] for s in strings], dtype=np.int32)
  else:
    y = np.asarray(raw).astype(np.int32)
    names = getattr(label_feature, 'names', None)
    if names:
      class_names = tuple(names)
    else:
      class_names = tuple(str(i) for i in range(int(y.max()) + 1))
  return Dataset(x=_to_unit_float(x), y=y,
                 index=np.arange(n, dtype=np.int64), class_names=class_names,
                 name=f'{_TFDS_PREFIX}{name}')


def load_dataset(source: str,
                 *,
                 npz: str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 split: str = 'test',
                 count: int | None = None) -> Dataset:
  """Loads the attack's targets from wherever the user points.

  Precedence: `npz` if given (then `source` is ignored), else a bundled
  name, else `'tfds:<name>'`.

  Args:
    source: one of `BUNDLED` or `'tfds:<name>'` (e.g. `'tfds:cifar100'`).
    npz: a user's `.npz` file, see `load_npz`.
    data_dir: TFDS data directory, only for `tfds:` sources.
    split: TFDS split, only for `tfds:` sources.
    count: keep the first `count` samples; all when None.

  Returns:
    The samples as a `Dataset`.

  Raises:
    ValueError: unknown `source` or `count` outside [1, available].
    FileNotFoundError: missing `npz` file or unprepared TFDS dataset.
  """
  if npz is not None:
    return _take(load_npz(npz), count)
  if source in BUNDLED:
    return _take(load_bundled(source), count)
  if isinstance(source, str) and source.startswith(_TFDS_PREFIX):
    name = source[len(_TFDS_PREFIX):]
    if not name:
      raise ValueError(
          f"source={source!r} names no TFDS dataset; use e.g. 'tfds:mnist'.")
    return load_tfds(name, split=split, data_dir=data_dir, count=count)
  raise ValueError(
      f'Unknown source={source!r}: expected one of {BUNDLED}, '
      "'tfds:<name>' (e.g. 'tfds:cifar100'), or an npz file via npz=.")


def check_labels(y: ArrayLike, num_classes: int) -> None:
  """Checks that every label is a valid class of a `num_classes` model.

  Args:
    y: integer labels `[n]`.
    num_classes: the model's number of classes.

  Raises:
    ValueError: `num_classes < 1` or a label outside `[0, num_classes)`.
  """
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or (
      num_classes < 1):
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}.')
  bad = (y < 0) | (y >= num_classes)
  if np.any(bad):
    raise ValueError(
        f'y has labels outside [0, num_classes={num_classes}): '
        f'{sorted(set(y[bad].tolist()))[:10]}. Use a model with more classes '
        'or other data.')
