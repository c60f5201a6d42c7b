"""Optimisers for gradient inversion, as optax transformations.

`lbfgs` is an L-BFGS shaped for the attack. It makes one objective evaluation
per step and has no linesearch, so it costs the same under `jax.vmap` as alone
(a while-loop linesearch makes every vmapped target pay for the slowest one's
branch). In place of a linesearch it accepts or rejects each step:

* A step whose value is finite and lower than the last accepted one is
  accepted. Its curvature pair enters the memory, and the step length grows
  back towards the full quasi-Newton step.
* Any other step is rejected. The next candidate starts again from the last
  accepted point with a shorter step, and the memory is left untouched.

Because it follows optax's `GradientTransformationExtraArgs` protocol, it drops
into the same loop as `optax.adam` or `optax.lbfgs`. The caller evaluates
`value, grad` at the current params and passes `value=` to `update`.
"""

from typing import Any, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import optax


class LbfgsState(NamedTuple):
  """State of `lbfgs`. Vectors are flat `[n]`; memory is `[memory_size, n]`."""
  x: jax.Array        # last accepted point
  value: jax.Array    # its objective value (inf before the first evaluation)
  grad: jax.Array     # its gradient
  s: jax.Array        # memory of accepted steps
  y: jax.Array        # memory of gradient differences
  rho: jax.Array      # 1 / <s_i, y_i>, zero for empty slots
  gamma: jax.Array    # initial inverse-Hessian scale <s, y> / <y, y>
  count: jax.Array    # number of pairs pushed so far
  step_size: jax.Array
  accepted: jax.Array  # whether the last evaluated candidate was accepted


def _two_loop(grad: jax.Array, state: LbfgsState) -> jax.Array:
  """Inverse-Hessian times `grad` by the L-BFGS two-loop recursion."""
  memory_size = state.s.shape[0]
  # Newest pair first; empty slots have rho = 0 and contribute nothing.
  order = (state.count - 1 - jnp.arange(memory_size)) % memory_size

  def backward(q, i):
    alpha = state.rho[i] * jnp.vdot(state.s[i], q)
    return q - alpha * state.y[i], alpha

  q, alphas = jax.lax.scan(backward, grad, order)
  r = state.gamma * q

  def forward(r, i_alpha):
    i, alpha = i_alpha
    beta = state.rho[i] * jnp.vdot(state.y[i], r)
    return r + (alpha - beta) * state.s[i], None

  r, _ = jax.lax.scan(forward, r, (order[::-1], alphas[::-1]))
  return r


def lbfgs(
    memory_size: int = 100,
    *,
    initial_step: float = 1e-3,
    grow: float = 2.0,
    shrink: float = 0.5,
    max_step: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  """L-BFGS with accept/reject step control instead of a linesearch.

  Args:
    memory_size: number of curvature pairs kept. The two-loop recursion costs
      `4 * memory_size * n` flops, small next to an inversion objective's
      second-order gradient, and a long memory pays off on these
      ill-conditioned problems.
    initial_step: scale of the first, steepest-descent step (there is no
      curvature yet).
    grow: factor by which an accepted step's length grows, capped at
      `max_step`.
    shrink: factor by which a rejected step's length shrinks.
    max_step: the longest step, as a multiple of the quasi-Newton direction
      (1 is the full step).

  Returns:
    An optax transformation whose `update(grads, state, params, *, value)`
    needs the objective's `value` at `params`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from dlg_jax import optim
    >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
    >>> opt = optim.lbfgs()
    >>> x = jnp.zeros(4)
    >>> state = opt.init(x)
    >>> for _ in range(20):
    ...   value, grad = jax.value_and_grad(f)(x)
    ...   updates, state = opt.update(grad, state, x, value=value)
    ...   x = optax.apply_updates(x, updates)
    >>> bool(jnp.allclose(optim.best_params(state, x), 3.0))
    True

  References:
    Nocedal, "Updating quasi-Newton matrices with limited storage", Math.
    Comp. 1980; Liu and Nocedal, "On the limited memory BFGS method for large
    scale optimization", Math. Prog. 1989.
  """
  if memory_size < 1:
    raise ValueError(f'memory_size must be >= 1, got {memory_size}.')
  if not 0 < shrink < 1 or grow < 1:
    raise ValueError(f'need 0 < shrink < 1 <= grow, got {shrink}, {grow}.')

  def init_fn(params: Any) -> LbfgsState:
    flat, _ = ravel_pytree(params)
    n = flat.shape[0]
    return LbfgsState(
        x=flat, value=jnp.asarray(jnp.inf, flat.dtype), grad=jnp.zeros_like(flat),
        s=jnp.zeros((memory_size, n), flat.dtype),
        y=jnp.zeros((memory_size, n), flat.dtype),
        rho=jnp.zeros((memory_size,), flat.dtype),
        gamma=jnp.asarray(initial_step, flat.dtype),
        count=jnp.zeros((), jnp.int32),
        step_size=jnp.asarray(1.0, flat.dtype),
        accepted=jnp.zeros((), bool))

  def update_fn(updates, state: LbfgsState, params=None, *, value=None,
                **extra_args):
    del extra_args
    if params is None or value is None:
      raise ValueError('dlg_jax.optim.lbfgs needs params and value= in update.')
    flat, unravel = ravel_pytree(params)
    grad, _ = ravel_pytree(updates)
    value = jnp.asarray(value, flat.dtype)
    first = jnp.isinf(state.value)
    accept = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) & (
        first | (value < state.value))

    s, y = flat - state.x, grad - state.grad
    sy = jnp.vdot(s, y)
    # Pairs with non-positive curvature would break positive definiteness.
    push = accept & ~first & (sy > 1e-10 * jnp.vdot(s, s))
    slot = state.count % memory_size
    pushed = state._replace(
        s=state.s.at[slot].set(s), y=state.y.at[slot].set(y),
        rho=state.rho.at[slot].set(1.0 / jnp.where(push, sy, 1.0)),
        gamma=sy / jnp.vdot(y, y), count=state.count + 1)
    state = jax.tree.map(lambda a, b: jnp.where(push, a, b), pushed, state)

    x = jnp.where(accept, flat, state.x)
    f = jnp.where(accept, value, state.value)
    g = jnp.where(accept, grad, state.grad)
    step_size = jnp.where(
        accept, jnp.minimum(state.step_size * grow, max_step),
        state.step_size * shrink)
    step_size = jnp.where(first, 1.0, step_size)
    state = state._replace(x=x, value=f, grad=g, step_size=step_size,
                           accepted=accept)
    direction = -_two_loop(g, state)
    new_flat = x + step_size * direction
    return unravel(new_flat - flat), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def best_params(state: Any, params: Any) -> Any:
  """The last accepted point of an `lbfgs` state, shaped like `params`."""
  _, unravel = ravel_pytree(params)
  return unravel(state.x)


OPTIMIZERS = ('lbfgs', 'lbfgs_linesearch', 'adam')


def get_optimizer(name: str, *, learning_rate: float = 0.1,
                  memory_size: int = 100,
                  num_steps: int = 1000) -> optax.GradientTransformationExtraArgs:
  """Builds an attack optimiser by name.

  Args:
    name: 'lbfgs' (accept/reject L-BFGS above, the default),
      'lbfgs_linesearch' (`optax.lbfgs` with its zoom linesearch, closest to
      the PyTorch L-BFGS of the DLG release), or 'adam' (with cosine decay
      from `learning_rate`, as Geiping et al. 2020).
    learning_rate: Adam's peak learning rate (unused by the L-BFGS ones).
    memory_size: L-BFGS memory.
    num_steps: the horizon of Adam's schedule.

  Returns:
    An optax transformation taking `value=`, `grad=` and `value_fn=` extras.
  """
  if name == 'lbfgs':
    return lbfgs(memory_size)
  if name == 'lbfgs_linesearch':
    return optax.lbfgs(memory_size=memory_size)
  if name == 'adam':
    schedule = optax.cosine_decay_schedule(learning_rate, max(num_steps, 1))
    return optax.with_extra_args_support(optax.adam(schedule))
  raise ValueError(
      f'Unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}.')
