"""Image classifiers attacked by DLG, as pure Flax modules.

`LeNet` is the sigmoid network of the DLG paper's release; `ConvNet` and `ResNet`
take a selectable activation so that one can see where gradient leakage weakens
(ReLU, depth, width). Every model maps `[batch, h, w, c]` images in [0, 1] to
`[batch, num_classes]` logits and is a pure function of its parameters.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from jax.typing import ArrayLike

from dlg_jax.core import client

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'sigmoid': nn.sigmoid,
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'gelu': nn.gelu,
    'softplus': nn.softplus,
    'swish': nn.swish,
    'elu': nn.elu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called `name`, or raises a ValueError naming it."""
  if name not in ACTIVATIONS:
    raise ValueError(
        f'Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def _uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _windows(x: jax.Array, axis: int, size: int, stride: int,
             count: int) -> jax.Array:
  """`count` windows of `size` along `axis`, concatenated on the last axis.

  `x` is `[..., c]`; the result has `count` in place of `axis` and
  `size * c` channels, window offset major. With a stride that divides the
  axis, neighbours are first grouped into the channels by a reshape (free),
  so a window is `ceil(size / stride)` slices rather than `size`: fewer ops
  in the objective's second-order gradient, whose transposes of slices are
  pads and adds of whole feature maps.
  """
  c = x.shape[-1]
  if stride == 1 or x.shape[axis] % stride:
    return jnp.concatenate([
        jax.lax.slice_in_dim(x, j, j + stride * (count - 1) + 1, stride, axis)
        for j in range(size)], axis=-1)
  grouped = jnp.moveaxis(x, axis, -2)
  grouped = grouped.reshape(*grouped.shape[:-2], x.shape[axis] // stride,
                            stride * c)
  grouped = jnp.moveaxis(grouped, -2, axis)
  parts = []
  for q in range(-(-size // stride)):
    part = jax.lax.slice_in_dim(grouped, q, q + count, 1, axis)
    width = min(stride, size - q * stride) * c
    parts.append(part if width == stride * c else part[..., :width])
  return jnp.concatenate(parts, axis=-1)


def _patches(x: jax.Array, kernel_size: tuple[int, int],
             strides: tuple[int, int],
             padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  """`[b, h, w, c]` -> `[b, h_out, w_out, kh * kw * c]` patches, by slicing.

  Strided slices (and, for the gradient, their transposes: pads and adds)
  keep every derivative of the convolution free of grouped convolutions.
  Windows are taken along the width, then along the height of those, so a
  5x5 kernel costs 10 slices (6 with stride 2) rather than 25; the patches'
  channels are in `(i, j, c)` order, as `kernel.reshape(-1, c_out)`.
  """
  (kh, kw), (sh, sw) = kernel_size, strides
  _, h, w, _ = x.shape
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding)
  else:
    pads = tuple(tuple(p) for p in padding)
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  h_out = (x.shape[1] - kh) // sh + 1
  w_out = (x.shape[2] - kw) // sw + 1
  x = _windows(x, 2, kw, sw, w_out)
  return _windows(x, 1, kh, sh, h_out)


class Conv(nn.Module):
  """A 2-D convolution computed as image patches times a matrix.

  Same parameters (`kernel` `[kh, kw, c_in, c_out]`, `bias`) and outputs as
  `flax.linen.Conv`, but built from strided slices and a matrix product.
  This matters for gradient inversion: the attack differentiates the
  client's weight gradient and vmaps it over many dummy images, and through
  `lax.conv` that becomes `batch_group_count` convolutions, which XLA's CPU
  backend runs ~10x slower per example than one at a time. In matrix form
  the same objective costs 0.45 ms alone and 0.42 ms per image vmapped over
  8 (DLG LeNet, 2-core CPU), against 0.75 ms and 10 ms with `nn.Conv`.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = 'SAME'
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    c_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, c_in, self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    patches = _patches(x, (kh, kw), tuple(self.strides), self.padding)
    kernel = kernel.reshape(kh * kw * c_in, self.features)
    return patches @ kernel + bias.reshape(1, 1, 1, -1)


class LeNet(nn.Module):
  """The DLG paper's LeNet: three 5x5 convolutions of 12 channels, one dense.

  Strides 2, 2, 1 with padding 2 (as PyTorch's `padding=5 // 2`), sigmoid
  activations, and weights and biases drawn from uniform(-0.5, 0.5) as in the
  paper's release; 32x32 inputs give 768 features, 28x28 inputs 588.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019.
  """
  num_classes: int = 100
  activation: str = 'sigmoid'
  init_scale: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    init = _uniform(self.init_scale)
    conv = functools.partial(
        Conv, features=12, kernel_size=(5, 5), padding=((2, 2), (2, 2)),
        kernel_init=init, bias_init=init)
    x = act(conv(strides=(2, 2))(x))
    x = act(conv(strides=(2, 2))(x))
    x = act(conv(strides=(1, 1))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, kernel_init=init, bias_init=init)(x)


# Normalisation after each convolution of the ConvNet and ResNet: 'none',
# 'batch' (BatchNorm in training mode: the batch's own statistics, as a
# client computes its gradient; the model then has 'batch_stats' state) or
# 'group' (GroupNorm, 4 groups: per example, no state).
NORMS = ('none', 'batch', 'group')


def normalize(kind: str, x: jax.Array) -> jax.Array:
  """`x` through the normalisation layer `kind` (one of `NORMS`)."""
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=False, momentum=0.9)(x)
  if kind == 'group':
    return nn.GroupNorm(num_groups=4)(x)
  return x


class ConvNet(nn.Module):
  """A VGG-style ConvNet: stages of two 3x3 convolutions and 2x2 average pooling.

  `norm` (one of `NORMS`) follows each convolution; without one ('none', the
  default) a client's gradient is a function of each example alone.
  """
  num_classes: int = 100
  activation: str = 'relu'
  widths: Sequence[int] = (32, 64, 128)
  norm: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    for width in self.widths:
      x = act(normalize(self.norm, Conv(width, (3, 3))(x)))
      x = act(normalize(self.norm, Conv(width, (3, 3))(x)))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
  """A basic residual block: two 3x3 convolutions, each followed by `norm`."""
  width: int
  strides: int
  activation: str
  norm: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    stride = (self.strides, self.strides)
    y = act(normalize(self.norm, Conv(self.width, (3, 3), strides=stride)(x)))
    y = normalize(self.norm, Conv(self.width, (3, 3))(y))
    if x.shape != y.shape:
      x = normalize(self.norm, Conv(self.width, (1, 1), strides=stride)(x))
    return act(x + y)


class ResNet(nn.Module):
  """A small ResNet: a 3x3 stem, then `blocks` residual blocks per stage.

  `norm` (one of `NORMS`) follows every convolution; 'none' by default.
  """
  num_classes: int = 100
  activation: str = 'relu'
  widths: Sequence[int] = (16, 32, 64)
  blocks: int = 1
  norm: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    x = act(normalize(self.norm, Conv(self.widths[0], (3, 3))(x)))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(width, strides, self.activation, self.norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class ResNet20(ResNet):
  """ResNet-20 (He et al. 2016's CIFAR ResNet): 3 stages of 3 blocks, 16-64
  channels, BatchNorm by default, as in Inverting Gradients' CIFAR victims.
  Shortcuts that change shape are 1x1 convolutions (He et al.'s option B).
  """
  blocks: int = 3
  norm: str = 'batch'


class ResNet18(ResNet):
  """ResNet-18 with the CIFAR stem (one 3x3 convolution, no max pooling):
  4 stages of 2 blocks, 64-512 channels, BatchNorm by default; 11.2M
  parameters at 100 classes.
  """
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: int = 2
  norm: str = 'batch'


class ResNet18ImageNet(nn.Module):
  """ResNet-18 with the ImageNet stem, for 224x224 images (He et al. 2016).

  A 7x7 stride-2 convolution to 64 channels, `norm`, the activation and 3x3
  stride-2 max pooling, then ResNet-18's 4 stages of 2 blocks (64-512
  channels), global average pooling and the classifier: torchvision's
  `resnet18`, the victim of Inverting Gradients' and breaching's ImageNet
  examples (11.7M parameters at 1,000 classes). BatchNorm by default.
  """
  num_classes: int = 1000
  activation: str = 'relu'
  widths: Sequence[int] = (64, 128, 256, 512)
  blocks: int = 2
  norm: str = 'batch'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    x = Conv(self.widths[0], (7, 7), strides=(2, 2),
             padding=((3, 3), (3, 3)))(x)
    x = act(normalize(self.norm, x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(width, strides, self.activation, self.norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


MODELS = {'lenet': LeNet, 'convnet': ConvNet, 'resnet': ResNet,
          'resnet18': ResNet18, 'resnet20': ResNet20,
          'resnet18_imagenet': ResNet18ImageNet}


def get_model(name: str, *, num_classes: int, activation: str | None = None,
              norm: str | None = None, **kwargs) -> nn.Module:
  """Builds the model called `name`.

  Args:
    name: one of `MODELS`.
    num_classes: number of output classes.
    activation: a name from `ACTIVATIONS`; None keeps the model's default
      (sigmoid for LeNet, ReLU otherwise).
    norm: one of `NORMS` for the ConvNet and ResNets; None keeps the
      model's own ('none', but 'batch' for ResNet-18 and ResNet-20).
      With 'batch' the model has state: `init_params` returns a
      `client.Victim`.
    **kwargs: other fields of the model class (e.g. `widths`).

  Returns:
    The Flax module.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; choose one of {sorted(MODELS)}.')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  if activation is not None:
    get_activation(activation)
    kwargs['activation'] = activation
  if norm is not None:
    if norm not in NORMS:
      raise ValueError(f'Unknown norm {norm!r}; choose one of {list(NORMS)}.')
    if 'norm' not in {f.name for f in dataclasses.fields(MODELS[name])}:
      raise ValueError(f'{name} has no normalisation option (norm); the '
                       'convnet and resnet have.')
    kwargs['norm'] = norm
  return MODELS[name](num_classes=num_classes, **kwargs)


def init_params(model: nn.Module, key: jax.Array,
                image_shape: Sequence[int]) -> Any:
  """Initialises `model` for images of `image_shape` `[h, w, c]`.

  Returns:
    The parameters of a model whose only collection is 'params'; for a
    model with state (e.g. BatchNorm's 'batch_stats'), a `client.Victim`
    holding its parameters and the other collections. Either one is what
    the client functions and `ModelApply` take.
  """
  if len(image_shape) != 3:
    raise ValueError(
        f'image_shape must be [h, w, c], got {tuple(image_shape)}.')
  # One compiled program: op by op, the initialisers' random-number ops
  # each compile on their own (the ConvNet: 7.7 s against 3.2 s, the
  # same bits).
  variables = dict(jax.jit(model.init)(
      key, jnp.zeros((1, *image_shape), jnp.float32)))
  params = variables.pop('params')
  if not variables:
    return params
  return client.Victim(params=params, state=variables)


@dataclasses.dataclass(frozen=True)
class ModelApply:
  """`(params, x) -> logits`: `model` as a pure function of its params.

  `params` may be a `client.Victim`: its state collections go to
  `model.apply` too, as mutable, so a BatchNorm layer in training mode
  normalises by the batch's statistics (what the client's gradient used);
  the updated statistics are dropped, since the gradient does not depend
  on them.

  Equal (and equally hashed) for equal modules, unlike a closure: an attack
  built on it is a static argument that two calls with the same model share,
  so `dlg_jax.core.runner.CACHE` serves the second call without compiling.
  """
  model: nn.Module

  def __call__(self, params, x: jax.Array) -> jax.Array:
    return self.with_state(params, x)[0]

  def with_state(self, params, x: jax.Array) -> tuple[jax.Array, Any]:
    """Logits and the state the pass leaves (None for plain params).

    A training-mode BatchNorm's running statistics move towards the batch's,
    as `model.apply(..., mutable=...)` updates them; training keeps them.
    """
    if isinstance(params, client.Victim):
      variables = {'params': params.params, **params.state}
      logits, updates = self.model.apply(variables, x,
                                         mutable=list(params.state))
      return logits, {**params.state, **updates}
    return self.model.apply({'params': params}, x), None


def batch_norm_statistics(apply_fn: Any, params: Any,
                          x: jax.Array) -> tuple[tuple[jax.Array, jax.Array],
                                                 ...]:
  """The statistics each training-mode BatchNorm takes of a batch.

  For each `nn.BatchNorm` of `apply_fn`'s linen module that normalises by
  the batch (not its running averages), in call order: the mean and the
  biased variance of its input over every axis but the features, which is
  what the layer normalises `x` by. A client that shares its updated
  running statistics (FedAvg) reveals them; GradAttack's "strong" threat
  model gives them to the attacker, and GradInversion (Yin et al. 2021)
  matches them as a prior (`Objective.bn_weight`).

  Args:
    apply_fn: a `ModelApply` (of a linen module).
    params: its parameters, or a `client.Victim`.
    x: `[batch, h, w, c]` inputs.

  Returns:
    `((mean, var), ...)`, one pair of `[features]` arrays per layer; empty
    for a model without such a layer.

  Raises:
    ValueError: `apply_fn` is not a `ModelApply`.
  """
  stats = []
  for module, args, kwargs in _calls(
      'batch_norm_statistics', apply_fn, params, x, nn.BatchNorm):
    running = nn.merge_param(
        'use_running_average', module.use_running_average,
        args[1] if len(args) > 1 else kwargs.get('use_running_average'))
    if not running:
      y = args[0]
      axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
      features = {a % y.ndim for a in axes}
      reduce = tuple(a for a in range(y.ndim) if a not in features)
      mean = jnp.mean(y, axis=reduce)
      var = jnp.mean(jnp.square(y - jnp.expand_dims(mean, reduce)),
                     axis=reduce)
      stats.append((mean, var))
  return tuple(stats)


def _calls(caller: str, apply_fn: Any, params: Any, x: jax.Array,
           module_type: type[nn.Module]) -> list[tuple[nn.Module, tuple,
                                                         dict]]:
  """`(module, args, kwargs)` of each `module_type.__call__` of one pass.

  Raises:
    ValueError: naming `caller`, when `apply_fn` is not a `ModelApply`.
  """
  if not isinstance(apply_fn, ModelApply):
    raise ValueError(
        f'{caller} needs a linen model (models.make_apply_fn), got '
        f'{type(apply_fn).__name__}.')
  calls = []

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, module_type)
        and context.method_name == '__call__'):
      calls.append((context.module, args, kwargs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    apply_fn(params, x)
  return calls


def classifier_input(apply_fn: Any, params: Any, x: jax.Array) -> jax.Array:
  """The input of the model's last `nn.Dense` call, flattened per example.

  What `labels.leaked_features` reads off a single example's gradient:
  matching it (`Objective.feature_weight`) gives the attack a term that is
  continuous in the image even through ReLUs, where the gradient distance
  jumps each time a unit turns on or off (docs/victims.md).

  Args:
    apply_fn: a `ModelApply` (of a linen module).
    params: its parameters, or a `client.Victim`.
    x: `[batch, h, w, c]` inputs.

  Returns:
    `[batch, d]`.

  Raises:
    ValueError: `apply_fn` is not a `ModelApply`, or calls no `nn.Dense`.
  """
  calls = _calls('classifier_input', apply_fn, params, x, nn.Dense)
  if not calls:
    raise ValueError('classifier_input: the model calls no nn.Dense layer.')
  _, args, _ = calls[-1]
  return args[0].reshape(x.shape[0], -1)


def has_relu(apply_fn: Callable[..., Any], params: Any,
             image_shape: Sequence[int]) -> bool:
  """Whether the model computes `max(x, 0)` (a ReLU) anywhere.

  The zero second, as `jax.nn.relu` writes it; a normalisation layer's
  variance clamp, `max(0, v)`, is no ReLU.

  Read off the traced program (nothing is compiled or run), so it works for
  any model, a user's linen or NNX module included. DLG's L-BFGS stalls on
  such victims (see configs/ig.py and docs/victims.md), which a launcher
  warns about.
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return _has_relu(jax.make_jaxpr(apply_fn)(params, x).jaxpr)


def _is_relu(eqn: Any) -> bool:
  """`max(z, 0)`, the zero second, as `jax.nn.relu` and user code write it.

  Flax's normalisation layers clamp a variance as `max(0, v)`, the zero
  first: not a ReLU, and left alone.
  """
  if eqn.primitive.name != 'max' or len(eqn.invars) != 2:
    return False
  z, zero = eqn.invars
  return (not isinstance(z, jex_core.Literal)
          and isinstance(zero, jex_core.Literal) and zero.val == 0)


def _has_relu(jaxpr: Any) -> bool:
  for eqn in jaxpr.eqns:
    if _is_relu(eqn):
      return True
    if any(_has_relu(sub) for sub in jex_core.jaxprs_in_params(eqn.params)):
      return True
  return False


def _soft_max0(z: jax.Array, sharpness: jax.Array) -> jax.Array:
  """`softplus(s z) / s` where `sharpness` s > 0, else `max(z, 0)`."""
  on = sharpness > 0
  s = jnp.where(on, sharpness, 1.0).astype(z.dtype)  # no 0 * inf inside
  return jnp.where(on, jax.nn.softplus(s * z) / s, jnp.maximum(z, 0))


# Primitives that call a sub-program once on their operands: inlined where
# it holds a ReLU.
_CALLS = ('jit', 'pjit', 'closed_call', 'core_call', 'remat', 'checkpoint',
          'custom_jvp_call', 'custom_vjp_call', 'custom_vjp_call_jaxpr')


def _eval_smoothed(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any],
                   sharpness: jax.Array) -> list[Any]:
  """Evaluates `jaxpr` with every `max(z, 0)` through `_soft_max0`.

  Calls (`jit`, `custom_jvp_call`, `custom_vjp_call`) that hold a ReLU are
  inlined, their custom rules dropped (the smoothed function is plainly
  differentiable); every other equation is bound as it was traced.
  """
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    subs = list(jex_core.jaxprs_in_params(eqn.params))
    if _is_relu(eqn):
      outs = [_soft_max0(jnp.broadcast_to(invals[0],
                                          eqn.outvars[0].aval.shape),
                         sharpness)]
    elif subs and any(_has_relu(sub) for sub in subs):
      if eqn.primitive.name not in _CALLS:
        raise NotImplementedError(
            f'smooth_relu: a ReLU inside {eqn.primitive.name!r} (control '
            'flow) cannot be smoothed; only one inside calls can.')
      sub = next(eqn.params[k] for k in ('jaxpr', 'call_jaxpr')
                 if k in eqn.params)
      outs = _eval_smoothed(getattr(sub, 'jaxpr', sub),
                            getattr(sub, 'consts', ()), invals, sharpness)
    else:
      outs = eqn.primitive.bind(*invals, **eqn.params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def smooth_relu(fn: Callable[..., Any], sharpness: ArrayLike
                ) -> Callable[..., Any]:
  """`fn` with each ReLU `max(z, 0)` it computes made `softplus(s z) / s`.

  A ReLU is `max(z, 0)` with the zero second (`jax.nn.relu`, and so flax's
  `nn.relu` and `nnx.relu`, or `jnp.maximum(z, 0)`); the variance clamp of
  flax's normalisation layers, `max(0, v)`, is left as it is.

  A continuation for attacks on ReLU victims (`Objective.relu_smoothing`):
  through ReLUs the gradient distance is a staircase, flat between the
  points where a unit switches, and a local optimiser stalls on a step
  (docs/victims.md); the softplus of sharpness `s` rounds each switch over
  a width of about `1 / s` in the unit's input, so that early steps see
  a slope across it. Read off the traced program, as `has_relu`, so it
  works for any function of any model (linen or NNX), e.g. the victim's
  `apply_fn`; `s` may be traced (annealed inside a jitted loop), and
  `s <= 0` gives `fn` exactly. Derivatives traced inside `fn` (a gradient
  it computes) keep the ReLU's step: smooth the model, then differentiate.

  Args:
    fn: a function of arrays (pytrees).
    sharpness: `s`, a scalar.

  Returns:
    A function with `fn`'s arguments and outputs.
  """
  sharpness = jnp.asarray(sharpness, jnp.float32)

  def smoothed(*args):
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval_smoothed(closed.jaxpr, closed.consts,
                          jax.tree.leaves(args), sharpness)
    return jax.tree.unflatten(jax.tree.structure(shape), outs)

  return smoothed


def make_apply_fn(model: nn.Module) -> ModelApply:
  """Returns `(params, x) -> logits`, the model as a pure function of params."""
  return ModelApply(model)


@dataclasses.dataclass(frozen=True)
class NnxApply:
  """`(params, x) -> logits` of a Flax NNX module's graph.

  `params` is the module's `nnx.Param` variables as a plain nested dict, or
  a `client.Victim` whose `state` holds its other variables (BatchNorm's
  statistics, RNG state) as one. The module is rebuilt (`nnx.merge`) inside
  each call, so the function is pure: a BatchNorm in training mode
  normalises by the batch's statistics and its updates are dropped, as
  `ModelApply` does. Equal for equal graphs, so an attack built on it is a
  static argument that calls share.
  """
  graphdef: Any

  def __call__(self, params, x: jax.Array) -> jax.Array:
    return self.with_state(params, x)[0]

  def with_state(self, params, x: jax.Array) -> tuple[jax.Array, Any]:
    """Logits and the state the pass leaves (None for plain params)."""
    if not isinstance(params, client.Victim):
      return nnx.merge(self.graphdef, nnx.State(params))(x), None
    model = nnx.merge(self.graphdef, nnx.State(params.params),
                      nnx.State(params.state))
    logits = model(x)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return logits, rest.to_pure_dict()


def from_nnx(module: nnx.Module) -> tuple[NnxApply, Any]:
  """A Flax NNX module as `(apply_fn, params)` for the client and the attack.

  Args:
    module: an initialised NNX module mapping `[batch, h, w, c]` images to
      `[batch, num_classes]` logits.

  Returns:
    `(apply_fn, params)`: an `NnxApply`, and the module's parameters as a
    plain dict (so gradients are plain dicts, which the label read-out
    walks), or a `client.Victim` with its other variables as its state when
    it has any.

  Example:

    >>> apply_fn, params = models.from_nnx(MyNet(rngs=nnx.Rngs(0)))
    >>> grads = client.gradient(apply_fn, params, x, onehot)
  """
  if not isinstance(module, nnx.Module):
    raise ValueError(f'from_nnx needs a flax.nnx.Module, got '
                     f'{type(module).__name__}.')
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  params = params.to_pure_dict()
  rest = rest.to_pure_dict()
  if rest:
    params = client.Victim(params=params, state=rest)
  return NnxApply(graphdef), params
