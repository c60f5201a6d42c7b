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
  """State of `lbfgs`. Vectors are flat `[n]`.

  The curvature pairs live in a ring of `memory_size` slots: pair number `k`
  (counting pushes from 0) is in slot `k % memory_size`, and a push writes
  one row of `s` and of `y` in place. The small matrices `sy` and `yy` are
  kept in chronological order instead (oldest first, empty slots before
  them), so that the compact form reads them without a permutation;
  chronological position `p` is ring slot `(count + p) % memory_size`.
  """
  x: jax.Array        # last accepted point
  value: jax.Array    # its objective value (inf before the first evaluation)
  grad: jax.Array     # its gradient, g
  s: jax.Array        # [memory_size, n] ring: steps s_i
  y: jax.Array        # [memory_size, n] ring: gradient differences y_i
  sg: jax.Array       # [memory_size] ring: <s_i, g>
  yg: jax.Array       # [memory_size] ring: <y_i, g>
  sy: jax.Array       # [memory_size, memory_size] chronological: <s_i, y_j>
  yy: jax.Array       # [memory_size, memory_size] chronological: <y_i, y_j>
  gamma: jax.Array    # initial inverse-Hessian scale <s, y> / <y, y>
  count: jax.Array    # number of pairs pushed so far
  step_size: jax.Array
  accepted: jax.Array  # whether the last evaluated candidate was accepted


def _chronological(count: jax.Array, memory_size: int) -> jax.Array:
  """`[memory_size]` ring slots in chronological order after `count` pushes."""
  return (count + jnp.arange(memory_size)) % memory_size


def _compact_coefficients(sg: jax.Array, yg: jax.Array, sy: jax.Array,
                          yy: jax.Array, gamma: jax.Array, count: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
  """`(c_s, c_y)` with `H g = gamma g + c_s @ S + c_y @ Y`, chronologically.

  The compact form of the L-BFGS inverse Hessian:
  `H = gamma I + [S, gamma Y] M [S, gamma Y]^T`, where the small middle
  matrix `M` is built from `R = triu(S^T Y)` and `D = diag(S^T Y)` in
  chronological order. It costs matrix-vector products with the memory and
  two small triangular solves. The two-loop recursion instead loops over
  the memory one pair at a time; under `vmap` each pass of that loop becomes
  a batched gather, and on accelerators a kernel launch.

  Args:
    sg: `[m]` `<s_i, g>`, chronological.
    yg: `[m]` `<y_i, g>`, chronological.
    sy: `[m, m]` `<s_i, y_j>`, chronological.
    yy: `[m, m]` `<y_i, y_j>`, chronological.
    gamma: the initial inverse-Hessian scale.
    count: pairs pushed so far; the first `m - count` positions are empty.

  References:
    Byrd, Nocedal and Schnabel, "Representations of quasi-Newton matrices
    and their use in limited memory methods", Math. Prog. 1994, eq. (3.13).
  """
  m = sg.shape[0]
  valid = jnp.arange(m) + count >= m
  both = valid[:, None] & valid[None, :]
  sy = jnp.where(both, sy, 0.0)
  yy = jnp.where(both, yy, 0.0)
  # Empty slots get a unit diagonal: their s and y are zero, so they add
  # nothing but keep R invertible.
  r = jnp.triu(sy) + jnp.diag(jnp.where(valid, 0.0, 1.0))
  u = jax.scipy.linalg.solve_triangular(r, sg, lower=False)
  rhs = jnp.diag(sy) * u + gamma * (yy @ u) - gamma * yg
  top = jax.scipy.linalg.solve_triangular(r, rhs, lower=False, trans='T')
  return top, -gamma * u


def _push_chronological(matrix: jax.Array, row: jax.Array,
                        col: jax.Array) -> jax.Array:
  """`matrix` with its oldest pair dropped and a newest one appended.

  `row` and `col` are the new pair's entries `[m]` in the new chronological
  order (their last entry, the new pair with itself, the same in both).
  """
  m = matrix.shape[0]
  shifted = jnp.pad(matrix[1:, 1:], ((0, 1), (0, 1)))
  return shifted.at[m - 1, :].set(row).at[:, m - 1].set(col)


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
    memory_size: number of curvature pairs kept. A step reads the
      `[memory_size, n]` steps twice and the gradient differences three
      times (for their products with the new vectors, then for the
      direction) and writes one row of each in place, small next to an
      inversion objective's second-order gradient; a long memory pays off
      on these ill-conditioned problems.
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
    >>> from dlg_jax.core import optim
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
        sg=jnp.zeros((memory_size,), flat.dtype),
        yg=jnp.zeros((memory_size,), flat.dtype),
        sy=jnp.zeros((memory_size, memory_size), flat.dtype),
        yy=jnp.zeros((memory_size, memory_size), flat.dtype),
        gamma=jnp.asarray(initial_step, flat.dtype),
        count=jnp.zeros((), jnp.int32),
        step_size=jnp.asarray(1.0, flat.dtype),
        accepted=jnp.zeros((), bool))

  def update_fn(updates, state: LbfgsState, params=None, *, value=None,
                **extra_args):
    del extra_args
    if params is None or value is None:
      raise ValueError('dlg_jax.core.optim.lbfgs needs params and value= in update.')
    flat, unravel = ravel_pytree(params)
    grad, _ = ravel_pytree(updates)
    value = jnp.asarray(value, flat.dtype)
    first = jnp.isinf(state.value)
    accept = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) & (
        first | (value < state.value))

    x = jnp.where(accept, flat, state.x)
    f = jnp.where(accept, value, state.value)
    g = jnp.where(accept, grad, state.grad)
    s, y = flat - state.x, grad - state.grad
    s_y, y_y = jnp.vdot(s, y), jnp.vdot(y, y)

    # The products with the memory that this step needs: <s_i, y>,
    # <y_i, s> and <y_i, y>. Those with the accepted gradient follow from
    # the ones kept for the last (g = last g + y), so only the direction
    # reads the memory again. Y is read once per product: XLA:CPU runs two
    # matrix-vector products about 3x faster than one product with two
    # columns (a matrix product's kernel), though it reads Y once more.
    m = memory_size
    s_with_y = state.s @ y                       # [m] ring: <s_i, y>
    y_with_s = state.y @ s                       # [m] ring: <y_i, s>
    y_with_y = state.y @ y                       # [m] ring: <y_i, y>
    # Pairs with non-positive curvature would break positive definiteness,
    # and products that overflow would poison `sy` and `yy`. (Testing the
    # products also orders the row writes below after the reads above, so
    # that XLA writes the memory in place rather than copying it.)
    push = (accept & ~first & (s_y > 1e-10 * jnp.vdot(s, s))
            & jnp.all(jnp.isfinite(s_with_y)) & jnp.all(jnp.isfinite(y_with_s))
            & jnp.all(jnp.isfinite(y_with_y)))
    slot = state.count % m
    sg = jnp.where(accept, state.sg + s_with_y, state.sg)
    yg = jnp.where(accept, state.yg + y_with_y, state.yg)
    sg = sg.at[slot].set(jnp.where(push, jnp.vdot(s, g), sg[slot]))
    yg = yg.at[slot].set(jnp.where(push, jnp.vdot(y, g), yg[slot]))
    s_memory = jax.lax.dynamic_update_index_in_dim(
        state.s, jnp.where(push, s, state.s[slot]), slot, 0)
    y_memory = jax.lax.dynamic_update_index_in_dim(
        state.y, jnp.where(push, y, state.y[slot]), slot, 0)
    # The new pair's entries in the order after the push, where it is last.
    after = _chronological(state.count + 1, m)
    row_sy = y_with_s[after].at[m - 1].set(s_y)   # <s, y_j>
    col_sy = s_with_y[after].at[m - 1].set(s_y)    # <s_i, y>
    col_yy = y_with_y[after].at[m - 1].set(y_y)   # <y_i, y>
    sy = _push_chronological(state.sy, row_sy, col_sy)
    yy = _push_chronological(state.yy, col_yy, col_yy)

    step_size = jnp.where(
        accept, jnp.minimum(state.step_size * grow, max_step),
        state.step_size * shrink)
    state = LbfgsState(
        x=x, value=f, grad=g, s=s_memory, y=y_memory, sg=sg, yg=yg,
        sy=jnp.where(push, sy, state.sy), yy=jnp.where(push, yy, state.yy),
        gamma=jnp.where(push, s_y / y_y, state.gamma),
        count=state.count + push.astype(jnp.int32),
        step_size=jnp.where(first, 1.0, step_size), accepted=accept)
    order = _chronological(state.count, m)
    coef_s, coef_y = _compact_coefficients(
        sg[order], yg[order], state.sy, state.yy, state.gamma, state.count)
    # Back from chronological positions to ring slots.
    ring = (jnp.arange(m) - state.count) % m
    direction = -(state.gamma * g + coef_s[ring] @ s_memory
                  + coef_y[ring] @ y_memory)
    new_flat = x + state.step_size * direction
    return unravel(new_flat - flat), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def best_params(state: Any, params: Any) -> Any:
  """The last accepted point of an `lbfgs` state, shaped like `params`."""
  _, unravel = ravel_pytree(params)
  return unravel(state.x)


OPTIMIZERS = ('lbfgs', 'lbfgs_linesearch', 'adam')
# Adam's learning-rate schedules over `num_steps`: 'cosine' decay to 0,
# 'step' (x0.1 at 3/8, 5/8 and 7/8 of the steps, as Inverting Gradients'
# MultiStepLR) and 'constant'.
SCHEDULES = ('cosine', 'step', 'constant')


def learning_rate_schedule(name: str, learning_rate: float,
                           num_steps: int) -> optax.Schedule:
  """Adam's learning rate by step: one of `SCHEDULES` over `num_steps`."""
  num_steps = max(num_steps, 1)
  if name == 'cosine':
    return optax.cosine_decay_schedule(learning_rate, num_steps)
  if name == 'step':
    return optax.piecewise_constant_schedule(
        learning_rate, {int(num_steps * f): 0.1 for f in (3 / 8, 5 / 8,
                                                          7 / 8)})
  if name == 'constant':
    return optax.constant_schedule(learning_rate)
  raise ValueError(
      f'Unknown schedule {name!r}; choose one of {list(SCHEDULES)}.')


def get_optimizer(name: str, *, learning_rate: float = 0.1,
                  memory_size: int = 100, num_steps: int = 1000,
                  schedule: str = 'cosine',
                  signed: bool = False) -> optax.GradientTransformationExtraArgs:
  """Builds an attack optimiser by name.

  Args:
    name: 'lbfgs' (accept/reject L-BFGS above, the default),
      'lbfgs_linesearch' (`optax.lbfgs` with its zoom linesearch, closest to
      the PyTorch L-BFGS of the DLG release), or 'adam'.
    learning_rate: Adam's peak learning rate (unused by the L-BFGS ones).
    memory_size: L-BFGS memory.
    num_steps: the horizon of Adam's schedule.
    schedule: Adam's learning-rate schedule, one of `SCHEDULES` ('cosine'
      as Geiping et al. 2020's released attacks on trained models, 'step'
      as their Inverting Gradients recipe).
    signed: Adam on the gradient's sign (`optax.scale_by_sign` first), as
      Inverting Gradients: every pixel moves at the same rate whatever the
      scale of its gradient, which on ReLU networks spans decades.

  Returns:
    An optax transformation taking `value=`, `grad=` and `value_fn=` extras.
  """
  if name not in OPTIMIZERS:
    raise ValueError(
        f'Unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}.')
  if name != 'adam' and (signed or schedule != 'cosine'):
    raise ValueError(f'schedule and signed are Adam\'s; {name!r} has neither.')
  if name == 'lbfgs':
    return lbfgs(memory_size)
  if name == 'lbfgs_linesearch':
    return optax.lbfgs(memory_size=memory_size)
  adam = optax.adam(learning_rate_schedule(schedule, learning_rate,
                                           num_steps))
  if signed:
    adam = optax.chain(optax.scale_by_sign(), adam)
  return optax.with_extra_args_support(adam)
