"""Defenses a client applies to its gradient before sharing it.

Section 5 of the DLG paper (Zhu, Liu and Han 2019) tests how far perturbing
the shared gradient stops the leak: additive Gaussian and Laplacian noise,
half-precision casts, int8 quantisation and gradient pruning (sparsification).
Every defense here is a pure function with the one signature

    defense(key, grads, strength) -> grads

over the gradient pytree that `client.gradient` returns, so that one `vmap`
over `strength` (and `key`) runs a whole sweep of defense strengths against
the same attack. `strength` is a traced scalar wherever it has a meaning (a
noise variance, a pruned fraction) and is ignored by the dtype casts.

DP-SGD (Abadi et al. 2016) needs each example's gradient before averaging,
so it takes per-example gradients (`dp_sgd`) or the batch itself
(`dp_sgd_gradient`).

Each defense is declared once, as a `DefenseSpec` passed to `register`: its
function, what its strength means and its valid range (`check_strength`),
what a defense-aware attacker does against it (`aware`), and whether it acts
on per-example gradients. `lookup(name)` returns the spec; `DEFENSES` maps
the names of the batch-gradient defenses (all but DP-SGD) to their
functions. Adding a defense is one function and one `register` call here.

Example:

  >>> lookup('prune_layer').aware == AWARE_MASK
  True
  >>> defend = get_defense('gaussian')
  >>> check_strength('gaussian', 1e-2)
  >>> shared = defend(jax.random.key(0), grads, 1e-2)
  >>> sweep = jax.vmap(defend, in_axes=(None, None, 0))(
  ...     key, grads, jnp.array([1e-4, 1e-3, 1e-2, 1e-1]))

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep Learning
  with Differential Privacy", CCS 2016.
"""

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
import math
import numbers
import types
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from dlg_jax.core import client
Grads = Any
Defense = Callable[[jax.Array, Grads, ArrayLike], Grads]

# The int8 grid is symmetric, [-127, 127], so that zero is exact and the
# scale is the same for both signs.
_INT8_MAX = 127.0


def _leaf_keys(key: jax.Array, grads: Grads) -> Grads:
  """One independent key per leaf, laid out like `grads`."""
  leaves, treedef = jax.tree.flatten(grads)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(treedef, list(keys[:len(leaves)]))


def gaussian_noise(key: jax.Array, grads: Grads, strength: ArrayLike) -> Grads:
  """Adds independent Gaussian noise of variance `strength` to every entry.

  The DLG paper sweeps the noise by its VARIANCE (1e-1 down to 1e-4), so
  `strength` is the variance and the standard deviation is
  `sqrt(strength)`.

  Args:
    key: a PRNG key.
    grads: the gradient pytree.
    strength: scalar variance sigma^2 >= 0.

  Returns:
    `grads` plus N(0, strength) noise, same structure and dtypes.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  """
  std = jnp.sqrt(jnp.asarray(strength, jnp.float32))
  return jax.tree.map(
      lambda g, k: g + (std * jax.random.normal(k, g.shape)).astype(g.dtype),
      grads, _leaf_keys(key, grads))


def laplacian_noise(key: jax.Array, grads: Grads,
                    strength: ArrayLike) -> Grads:
  """Adds independent Laplace noise of variance `strength` to every entry.

  A Laplace distribution of scale b has variance 2 b^2, so the scale is
  `sqrt(strength / 2)`; with the same `strength` the Gaussian and Laplacian
  defenses perturb by the same energy and differ only in the tails.

  Args:
    key: a PRNG key.
    grads: the gradient pytree.
    strength: scalar variance >= 0.

  Returns:
    `grads` plus Laplace noise, same structure and dtypes.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  """
  scale = jnp.sqrt(jnp.asarray(strength, jnp.float32) / 2.0)
  return jax.tree.map(
      lambda g, k: g + (scale * jax.random.laplace(k, g.shape)).astype(g.dtype),
      grads, _leaf_keys(key, grads))


def _round_trip(dtype) -> Defense:
  def defense(key: jax.Array, grads: Grads, strength: ArrayLike) -> Grads:
    del key, strength  # A cast is deterministic and has no strength.
    return jax.tree.map(lambda g: g.astype(dtype).astype(g.dtype), grads)
  return defense


def float16(key: jax.Array, grads: Grads, strength: ArrayLike = 0.0) -> Grads:
  """Shares the gradient in IEEE half precision: cast down and back.

  Args:
    key: unused.
    grads: the gradient pytree (float32).
    strength: unused.

  Returns:
    `grads` rounded to float16 and cast back to each leaf's dtype.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  """
  return _round_trip(jnp.float16)(key, grads, strength)


def bfloat16(key: jax.Array, grads: Grads, strength: ArrayLike = 0.0) -> Grads:
  """Shares the gradient in bfloat16 (8 exponent, 7 mantissa bits).

  Args:
    key: unused.
    grads: the gradient pytree (float32).
    strength: unused.

  Returns:
    `grads` rounded to bfloat16 and cast back to each leaf's dtype.
  """
  return _round_trip(jnp.bfloat16)(key, grads, strength)


def sign(key: jax.Array, grads: Grads, strength: ArrayLike = 0.0) -> Grads:
  """1-bit sign compression: shares `sign(g) * mean|g|` per leaf.

  Each entry keeps only its sign; one float per leaf, the mean magnitude,
  restores the scale (the scaled sign of Karimireddy et al., `||g||_1 / d`),
  and zeros stay zero.

  Args:
    key: unused.
    grads: the gradient pytree.
    strength: unused.

  Returns:
    The compressed gradient, same structure and dtypes.

  References:
    Bernstein, Wang, Azizzadenesheli and Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018.
    Karimireddy, Rebjock, Stich and Jaggi, "Error Feedback Fixes SignSGD and
    other Gradient Compression Schemes", ICML 2019.
  """
  del key, strength

  def compress(g):
    g32 = g.astype(jnp.float32)
    return (jnp.sign(g32) * jnp.mean(jnp.abs(g32))).astype(g.dtype)

  return jax.tree.map(compress, grads)


def int8_scale(g: ArrayLike) -> jax.Array:
  """The per-tensor int8 step `max|g| / 127` in float32 (0 if all zero).

  float32 whatever `g`'s dtype: a step rounded to bfloat16 came out one ulp
  apart with and without jit (XLA keeps the quotient in float32).
  """
  return jnp.max(jnp.abs(g)).astype(jnp.float32) / _INT8_MAX


def _int8_leaf(g: jax.Array) -> jax.Array:
  scale = int8_scale(g)
  # An all-zero tensor has scale 0; dividing by 1 instead keeps it exactly 0.
  safe = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  q = jnp.clip(jnp.round(g.astype(jnp.float32) / safe), -_INT8_MAX,
               _INT8_MAX).astype(jnp.int8)
  return (q.astype(jnp.float32) * scale).astype(g.dtype)


def int8(key: jax.Array, grads: Grads, strength: ArrayLike = 0.0) -> Grads:
  """Symmetric per-tensor int8 quantisation, dequantised.

  Each leaf is scaled by `s = max|g| / 127`, rounded to the nearest integer
  in [-127, 127] and multiplied back by `s`, so every entry moves by at most
  `s / 2` and zeros stay exactly zero.

  Args:
    key: unused.
    grads: the gradient pytree.
    strength: unused.

  Returns:
    The dequantised gradient, same structure and dtypes.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5
    (low-precision gradients).
  """
  del key, strength
  return jax.tree.map(_int8_leaf, grads)


def _keep_mask(magnitude: jax.Array, fraction: ArrayLike) -> jax.Array:
  """Flat bool mask keeping all but the `floor(fraction * n)` smallest.

  Ranks (ties broken by position) rather than a threshold value, so exactly
  that many entries go even when magnitudes tie, and `fraction` may be
  traced.
  """
  n = magnitude.size
  num_pruned = jnp.floor(jnp.asarray(fraction, jnp.float32) * n).astype(
      jnp.int32)
  order = jnp.argsort(magnitude, stable=True)
  keep_sorted = jnp.arange(n) >= num_pruned
  return jnp.zeros(n, bool).at[order].set(keep_sorted)


def prune_per_layer(key: jax.Array, grads: Grads,
                    strength: ArrayLike) -> Grads:
  """Zeroes the `strength` fraction of smallest-magnitude entries per leaf.

  Within each leaf of n entries exactly `floor(strength * n)` entries, those
  of smallest |g|, become 0 (DLG's "gradient pruning", the sparsification
  of Lin et al. 2018 and Tsuzuku et al. 2018).

  Args:
    key: unused.
    grads: the gradient pytree.
    strength: pruned fraction in [0, 1); may be traced.

  Returns:
    The pruned gradient, same structure and dtypes.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5
    (gradient compression and sparsification).
  """
  del key

  def prune(g):
    keep = _keep_mask(jnp.abs(g).ravel(), strength).reshape(g.shape)
    return jnp.where(keep, g, jnp.zeros_like(g))

  return jax.tree.map(prune, grads)


def prune_global(key: jax.Array, grads: Grads, strength: ArrayLike) -> Grads:
  """Zeroes the `strength` fraction of smallest-magnitude entries overall.

  As `prune_per_layer`, but the `floor(strength * N)` smallest |g| are
  chosen among all N entries of all leaves together, so layers with small
  gradients lose more.

  Args:
    key: unused.
    grads: the gradient pytree.
    strength: pruned fraction in [0, 1); may be traced.

  Returns:
    The pruned gradient, same structure and dtypes.

  References:
    Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019, section 5.
  """
  del key
  leaves, treedef = jax.tree.flatten(grads)
  if not leaves:
    return grads
  flat = jnp.concatenate(
      [jnp.abs(g).ravel().astype(jnp.float32) for g in leaves])
  keep = _keep_mask(flat, strength)
  out, start = [], 0
  for g in leaves:
    mask = keep[start:start + g.size].reshape(g.shape)
    out.append(jnp.where(mask, g, jnp.zeros_like(g)))
    start += g.size
  return jax.tree.unflatten(treedef, out)


def surviving_mask(defended_grads: Grads) -> Grads:
  """Which entries survived pruning: a bool pytree, True where non-zero.

  A defense-aware attacker matches only these entries (a pruned entry tells
  it nothing but that its magnitude was small).

  Args:
    defended_grads: the gradient pytree after a defense.

  Returns:
    A pytree of bool arrays shaped like `defended_grads`.
  """
  return jax.tree.map(lambda g: g != 0, defended_grads)


# DP-SGD's input; it lives with the client, which computes it.
per_example_gradients = client.per_example_gradients


def per_example_norms(per_example_grads: Grads) -> jax.Array:
  """`[batch]` L2 norms of each example's whole (all-leaf) gradient."""
  squares = [jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1),
                     axis=1)
             for g in jax.tree.leaves(per_example_grads)]
  return jnp.sqrt(sum(squares))


def _clip_factor(norms: jax.Array, clip_norm: ArrayLike) -> jax.Array:
  """`min(1, clip_norm / norms)`; a zero gradient needs no scaling (no 0 / 0)."""
  clip_norm = jnp.asarray(clip_norm, jnp.float32)
  return jnp.where(norms > clip_norm,
                   clip_norm / jnp.where(norms > 0, norms, 1.0), 1.0)


def clip_by_global_norm_per_example(per_example_grads: Grads, *,
                                    clip_norm: ArrayLike) -> Grads:
  """Scales each example's gradient to L2 norm at most `clip_norm`.

  Example i is multiplied by `min(1, clip_norm / ||g_i||)`, the norm taken
  over all leaves together (Abadi et al. 2016, Algorithm 1, "clip gradient").

  Args:
    per_example_grads: a pytree whose leaves have a leading `[batch]` axis.
    clip_norm: the bound C > 0.

  Returns:
    The clipped per-example gradients, same structure.

  References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
  """
  factor = _clip_factor(per_example_norms(per_example_grads), clip_norm)

  def scale(g):
    f = factor.reshape(factor.shape + (1,) * (g.ndim - 1))
    return (g * f).astype(g.dtype)

  return jax.tree.map(scale, per_example_grads)


def _check_clip_norm(clip_norm: ArrayLike) -> None:
  if isinstance(clip_norm, numbers.Real) and not clip_norm > 0:
    raise ValueError(f'clip_norm must be > 0, got {clip_norm!r}.')


def _dp_noise(key: jax.Array, mean: Grads, strength: ArrayLike,
              clip_norm: ArrayLike, batch: int) -> Grads:
  """Adds DP-SGD's `N(0, (sigma C / B)^2)` to the clipped mean gradient."""
  std = (jnp.asarray(strength, jnp.float32)
         * jnp.asarray(clip_norm, jnp.float32) / batch)
  return jax.tree.map(
      lambda g, k: g + (std * jax.random.normal(k, g.shape)).astype(g.dtype),
      mean, _leaf_keys(key, mean))


def dp_sgd(key: jax.Array, per_example_grads: Grads, strength: ArrayLike, *,
           clip_norm: ArrayLike) -> Grads:
  """The DP-SGD gradient: clip each example, average, add Gaussian noise.

  With B examples, noise multiplier sigma = `strength` and bound C =
  `clip_norm` this shares `mean_i clip(g_i) + N(0, (sigma C / B)^2)`, i.e.
  Abadi et al.'s `(sum_i clip(g_i) + N(0, sigma^2 C^2)) / B`.

  This form takes per-example gradients that are already computed. Inside a
  training loop, `dp_sgd_gradient` computes the same from the batch without
  materialising them.

  Args:
    key: a PRNG key.
    per_example_grads: a pytree whose leaves have a leading `[batch]` axis
      (see `per_example_gradients`).
    strength: the noise multiplier sigma >= 0; may be traced.
    clip_norm: the per-example L2 bound C > 0.

  Returns:
    A pytree shaped like one example's gradient (no batch axis).

  References:
    Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar and Zhang, "Deep
    Learning with Differential Privacy", CCS 2016, Algorithm 1.
  """
  _check_clip_norm(clip_norm)
  leaves = jax.tree.leaves(per_example_grads)
  if not leaves:
    return per_example_grads
  clipped = clip_by_global_norm_per_example(per_example_grads,
                                            clip_norm=clip_norm)
  mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), clipped)
  return _dp_noise(key, mean, strength, clip_norm, leaves[0].shape[0])


def clipped_mean_gradient(apply_fn: client.ApplyFn, params: Grads,
                          x: ArrayLike, labels: ArrayLike, *,
                          clip_norm: ArrayLike) -> Grads:
  """`mean_i clip(g_i)` over a batch, one example at a time.

  Each example's gradient is computed as a batch of one, clipped to global
  L2 norm `clip_norm` and added to a running sum under `lax.scan`, so the
  `[batch, ...]` tree of per-example gradients is never formed and no
  gradient is vmapped over examples. Equal (up to float rounding) to
  `clip_by_global_norm_per_example` of `per_example_gradients`, averaged.

  Why a scan: XLA:CPU (jax 0.10.2) was seen to crash with SIGSEGV on one
  2-core AVX2 machine running `vmap`-over-examples gradients with clipping
  inside the `lax.scan` of SGD steps, itself vmapped over seeds and
  strengths (`utility.accuracy_grid('dp_sgd', ...)`). This form has the
  shape of the plain mini-batch gradient that ran there, and holds one
  example's gradient at a time instead of the batch's.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters.
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels.
    clip_norm: the per-example L2 bound C > 0; may be traced.

  Returns:
    A pytree shaped like `params`.
  """
  _check_clip_norm(clip_norm)
  x, labels = jnp.asarray(x), jnp.asarray(labels)

  def add_one(total, example):
    xi, yi = example
    g = client.gradient(apply_fn, params, xi[None], yi[None])
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)))
                        for leaf in jax.tree.leaves(g)))
    factor = _clip_factor(norm, clip_norm)
    return jax.tree.map(lambda t, leaf: t + (leaf * factor).astype(t.dtype),
                        total, g), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  total, _ = jax.lax.scan(add_one, zeros, (x, labels))
  return jax.tree.map(lambda t: t / x.shape[0], total)


def dp_sgd_gradient(key: jax.Array, apply_fn: client.ApplyFn, params: Grads,
                    x: ArrayLike, labels: ArrayLike, strength: ArrayLike, *,
                    clip_norm: ArrayLike) -> Grads:
  """The DP-SGD gradient of a batch: `dp_sgd` without per-example trees.

  The clipped mean comes from `clipped_mean_gradient` (a scan over the
  examples); the noise is `dp_sgd`'s, drawn from the same keys, so for the
  same `key` the two agree up to float rounding.

  Args:
    key: a PRNG key.
    apply_fn: `(params, x) -> logits`.
    params: the model's parameters.
    x: `[batch, h, w, c]` inputs.
    labels: `[batch, num_classes]` soft labels.
    strength: the noise multiplier sigma >= 0; may be traced.
    clip_norm: the per-example L2 bound C > 0.

  Returns:
    A pytree shaped like `params`.

  References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
    Algorithm 1.
  """
  mean = clipped_mean_gradient(apply_fn, params, x, labels,
                               clip_norm=clip_norm)
  return _dp_noise(key, mean, strength, clip_norm, jnp.shape(x)[0])


def compose(*defenses: Defense) -> Defense:
  """Chains defenses, applied in the given order, each with its own key.

  Args:
    *defenses: functions `(key, grads, strength) -> grads`.

  Returns:
    `(key, grads, strengths) -> grads`, where `strengths` is a scalar (used
    by every defense) or an array of shape `[len(defenses)]` (one each).

  Example:

    >>> prune_then_fp16 = compose(prune_per_layer, float16)
    >>> shared = prune_then_fp16(key, grads, jnp.array([0.9, 0.0]))
  """
  if not defenses:
    raise ValueError('compose needs at least one defense.')
  n = len(defenses)

  def composed(key: jax.Array, grads: Grads, strengths: ArrayLike) -> Grads:
    strengths = jnp.broadcast_to(jnp.asarray(strengths, jnp.float32), (n,))
    keys = jax.random.split(key, n)
    for i, defense in enumerate(defenses):
      grads = defense(keys[i], grads, strengths[i])
    return grads

  return composed


# What a defense-aware attacker (`attack.aware_target`) does against a
# defense: match only the coordinates that survived (`surviving_mask`); weigh
# a TV prior in proportion to the noise variance (MAP under Gaussian-like
# noise); or nothing, the plain attacker.
AWARE_MASK = 'mask'
AWARE_NOISE_PRIOR = 'noise_prior'
AWARE_NONE = 'none'
_AWARE = (AWARE_MASK, AWARE_NOISE_PRIOR, AWARE_NONE)

# `DefenseSpec.strength` of a defense that takes no strength (the casts).
IGNORED = 'ignored'


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefenseSpec:
  """Everything the library knows about one defense, declared once.

  Attributes:
    name: the name configs and results use.
    fn: `(key, grads, strength) -> grads`; for a per-example defense, `grads`
      has a leading `[batch]` axis and the output has none.
    strength: what the strength means, a short phrase for messages and
      tables ('noise variance', 'pruned fraction', or `IGNORED`).
    max_strength: strengths must be finite and lie in `[0, max_strength)`.
    aware: what a defense-aware attacker does against it: `AWARE_MASK`,
      `AWARE_NOISE_PRIOR` (the strength must be the noise variance) or
      `AWARE_NONE`.
    per_example: True when the defense acts on each example's gradient
      before averaging (DP-SGD): the utility study then computes the shared
      gradient with `dp_sgd_gradient` rather than applying `fn` to the batch
      gradient, and the attack sweep, which defends a batch gradient, does
      not take it.
    identity_at_zero: True when strength 0 shares the gradient unchanged
      (noise of variance 0, pruning nothing).
    sweep_strengths: the strengths a sweep tries unless told others (the
      DLG paper's grid, its figure 6, where the paper has one).
  """
  name: str
  fn: Defense
  strength: str
  max_strength: float = math.inf
  aware: str = AWARE_NONE
  per_example: bool = False
  identity_at_zero: bool = False
  sweep_strengths: tuple[float, ...] = (0.0,)

  def __post_init__(self):
    if not self.name or not isinstance(self.name, str):
      raise ValueError(f'name must be a non-empty str, got {self.name!r}.')
    if not callable(self.fn):
      raise ValueError(f'fn of defense {self.name!r} must be callable, got '
                       f'{self.fn!r}.')
    if self.aware not in _AWARE:
      raise ValueError(f'aware of defense {self.name!r} must be one of '
                       f'{list(_AWARE)}, got {self.aware!r}.')
    if not self.max_strength > 0:
      raise ValueError(f'max_strength of defense {self.name!r} must be > 0, '
                       f'got {self.max_strength!r}.')
    if not self.sweep_strengths:
      raise ValueError(f'sweep_strengths of defense {self.name!r} is empty.')
    if self.identity_at_zero and self.strength == IGNORED:
      raise ValueError(f'defense {self.name!r} ignores its strength, so '
                       'strength 0 cannot be its identity.')


_REGISTRY: dict[str, DefenseSpec] = {}
# Every registered defense by name, read-only; `register` adds to it.
REGISTRY: Mapping[str, DefenseSpec] = types.MappingProxyType(_REGISTRY)
# The defenses of a batch gradient (all but the per-example ones), name ->
# fn: what the attack sweep can run. Kept in step by `register`.
DEFENSES: dict[str, Defense] = {}


def register(spec: DefenseSpec) -> DefenseSpec:
  """Adds `spec` to the registry (and, unless per-example, to `DEFENSES`).

  Args:
    spec: the defense.

  Returns:
    `spec`.

  Raises:
    ValueError: a defense of that name is already registered.
  """
  if spec.name in _REGISTRY:
    raise ValueError(f'A defense named {spec.name!r} is already registered.')
  _REGISTRY[spec.name] = spec
  if not spec.per_example:
    DEFENSES[spec.name] = spec.fn
  return spec


def lookup(name: str) -> DefenseSpec:
  """The registered defense called `name`.

  Raises:
    ValueError: an unknown `name`, listing the known ones.
  """
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(
        f'Unknown defense {name!r}; choose one of {sorted(_REGISTRY)}.')
  return _REGISTRY[name]


def get_defense(name: str) -> Defense:
  """The function of the batch-gradient defense `name`.

  Raises:
    ValueError: an unknown `name`, or a per-example one (DP-SGD: call
      `dp_sgd` or `dp_sgd_gradient`), naming it.
  """
  if name not in DEFENSES:
    if name in _REGISTRY:
      raise ValueError(
          f'Defense {name!r} acts on per-example gradients ('
          f'lookup({name!r}).fn, or `dp_sgd_gradient` from a batch); choose a '
          f'batch-gradient defense from {sorted(DEFENSES)}.')
    raise ValueError(
        f'Unknown defense {name!r}; choose one of {sorted(DEFENSES)} (or the '
        f'per-example {sorted(set(_REGISTRY) - set(DEFENSES))}).')
  return DEFENSES[name]


def check_strength(name: str, strength: ArrayLike) -> None:
  """Validates a (concrete) strength, or an array of them, for `name`.

  Strengths must be finite and lie in `[0, lookup(name).max_strength)`:
  noise variances and multipliers >= 0, pruned fractions below 1 (pruning
  everything leaves nothing to share). Traced values are not checked.

  Args:
    name: a registered defense (per-example ones included).
    strength: the strength, or an array of strengths for a sweep.

  Raises:
    ValueError: naming the unknown defense, or the defense and its bad
      `strength`.
  """
  spec = lookup(name)
  if isinstance(strength, jax.core.Tracer):
    return
  values = np.asarray(strength, np.float64)
  # Comparisons are False for NaN, so NaN fails too.
  if not np.all(np.isfinite(values) & (values >= 0)
                & (values < spec.max_strength)):
    raise ValueError(
        f'strength for {name!r} ({spec.strength}) must be finite and in '
        f'[0, {spec.max_strength:g}), got {strength!r}.')


def _dp_sgd_unit_clip(key: jax.Array, per_example_grads: Grads,
                     strength: ArrayLike) -> Grads:
  """`dp_sgd` with clip norm 1: the registry's `(key, grads, strength)` form.

  The strength is the noise multiplier sigma, so the noise std is
  `sigma / batch`. For another bound call `dp_sgd` (or `dp_sgd_gradient`)
  with `clip_norm`.
  """
  return dp_sgd(key, per_example_grads, strength, clip_norm=1.0)


# The DLG paper's grids (its figure 6).
_NOISE_VARIANCES = (1e-4, 1e-3, 1e-2, 1e-1)
_PRUNED_FRACTIONS = (0.01, 0.1, 0.2, 0.3, 0.5, 0.7)

register(DefenseSpec(
    name='gaussian', fn=gaussian_noise, strength='noise variance',
    aware=AWARE_NOISE_PRIOR, identity_at_zero=True,
    sweep_strengths=_NOISE_VARIANCES))
register(DefenseSpec(
    name='laplacian', fn=laplacian_noise, strength='noise variance',
    aware=AWARE_NOISE_PRIOR, identity_at_zero=True,
    sweep_strengths=_NOISE_VARIANCES))
# Their error is deterministic and far below the gradient's scale: the
# plain attacker.
register(DefenseSpec(name='float16', fn=float16, strength=IGNORED))
register(DefenseSpec(name='bfloat16', fn=bfloat16, strength=IGNORED))
register(DefenseSpec(name='int8', fn=int8, strength=IGNORED))
register(DefenseSpec(
    name='prune_layer', fn=prune_per_layer, strength='pruned fraction',
    max_strength=1.0, aware=AWARE_MASK, identity_at_zero=True,
    sweep_strengths=_PRUNED_FRACTIONS))
register(DefenseSpec(
    name='prune_global', fn=prune_global, strength='pruned fraction',
    max_strength=1.0, aware=AWARE_MASK, identity_at_zero=True,
    sweep_strengths=_PRUNED_FRACTIONS))
register(DefenseSpec(name='sign', fn=sign, strength=IGNORED))
# Not the noise prior: its noise std is sigma C / B, not sqrt(strength), and
# the clipping rescales the gradient first. The sweep does not take it (it
# defends one batch gradient); the utility study's grid is its default.
register(DefenseSpec(
    name='dp_sgd', fn=_dp_sgd_unit_clip,
    strength='noise multiplier (clip norm 1)', aware=AWARE_NONE,
    per_example=True, sweep_strengths=(0.0, 0.5, 1.0, 2.0, 4.0)))
