"""What several pipelines share: data, model and attack from a config.

* `check_workdir`: the output directory, checked before any work.
* `load_data`, `target_count`: the images of `config.data`, and how many of
  them are attacked.
* `build`: the targets, the model's params and the `attack.Attack` of
  `config.model`, `config.client` and `config.attack`, every value checked
  before anything is compiled.
* `defense_grid`: the `(defense, strengths)` pairs of a config section.
* `quiet_orbax_logs`: hides orbax's INFO records (several per checkpoint).

Every check raises `errors.ConfigError` naming the config key or flag.
"""

from collections.abc import Callable, Sequence
import logging as py_logging
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import errors
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import data
from dlg_jax.vision import metrics
from dlg_jax.vision import models
from dlg_jax.vision import train
# Images attacked when config.data.count is None and the data are bundled (or
# TFDS): the first 10, the images of the README's results. A user's npz is
# attacked whole.
DEFAULT_COUNT = 10


def check_workdir(workdir: str) -> None:
  """Creates `workdir` and checks that it can be written, before any work."""
  if not workdir:
    raise errors.ConfigError('--workdir is required.')
  if '://' in workdir:
    raise errors.ConfigError(
        f'--workdir {workdir!r} is a URL; outputs are written with local file '
        'calls, so give a local or mounted directory (e.g. a bucket mounted '
        'with gcsfuse).')
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.ConfigError(
        f'--workdir {workdir!r} cannot be written: {e}') from None


def defense_grid(section: str, names: Sequence[str], strengths: Any,
                 check: Callable[[str, np.ndarray], None]
                 ) -> list[tuple[str, tuple[float, ...]]]:
  """`(defense, strengths)` pairs from `config.<section>`, errors naming keys.

  Shared by the sweep (`config.sweep`) and the utility study
  (`config.utility`).

  Args:
    section: the config section, for the messages.
    names: `config.<section>.defenses`.
    strengths: the `config.<section>.strengths` mapping.
    check: `check(name, strengths)` validates one entry (raising
      ValueError).

  Returns:
    `[(name, (strength, ...)), ...]` in the order of `names`.

  Raises:
    ConfigError: naming the key at fault.
  """
  names = tuple(names)
  if not names:
    raise errors.ConfigError(
        f'config.{section}.defenses must name at least one defense.')
  if len(set(names)) != len(names):
    raise errors.ConfigError(
        f'config.{section}.defenses names a defense twice: {names}.')
  grid = []
  for name in names:
    if name not in strengths:
      raise errors.ConfigError(
          f'config.{section}.strengths.{name} is missing: every defense in '
          f'config.{section}.defenses needs strengths.')
    values = tuple(float(s) for s in strengths[name])
    if not values:
      raise errors.ConfigError(f'config.{section}.strengths.{name} is empty.')
    errors.under(f'config.{section}.strengths.{name}', check, name,
                 np.asarray(values))
    grid.append((name, values))
  return grid


def data_key(config) -> str:
  """The config key the data came from: `config.data.npz` or `.source`."""
  return 'config.data.npz' if config.data.npz else 'config.data.source'


def load_data(config) -> data.Dataset:
  """Every image `config.data` names, errors naming the key."""
  cfg = config.data
  if cfg.npz:
    return errors.under(data_key(config), data.load_dataset, cfg.source,
                        npz=cfg.npz, count=None)
  return errors.under(data_key(config), data.load_dataset, cfg.source,
                      data_dir=cfg.data_dir or None, split=cfg.split,
                      count=None)


def target_count(config, available: int) -> int:
  """How many of the `available` images are attacked: `config.data.count`.

  Without a count (None, the configs' default), every image of a user's npz,
  else the first `DEFAULT_COUNT` (or all, when fewer).

  Raises:
    ConfigError: a count outside [1, available], naming the key.
  """
  count = config.data.count
  if count is None:
    return available if config.data.npz else min(DEFAULT_COUNT, available)
  if isinstance(count, bool) or not isinstance(count, int) or not (
      1 <= count <= available):
    default = ('all of them' if config.data.npz else
               f'the first {min(DEFAULT_COUNT, available)}')
    raise errors.ConfigError(
        f'config.data.count must be in [1, {available}] (the images in '
        f'{config.data.npz or config.data.source!r}), got {count!r}; unset, '
        f'it attacks {default}.')
  return count


def check_batches(config, ds: data.Dataset) -> int:
  """The number of targets' images: `config.data.count`, whole batches.

  Raises:
    ConfigError: a batch size outside [1, len(ds.x)] or a count that is not
      a multiple of it.
  """
  batch = config.data.batch_size
  if not 1 <= batch <= len(ds.x):
    raise errors.ConfigError(
        f'config.data.batch_size must be in [1, {len(ds.x)}] (the images in '
        f'{ds.name!r}), got {batch}.')
  count = target_count(config, len(ds.x))
  if count % batch:
    unset = '' if config.data.count is not None else ', as it is unset'
    raise errors.ConfigError(
        f'config.data.count ({count}{unset}) must be a multiple of '
        f'config.data.batch_size ({batch}): targets are whole batches of '
        'consecutive images.')
  return count


def build_model(config, image_shape: tuple[int, ...], labels: np.ndarray):
  """The flax model of `config.model`, checked on images of `image_shape`.

  Args:
    config: the config; reads `config.model` (and `config.data` for the
      messages).
    image_shape: `(h, w, c)` of the targets.
    labels: the targets' labels, checked against `num_classes`.

  Raises:
    ConfigError: naming the key at fault, before anything is compiled.
  """
  if config.model.pretrain_steps < 0:
    raise errors.ConfigError('config.model.pretrain_steps must be >= 0, got '
                             f'{config.model.pretrain_steps}.')
  model = errors.under('config.model', models.get_model, config.model.name,
                       num_classes=config.model.num_classes,
                       activation=config.model.activation)
  errors.under('config.model.num_classes', data.check_labels, labels,
               config.model.num_classes)
  # The records' metrics need a window that fits (metrics.ssim_window);
  # finding out after the attack would lose it.
  errors.under(data_key(config), metrics.ssim_window, *image_shape[:2])
  try:
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'config.model.name: model {config.model.name!r} does not take '
        f'images of shape {image_shape}: {e}') from None
  empty = [jax.tree_util.keystr(path) for path, leaf in
           jax.tree_util.tree_flatten_with_path(shapes)[0] if leaf.size == 0]
  if empty:
    raise errors.ConfigError(
        f'config.model.name: model {config.model.name!r} does not take '
        f'images of shape {image_shape}: they are too small, leaving layers '
        f'{empty} with no inputs.')
  return model


def check_attack_config(config, batch: int) -> None:
  """`config.attack` and `config.client` values `Attack` does not check.

  Raises:
    ConfigError: naming the key at fault.
  """
  a, c = config.attack, config.client
  if a.label_method not in attack_lib.LABEL_METHODS:
    raise errors.ConfigError(
        f'config.attack.label_method must be one of '
        f'{list(attack_lib.LABEL_METHODS)}, got {a.label_method!r}.')
  if a.label_mode == 'analytic' and a.label_method == 'idlg' and batch > 1:
    raise errors.ConfigError(
        'config.attack.label_method "idlg" is exact for batch 1 only; with '
        f'config.data.batch_size={batch} use "count" (or "auto").')
  if c.local_steps < 1:
    raise errors.ConfigError(
        f'config.client.local_steps must be >= 1 (1 is FedSGD), got '
        f'{c.local_steps}.')
  if not c.learning_rate > 0:
    raise errors.ConfigError(
        f'config.client.learning_rate must be > 0, got {c.learning_rate}.')
  local_batch = c.local_batch_size or batch
  if local_batch < 1 or batch % local_batch:
    raise errors.ConfigError(
        f'config.client.local_batch_size must be 0 (the whole batch) or '
        f'divide config.data.batch_size ({batch}), got {c.local_batch_size}.')
  if local_batch != batch and c.local_steps == 1:
    raise errors.ConfigError(
        'config.client.local_batch_size must be 0 with '
        'config.client.local_steps=1 (FedSGD: one step on the whole batch), '
        f'got {c.local_batch_size}.')
  if local_batch != batch and a.label_mode == 'analytic':
    raise errors.ConfigError(
        'config.client.local_batch_size must be 0 with '
        'config.attack.label_mode "analytic": labels read off the update do '
        'not say which local mini-batch each belongs to; use "joint" or '
        '"known".')
  if a.restarts < 1:
    raise errors.ConfigError(
        f'config.attack.restarts must be >= 1, got {a.restarts}.')
  r = config.runner
  if r.chunk_size < 1:
    raise errors.ConfigError(
        f'config.runner.chunk_size must be >= 1, got {r.chunk_size}.')
  if r.max_parallel is not None and r.max_parallel < 1:
    raise errors.ConfigError(
        'config.runner.max_parallel must be >= 1 or unset (every target at '
        f'once), got {r.max_parallel}.')


def make_attack(config, model, image_shape: tuple[int, ...],
                batch: int) -> attack_lib.Attack:
  """The `Attack` of `config.attack` and `config.client` on `model`."""
  a, c = config.attack, config.client
  return errors.under(
      'config.attack', attack_lib.Attack,
      apply_fn=models.make_apply_fn(model), image_shape=image_shape,
      num_classes=config.model.num_classes, batch=batch,
      label_mode=a.label_mode, label_method=a.label_method,
      local_steps=c.local_steps, local_lr=c.learning_rate,
      local_batch_size=c.local_batch_size, distance=a.distance,
      tv_weight=a.tv_weight,
      tv_final_weight=a.tv_final_weight,
      tv_decay_steps=a.tv_decay_steps, tv_stages=a.tv_stages,
      prior_weight=a.prior_weight, optimizer=a.optimizer,
      learning_rate=a.learning_rate, memory_size=a.memory_size,
      num_steps=a.num_steps, init=a.init, init_scale=a.init_scale, tol=a.tol,
      snapshot_steps=tuple(a.snapshot_steps),
      success_psnr=config.success_psnr)


def init_params(config, model, image_shape: tuple[int, ...],
                train_x: np.ndarray, train_y: np.ndarray) -> Any:
  """The model's weights: `config.model.init_seed`, then any pretraining.

  With `config.model.pretrain_steps > 0`, trained on `(train_x, train_y)`
  (`dlg_jax.vision.train`).
  """
  params = models.init_params(
      model, jax.random.PRNGKey(config.model.init_seed), image_shape)
  if config.model.pretrain_steps:
    errors.under('config.model.num_classes', data.check_labels, train_y,
                 config.model.num_classes)
    params, losses = train.train(
        models.make_apply_fn(model), params, train_x, train_y,
        jax.random.PRNGKey(config.model.init_seed + 1),
        num_classes=config.model.num_classes,
        steps=config.model.pretrain_steps,
        learning_rate=config.model.pretrain_lr)
    logging.info('pretrained %s for %d steps on %d images: loss %.3f -> %.3f',
                 config.model.name, config.model.pretrain_steps, len(train_x),
                 float(losses[0]), float(losses[-1]))
  return params


def build(config, ds: data.Dataset
          ) -> tuple[data.Dataset, Any, attack_lib.Attack]:
  """Targets, params and attack from the config, validated before compiling.

  Args:
    config: the config; reads `config.data`, `.model`, `.client`,
      `.attack` and `.success_psnr`.
    ds: every image of `config.data` (`load_data`).

  Returns:
    `(targets, params, attack)`: the first `target_count` images of `ds`,
    the model's weights (pretrained on the others when
    `config.model.pretrain_steps > 0`, on all when none are left) and the
    attack.

  Raises:
    ConfigError: naming the key at fault.
  """
  count = check_batches(config, ds)
  # Pretraining uses the images not attacked, or all when none are left.
  train_x, train_y = (ds.x[count:], ds.y[count:]) if count < len(ds.x) else (
      ds.x, ds.y)
  ds = ds._replace(x=ds.x[:count], y=ds.y[:count], index=ds.index[:count])
  image_shape = tuple(ds.x.shape[1:])
  model = build_model(config, image_shape, ds.y)
  batch = config.data.batch_size
  check_attack_config(config, batch)
  attack = make_attack(config, model, image_shape, batch)
  params = init_params(config, model, image_shape, train_x, train_y)
  return ds, params, attack


def _is_orbax_info(record: py_logging.LogRecord) -> bool:
  return (record.levelno < py_logging.WARNING
          and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


class _OrbaxInfoFilter(py_logging.Filter):
  """Drops orbax's records below WARNING."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not _is_orbax_info(record)


_ORBAX_FILTER = _OrbaxInfoFilter()

# absl logging (most of orbax) goes through the python logger 'absl'; a few
# orbax modules log through the root logger.
_ORBAX_LOGGERS = ('absl', '')


def quiet_orbax_logs(verbose: bool = False) -> None:
  """Hides orbax's INFO records, or (`verbose`) shows them again.

  Each checkpoint orbax saves logs several INFO lines, which drown the
  progress of a sweep (one checkpoint per chunk); its warnings and errors
  are always shown. Idempotent.

  Args:
    verbose: show orbax's INFO records (`--orbax_logs`).
  """
  for name in _ORBAX_LOGGERS:
    logger = py_logging.getLogger(name)
    if verbose:
      logger.removeFilter(_ORBAX_FILTER)
    else:
      logger.addFilter(_ORBAX_FILTER)
