"""A model's weights on disk: one orbax checkpoint with what describes it.

A checkpoint is a folder of three orbax items: 'params' (the trainable
parameters), 'state' (the model's other collections, such as BatchNorm's
`batch_stats`; absent for a model without state) and 'meta' (JSON: what the
weights belong to, so that a restore can refuse weights of another model
before reading them, and a sha256 of the arrays, so that damaged arrays are
refused rather than restored: orbax itself restores some damage silently).
`save` writes one; `read_meta` reads its description alone, and `restore`
its arrays into a target structure. Orbax writes to a temporary folder and
renames it when complete, so an interrupted save never leaves a folder that
`read_meta` accepts.

Example:

  >>> checkpoint.save('/tmp/ckpt', params, meta={'model': 'lenet'})
  >>> checkpoint.read_meta('/tmp/ckpt')['model']
  'lenet'
  >>> params, state = checkpoint.restore(
  ...     '/tmp/ckpt', jax.eval_shape(lambda: params))
"""

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# The items of a checkpoint folder.
PARAMS, STATE, META = 'params', 'state', 'meta'
# Characters of an orbax error kept in a message (some hold whole specs).
_MAX_MESSAGE = 200


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(directory: str, params: Any, *, state: Any = None,
         meta: dict[str, Any]) -> None:
  """Writes `params` (and `state`) with `meta` as a checkpoint at `directory`.

  Args:
    directory: the checkpoint folder; it must not exist.
    params: a pytree of arrays (the trainable parameters).
    state: a pytree of arrays (the model's other collections), or None.
    meta: JSON-serialisable description of the weights.

  Raises:
    ValueError: `directory` exists.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise ValueError(f'{directory} exists; a checkpoint is never overwritten.')
  items = {PARAMS: ocp.args.StandardSave(params),
           META: ocp.args.JsonSave({**meta, 'has_state': state is not None,
                                    'sha256': digest(params, state)})}
  if state is not None:
    items[STATE] = ocp.args.StandardSave(state)
  with _checkpointer() as ckptr:
    ckptr.save(directory, args=ocp.args.Composite(**items))


def read_meta(directory: str) -> dict[str, Any]:
  """The description `save` stored at `directory`, reading no arrays.

  Raises:
    FileNotFoundError: no folder at `directory`.
    ValueError: the folder is not a complete checkpoint of `save`.
  """
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoint folder at {directory}')
  if not os.path.isdir(os.path.join(directory, META)):
    raise ValueError(
        f'{directory} is not a dlg_jax checkpoint (no {META!r} item; it is '
        'written by experiments/train.py, or an interrupted save).')
  try:
    with _checkpointer() as ckptr:
      meta = ckptr.restore(directory, args=ocp.args.Composite(
          **{META: ocp.args.JsonRestore()}))[META]
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{directory}: its {META!r} item cannot be read '
                     f'({type(e).__name__}: {e}).') from None
  if not isinstance(meta, dict):
    raise ValueError(f'{directory}: its {META!r} item is not a JSON object.')
  return meta


def restore(directory: str, params_like: Any,
            state_like: Any = None) -> tuple[Any, Any]:
  """The arrays `save` wrote at `directory`, in the structures given.

  Args:
    directory: a checkpoint folder of `save`.
    params_like: the parameters' structure, shapes and dtypes (arrays or
      `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape`).
    state_like: the same for the state, or None for a model without.

  Returns:
    `(params, state)`, `state` None when `state_like` is.

  Raises:
    ValueError: the checkpoint is unreadable, or its arrays do not match
      the structures (the message says what differs).
  """
  meta = read_meta(directory)
  if meta.get('has_state') != (state_like is not None):
    raise ValueError(
        f'{os.path.abspath(directory)} holds a model '
        f'{"with" if meta.get("has_state") else "without"} state (such as '
        'BatchNorm statistics), the model restored here has '
        f'{"some" if state_like is not None else "none"}.')
  items = {PARAMS: ocp.args.StandardRestore(_abstract(params_like))}
  if state_like is not None:
    items[STATE] = ocp.args.StandardRestore(_abstract(state_like))
  try:
    with _checkpointer() as ckptr:
      out = ckptr.restore(os.path.abspath(directory),
                          args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    # Orbax and tensorstore raise many types for a damaged or mismatched
    # checkpoint; each is a bad input here, named by the caller.
    message = str(e).splitlines()[0] if str(e) else ''
    if len(message) > _MAX_MESSAGE:
      message = message[:_MAX_MESSAGE] + '...'
    raise ValueError(f'{os.path.abspath(directory)} cannot be restored into '
                     f'this model ({type(e).__name__}: {message})') from None
  params, state = out[PARAMS], out[STATE] if state_like is not None else None
  if digest(params, state) != meta.get('sha256'):
    raise ValueError(
        f'{os.path.abspath(directory)} is damaged: its arrays do not match '
        'the sha256 saved with them.')
  return params, state


def digest(params: Any, state: Any = None) -> str:
  """sha256 of the arrays' paths, dtypes, shapes and bytes."""
  h = hashlib.sha256()
  tree = {PARAMS: params, STATE: state}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'
             .encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _abstract(tree: Any) -> Any:
  """`tree` as `jax.ShapeDtypeStruct`s, the target orbax restores into."""
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
