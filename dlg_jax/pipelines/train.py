"""Training a zoo model for the attacks: `experiments/train.py`.

`run(config, workdir)` trains the model of `config.model` with Adam
(`dlg_jax.vision.train`) on the images of `config.data` but the first
`config.data.num_test`, which it holds out, and writes into `workdir`:

* `checkpoint/`: an orbax checkpoint of the weights (and, for a model with
  BatchNorm, its running statistics) with a description of the model and
  images they belong to; an attack config's `config.model.checkpoint=workdir`
  restores them (`common.restore_params`).
* `results.json`: `test_accuracy` (held-out images), `train_accuracy`,
  `initial_test_accuracy` (before training), the losses (`final_loss`: the
  mean of the last tenth of the steps; a `loss_curve`), the steps and
  `seconds` (the training's wall time, compilation included).
* `config.json`: the config, to rerun.

Every check (names, values, the data, the workdir) runs before anything is
compiled or written, so a refused run leaves nothing on disk.
"""

import os
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import numpy as np

from dlg_jax.core import errors
from dlg_jax.core import figures
from dlg_jax.pipelines import common
from dlg_jax.vision import data
from dlg_jax.vision import models
from dlg_jax.vision import train

# Points of the training loss curve kept in results.json.
_CURVE_POINTS = 20


class Plan(NamedTuple):
  """What `prepare` checked and built from a config.

  Attributes:
    model: the flax module.
    train: the training images.
    test: the held-out images (the first `config.data.num_test`).
  """
  model: Any
  train: data.Dataset
  test: data.Dataset


def check_train(config) -> None:
  """`config.train`'s values, errors naming the key."""
  t = config.train
  for key in ('steps', 'batch_size', 'eval_batch_size'):
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise errors.ConfigError(
          f'config.train.{key} must be an int >= 1, got {value!r}.')
  if not t.learning_rate > 0:
    raise errors.ConfigError(
        f'config.train.learning_rate must be > 0, got {t.learning_rate!r}.')


def split(config, ds: data.Dataset) -> tuple[data.Dataset, data.Dataset]:
  """`(train, test)`: the first `config.data.num_test` images are the test."""
  n, num_test = len(ds.x), config.data.num_test
  if isinstance(num_test, bool) or not isinstance(num_test, int) or not (
      1 <= num_test < n):
    raise errors.ConfigError(
        f'config.data.num_test must be an int in [1, {n - 1}] (the '
        f'{common.data_key(config)} {ds.name!r} has {n} images, and some '
        f'must be left to train on), got {num_test!r}.')
  take = lambda s: ds._replace(x=ds.x[s], y=ds.y[s], index=ds.index[s])
  return take(slice(num_test, None)), take(slice(None, num_test))


def checkpoint_path(workdir: str) -> str:
  """Where `run` writes the checkpoint in `workdir`."""
  return os.path.join(workdir, train.CHECKPOINT_DIR)


def prepare(config, workdir: str) -> Plan:
  """Checks the config, the data and the workdir; compiles and writes nothing.

  Raises:
    ConfigError: naming the key or flag at fault.
  """
  common.check_workdir(workdir)
  if os.path.exists(checkpoint_path(workdir)):
    raise errors.ConfigError(
        f'--workdir {workdir!r} already holds a checkpoint '
        f'({checkpoint_path(workdir)}); use a new workdir, or delete it to '
        'train again.')
  check_train(config)
  ds = common.load_data(config)
  train_ds, test_ds = split(config, ds)
  errors.under('config.model.num_classes', data.check_labels, ds.y,
               config.model.num_classes)
  model = common.make_model(config, tuple(ds.x.shape[1:]))
  return Plan(model, train_ds, test_ds)


def _curve(losses: np.ndarray) -> list[dict[str, float]]:
  """`_CURVE_POINTS` points `{step, loss}` of the loss, each a window mean."""
  edges = np.linspace(0, len(losses), min(_CURVE_POINTS, len(losses)) + 1)
  edges = edges.astype(int)
  return [{'step': int(hi), 'loss': float(np.mean(losses[lo:hi]))}
          for lo, hi in zip(edges[:-1], edges[1:])]


def fit(config, plan: Plan) -> tuple[Any, dict[str, Any]]:
  """Trains the model of `plan`; returns its weights and `results.json`."""
  t, model = config.train, plan.model
  apply_fn = models.make_apply_fn(model)
  image_shape = tuple(plan.train.x.shape[1:])
  # One compiled program, not one per operation.
  initial = jax.jit(lambda key: models.init_params(model, key, image_shape))(
      jax.random.PRNGKey(config.model.init_seed))
  start = time.perf_counter()
  params, losses = train.train(
      apply_fn, initial, plan.train.x, plan.train.y,
      jax.random.PRNGKey(t.seed), num_classes=config.model.num_classes,
      steps=t.steps, learning_rate=t.learning_rate, batch_size=t.batch_size)
  losses = np.asarray(losses)  # Waits for the training to finish.
  seconds = time.perf_counter() - start
  score = lambda p, ds: train.evaluate(
      apply_fn, p, ds.x, ds.y, num_classes=config.model.num_classes,
      batch_size=t.eval_batch_size)
  test, train_, before = (score(params, plan.test),
                          score(params, plan.train),
                          score(initial, plan.test))
  # The last tenth of the steps: one minibatch's loss is noisy.
  tail = losses[-max(1, len(losses) // 10):]
  return params, {
      'test_accuracy': test['accuracy'],
      'train_accuracy': train_['accuracy'],
      'test_loss': test['loss'],
      'train_loss': train_['loss'],
      'initial_test_accuracy': before['accuracy'],
      'final_loss': float(np.mean(tail)),
      'first_loss': float(losses[0]),
      'steps': int(t.steps),
      'seconds': seconds,
      'data': plan.train.name,
      'num_train': len(plan.train.x),
      'num_test': len(plan.test.x),
      'test_index_range': [int(plan.test.index[0]),
                           int(plan.test.index[-1])],
      'model': config.model.name,
      'image_shape': list(image_shape),
      'loss_curve': _curve(losses),
  }


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the model of `config` and writes the outputs to `workdir`.

  Args:
    config: a `configs/train.py`-style config.
    workdir: where `checkpoint/`, `results.json` and `config.json` go.

  Returns:
    The content of `results.json`.

  Raises:
    ConfigError: a bad config value, dataset or workdir, named, before
      anything is compiled or written.
  """
  plan = prepare(config, workdir)
  logging.info('training %s on %d %s images %s (holding out the first %d) '
               'for %d steps', config.model.name, len(plan.train.x),
               plan.train.name, plan.train.x.shape[1:], len(plan.test.x),
               config.train.steps)
  common.make_workdir(workdir)
  figures.save_json(os.path.join(workdir, 'config.json'), config.to_dict())
  params, results = fit(config, plan)
  results['checkpoint'] = os.path.abspath(checkpoint_path(workdir))
  train.save_model(
      checkpoint_path(workdir), plan.model, config.model.name,
      tuple(plan.train.x.shape[1:]), params,
      meta={key: results[key] for key in (
          'test_accuracy', 'train_accuracy', 'steps', 'data', 'num_train',
          'num_test')})
  figures.save_json(os.path.join(workdir, 'results.json'), results)
  logging.info('%s: test accuracy %.3f (before training %.3f), train '
               'accuracy %.3f, loss %.3f -> %.3f, %d steps in %.1f s',
               config.model.name, results['test_accuracy'],
               results['initial_test_accuracy'], results['train_accuracy'],
               results['first_loss'], results['final_loss'],
               results['steps'], results['seconds'])
  return results
