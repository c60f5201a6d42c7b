"""Tests for dlg_jax.core.figures."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np
from PIL import Image

from dlg_jax.core import figures
def _read(path):
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _upscale(img, scale):
  img = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


class GridTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())
    self.rng = np.random.default_rng(0)

  @parameterized.parameters(1, 3)
  def test_size_and_cells(self, c):
    n, s, h, w, scale = 2, 3, 32, 32, 3
    # Out-of-range values check the clipping.
    gt = self.rng.uniform(-0.2, 1.2, (n, h, w, c)).astype(np.float32)
    snaps = self.rng.random((s, n, h, w, c)).astype(np.float32)
    path = os.path.join(self.tmp, 'sub', 'grid.png')
    figures.save_reconstruction_grid(path, gt, snaps, [0, 10, 300],
                                     scale=scale)
    img = _read(path)
    # 96-pixel cells are wider than every header text, so columns are cells.
    cell = h * scale
    gap, header = figures.GAP, figures.HEADER_HEIGHT
    self.assertEqual(img.shape, (gap + header + gap + n * (cell + gap),
                                 gap + (s + 1) * (cell + gap), 3))
    for r in range(n):
      top = gap + header + gap + r * (cell + gap)
      np.testing.assert_array_equal(
          img[top:top + cell, gap:gap + cell], _upscale(gt[r], scale))
      left = gap + 2 * (cell + gap)  # The second snapshot's column.
      np.testing.assert_array_equal(
          img[top:top + cell, left:left + cell], _upscale(snaps[1, r], scale))
    # The header holds text, and the gaps stay white.
    self.assertLess(img[gap:gap + header].min(), 128)
    self.assertTrue(np.all(img[:, gap + cell] == 255))

  def test_labels_add_a_left_column(self):
    gt = self.rng.random((2, 16, 16, 3)).astype(np.float32)
    snaps = gt[None]
    plain = os.path.join(self.tmp, 'plain.png')
    labelled = os.path.join(self.tmp, 'labelled.png')
    figures.save_reconstruction_grid(plain, gt, snaps, [5], scale=6)
    figures.save_reconstruction_grid(labelled, gt, snaps, [5], scale=6,
                                     labels=['true 3 / got 3', 'true 1 / got 7'])
    a = _read(plain)
    b = _read(labelled)
    self.assertEqual(a.shape[0], b.shape[0])
    self.assertGreater(b.shape[1], a.shape[1])
    # Same cells, shifted right by the label column.
    np.testing.assert_array_equal(a[:, -a.shape[1] + 2:], b[:, -a.shape[1] + 2:])

  def test_small_cells_widen_columns(self):
    gt = self.rng.random((1, 4, 4, 3)).astype(np.float32)
    path = os.path.join(self.tmp, 'small.png')
    figures.save_reconstruction_grid(path, gt, gt[None], [1000], scale=1)
    width = _read(path).shape[1]
    # 'Ground truth' is far wider than 4 pixels.
    self.assertGreater(width, 2 * (4 + figures.GAP) + 40)

  @parameterized.named_parameters(
      ('steps', (1, 8, 8, 3), (2, 1, 8, 8, 3), [0], None, 'steps'),
      ('snapshots', (1, 8, 8, 3), (2, 1, 8, 9, 3), [0, 1], None, 'snapshots'),
      ('ground_truth', (8, 8, 3), (2, 8, 8, 3), [0, 1], None, 'ground_truth'),
      ('labels', (2, 8, 8, 3), (1, 2, 8, 8, 3), [0], ['a'], 'labels'),
  )
  def test_bad_input(self, gt_shape, snap_shape, steps, labels, message):
    with self.assertRaisesRegex(ValueError, message):
      figures.save_reconstruction_grid(
          os.path.join(self.tmp, 'x.png'), np.zeros(gt_shape),
          np.zeros(snap_shape), steps, labels=labels)


class LinePlotTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def _legend(self, fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]

  @parameterized.parameters((480, 320), (640, 360))
  def test_writes_a_png_of_the_size(self, width, height):
    path = os.path.join(self.tmp, 'sub', 'plot.png')
    figures.save_line_plot(path, {'a': ([1, 2, 4], [10, None, 30])},
                           xlabel='x', ylabel='y', title='t',
                           size=(width, height))
    with Image.open(path) as image:
      self.assertEqual(image.format, 'PNG')
      self.assertEqual(image.size, (width, height))

  def test_every_series_is_drawn_and_named(self):
    # A sweep's defenses: two with strengths, one with a single strength,
    # and casts, which have no strength (x None or -inf, as log10(0)).
    series = {
        'gaussian': ([-4, -3, -2, -1], [9.6, 6.2, 5.6, 5.4]),
        'prune_layer': ([-2, -1, -0.7], [41.8, 21.2, 12.7]),
        'one_strength': ([-3], [20.0]),
        'float16': ([None], [42.5]),
        'int8': ([float('-inf')], [23.7]),
        'never': ([1, 2], [None, float('nan')]),
    }
    fig = figures._line_plot_figure(  # pylint: disable=protected-access
        series, xlabel='log10(strength)', ylabel='mean PSNR (dB)',
        title='DLG vs defenses', size=(640, 360))
    self.assertEqual(self._legend(fig), [
        'gaussian', 'prune_layer', 'one_strength (one point)',
        'float16 (no x value)', 'int8 (no x value)'])
    ax = fig.axes[0]
    self.assertEqual(ax.get_xscale(), 'linear')
    self.assertEqual(ax.get_ylim()[0], 0.0)
    self.assertGreater(ax.get_ylim()[1], 42.5)
    drawn = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(drawn['one_strength (one point)'].get_xydata(),
                                  [[-3, 20.0]])
    self.assertEqual(drawn['one_strength (one point)'].get_linestyle(), 'None')
    self.assertEqual(drawn['float16 (no x value)'].get_linestyle(), '--')
    self.assertEqual(list(drawn['int8 (no x value)'].get_ydata()), [23.7, 23.7])
    # And the PNG shows the horizontal line in the cast's colour (C3).
    path = os.path.join(self.tmp, 'defenses.png')
    figures.save_line_plot(path, series, xlabel='log10(strength)',
                           ylabel='mean PSNR (dB)', size=(640, 360))
    img = _read(path).astype(int)
    red = np.all(np.abs(img - [214, 39, 40]) < 30, axis=-1)  # tab:red
    self.assertGreater(red.sum(axis=1).max(), 200)

  def test_x_spanning_decades_is_logarithmic(self):
    fig = figures._line_plot_figure(  # pylint: disable=protected-access
        {'a': ([1e-4, 1e-3, 1e-2], [1, 2, 3])}, xlabel='x', ylabel='y',
        title='', size=(480, 320))
    self.assertEqual(fig.axes[0].get_xscale(), 'log')
    fig = figures._line_plot_figure(  # pylint: disable=protected-access
        {'a': ([1, 2, 4, 8], [1, 2, 3, 4])}, xlabel='batch', ylabel='y',
        title='', size=(480, 320))
    ax = fig.axes[0]
    self.assertEqual(ax.get_xscale(), 'linear')
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 8]
    self.assertTrue(all(float(t).is_integer() for t in ticks), ticks)

  def test_tick_labels_do_not_overlap(self):
    # The Pillow plot wrote '-0.30.2' for ticks at every x of a sweep.
    fig = figures._line_plot_figure(  # pylint: disable=protected-access
        {'p': ([-2, -1, -0.7, -0.5, -0.3, -0.2], [40, 21, 12, 8, 6, 5])},
        xlabel='log10(strength)', ylabel='PSNR', title='t', size=(480, 320))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer)
                    for t in fig.axes[0].get_xticklabels()
                    if t.get_text()), key=lambda b: b.x0)
    self.assertGreater(len(boxes), 2)
    for left, right in zip(boxes, boxes[1:]):
      self.assertLess(left.x1, right.x0)

  def test_bad_input(self):
    path = os.path.join(self.tmp, 'x.png')
    with self.assertRaisesRegex(ValueError, 'no finite point'):
      figures.save_line_plot(path, {'a': ([1], [None])}, xlabel='x',
                             ylabel='y')
    with self.assertRaisesRegex(ValueError, "'a' has 2 xs and 1 ys"):
      figures.save_line_plot(path, {'a': ([1, 2], [3])}, xlabel='x',
                             ylabel='y')
    self.assertFalse(os.path.exists(path))


class JsonTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.enter_context(tempfile.TemporaryDirectory()), 'r.json')

  def test_round_trip_converts_numpy_and_jax(self):
    obj = {
        'psnr': np.float32(12.5),
        'steps': np.int64(300),
        'ok': np.bool_(True),
        'ssim': jnp.array([0.25, 0.5]),
        'bf16': jnp.array(1.5, jnp.bfloat16),
        'nested': {'labels': np.array([[1, 2]], np.int32), 'name': 'cifar100'},
        'tuple': (1, None),
    }
    figures.save_json(self.path, obj)
    with open(self.path) as f:
      text = f.read()
    self.assertIn('\n  "psnr": 12.5', text)
    self.assertEqual(json.loads(text), {
        'psnr': 12.5, 'steps': 300, 'ok': True, 'ssim': [0.25, 0.5],
        'bf16': 1.5, 'nested': {'labels': [[1, 2]], 'name': 'cifar100'},
        'tuple': [1, None]})

  def test_nan_names_key_path(self):
    obj = {'metrics': {'psnr': np.array([1.0, np.nan])}}
    with self.assertRaisesRegex(ValueError, r"obj\['metrics'\]\['psnr'\]\[1\]"):
      figures.save_json(self.path, obj)
    self.assertFalse(os.path.exists(self.path))

  def test_inf_refused(self):
    with self.assertRaisesRegex(ValueError, r"obj\['loss'\]"):
      figures.save_json(self.path, {'loss': float('inf')})

  def test_unknown_type(self):
    with self.assertRaisesRegex(TypeError, r"obj\['f'\]"):
      figures.save_json(self.path, {'f': object()})


if __name__ == '__main__':
  absltest.main()
