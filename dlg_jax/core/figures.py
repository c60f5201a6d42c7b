"""Output a person looks at: reconstruction grids, plots, and JSON for machines.

`save_reconstruction_grid` draws the DLG paper's figure layout: one row per
attacked image, the ground truth first, then the reconstruction at chosen
iterations (with Pillow, pixel for pixel). `save_line_plot` draws sweep and
study plots with matplotlib. `save_json` writes `results.json` /
`config.json` from pytrees of numpy and JAX values.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
import os
import textwrap
from typing import Any

import jax
from jax.typing import ArrayLike
from matplotlib import figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
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
# Line-plot markers, so that series that overlap stay apart.
_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')
# Points: small enough for a 480x320 plot to hold its title and legend.
_PLOT_FONT_SIZE = 9
_PLOT_DPI = 100


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


def _finite(v: Any) -> bool:
  return v is not None and math.isfinite(float(v))


def save_line_plot(path: str | os.PathLike[str],
                   series: dict[str, tuple[Sequence[float], Sequence[float]]],
                   *,
                   xlabel: str,
                   ylabel: str,
                   title: str = '',
                   size: tuple[int, int] = (480, 320),
                   no_x_label: str = 'no x value') -> None:
  """Writes a PNG line plot of a few series, with matplotlib.

  One colour and marker per series, lines through its points in x order;
  a series with a single point is that marker alone. A point whose x is None
  or not finite (e.g. a defense with no strength, such as a float16 cast, on
  a plot against strength) has a y but no place on the x axis: it is drawn
  as a dashed horizontal line across the plot, and its legend entry says
  so (`no_x_label`, e.g. 'no strength'). Points with a None or non-finite y
  are skipped (e.g. a batch size that never reached the threshold); every
  series with a finite y is on the figure and in the legend. The x axis is
  logarithmic when all x are positive and span two decades or more, linear
  otherwise; the y axis starts at 0 when no y is
  negative. Ticks are matplotlib's, the legend is below the axes. Drawn on
  a `matplotlib.figure.Figure` with the Agg canvas, so pyplot's global state
  and backend are untouched.

  Args:
    path: the PNG to write; parent folders are created.
    series: name -> (xs, ys).
    xlabel: the x-axis label.
    ylabel: the y-axis label.
    title: an optional title above the plot.
    size: (width, height) of the PNG in pixels.
    no_x_label: the legend's words for a series drawn as a level line.

  Raises:
    ValueError: no finite y to draw, or xs and ys of different lengths.
  """
  fig = _line_plot_figure(series, xlabel=xlabel, ylabel=ylabel, title=title,
                          size=size, no_x_label=no_x_label)
  path = os.fspath(path)
  _makedirs_for(path)
  fig.savefig(path, format='png', dpi=_PLOT_DPI)


def _line_plot_figure(series, *, xlabel, ylabel, title, size,
                      no_x_label='no x value') -> figure.Figure:
  """The figure `save_line_plot` writes (tests read its axes and legend)."""
  lines, levels = {}, {}
  for name, (xs, ys) in series.items():
    if len(xs) != len(ys):
      raise ValueError(f'series {name!r} has {len(xs)} xs and {len(ys)} ys.')
    kept = [(x, float(y)) for x, y in zip(xs, ys) if _finite(y)]
    lines[name] = sorted((float(x), y) for x, y in kept if _finite(x))
    levels[name] = [y for x, y in kept if not _finite(x)]
  ys_all = [y for ps in lines.values() for _, y in ps] + [
      y for ls in levels.values() for y in ls]
  if not ys_all:
    raise ValueError('save_line_plot: no finite point to draw.')
  xs_all = [x for ps in lines.values() for x, _ in ps]

  width, height = size
  fig = figure.Figure(figsize=(width / _PLOT_DPI, height / _PLOT_DPI),
                      dpi=_PLOT_DPI, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for k, name in enumerate(series):
    colour = f'C{k % 10}'
    marker = _MARKERS[k % len(_MARKERS)]
    ps = lines[name]
    suffix = ' (one point)' if len(ps) == 1 and not levels[name] else ''
    if ps:
      ax.plot([x for x, _ in ps], [y for _, y in ps], color=colour,
              marker=marker, markersize=7 if suffix else 5,
              linestyle='-' if len(ps) > 1 else 'none', linewidth=1.5,
              label=f'{name}{suffix}')
    for i, y in enumerate(levels[name]):
      ax.axhline(y, color=colour, linestyle='--', linewidth=1.5,
                 label=(f'{name} ({no_x_label})' if i == 0 and not ps else
                        None))
  if xs_all and min(xs_all) > 0 and max(xs_all) >= 100 * min(xs_all):
    ax.set_xscale('log')
  elif xs_all and all(float(x).is_integer() for x in xs_all):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if not xs_all:
    ax.set_xticks([])
  if min(ys_all) >= 0:
    ax.set_ylim(bottom=0, top=max(ys_all) * 1.08 or 1.0)
  ax.grid(True, color='0.9', linewidth=0.8)
  ax.set_axisbelow(True)
  ax.tick_params(labelsize=_PLOT_FONT_SIZE)
  ax.set_xlabel(xlabel, fontsize=_PLOT_FONT_SIZE)
  ax.set_ylabel(ylabel, fontsize=_PLOT_FONT_SIZE)
  # A 9-point character is about 6 pixels wide at 100 dpi.
  chars = max(20, (width - 20) // 6)
  if title:
    ax.set_title(textwrap.fill(title, chars), fontsize=_PLOT_FONT_SIZE + 1)
  handles, labels = ax.get_legend_handles_labels()
  # As many columns as the widest entry allows, plus room for the marker.
  per_col = 6 * max(len(t) for t in labels) + 40
  ncols = max(1, min(len(labels), width // per_col))
  fig.legend(handles, labels, loc='outside lower center', ncols=ncols,
             frameon=False, fontsize=_PLOT_FONT_SIZE)
  return fig
