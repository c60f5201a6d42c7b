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
  s: jax.Array        # memory of accepted steps, one per slot
  y: jax.Array        # memory of gradient differences
  sy: jax.Array       # [memory_size, memory_size]: <s_i, y_j>
  yy: jax.Array       # [memory_size, memory_size]: <y_i, y_j>
  age: jax.Array      # [memory_size] push count when written, -1 if empty
  gamma: jax.Array    # initial inverse-Hessian scale <s, y> / <y, y>
  count: jax.Array    # number of pairs pushed so far
  step_size: jax.Array
  accepted: jax.Array  # whether the last evaluated candidate was accepted


def _inverse_hessian_times(g: jax.Array, state: LbfgsState) -> jax.Array:
  """The L-BFGS inverse Hessian times `g`, in compact form.

  `H = gamma I + [S, gamma Y] M [S, gamma Y]^T` with the small middle matrix
  built from `R = triu(S^T Y)` and `D = diag(S^T Y)` in chronological order.
  This takes a few matrix-vector products and one triangular solve, with no
  sequential loop over the memory. The two-loop recursion needs such a loop,
  which under `vmap` becomes a batched gather per pair and on accelerators a
  kernel launch per pair.

  References:
    Byrd, Nocedal and Schnabel, "Representations of quasi-Newton matrices
    and their use in limited memory methods", Math. Prog. 1994, eq. (3.13).
  """
  gamma = state.gamma
  order = jnp.argsort(state.age)  # empty slots first, then oldest to newest
  valid = state.age[order] >= 0
  both = valid[:, None] & valid[None, :]
  sy = jnp.where(both, state.sy[order][:, order], 0.0)
  yy = jnp.where(both, state.yy[order][:, order], 0.0)
  # Empty slots get a unit diagonal: their s and y are zero, so they add
  # nothing but keep R invertible.
  r = jnp.triu(sy) + jnp.diag(jnp.where(valid, 0.0, 1.0))
  sg, yg = state.s @ g, state.y @ g
  a, b = sg[order], gamma * yg[order]
  u = jax.scipy.linalg.solve_triangular(r, a, lower=False)
  rhs = jnp.diag(sy) * u + gamma * (yy @ u) - b
  top = jax.scipy.linalg.solve_triangular(r, rhs, lower=False, trans='T')
  coef_s = jnp.zeros_like(top).at[order].set(top)
  coef_y = jnp.zeros_like(u).at[order].set(-gamma * u)
  return gamma * g + coef_s @ state.s + coef_y @ state.y


def _push(state: LbfgsState, s: jax.Array, y: jax.Array) -> LbfgsState:
  """Writes the pair `(s, y)` into the oldest slot, updating `sy` and `yy`."""
  slot = state.count % state.s.shape[0]
  s_y, y_y = state.s @ y, state.y @ y  # <s_i, y>, <y_i, y>
  y_s = state.y @ s                    # <s, y_j>
  sy = state.sy.at[slot, :].set(y_s).at[:, slot].set(s_y)
  sy = sy.at[slot, slot].set(jnp.vdot(s, y))
  yy = state.yy.at[slot, :].set(y_y).at[:, slot].set(y_y)
  yy = yy.at[slot, slot].set(jnp.vdot(y, y))
  return state._replace(
      s=state.s.at[slot].set(s), y=state.y.at[slot].set(y), sy=sy, yy=yy,
      age=state.age.at[slot].set(state.count),
      gamma=jnp.vdot(s, y) / jnp.vdot(y, y), count=state.count + 1)


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
    memory_size: number of curvature pairs kept. A step costs about
      `6 * memory_size * n` flops in matrix-vector products, small next to
      an inversion objective's second-order gradient, and a long memory pays
      off on these ill-conditioned problems.
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
        sy=jnp.zeros((memory_size, memory_size), flat.dtype),
        yy=jnp.zeros((memory_size, memory_size), flat.dtype),
        age=jnp.full((memory_size,), -1, jnp.int32),
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
    pushed = _push(state, s, y)
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
    direction = -_inverse_hessian_times(g, state)
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
