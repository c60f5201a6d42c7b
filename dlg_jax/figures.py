"""Output a person looks at: reconstruction grids, and JSON for machines.

`save_reconstruction_grid` draws the DLG paper's figure layout: one row per
attacked image, the ground truth first, then the reconstruction at chosen
iterations. `save_json` writes `results.json` / `config.json` from pytrees of
numpy and JAX values.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
import os
from typing import Any

import jax
from jax.typing import ArrayLike
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# White space between cells and around the grid, in pixels.
GAP = 2
# Height of the header row holding 'Ground truth', 'iter=...'.
HEADER_HEIGHT = 16
_FONT_SIZE = 11
_TEXT_PAD = 4


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=_FONT_SIZE)
  except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
    return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
  left, _, right, _ = draw.textbbox((0, 0), text, font=font)
  return int(math.ceil(right - left))


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
  """`[h, w, c]` in [0, 1] to uint8 `[h, w, 3]`; NaN shows black."""
  img = np.nan_to_num(img.astype(np.float32), nan=0.0)
  img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  return img


def _makedirs_for(path: str) -> None:
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)


def save_reconstruction_grid(path: str | os.PathLike[str],
                             ground_truth: ArrayLike,
                             snapshots: ArrayLike,
                             steps: Sequence[int | str],
                             *,
                             labels: Sequence[str] | None = None,
                             scale: int = 3) -> None:
  """Writes a PNG of reconstructions over iterations beside the ground truth.

  Layout, as in the figures of Zhu et al. 2019: a header row of height
  `HEADER_HEIGHT` reading 'Ground truth', 'iter=<steps[0]>', ...; then one
  row per target: its ground truth, then one column per snapshot. Images are
  upscaled `scale` times with nearest neighbour so single pixels stay
  visible, and cells are separated (and surrounded) by `GAP` white pixels.
  A column is `max(w * scale, widest header text + 4)` wide with the image
  at its left; rows are `h * scale` high. With `labels`, a column of text at
  the left names each row. Values are clipped to [0, 1] (NaN shows black);
  grey images (`c == 1`) are drawn grey. Parent folders are created.

  Args:
    path: the PNG to write.
    ground_truth: the private images `[n, h, w, c]`, `c` 1 or 3.
    snapshots: reconstructions `[s, n, h, w, c]`, `snapshots[i]` taken at
      iteration `steps[i]`.
    steps: `s` iteration numbers for the header (a string, such as
      'final', is shown as it is).
    labels: optional `n` strings, e.g. true and recovered labels, one per row.
    scale: integer upscaling factor, >= 1.

  Raises:
    ValueError: inconsistent shapes, `len(steps)` or `len(labels)`, or a bad
      `scale`.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019.
  """
  gt = np.asarray(ground_truth)
  snaps = np.asarray(snapshots)
  steps = [s if isinstance(s, str) else int(s) for s in steps]
  if gt.ndim != 4 or gt.shape[-1] not in (1, 3):
    raise ValueError(
        f'ground_truth must be [n, h, w, c] with c 1 or 3, got {gt.shape}.')
  if snaps.ndim != 5 or snaps.shape[1:] != gt.shape:
    raise ValueError(
        f'snapshots must be [s, n, h, w, c] = [s, *{gt.shape}], got '
        f'{snaps.shape}.')
  if len(steps) != snaps.shape[0]:
    raise ValueError(
        f'steps must name one iteration per snapshot: {snaps.shape[0]} '
        f'snapshots, got {len(steps)} steps.')
  if labels is not None and len(labels) != gt.shape[0]:
    raise ValueError(
        f'labels must have one entry per row ({gt.shape[0]}), got '
        f'{len(labels)}.')
  if isinstance(scale, bool) or int(scale) != scale or scale < 1:
    raise ValueError(f'scale must be a positive int, got {scale!r}.')
  scale = int(scale)

  n, h, w, _ = gt.shape
  cell_h, cell_w = h * scale, w * scale
  headers = ['Ground truth'] + [
      s if isinstance(s, str) else f'iter={s}' for s in steps]
  font = _font()
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  col_w = max([cell_w] + [_text_width(measure, t, font) + _TEXT_PAD
                          for t in headers])
  label_w = 0
  if labels is not None:
    label_w = max(_text_width(measure, str(t), font) for t in labels) + (
        _TEXT_PAD)

  n_cols = len(headers)
  width = GAP + (label_w + GAP if labels is not None else 0) + n_cols * (
      col_w + GAP)
  height = GAP + HEADER_HEIGHT + GAP + n * (cell_h + GAP)
  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)

  x0 = GAP + (label_w + GAP if labels is not None else 0)
  for j, text in enumerate(headers):
    draw.text((x0 + j * (col_w + GAP), GAP), text, fill='black', font=font)
  columns = [gt] + [snaps[i] for i in range(snaps.shape[0])]
  for r in range(n):
    top = GAP + HEADER_HEIGHT + GAP + r * (cell_h + GAP)
    if labels is not None:
      draw.text((GAP, top), str(labels[r]), fill='black', font=font)
    for j, images in enumerate(columns):
      cell = _to_uint8_rgb(images[r])
      cell = np.repeat(np.repeat(cell, scale, axis=0), scale, axis=1)
      canvas.paste(Image.fromarray(cell),
                   (x0 + j * (col_w + GAP), top))
  path = os.fspath(path)
  _makedirs_for(path)
  canvas.save(path, format='PNG')


def _plain(obj: Any, where: str) -> Any:
  """`obj` as JSON-ready Python; raises naming `where` for NaN/inf/unknown."""
  if isinstance(obj, dict):
    out = {}
    for k, v in obj.items():
      if isinstance(k, (np.generic,)):
        k = k.item()
      if not isinstance(k, (str, int, float, bool)) and k is not None:
        raise TypeError(f'{where} has a key of type {type(k).__name__}: {k!r}.')
      out[k] = _plain(v, f'{where}[{k!r}]')
    return out
  if isinstance(obj, (list, tuple)):
    return [_plain(v, f'{where}[{i}]') for i, v in enumerate(obj)]
  if isinstance(obj, (jax.Array, np.ndarray, np.generic)):
    arr = np.asarray(obj)
    if arr.dtype.kind == 'c':
      raise TypeError(f'{where} is complex, which JSON cannot hold.')
    if arr.dtype.kind not in 'biufUSO':
      # bfloat16 and other ml_dtypes floats: tolist() would keep their type.
      arr = arr.astype(np.float64)
    return _plain(arr.tolist(), where)
  if isinstance(obj, float) and not math.isfinite(obj):
    raise ValueError(
        f'{where} is {obj}; JSON has no NaN or infinity (allow_nan=False).')
  if isinstance(obj, bytes):
    return obj.decode('utf-8')
  if obj is None or isinstance(obj, (str, int, float, bool)):
    return obj
  raise TypeError(
      f'{where} has type {type(obj).__name__}, which JSON cannot hold.')


def save_json(path: str | os.PathLike[str], obj: Any) -> None:
  """Writes `obj` as indented JSON, converting numpy and JAX values.

  Arrays become (nested) lists and scalars plain Python numbers. NaN and
  infinity are refused because strict JSON readers reject them and they
  usually mean a diverged attack that should be looked at, not stored.
  Parent folders are created.

  Args:
    path: the file to write.
    obj: nested dicts, lists and tuples of str, numbers, bools, None, numpy
      or JAX scalars and arrays.

  Raises:
    ValueError: a value is NaN or infinite; the message gives its key path,
      e.g. `obj['psnr'][3]`.
    TypeError: a value JSON cannot represent.
  """
  plain = _plain(obj, 'obj')
  text = json.dumps(plain, indent=2, allow_nan=False)
  path = os.fspath(path)
  _makedirs_for(path)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text + '\n')


def save_line_plot(path: str | os.PathLike[str],
                   series: dict[str, tuple[Sequence[float], Sequence[float]]],
                   *,
                   xlabel: str,
                   ylabel: str,
                   title: str = '',
                   size: tuple[int, int] = (480, 320)) -> None:
  """Writes a PNG line plot (linear axes) of a few series, with Pillow.

  A small stand-in for matplotlib, which the package does not need: axes
  with round-number y ticks and x ticks at the data's x values (or five
  even ones when there are many), one coloured line with dot markers per
  series, a legend at the top left. Points with a None or non-finite y are
  skipped (e.g. a batch size that never reached the threshold).

  Args:
    path: the PNG to write; parent folders are created.
    series: name -> (xs, ys).
    xlabel: the x-axis label.
    ylabel: the y-axis label.
    title: an optional title above the plot.
    size: (width, height) in pixels.

  Raises:
    ValueError: no finite point to draw, or xs and ys of different lengths.
  """
  points = {}
  for name, (xs, ys) in series.items():
    if len(xs) != len(ys):
      raise ValueError(f'series {name!r} has {len(xs)} xs and {len(ys)} ys.')
    points[name] = [(float(x), float(y)) for x, y in zip(xs, ys)
                    if y is not None and math.isfinite(float(y))]
  finite = [p for ps in points.values() for p in ps]
  if not finite:
    raise ValueError('save_line_plot: no finite point to draw.')
  width, height = size
  left, right, top, bottom = 64, 16, 36 if title else 22, 40
  xs_all = sorted({float(x) for xs, _ in series.values() for x in xs})
  x_lo, x_hi = min(xs_all), max(xs_all)
  if x_hi == x_lo:
    x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
  x_ticks = xs_all if len(xs_all) <= 10 else [
      x_lo + k * (x_hi - x_lo) / 4 for k in range(5)]
  y_max = max(p[1] for p in finite) or 1.0
  magnitude = 10.0 ** math.floor(math.log10(y_max / 4))
  y_step = next(m * magnitude for m in (1, 2, 5, 10)
                if y_max / (m * magnitude) <= 5)
  y_lo, y_hi = 0.0, y_step * math.ceil(y_max * 1.05 / y_step)
  y_ticks = [k * y_step for k in range(round(y_hi / y_step) + 1)]

  def to_px(x, y):
    px = left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)
    py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (
        height - top - bottom)
    return px, py

  canvas = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(canvas)
  font = _font()
  x0, y0 = to_px(x_lo, y_lo)
  x1, y1 = to_px(x_hi, y_hi)
  draw.line([(x0, y1), (x0, y0), (x1, y0)], fill='black')
  for xv in x_ticks:
    px, _ = to_px(xv, y_lo)
    draw.line([(px, y0), (px, y0 + 4)], fill='black')
    xt = f'{xv:g}'
    draw.text((px - _text_width(draw, xt, font) / 2, y0 + 6), xt,
              fill='black', font=font)
  for yv in y_ticks:
    _, py = to_px(x_lo, yv)
    draw.line([(x0 - 4, py), (x0, py)], fill='black')
    yt = f'{yv:g}'
    draw.text((x0 - 6 - _text_width(draw, yt, font), py - 6), yt,
              fill='black', font=font)
  draw.text(((width - _text_width(draw, xlabel, font)) / 2, height - 16),
            xlabel, fill='black', font=font)
  draw.text((4, 4 if not title else 18), ylabel, fill='black', font=font)
  if title:
    draw.text(((width - _text_width(draw, title, font)) / 2, 2), title,
              fill='black', font=font)
  colours = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd']
  for k, (name, ps) in enumerate(points.items()):
    colour = colours[k % len(colours)]
    pixels = [to_px(x, y) for x, y in sorted(ps)]
    if len(pixels) > 1:
      draw.line(pixels, fill=colour, width=2)
    for px, py in pixels:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    draw.text((x0 + 8, top + 4 + 14 * k), name, fill=colour, font=font)
  path = os.fspath(path)
  _makedirs_for(path)
  canvas.save(path, format='PNG')
