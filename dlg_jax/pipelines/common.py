"""What several pipelines share: data, model and attack from a config.

* `check_workdir`, `make_workdir`: the output directory, checked before any
  work without changing anything on disk, then made once the checks pass.
* `load_data`, `target_count`: the images of `config.data`, and how many of
  them are attacked.
* `make_model`: the zoo model of `config.model`, checked on the images.
* `build`: the targets, the model's params (initialised, pretrained, or
  restored from `config.model.checkpoint`) and the `attack.Attack` of
  `config.model`, `config.client` and `config.attack`, every value checked
  before anything is compiled.
* `defense_grid`: the `(defense, strengths)` pairs of a config section.
* `quiet_orbax_logs`: hides orbax's INFO records (several per checkpoint).

Every check raises `errors.ConfigError` naming the config key or flag.
"""

from collections.abc import Callable, Sequence
import dataclasses
import logging as py_logging
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.core import client
from dlg_jax.core import errors
from dlg_jax.vision import attack as attack_lib
from dlg_jax.vision import data
from dlg_jax.vision import labels
from dlg_jax.vision import metrics
from dlg_jax.vision import models
from dlg_jax.vision import train
# Images attacked when config.data.count is None and the data are bundled (or
# TFDS): the first 10, the images of the README's results. A user's npz is
# attacked whole.
DEFAULT_COUNT = 10


def check_workdir(workdir: str) -> None:
  """Checks that `workdir` can be written, changing nothing on disk.

  An existing folder gets a probe file (written and removed); a missing one
  needs its nearest existing parent to be a writable folder, and is made by
  `make_workdir` only once the run has passed its checks, so a refused run
  leaves no folder behind.

  Raises:
    ConfigError: naming `--workdir`.
  """
  if not workdir:
    raise errors.ConfigError('--workdir is required.')
  if '://' in workdir:
    raise errors.ConfigError(
        f'--workdir {workdir!r} is a URL; outputs are written with local file '
        'calls, so give a local or mounted directory (e.g. a bucket mounted '
        'with gcsfuse).')
  if os.path.isdir(workdir):
    try:
      probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
      with open(probe, 'w') as f:
        f.write('ok')
      os.remove(probe)
    except OSError as e:
      raise errors.ConfigError(
          f'--workdir {workdir!r} cannot be written: {e}') from None
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if os.path.exists(workdir) or not os.path.isdir(parent) or not os.access(
      parent, os.W_OK | os.X_OK):
    what = 'is not a folder' if os.path.exists(workdir) else (
        f'cannot be made: {parent} is not a writable folder')
    raise errors.ConfigError(f'--workdir {workdir!r} {what}.')


def make_workdir(workdir: str) -> None:
  """Makes `workdir` (checked by `check_workdir`) for the run's outputs."""
  errors.under('--workdir', os.makedirs, workdir, exist_ok=True)


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


def make_model(config, image_shape: tuple[int, ...]):
  """The zoo model of `config.model`, checked on images of `image_shape`.

  Reads `config.model.name`, `.num_classes`, `.activation` and `.norm`;
  shared by the attacks (`build_model`) and training
  (`dlg_jax.pipelines.train`).

  Raises:
    ConfigError: naming the key at fault, before anything is compiled.
  """
  model = errors.under('config.model', models.get_model, config.model.name,
                       num_classes=config.model.num_classes,
                       activation=config.model.activation,
                       norm=config.model.get('norm'))
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
  if config.model.get('checkpoint') and config.model.pretrain_steps:
    raise errors.ConfigError(
        'config.model.checkpoint: the attacked weights come from the '
        f'checkpoint {config.model.checkpoint!r}, so '
        f'config.model.pretrain_steps must be 0, got '
        f'{config.model.pretrain_steps}.')
  model = make_model(config, image_shape)
  errors.under('config.model.num_classes', data.check_labels, labels,
               config.model.num_classes)
  # The records' metrics need a window that fits (metrics.ssim_window);
  # finding out after the attack would lose it.
  errors.under(data_key(config), metrics.ssim_window, *image_shape[:2])
  return model


# Where each field of an `Attack` comes from in the config: its sections'
# fields are keys of `config.attack`, its client's of `config.client`.
_THREAT_KEYS = {'batch': 'config.data.batch_size',
                'num_classes': 'config.model.num_classes',
                'image_shape': 'config.data'}


def attack_key(field: str) -> str:
  """The config key of an `Attack` field path, e.g. 'labels.label_method'."""
  path = field.split('.') if field else ['']
  if path[:2] == ['threat', 'client']:
    return '.'.join(['config.client', *path[2:]])
  if path[0] == 'threat':
    return _THREAT_KEYS.get(path[-1], 'config.data')
  return '.'.join(['config.attack', *path[1:]]) if path[0] else 'config.attack'


# `config.attack` keys that are no `Attack` section field: the pipelines
# read them (restarts, the prior's data, pairing, the sweep's defense-aware
# attacker) or `make_attack` passes them to `Attack` itself.
_OTHER_ATTACK_KEYS = ('restarts', 'snapshot_steps', 'pair_by', 'prior_images',
                      'prior_floor', 'defense_aware')


def _check_attack_keys(values, sections) -> None:
  """Every key of `config.attack` is a field or a setting a pipeline reads.

  A config file's misspelt key would otherwise be dropped without a word
  (a command-line override of an unknown key is refused by the locked
  config already).
  """
  known = {f.name for cls in sections for f in dataclasses.fields(cls)}
  known.update(_OTHER_ATTACK_KEYS)
  for key in values:
    if key not in known:
      raise errors.ConfigError(
          f'config.attack.{key}: no attack setting has this name; the '
          f'settings are {sorted(known)}.')


def _section(cls, values) -> dict[str, Any]:
  """The keyword arguments of section `cls` from a config section."""
  return {f.name: values[f.name] for f in dataclasses.fields(cls)
          if f.name in values}


def make_attack(config, model, image_shape: tuple[int, ...],
                batch: int) -> attack_lib.Attack:
  """The `Attack` of `config.attack` and `config.client` on `model`.

  Each section of the attack takes its fields by name from `config.attack`
  (`config.client` for the client), so the config keys are the dataclasses'
  field names and an error names the key at fault.

  Raises:
    ConfigError: naming the key at fault.
  """
  a = config.attack
  fl_client = errors.under('config.client', client.Client,
                           **_section(client.Client, config.client))
  sections = {
      'labels': attack_lib.Labels, 'objective': attack_lib.Objective,
      'optimization': attack_lib.Optimization, 'start': attack_lib.Start}
  _check_attack_keys(a, sections.values())
  kwargs = {name: errors.under('config.attack', cls, **_section(cls, a))
            for name, cls in sections.items()}
  threat = errors.under(
      lambda field: attack_key(f'threat.{field}'), attack_lib.Threat,
      apply_fn=models.make_apply_fn(model),
      image_shape=tuple(image_shape), num_classes=config.model.num_classes,
      batch=batch, client=fl_client)
  return errors.under(
      attack_key, attack_lib.Attack, threat=threat,
      snapshot_steps=tuple(a.snapshot_steps),
      success_psnr=config.success_psnr, **kwargs)


def check_runner_config(config) -> None:
  """`config.attack.restarts` and `config.runner`, which `Attack` does not hold.

  Raises:
    ConfigError: naming the key at fault.
  """
  if config.attack.restarts < 1:
    raise errors.ConfigError(
        f'config.attack.restarts must be >= 1, got {config.attack.restarts}.')
  r = config.runner
  if r.chunk_size < 1:
    raise errors.ConfigError(
        f'config.runner.chunk_size must be >= 1, got {r.chunk_size}.')
  if r.max_parallel is not None and r.max_parallel < 1:
    raise errors.ConfigError(
        'config.runner.max_parallel must be >= 1 or unset (every target at '
        f'once), got {r.max_parallel}.')


def restore_params(config, model, image_shape: tuple[int, ...]) -> Any:
  """The weights of the checkpoint `config.model.checkpoint`, checked.

  A training workdir of `experiments/train.py` (or its `checkpoint`
  folder); its parameters and, for a model with BatchNorm, its running
  statistics, as `dlg_jax.vision.train.restore_model` reads them. Nothing
  is compiled.

  Raises:
    ConfigError: naming `config.model.checkpoint`: a missing folder, a
      damaged checkpoint, or one of another model, number of classes or
      image shape.
  """
  path = config.model.checkpoint
  params = errors.under('config.model.checkpoint', train.restore_model,
                        path, model, config.model.name, image_shape)
  logging.info('restored the weights of %s from %s', config.model.name,
               train.checkpoint_dir(path))
  return params


def init_params(config, model, image_shape: tuple[int, ...],
                train_x: np.ndarray, train_y: np.ndarray) -> Any:
  """The model's weights: a checkpoint, or `init_seed` and any pretraining.

  With `config.model.checkpoint` set, restored from it (`restore_params`);
  else initialised from `config.model.init_seed` and, with
  `config.model.pretrain_steps > 0`, trained on `(train_x, train_y)`
  (`dlg_jax.vision.train`).
  """
  if config.model.get('checkpoint'):
    return restore_params(config, model, image_shape)
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
  attack = make_attack(config, model, image_shape, batch)
  check_runner_config(config)
  check_victim(attack, model, image_shape)
  params = init_params(config, model, image_shape, train_x, train_y)
  return ds, params, attack


def _check_classifier_input(attack: attack_lib.Attack, params: Any,
                            x: jax.ShapeDtypeStruct) -> None:
  """`Objective.feature_weight` needs a linen classifier whose input leaks."""
  weight = attack.objective.feature_weight
  try:
    features = jax.eval_shape(
        lambda p, x: models.classifier_input(attack.threat.apply_fn, p, x),
        params, x)
    grads = jax.eval_shape(
        lambda p, x: attack.threat.shared_update(
            p, x, jnp.zeros((x.shape[0], attack.threat.num_classes))),
        params, x)
    leaked = jax.eval_shape(
        lambda g: labels.leaked_features(g, attack.threat.num_classes), grads)
  except ValueError as e:
    raise errors.ConfigError(
        f'config.attack.feature_weight: {weight} matches the classifier\'s '
        f'input, but {e}') from None
  if features.shape[1:] != leaked.shape:
    raise errors.ConfigError(
        f'config.attack.feature_weight: {weight} matches the input of the '
        f'last Dense layer ({features.shape[1]} features), but the '
        f'classifier layer has {leaked.shape[0]} inputs: the model\'s last '
        'Dense call is not its classifier.')


def check_victim(attack: attack_lib.Attack, model,
                 image_shape: tuple[int, ...]) -> None:
  """What the attack needs of the victim, read off its traced program.

  Raises:
    ConfigError: `config.attack.bn_weight` > 0 on a model without a
      training-mode BatchNorm layer (nothing to match).
  """
  params = jax.eval_shape(
      lambda: models.init_params(model, jax.random.key(0), image_shape))
  x = jax.ShapeDtypeStruct((attack.batch, *image_shape), jnp.float32)
  if attack.objective.bn_weight and not jax.eval_shape(
      lambda p, x: models.batch_norm_statistics(attack.threat.apply_fn, p, x),
      params, x):
    raise errors.ConfigError(
        f'config.attack.bn_weight: {attack.objective.bn_weight} weighs a '
        'BatchNorm-statistics prior, but the model has no training-mode '
        'BatchNorm layer (config.model.norm=batch has).')
  if attack.objective.feature_weight:
    _check_classifier_input(attack, params, x)
  if attack.objective.relu_smoothing:
    _check_relu_smoothing(attack, params, x, image_shape)
    if jax.eval_shape(lambda p, x: models.batch_norm_statistics(
        attack.threat.apply_fn, p, x), params, x):
      logging.warning(
          'config.attack.relu_smoothing on a training-mode BatchNorm victim: '
          'on the BatchNorm ConvNet it cost 13 dB (14.1 against 27.3 dB '
          'with configs/ig.py:bn, docs/victims.md).')
  if (attack.optimization.optimizer != 'adam'
      and models.has_relu(attack.threat.apply_fn, params, image_shape)):
    logging.warning(
        'The victim computes ReLUs: DLG\'s L-BFGS stalls on them (a ReLU '
        'ConvNet ends at 11-21 dB on CIFAR-100, docs/victims.md); '
        'configs/ig.py (Inverting Gradients\' recipe with a ReLU smoothing) '
        'is the attack for such victims.')


def _check_relu_smoothing(attack: attack_lib.Attack, params: Any,
                          x: jax.ShapeDtypeStruct,
                          image_shape: tuple[int, ...]) -> None:
  """`Objective.relu_smoothing` needs ReLUs it can reach, outside loops."""
  smoothing = attack.objective.relu_smoothing
  if not models.has_relu(attack.threat.apply_fn, params, image_shape):
    raise errors.ConfigError(
        f'config.attack.relu_smoothing: {smoothing} smooths the victim\'s '
        'ReLUs, but the model computes none (max(z, 0)); unset it.')
  try:
    jax.eval_shape(models.smooth_relu(attack.threat.apply_fn, 1.0),
                   params, x)
  except NotImplementedError as e:
    raise errors.ConfigError(
        f'config.attack.relu_smoothing: {e}') from None


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
