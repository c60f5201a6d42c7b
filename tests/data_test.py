"""Tests for dlg_jax.vision.data."""

import os
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from dlg_jax.vision import data
_EXPECTED = {
    # name: (shape, num_classes)
    'cifar100': ((20, 32, 32, 3), 100),
    'mnist': ((500, 28, 28, 1), 10),
    'svhn': ((25, 32, 32, 3), 10),
    'lfw': ((81, 32, 32, 3), 81),
    'lfw_photo': ((1, 224, 224, 3), 1),
}


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return path


class BundledTest(parameterized.TestCase):

  @parameterized.parameters(*data.BUNDLED)
  def test_shapes_dtypes_ranges(self, name):
    ds = data.load_bundled(name)
    shape, num_classes = _EXPECTED[name]
    self.assertEqual(ds.x.shape, shape)
    self.assertEqual(ds.x.dtype, np.float32)
    self.assertGreaterEqual(ds.x.min(), 0.0)
    self.assertLessEqual(ds.x.max(), 1.0)
    # Real images use most of the range; a stray /255 twice would not.
    self.assertGreater(ds.x.max(), 0.5)
    self.assertEqual(ds.y.shape, (shape[0],))
    self.assertEqual(ds.y.dtype, np.int32)
    self.assertEqual(ds.index.shape, (shape[0],))
    self.assertEqual(ds.num_classes, num_classes)
    self.assertLen(ds.class_names, num_classes)
    self.assertGreaterEqual(ds.y.min(), 0)
    self.assertLess(ds.y.max(), num_classes)
    self.assertEqual(ds.name, name)
    data.check_labels(ds.y, num_classes)

  def test_cifar100_fine_labels_match_file(self):
    ds = data.load_bundled('cifar100')
    with np.load(os.path.join(os.path.dirname(os.path.dirname(data.__file__)), 'samples',
                              'cifar100_samples.npz')) as f:
      np.testing.assert_array_equal(ds.y, f['y'])
      np.testing.assert_array_equal(
          np.round(ds.x * 255).astype(np.uint8), f['x'])
    self.assertEqual(ds.class_names[ds.y[0]], 'mountain')

  def test_lfw_photo_is_the_centre_of_the_full_photo(self):
    photo = data.load_bundled('lfw_photo')
    with np.load(os.path.join(os.path.dirname(os.path.dirname(data.__file__)),
                              'samples', 'lfw_samples.npz')) as f:
      np.testing.assert_array_equal(
          np.round(photo.x[0] * 255).astype(np.uint8), f['x'][0, 13:237, 13:237])
    self.assertEqual(photo.class_names, ('Anthony_Hopkins',))

  def test_lfw_labels_and_faces(self):
    ds = data.load_bundled('lfw')
    np.testing.assert_array_equal(ds.y, np.arange(81))
    self.assertEqual(ds.class_names[0], 'Anthony_Hopkins')
    self.assertEqual(ds.class_names[1], 'lfw_face_0')
    self.assertLen(set(ds.class_names), 81)
    # The face crops are grey, repeated to RGB; the photo is colour.
    faces = ds.x[1:]
    np.testing.assert_array_equal(faces[..., 0], faces[..., 1])
    np.testing.assert_array_equal(faces[..., 0], faces[..., 2])
    self.assertGreater(np.abs(ds.x[0, ..., 0] - ds.x[0, ..., 2]).max(), 0.05)

  def test_unknown_bundled_name(self):
    with self.assertRaisesRegex(ValueError, 'name must be one of'):
      data.load_bundled('imagenet')


class LoadDatasetTest(parameterized.TestCase):

  def test_bundled_with_count(self):
    ds = data.load_dataset('svhn', count=4)
    self.assertEqual(ds.x.shape, (4, 32, 32, 3))
    self.assertEqual(ds.y.shape, (4,))
    np.testing.assert_array_equal(ds.index, np.arange(4))

  @parameterized.parameters(0, -1, 21)
  def test_bad_count(self, count):
    with self.assertRaisesRegex(ValueError, 'count'):
      data.load_dataset('cifar100', count=count)

  def test_unknown_source_lists_choices(self):
    with self.assertRaisesRegex(ValueError, r"source='imagenet'.*cifar100.*tfds:"):
      data.load_dataset('imagenet')

  def test_npz_wins_over_source(self):
    with tempfile.TemporaryDirectory() as tmp:
      path = _write_npz(
          os.path.join(tmp, 'mine.npz'),
          x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 2]))
      ds = data.load_dataset('cifar100', npz=path, count=2)
    self.assertEqual(ds.x.shape, (2, 4, 4, 1))
    self.assertEqual(ds.name, 'npz:mine.npz')


class NpzTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def test_round_trip(self):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 5, 6, 3), dtype=np.uint8)
    y = np.array([2, 0, 1], np.int64)
    path = _write_npz(os.path.join(self.tmp, 'a.npz'), x=x, y=y,
                      class_names=np.array(['cat', 'dog', 'eel']))
    ds = data.load_npz(path)
    self.assertEqual(ds.x.dtype, np.float32)
    np.testing.assert_array_equal(np.round(ds.x * 255).astype(np.uint8), x)
    np.testing.assert_array_equal(ds.y, y)
    self.assertEqual(ds.y.dtype, np.int32)
    self.assertEqual(ds.class_names, ('cat', 'dog', 'eel'))
    np.testing.assert_array_equal(ds.index, np.arange(3))

  def test_grey_without_class_names(self):
    path = _write_npz(os.path.join(self.tmp, 'g.npz'),
                      x=np.full((2, 4, 4), 255, np.uint8), y=np.array([3, 1]))
    ds = data.load_npz(path)
    self.assertEqual(ds.x.shape, (2, 4, 4, 1))
    self.assertEqual(ds.x.max(), 1.0)
    self.assertEqual(ds.class_names, ('0', '1', '2', '3'))

  def test_missing_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'path=.*nope.npz'):
      data.load_npz(os.path.join(self.tmp, 'nope.npz'))

  @parameterized.named_parameters(
      ('missing_x', dict(y=np.zeros(2, np.int64)), "no array 'x'"),
      ('missing_y', dict(x=np.zeros((2, 4, 4), np.uint8)), "no array 'y'"),
      ('x_ndim', dict(x=np.zeros((2, 4), np.uint8), y=np.zeros(2, np.int64)),
       r'x in .*must have shape \[n, h, w, c\]'),
      ('x_float', dict(x=np.zeros((2, 4, 4), np.float32),
                       y=np.zeros(2, np.int64)), 'x in .*must be uint8'),
      ('x_channels', dict(x=np.zeros((2, 4, 4, 2), np.uint8),
                          y=np.zeros(2, np.int64)), 'x in .*channels'),
      ('y_length', dict(x=np.zeros((2, 4, 4), np.uint8),
                        y=np.zeros(3, np.int64)), 'y in .*length 2.*got 3'),
      ('y_negative', dict(x=np.zeros((2, 4, 4), np.uint8),
                          y=np.array([0, -1])), 'y in .*non-negative'),
      ('y_float', dict(x=np.zeros((2, 4, 4), np.uint8),
                       y=np.zeros(2, np.float32)), 'y in .*integers'),
      ('class_names_short', dict(x=np.zeros((2, 4, 4), np.uint8),
                                 y=np.array([0, 2]),
                                 class_names=np.array(['a', 'b'])),
       'class_names'),
  )
  def test_bad_input(self, arrays, message):
    path = _write_npz(os.path.join(self.tmp, 'bad.npz'), **arrays)
    with self.assertRaisesRegex(ValueError, message):
      data.load_npz(path)

  def _good_npz_bytes(self, compressed=False):
    path = os.path.join(self.tmp, 'good.npz')
    save = np.savez_compressed if compressed else np.savez
    ds = data.load_bundled('cifar100')
    save(path, x=np.round(ds.x[:2] * 255).astype(np.uint8), y=ds.y[:2])
    with open(path, 'rb') as f:
      return f.read()

  def _damaged(self, name):
    """The bytes of a file that is not a readable npz archive."""
    if name == 'empty':
      return b''
    if name == 'text':
      return b'x,y\n0,1\nnot an archive\n'
    if name == 'npy':
      path = os.path.join(self.tmp, 'one.npy')
      np.save(path, np.zeros((2, 4, 4), np.uint8))
      with open(path, 'rb') as f:
        return f.read()
    if name == 'truncated':
      good = self._good_npz_bytes()
      return good[:len(good) // 2]
    # A flipped run of bytes inside a (compressed) member: the archive
    # opens but the member's CRC (or inflation) fails.
    good = bytearray(self._good_npz_bytes(compressed=name == 'corrupt_deflate'))
    good[200:240] = bytes(255 - b for b in good[200:240])
    return bytes(good)

  @parameterized.named_parameters(
      ('empty', 'empty', 'is empty'),
      ('text', 'text', 'not an npz archive.*no zip header'),
      ('npy', 'npy', r'one \.npy array, not an npz archive'),
      ('truncated', 'truncated', 'not an npz archive.*truncated'),
      ('corrupt', 'corrupt', 'cannot be read.*damaged'),
      ('corrupt_deflate', 'corrupt_deflate', 'cannot be read.*damaged'),
  )
  def test_not_an_npz_archive(self, name, message):
    path = os.path.join(self.tmp, f'{name}.npz')
    with open(path, 'wb') as f:
      f.write(self._damaged(name))
    with self.assertRaisesRegex(ValueError, message) as cm:
      data.load_npz(path)
    self.assertIn(repr(path), str(cm.exception))
    # A user's file is never to be unpickled, nor is that ever advised.
    self.assertNotIn('pickle', str(cm.exception).lower())

  def test_object_array_is_refused_without_unpickling(self):
    path = os.path.join(self.tmp, 'objects.npz')
    np.savez(path, x=np.array([{'a': 1}, None], dtype=object),
             y=np.zeros(2, np.int64))
    with self.assertRaisesRegex(ValueError, "array 'x' in .*Python objects"
                                ) as cm:
      data.load_npz(path)
    self.assertNotIn('pickle', str(cm.exception).lower())


class ImageFilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())
    self.rng = np.random.default_rng(0)

  def _save(self, name, array):
    path = os.path.join(self.tmp, name)
    Image.fromarray(array).save(path)
    return path

  def test_rgb_png_round_trip_and_rgba_dropped(self):
    rgb = self.rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = self.rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    paths = [self._save('a.png', rgb), self._save('b.png', rgba)]
    ds = data.load_image_files(paths, [1, 0])
    self.assertEqual(ds.x.shape, (2, 6, 5, 3))
    np.testing.assert_array_equal(np.round(ds.x[0] * 255).astype(np.uint8),
                                  rgb)
    np.testing.assert_array_equal(np.round(ds.x[1] * 255).astype(np.uint8),
                                  rgba[..., :3])
    np.testing.assert_array_equal(ds.y, [1, 0])
    self.assertEqual(ds.class_names, ('0', '1'))

  def test_grey_stays_one_channel(self):
    grey = self.rng.integers(0, 256, (4, 4), dtype=np.uint8)
    ds = data.load_image_files([self._save('g.png', grey)], [0])
    self.assertEqual(ds.x.shape, (1, 4, 4, 1))
    np.testing.assert_array_equal(
        np.round(ds.x[0, ..., 0] * 255).astype(np.uint8), grey)

  def test_jpeg(self):
    rgb = np.full((8, 8, 3), 128, np.uint8)
    ds = data.load_image_files([self._save('a.jpg', rgb)], [0],
                               class_names=['only'])
    self.assertEqual(ds.x.shape, (1, 8, 8, 3))
    np.testing.assert_allclose(ds.x, 128 / 255, atol=3 / 255)
    self.assertEqual(ds.class_names, ('only',))

  def test_different_sizes(self):
    a = self._save('a.png', np.zeros((4, 4, 3), np.uint8))
    b = self._save('b.png', np.zeros((5, 4, 3), np.uint8))
    with self.assertRaisesRegex(ValueError, 'same size.*b.png'):
      data.load_image_files([a, b], [0, 0])

  def test_label_count_mismatch(self):
    a = self._save('a.png', np.zeros((4, 4, 3), np.uint8))
    with self.assertRaisesRegex(ValueError, 'labels.*length 1.*got 2'):
      data.load_image_files([a], [0, 1])

  def test_missing_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'missing.png'):
      data.load_image_files([os.path.join(self.tmp, 'missing.png')], [0])


class TfdsTest(parameterized.TestCase):

  def _mocked(self, num_examples):
    # mock_data serves examples from code but leaves is_prepared() False (it
    # points data_dir at a folder without data), so say the data is there.
    self.enter_context(tfds.testing.mock_data(num_examples=num_examples))
    self.enter_context(mock.patch.object(
        tfds.core.DatasetBuilder, 'is_prepared', return_value=True))

  @parameterized.parameters(
      ('mnist', 'test', (3, 28, 28, 1), 10),
      ('cifar100', 'test', (3, 32, 32, 3), 100),
      ('svhn_cropped', 'test', (3, 32, 32, 3), 10),
  )
  def test_mock_class_label_datasets(self, name, split, shape, num_classes):
    self._mocked(num_examples=5)
    ds = data.load_tfds(name, split=split, count=3)
    self.assertEqual(ds.x.shape, shape)
    self.assertEqual(ds.x.dtype, np.float32)
    self.assertBetween(float(ds.x.min()), 0.0, 1.0)
    self.assertBetween(float(ds.x.max()), 0.0, 1.0)
    self.assertEqual(ds.y.dtype, np.int32)
    self.assertEqual(ds.num_classes, num_classes)
    data.check_labels(ds.y, num_classes)
    self.assertEqual(ds.name, f'tfds:{name}')

  def test_mock_lfw_string_labels(self):
    self._mocked(num_examples=4)
    ds = data.load_dataset('tfds:lfw', split='train')
    self.assertEqual(ds.x.shape, (4, 250, 250, 3))
    self.assertEqual(ds.class_names, tuple(sorted(ds.class_names)))
    data.check_labels(ds.y, ds.num_classes)
    self.assertLen(set(ds.y.tolist()), ds.num_classes)

  def test_mock_count_too_large(self):
    self._mocked(num_examples=2)
    with self.assertRaisesRegex(ValueError, 'count'):
      data.load_dataset('tfds:mnist', count=3)

  @parameterized.parameters('mnist', 'cifar100')
  def test_unprepared_fails_fast_without_download(self, name):
    data_dir = self.enter_context(tempfile.TemporaryDirectory())
    # Any download attempt fails the test instead of hanging offline.
    self.enter_context(mock.patch.object(
        tfds.core.DatasetBuilder, 'download_and_prepare',
        side_effect=AssertionError('download attempted')))
    start = time.monotonic()
    with self.assertRaisesRegex(FileNotFoundError,
                                f"'{name}'.*not prepared.*{data_dir}"):
      data.load_dataset(f'tfds:{name}', data_dir=data_dir)
    # Generous: only catches a hang or retries, not a speed test.
    self.assertLess(time.monotonic() - start, 30.0)

  def test_unprepared_suggests_bundled(self):
    data_dir = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertRaisesRegex(FileNotFoundError, 'tfds build.*bundled'):
      data.load_tfds('mnist', data_dir=data_dir)


class CheckLabelsTest(parameterized.TestCase):

  def test_ok(self):
    data.check_labels(np.array([0, 9]), 10)

  @parameterized.parameters(([0, 10], 10), ([-1, 0], 10))
  def test_out_of_range(self, y, num_classes):
    with self.assertRaisesRegex(ValueError, 'y has labels outside.*num_classes'):
      data.check_labels(np.array(y), num_classes)

  @parameterized.parameters(0, -3)
  def test_bad_num_classes(self, num_classes):
    with self.assertRaisesRegex(ValueError, 'num_classes'):
      data.check_labels(np.array([0]), num_classes)


if __name__ == '__main__':
  absltest.main()
