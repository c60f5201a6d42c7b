"""The DLG attack: optimise dummy data until its gradient matches the shared one.

The attack is written for ONE job, meaning one target gradient and one random
restart, as pure functions over an `AttackState` pytree (`init_state`,
`attack_step`, `run_steps`). `jax.vmap` adds jobs. `reconstruct` is the runner:
it vmaps many jobs, jit-compiles chunks of `lax.scan` steps, and between
chunks it logs, drops jobs that have converged, and times each target.

An `Attack` is five small sections: the `Threat` (the victim model, its batch
and its `client.Client`), `Labels`, the `Objective`, the `Optimization` and
the `Start`; `make` builds one from field names. The model's parameters (or a
`client.Victim` with its state, such as BatchNorm statistics) are an argument
of every function, not part of the attack.

A target is what one client shares for a batch of `batch` examples (1 in the
DLG paper's main experiments): its gradient (FedSGD), or with `local_steps > 1`
the weight difference after that many local SGD steps (FedAvg), which the
attack matches by unrolling the same steps on the dummy data. The dummy data
is `[batch, h, w, c]`; its slots come out in any order, and
`dlg_jax.vision.matching` pairs them with the originals.

References:
  Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019.
  Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020.
  Geiping, Bauermeister, Droege and Moeller, "Inverting Gradients - How easy
  is it to break privacy in federated learning?", NeurIPS 2020, section 5.
"""

from collections.abc import Callable, Sequence
import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np
import optax

from dlg_jax.core import client as client_lib
from dlg_jax.core import defenses
from dlg_jax.core import errors
from dlg_jax.core import objectives
from dlg_jax.core import optim
from dlg_jax.core import runner
from dlg_jax.vision import labels as labels_lib
from dlg_jax.vision import models
LABEL_MODES = ('analytic', 'joint', 'known')
LABEL_METHODS = ('auto',) + labels_lib.LABEL_METHODS
INITS = ('grey', 'uniform', 'randn')


def _choice(field: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise errors.FieldError(field, f'must be one of {list(choices)}, got '
                            f'{value!r}.')


def _at_least(field: str, value: float, low: float) -> None:
  if not value >= low:
    raise errors.FieldError(field, f'must be >= {low}, got {value!r}.')


@dataclasses.dataclass(frozen=True, kw_only=True)
class Threat:
  """The victim and what its client shares: who is attacked, and through what.

  The model's parameters (and state, a `client.Victim`) are arrays, so they
  are an argument of the attack's functions, not a field here; this holds
  what is static about the victim.

  Attributes:
    apply_fn: `(params, x) -> logits`, the shared model (for a model with
      state, `params` is a `client.Victim`; see
      `dlg_jax.vision.models.ModelApply`).
    image_shape: `(h, w, c)` of one example.
    num_classes: the classifier's output count.
    batch: examples behind one shared gradient.
    client: what the client does with its batch: FedSGD (the default) or
      FedAvg's local steps.
  """
  apply_fn: Callable[..., jax.Array]
  image_shape: tuple[int, int, int]
  num_classes: int
  batch: int = 1
  client: client_lib.Client = client_lib.Client()

  def __post_init__(self):
    # A tuple, so that the threat hashes (jit takes the attack as static).
    object.__setattr__(self, 'image_shape', tuple(self.image_shape))
    if len(self.image_shape) != 3:
      raise errors.FieldError('image_shape', f'must be (h, w, c), got '
                              f'{self.image_shape!r}.')
    _at_least('num_classes', self.num_classes, 1)
    _at_least('batch', self.batch, 1)
    try:
      self.client.check_batch(self.batch)
    except errors.FieldError as e:
      raise errors.FieldError(f'client.{e.field}', e.message) from None

  def shared_update(self, params: Any, x: ArrayLike, labels: ArrayLike) -> Any:
    """What the client shares for `[batch, h, w, c]` inputs and soft labels.

    The gradient (FedSGD) or the FedAvg weight difference. Targets are made
    with it and the attack matches it on dummy data, so both model the
    client in the same way.
    """
    return self.client.update(self.apply_fn, params, x, labels)

  def batch_statistics(self, params: Any, x: ArrayLike) -> Any:
    """The BatchNorm statistics of the client's batch `x` (a linen victim).

    What GradAttack's "strong" attacker knows besides the update: a FedAvg
    client's updated running statistics reveal them. See
    `models.batch_norm_statistics`.
    """
    return models.batch_norm_statistics(self.apply_fn, params,
                                        jnp.asarray(x))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Labels:
  """How the attacker gets the labels.

  Attributes:
    label_mode: 'analytic' reads the labels off the gradient with
      `label_method`, 'joint' optimises dummy label logits with the image
      (DLG), 'known' gives the attacker the true labels.
    label_method: how 'analytic' reads labels, a name from
      `labels.LABEL_METHODS` or 'auto': 'idlg' (exact) for batch 1, 'count'
      (repeated labels too; see `labels.label_counts`) for larger batches.
  """
  label_mode: str = 'analytic'
  label_method: str = 'auto'

  def __post_init__(self):
    _choice('label_mode', self.label_mode, LABEL_MODES)
    _choice('label_method', self.label_method, LABEL_METHODS)

  def method(self, batch: int) -> str:
    """The label method 'analytic' uses for `batch`, with 'auto' resolved."""
    if self.label_method == 'auto':
      return 'idlg' if batch == 1 else 'count'
    return self.label_method


@dataclasses.dataclass(frozen=True, kw_only=True)
class Objective:
  """What the dummy data minimises: a gradient distance plus priors.

  Attributes:
    distance: gradient distance, 'l2' (DLG) or 'cosine' (Geiping et al.).
    tv_weight: weight of the total-variation prior (at step 0 when
      `tv_final_weight` is set).
    tv_final_weight: None keeps the prior's weight at `tv_weight`; a value
      anneals it from `tv_weight` to this weight by a cosine over
      `tv_decay_steps` steps (see `tv_weight_at`). A strong prior early
      keeps a batch's reconstructions from settling as mixtures of its
      images; a weaker one late biases the final point less.
    tv_decay_steps: length of the annealing; 0 is the optimiser's
      `num_steps`.
    tv_stages: 0 anneals every step; k >= 2 holds the weight constant over
      k equal stages, the cosine taken at the stage's start, so L-BFGS's
      accept test and curvature memory see a changed objective k - 1 times.
    prior_weight: weight of a stationary Gaussian image prior
      (`objectives.gaussian_prior_penalty`, mean over the batch); its
      arrays come in `Target.prior`, which must be set when this is > 0.
    layer_weights: optional `((path, weight), ...)` weighting named layers
      of the gradient (paths as 'Dense_0' or 'Conv_1/kernel'); others weigh 1.
    bn_weight: weight of GradInversion's BatchNorm-statistics prior (Yin et
      al. 2021): the sum over the victim's training-mode BatchNorm layers
      of `||mean - mean*|| + ||var - var*||` between the dummy batch's
      statistics and the client's (`models.batch_norm_statistics`), which
      come in `Target.bn_stats`: the attacker of GradAttack's "strong"
      threat model knows them. 0 is off (the attacker knows the parameters
      only).
    feature_weight: weight of `||phi(x) - phi*||^2 / ||phi*||^2`, with
      `phi` the input of the victim's classifier (its last Dense layer,
      `models.classifier_input`) and `phi*` read off the shared gradient
      exactly (`labels.leaked_features`, in `Target.features`): what a
      single example's gradient leaks in closed form (Geiping et al. 2020).
      Through ReLUs the gradient distance jumps whenever a unit turns on or
      off, while `phi` is continuous in the image, so this term still
      points the way near the truth (docs/victims.md). Needs batch 1 and a
      FedSGD client. 0 is off.
    relu_smoothing: a continuation through the ReLU staircase:
      `((end, sharpness), ...)`, each `end` a fraction of the optimiser's
      `num_steps`, increasing in (0, 1). Until `end * num_steps` steps the
      attacker's copy of the victim computes every ReLU as
      `softplus(sharpness * z) / sharpness` (`models.smooth_relu`),
      rounding each unit's switch over a width of about `1 / sharpness` in
      its input; after the last stage, the victim exactly. The best point is
      kept within each stage (a stage change starts it afresh), so the
      result is judged by the victim's own objective. Measured to lift the
      ReLU ConvNet without normalisation and to sink the BatchNorm one
      (docs/victims.md). Empty is off.
  """
  distance: str = 'l2'
  tv_weight: float = 0.0
  tv_final_weight: float | None = None
  tv_decay_steps: int = 0
  tv_stages: int = 0
  prior_weight: float = 0.0
  layer_weights: tuple[tuple[str, float], ...] = ()
  bn_weight: float = 0.0
  feature_weight: float = 0.0
  relu_smoothing: tuple[tuple[float, float], ...] = ()

  def __post_init__(self):
    _choice('distance', self.distance, tuple(objectives.DISTANCES))
    _at_least('tv_weight', self.tv_weight, 0)
    if self.tv_final_weight is not None:
      _at_least('tv_final_weight', self.tv_final_weight, 0)
    _at_least('tv_decay_steps', self.tv_decay_steps, 0)
    if self.tv_stages < 0 or self.tv_stages == 1:
      raise errors.FieldError(
          'tv_stages', f'must be 0 (every step) or >= 2, got '
          f'{self.tv_stages}.')
    _at_least('prior_weight', self.prior_weight, 0)
    _at_least('bn_weight', self.bn_weight, 0)
    _at_least('feature_weight', self.feature_weight, 0)
    try:
      stages = tuple((float(e), float(v)) for e, v in self.relu_smoothing)
    except (TypeError, ValueError):
      raise errors.FieldError(
          'relu_smoothing', 'must be ((end, sharpness), ...), got '
          f'{self.relu_smoothing!r}.') from None
    ends = [e for e, _ in stages]
    if (any(not v > 0 for _, v in stages)
        or any(not 0 < e < 1 for e in ends) or ends != sorted(set(ends))):
      raise errors.FieldError(
          'relu_smoothing', 'needs ends increasing in (0, 1) (fractions '
          'of num_steps: the attack ends on the victim itself) and '
          f'sharpness > 0, got {self.relu_smoothing!r}.')
    # A tuple of tuples of Python numbers, so that the attack hashes.
    object.__setattr__(self, 'relu_smoothing', stages)

  @property
  def uses_tv(self) -> bool:
    return bool(self.tv_weight or self.tv_final_weight)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimization:
  """How the dummy data is optimised, and when a job stops.

  Attributes:
    optimizer: a name from `optim.OPTIMIZERS`.
    learning_rate: Adam's peak learning rate.
    memory_size: L-BFGS memory.
    num_steps: most optimiser steps per job.
    tol: a job stops once its distance is below `tol * ||target||^2` (l2) or
      `tol` (cosine).
    schedule: Adam's learning-rate schedule (`optim.SCHEDULES`).
    signed: Adam on the gradient's sign (Inverting Gradients).
    box: after each Adam step, clip the images to the data range [0, 1]
      (Inverting Gradients' boxed pixels).
  """
  optimizer: str = 'lbfgs'
  learning_rate: float = 0.1
  memory_size: int = 100
  num_steps: int = 6000
  tol: float = 2e-8
  schedule: str = 'cosine'
  signed: bool = False
  box: bool = False

  def __post_init__(self):
    _choice('optimizer', self.optimizer, tuple(optim.OPTIMIZERS))
    _at_least('num_steps', self.num_steps, 1)
    _at_least('memory_size', self.memory_size, 1)
    _choice('schedule', self.schedule, optim.SCHEDULES)
    if self.optimizer != 'adam':
      # L-BFGS's accept test and curvature pairs assume unprojected steps.
      for field, value, default in (('schedule', self.schedule, 'cosine'),
                                    ('signed', self.signed, False),
                                    ('box', self.box, False)):
        if value != default:
          raise errors.FieldError(
              field, f'applies to optimizer "adam" only, not '
              f'{self.optimizer!r}; got {value!r}.')

  @property
  def opt(self) -> optax.GradientTransformationExtraArgs:
    return optim.get_optimizer(
        self.optimizer, learning_rate=self.learning_rate,
        memory_size=self.memory_size, num_steps=self.num_steps,
        schedule=self.schedule, signed=self.signed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Start:
  """Where the dummy data starts.

  Attributes:
    init: 'grey' (0.5 plus `init_scale` Gaussian noise), 'uniform' on
      [0, 1] (the DLG release), or 'randn' (standard normal).
    init_scale: noise scale of the 'grey' start.
  """
  init: str = 'grey'
  init_scale: float = 0.05

  def __post_init__(self):
    _choice('init', self.init, INITS)
    _at_least('init_scale', self.init_scale, 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
  """What the attacker does, for one job. Hashable, so jit treats it as static.

  Each section validates its own fields; the checks across sections are
  here, once.

  Attributes:
    threat: the victim and what its client shares.
    labels: how the attacker gets the labels.
    objective: the gradient distance and priors.
    optimization: the optimiser, its steps and its stopping rule.
    start: the dummy data's starting point.
    snapshot_steps: iterations at which the reconstruction is recorded.
    success_psnr: with ground truth given, the PSNR counted as a recovery
      (for time-to-success measurements). A batch counts as recovered when
      every original has a reconstruction at `success_psnr` or more and
      these reconstructions are distinct slots (see `batch_success`).
  """
  threat: Threat
  labels: Labels = Labels()
  objective: Objective = Objective()
  optimization: Optimization = Optimization()
  start: Start = Start()
  snapshot_steps: tuple[int, ...] = (0, 10, 20, 50, 100, 200, 500, 1000)
  success_psnr: float = 30.0

  def __post_init__(self):
    object.__setattr__(self, 'snapshot_steps', tuple(self.snapshot_steps))
    threat, labels = self.threat, self.labels
    if self.objective.feature_weight and (threat.batch != 1
                                          or threat.client.fedavg):
      raise errors.FieldError(
          'objective.feature_weight', 'the classifier\'s input is read off '
          'the gradient of one example: it needs batch 1 and a FedSGD '
          f'client; got batch {threat.batch}, local_steps '
          f'{threat.client.local_steps}.')
    if labels.label_mode != 'analytic':
      return
    if labels.label_method == 'idlg' and threat.batch != 1:
      raise errors.FieldError(
          'labels.label_method', f'"idlg" is exact for batch 1 only; got '
          f'batch {threat.batch}; use "count" for batches.')
    if labels.label_method == 'yin' and threat.batch > threat.num_classes:
      raise errors.FieldError(
          'labels.label_method', f'"yin" returns distinct labels; batch '
          f'({threat.batch}) must be <= num_classes ({threat.num_classes}).')
    if threat.client.local_batch_size not in (0, threat.batch):
      raise errors.FieldError(
          'threat.client.local_batch_size',
          'must be 0 (the whole batch) with label_mode "analytic": labels '
          'read off the update do not say which local mini-batch each '
          'belongs to; use "joint" or "known".')

  @property
  def batch(self) -> int:
    return self.threat.batch

  @property
  def num_steps(self) -> int:
    return self.optimization.num_steps

  @property
  def joint(self) -> bool:
    """Whether the labels are optimised with the image (DLG)."""
    return self.labels.label_mode == 'joint'


_SECTIONS = {'labels': Labels, 'objective': Objective,
             'optimization': Optimization, 'start': Start}
_THREAT_FIELDS = ('apply_fn', 'image_shape', 'num_classes', 'batch', 'client')


def _split_fields(fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Routes field names to their sections; every name is unique across them.

  Raises:
    TypeError: a field no section has.
  """
  routed = {name: {} for name in ('threat', 'attack', *_SECTIONS)}
  for key, value in fields.items():
    if key in _THREAT_FIELDS:
      routed['threat'][key] = value
    elif key in ('snapshot_steps', 'success_psnr'):
      routed['attack'][key] = value
    else:
      owner = [name for name, cls in _SECTIONS.items()
               if key in {f.name for f in dataclasses.fields(cls)}]
      if not owner:
        raise TypeError(f'No attack section has a field {key!r}.')
      routed[owner[0]][key] = value
  return routed


def make(**fields) -> Attack:
  """An `Attack` from field names of the threat and of any section.

  A shorthand for scripts and tests, e.g. `make(apply_fn=f,
  image_shape=(32, 32, 3), num_classes=100, tv_weight=0.01, num_steps=300)`.
  `apply_fn`, `image_shape` and `num_classes` are required.

  Raises:
    TypeError: a field no section has.
    FieldError: a bad value, named by its section's field.
  """
  routed = _split_fields(fields)
  kwargs = {name: cls(**routed[name]) for name, cls in _SECTIONS.items()}
  return Attack(threat=Threat(**routed['threat']), **kwargs,
                **routed['attack'])


def replace(attack: Attack, **fields) -> Attack:
  """`attack` with fields of any section replaced by name (see `make`)."""
  routed = _split_fields(fields)
  kwargs = {name: dataclasses.replace(getattr(attack, name), **routed[name])
            for name in ('threat', *_SECTIONS) if routed[name]}
  return dataclasses.replace(attack, **kwargs, **routed['attack'])


class AttackState(NamedTuple):
  """One job's state. `variables` holds 'x' and, when joint, 'logits'."""
  variables: dict[str, jax.Array]
  opt_state: Any
  best: dict[str, jax.Array]
  best_value: jax.Array
  step: jax.Array
  converged_step: jax.Array
  success_step: jax.Array
  snapshots: jax.Array  # [num_snapshots, batch, h, w, c]


class Target(NamedTuple):
  """What one job attacks: the shared gradient and the attacker's labels.

  `labels` are `[batch, num_classes]`: the iDLG label (analytic), the true
  one (known) or unused (joint). `ground_truth` `[batch, h, w, c]` is only
  used to record when the reconstruction first passes `success_psnr`.

  `prior` is the `objectives.GaussianPrior` that `Objective.prior_weight`
  weighs (fitted on images other than the attacked ones); None without one.
  `bn_stats` are the client batch's BatchNorm statistics that
  `Objective.bn_weight` matches (`models.batch_norm_statistics`); None
  without them. `features` are the `[d]` classifier input that
  `Objective.feature_weight` matches, read off `grads`
  (`labels.leaked_features`); None without that weight.

  The last three fields are what an attacker who knows the defense adds
  (see `aware_target`); None leaves the attack as `Attack` describes it:

  * `mask`: a pytree shaped like `grads` (bool or float). Both gradients
    are multiplied by it before the distance, so a coordinate where it is
    0 (e.g. one a pruning defense zeroed) does not enter the objective.
  * `tolerance`: a scalar distance replacing `Optimization.tol`'s. A job whose
    objective falls to it stops for good (the discrepancy principle: below
    the expected noise energy, further steps fit the noise).
  * `tv_weight`: a scalar replacing `Objective.tv_weight`, constant over
    the run (any `Objective.tv_final_weight` annealing is not applied).
  """
  grads: Any
  labels: jax.Array
  ground_truth: jax.Array
  mask: Any = None
  tolerance: jax.Array | None = None
  tv_weight: jax.Array | None = None
  prior: objectives.GaussianPrior | None = None
  bn_stats: Any = None
  features: jax.Array | None = None


def _layer_weight_tree(attack: Attack, grads: Any) -> Any:
  if not attack.objective.layer_weights:
    return None
  table = dict(attack.objective.layer_weights)
  paths = [jax.tree_util.keystr(p, simple=True, separator='/')
           for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
  unknown = [k for k in table if not any(
      p == k or p.startswith(k + '/') for p in paths)]
  if unknown:
    raise ValueError(f'layer_weights names {unknown} match no gradient leaf; '
                     f'leaves are {paths}.')

  def weight(path):
    path = jax.tree_util.keystr(path, simple=True, separator='/')
    for key, value in table.items():
      if path == key or path.startswith(key + '/'):
        return jnp.float32(value)
    return jnp.float32(1.0)
  return jax.tree_util.tree_map_with_path(lambda p, _: weight(p), grads)


def dummy_labels(attack: Attack, variables: dict[str, jax.Array],
                 target: Target) -> jax.Array:
  """The `[batch, num_classes]` soft labels the dummy gradient is taken at."""
  if attack.joint:
    return jax.nn.softmax(variables['logits'])
  return target.labels


def tv_weight_at(attack: Attack, step: ArrayLike) -> jax.Array:
  """The TV prior's weight at optimiser step `step` (traceable).

  `tv_weight` throughout when the objective's `tv_final_weight` is None.
  Otherwise a cosine from `tv_weight` at step 0 to `tv_final_weight` at
  `tv_decay_steps` (or `num_steps`) and after; with `tv_stages = k` the
  weight is held over k equal stages, stage i taking the cosine at
  fraction i / (k - 1), so the first stage is at `tv_weight` and the last
  at `tv_final_weight`.

  Args:
    attack: the attack.
    step: a scalar int step.

  Returns:
    A float32 scalar.
  """
  obj = attack.objective
  start = jnp.float32(obj.tv_weight)
  if obj.tv_final_weight is None:
    return start
  horizon = obj.tv_decay_steps or attack.num_steps
  fraction = jnp.clip(jnp.asarray(step, jnp.float32) / horizon, 0.0, 1.0)
  if obj.tv_stages:
    stage = jnp.minimum(jnp.floor(fraction * obj.tv_stages),
                        obj.tv_stages - 1)
    fraction = stage / (obj.tv_stages - 1)
  cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * fraction))
  return obj.tv_final_weight + (start - obj.tv_final_weight) * cosine


def relu_sharpness_at(attack: Attack, step: ArrayLike) -> jax.Array:
  """The ReLU smoothing's sharpness at `step`; 0 is the victim itself."""
  sharpness = jnp.zeros((), jnp.float32)
  for end, value in reversed(attack.objective.relu_smoothing):
    sharpness = jnp.where(
        jnp.asarray(step) < round(end * attack.num_steps), value, sharpness)
  return sharpness


def _victim(attack: Attack, step: ArrayLike) -> Callable[[Any], Any]:
  """Wraps a function of the victim in the ReLU smoothing at `step`.

  The function's own derivatives are left as traced: wrap what is then
  differentiated (the model), not a gradient.
  """
  if not attack.objective.relu_smoothing:
    return lambda fn: fn
  sharpness = relu_sharpness_at(attack, step)
  return lambda fn: models.smooth_relu(fn, sharpness)


def objective(attack: Attack, params: Any, variables: dict[str, jax.Array],
              target: Target, step: ArrayLike = 0) -> jax.Array:
  """Distance between the dummy data's update and the target, plus priors.

  `step` sets the TV weight when it is annealed (`tv_weight_at`) and the
  ReLU smoothing's sharpness (`relu_sharpness_at`); the default, 0, gives
  the objective's `tv_weight` and its first smoothing stage.
  """
  obj = attack.objective
  victim = _victim(attack, step)
  threat = attack.threat
  if obj.relu_smoothing:
    # Smoothed before it is differentiated: the update's backward pass then
    # sees the softplus's slope, not the ReLU's step.
    threat = dataclasses.replace(threat, apply_fn=victim(threat.apply_fn))
  grads = threat.shared_update(params, variables['x'],
                               dummy_labels(attack, variables, target))
  goal = target.grads
  if target.mask is not None:
    apply = lambda g, m: g * jnp.asarray(m, g.dtype)
    grads = jax.tree.map(apply, grads, target.mask)
    goal = jax.tree.map(apply, goal, target.mask)
  distance = objectives.get_distance(obj.distance)
  value = distance(grads, goal, _layer_weight_tree(attack, grads))
  if target.tv_weight is not None:
    tv_weight = target.tv_weight
  else:
    tv_weight = tv_weight_at(attack, step)
  if target.tv_weight is not None or obj.uses_tv:
    value += tv_weight * jnp.mean(
        jax.vmap(objectives.total_variation)(variables['x']))
  if obj.prior_weight:
    if target.prior is None:
      raise ValueError('Objective.prior_weight > 0 needs a Target.prior; '
                       'pass prior= to make_target or reconstruct.')
    value += obj.prior_weight * jnp.mean(jax.vmap(
        lambda x: objectives.gaussian_prior_penalty(target.prior, x))(
            variables['x']))
  if obj.bn_weight:
    value += obj.bn_weight * victim(
        lambda p, x: _bn_penalty(attack, p, x, target.bn_stats))(
            params, variables['x'])
  if obj.feature_weight:
    if target.features is None:
      raise ValueError('Objective.feature_weight > 0 needs Target.features; '
                       'make_target reads them off the gradient.')
    features = victim(lambda p, x: models.classifier_input(
        attack.threat.apply_fn, p, x))(params, variables['x'])[0]
    value += obj.feature_weight * (
        jnp.sum(jnp.square(features - target.features))
        / jnp.maximum(jnp.sum(jnp.square(target.features)), 1e-12))
  return value


def _bn_penalty(attack: Attack, params: Any, x: jax.Array,
                goal: Any) -> jax.Array:
  """GradInversion's BatchNorm prior: `sum ||mean - mean*|| + ||var - var*||`."""
  if goal is None:
    raise ValueError('Objective.bn_weight > 0 needs a Target.bn_stats; pass '
                     'bn_stats= to make_target or reconstruct.')
  stats = models.batch_norm_statistics(attack.threat.apply_fn, params, x)
  if len(stats) != len(goal):
    raise ValueError(
        f'Target.bn_stats has {len(goal)} layers, the model {len(stats)} '
        'training-mode BatchNorm layers.')
  # The norm's gradient at 0 is NaN-free: sqrt of a floored square.
  norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a)) + 1e-12)
  return sum(norm(m - gm) + norm(v - gv)
             for (m, v), (gm, gv) in zip(stats, goal))


def _tolerance(attack: Attack, target: Target) -> jax.Array:
  if target.tolerance is not None:
    return jnp.asarray(target.tolerance, jnp.float32)
  tol = attack.optimization.tol
  if attack.objective.distance == 'l2':
    norm = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(target.grads))
    return tol * norm
  return jnp.asarray(tol, jnp.float32)


def _psnr(x: jax.Array, ref: jax.Array) -> jax.Array:
  mse = jnp.mean(jnp.square(jnp.clip(x, 0.0, 1.0) - ref))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def batch_success(x: jax.Array, ref: jax.Array, threshold: float) -> jax.Array:
  """Whether a `[batch, h, w, c]` reconstruction recovers every original.

  True when each original's best reconstruction (by PSNR) reaches
  `threshold` and no two originals share that reconstruction, so the
  pairing is a permutation with every pair at `threshold` or more. This is
  cheap enough to run every step inside the scan. For distinct originals
  and thresholds of 30 dB or so, it is the same as every pair reaching
  `threshold` under the Hungarian pairing of `dlg_jax.vision.matching`: a
  reconstruction at 30 dB or more against two originals would need those
  originals at 24 dB or more against each other. For batch 1 it is
  `psnr(x, ref) >= threshold`. A NaN `ref` never succeeds.
  """
  if x.shape[0] == 1:
    return _psnr(x, ref) >= threshold
  batch = x.shape[0]
  a = jnp.clip(x, 0.0, 1.0).reshape(batch, -1)
  b = ref.reshape(batch, -1)
  # Pairwise squared distances by the Gram matrix: no [batch, batch, pixels]
  # temporary inside the vmapped scan.
  sq = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  mse = jnp.maximum(sq / a.shape[1], 1e-10)  # [reconstruction, original]
  psnr = -10.0 * jnp.log10(mse)
  best = jnp.argmax(psnr, axis=0)
  distinct = jnp.all(jnp.sort(best) == jnp.arange(batch))
  return jnp.all(jnp.max(psnr, axis=0) >= threshold) & distinct


def init_state(attack: Attack, key: ArrayLike) -> AttackState:
  """A job's starting point: dummy data (and label logits) from `key`."""
  threat, start = attack.threat, attack.start
  shape = (threat.batch, *threat.image_shape)
  key_x, key_y = jax.random.split(key)
  if start.init == 'grey':
    x = 0.5 + start.init_scale * jax.random.normal(key_x, shape)
  elif start.init == 'uniform':
    x = jax.random.uniform(key_x, shape)
  else:
    x = jax.random.normal(key_x, shape)
  variables = {'x': x}
  if attack.joint:
    variables['logits'] = jax.random.normal(
        key_y, (threat.batch, threat.num_classes))
  num_snapshots = len(attack.snapshot_steps)
  return AttackState(
      variables=variables,
      opt_state=attack.optimization.opt.init(variables),
      best=variables,
      best_value=jnp.asarray(jnp.inf, jnp.float32),
      step=jnp.zeros((), jnp.int32),
      converged_step=jnp.full((), -1, jnp.int32),
      success_step=jnp.full((), -1, jnp.int32),
      snapshots=jnp.zeros((num_snapshots, *shape), jnp.float32))


def unstarted_states(attack: Attack, num_jobs: int) -> AttackState:
  """`[num_jobs]` placeholder states that `start_if_unstarted` replaces.

  Zeros with `step = -1`, shaped like a vmapped `init_state`, made on the
  host and put on the default device without compiling anything, so a
  runner's chunk program can start its jobs itself rather than needing a
  program of its own.
  """
  shapes = jax.eval_shape(
      jax.vmap(lambda k: init_state(attack, k)),
      jax.ShapeDtypeStruct((num_jobs,), jax.random.key(0).dtype))
  states = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return jax.device_put(
      states._replace(step=np.full((num_jobs,), -1, np.int32)))


def start_if_unstarted(attack: Attack, state: AttackState,
                       key: ArrayLike) -> AttackState:
  """`init_state(attack, key)` where `state` is a placeholder, else `state`."""
  unstarted = state.step < 0
  return jax.tree.map(lambda a, b: jnp.where(unstarted, a, b),
                      init_state(attack, key), state)


def attack_step(attack: Attack, params: Any, state: AttackState,
                target: Target, *, tolerance: ArrayLike | None = None
                ) -> AttackState:
  """One optimiser step of one job.

  With an annealed TV weight, the value, the gradient and `value_fn` all
  take the weight of `state.step`. L-BFGS then compares a candidate with
  its last accepted point valued under an earlier weight; a decreasing
  weight makes that comparison lenient, and its curvature pairs mix the two
  weights' gradients; `tv_stages` confines both to the k - 1 stage changes.

  Args:
    attack: the attack.
    params: the shared model's parameters.
    state: the job's state.
    target: what it attacks.
    tolerance: the distance below which the job has converged, if already
      computed (`run_steps` computes it once per scan rather than reading
      the whole target gradient every step); None computes it here.

  Returns:
    The state after the step.
  """
  fn = lambda v: objective(attack, params, v, target, state.step)
  value, grad = jax.value_and_grad(fn)(state.variables)
  better = value < state.best_value
  if attack.objective.relu_smoothing:
    # A new smoothing stage is a new objective: its best starts afresh.
    better |= (relu_sharpness_at(attack, state.step)
               != relu_sharpness_at(attack, state.step - 1))
  improved = jnp.isfinite(value) & better
  best = jax.tree.map(lambda a, b: jnp.where(improved, a, b),
                      state.variables, state.best)
  best_value = jnp.where(improved, value, state.best_value)
  # Snapshots record the best point so far: what the attacker would keep.
  # One row is written, in place, and only at a snapshot step.
  hit = jnp.asarray(attack.snapshot_steps) == state.step
  if len(set(attack.snapshot_steps)) == len(attack.snapshot_steps):
    row = jnp.argmax(hit)
    snapshots = jax.lax.dynamic_update_index_in_dim(
        state.snapshots, jnp.where(jnp.any(hit), best['x'],
                                   state.snapshots[row]), row, 0)
  else:  # A repeated step fills every row that names it.
    snapshots = jnp.where(hit[:, None, None, None, None], best['x'][None],
                          state.snapshots)
  if tolerance is None:
    tolerance = _tolerance(attack, target)
  converged = best_value <= tolerance
  if attack.objective.relu_smoothing:  # only the victim's own objective
    converged &= relu_sharpness_at(attack, state.step) == 0
  converged_step = jnp.where((state.converged_step < 0) & converged,
                             state.step, state.converged_step)
  success = batch_success(best['x'], target.ground_truth, attack.success_psnr)
  success_step = jnp.where((state.success_step < 0) & success, state.step,
                           state.success_step)
  updates, opt_state = attack.optimization.opt.update(
      grad, state.opt_state, state.variables, value=value, grad=grad,
      value_fn=fn)
  variables = optax.apply_updates(state.variables, updates)
  if attack.optimization.box:
    variables = {**variables, 'x': jnp.clip(variables['x'], 0.0, 1.0)}
  if target.tolerance is not None:
    # A target's own tolerance stops the job for good once reached (see
    # `Target`): the best point, and so the result, stay where they were.
    stopped = converged_step >= 0
    keep = lambda new, old: jnp.where(stopped, old, new)
    variables = jax.tree.map(keep, variables, state.variables)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
  return AttackState(variables, opt_state, best, best_value, state.step + 1,
                     converged_step, success_step, snapshots)


def run_steps(attack: Attack, params: Any, state: AttackState, target: Target,
              num_steps: int, *, stop_at: int | None = None) -> AttackState:
  """`num_steps` steps of one job under `lax.scan`.

  With `stop_at`, steps from `state.step == stop_at` on leave the state as
  it is, so a runner's chunks can all have one length (one program) while a
  job ends at exactly `attack.num_steps`.
  """
  # Loop-invariant: the target's norm is read once, not every step.
  tolerance = _tolerance(attack, target)

  step = lambda s: attack_step(attack, params, s, target, tolerance=tolerance)

  def body(state, _):
    if stop_at is None:
      return step(state), None
    # A branch, not a select of the new state against the old: one job's
    # loop then neither reads nor writes its L-BFGS memory once stopped
    # (under vmap, cond is a select again).
    return jax.lax.cond(state.step < stop_at, step, lambda s: s, state), None
  state, _ = jax.lax.scan(body, state, None, length=num_steps)
  return state


def make_target(attack: Attack, grads: Any, true_labels: ArrayLike,
                ground_truth: ArrayLike | None = None, *,
                params: Any | None = None,
                prior: objectives.GaussianPrior | None = None,
                bn_stats: Any = None) -> Target:
  """The attacker's view of one shared gradient (or FedAvg update).

  Args:
    attack: the attack.
    grads: the shared gradient, or update with `local_steps > 1`.
    true_labels: `[batch]` int labels; used only in 'known' mode.
    ground_truth: optional `[batch, h, w, c]`, for success-step bookkeeping.
    params: the shared model's parameters; the 'count' label method needs
      them.
    prior: the image prior the objective's `prior_weight` weighs, if any.
    bn_stats: the client batch's BatchNorm statistics the objective's
      `bn_weight` matches, if any.

  Returns:
    A `Target`. Analytic labels come sorted by class, not in batch order.
  """
  threat, fl_client = attack.threat, attack.threat.client
  if attack.labels.label_mode == 'analytic':
    mean_grads = grads
    if fl_client.fedavg:
      # A FedAvg update is lr times a sum of K gradients; read as a mean
      # gradient, the count method is approximate, while iDLG's sign
      # argument holds for any K on one image.
      scale = 1.0 / (fl_client.learning_rate * fl_client.local_steps)
      mean_grads = jax.tree.map(lambda g: g * scale, grads)
    label = labels_lib.batch_labels(
        mean_grads, threat.num_classes, threat.batch,
        method=attack.labels.method(threat.batch),
        params=None if params is None else client_lib.trainable(params))
    onehot = jax.nn.one_hot(label, threat.num_classes)
  else:
    onehot = jax.nn.one_hot(jnp.asarray(true_labels), threat.num_classes)
  if ground_truth is None:
    # A NaN reference never counts as a success.
    ground_truth = jnp.full((threat.batch, *threat.image_shape), jnp.nan)
  features = None
  if attack.objective.feature_weight:
    features = labels_lib.leaked_features(grads, threat.num_classes)
  return Target(grads, onehot, jnp.asarray(ground_truth, jnp.float32),
                prior=prior, bn_stats=bn_stats, features=features)


# The TV weight per unit of noise variance of `aware_target`: 3 at variance
# 1e-4, the best fixed weight measured there (see `aware_target`).
AWARE_TV_PER_VARIANCE = 3e4


def aware_target(attack: Attack, defense: str, strength: ArrayLike,
                 defended_grads: Any, true_labels: ArrayLike,
                 ground_truth: ArrayLike | None = None, *,
                 params: Any | None = None,
                 tv_per_variance: float = AWARE_TV_PER_VARIANCE) -> Target:
  """The target of an attacker who knows the defense and its strength.

  `make_target` plus what that knowledge allows, by what the registry says
  of `defense` (`defenses.lookup(defense).aware`; the name is static,
  `strength` may be traced, so one `vmap` covers a sweep of strengths):

  * `AWARE_MASK` (pruning): only the coordinates that survived are matched
    (`Target.mask` from `defenses.surviving_mask`); a pruned coordinate says
    only that its magnitude was small, and matching the dummy's gradient to
    0 there pulls it away from the original.
  * `AWARE_NOISE_PRIOR` (noise of variance `strength`): a TV prior of
    weight `tv_per_variance * strength` replaces the objective's TV. This
    is MAP estimation: with noise of variance s^2 the log-likelihood is the
    l2 distance over 2 s^2, so a fixed prior's weight relative to the
    distance grows in proportion to the variance (and vanishes without
    noise). It assumes the 'l2' distance.
  * `AWARE_NONE` (casts, DP-SGD): the plain target; a cast's error is
    deterministic and far below the gradient's scale.

  Args:
    attack: the attack.
    defense: the defense's name.
    strength: the defense's strength (noise variance, pruned fraction).
    defended_grads: the shared, defended gradient.
    true_labels: `[batch]` int labels; used only in 'known' mode.
    ground_truth: optional `[batch, h, w, c]`, for success-step bookkeeping.
    params: the shared model's parameters (for the 'count' label method).
    tv_per_variance: the noise defenses' TV weight per unit variance.

  Returns:
    A `Target`.

  Raises:
    ValueError: an unknown `defense`, or noise with a distance other than
      'l2'.
  """
  target = make_target(attack, defended_grads, true_labels, ground_truth,
                       params=params)
  aware = defenses.lookup(defense).aware
  if aware == defenses.AWARE_MASK:
    return target._replace(mask=defenses.surviving_mask(defended_grads))
  if aware == defenses.AWARE_NOISE_PRIOR:
    if attack.objective.distance != 'l2':
      raise ValueError(f'aware_target weighs the prior against the l2 '
                       f'distance; got distance '
                       f'{attack.objective.distance!r}.')
    weight = tv_per_variance * jnp.asarray(strength, jnp.float32)
    return target._replace(tv_weight=weight)
  return target


class Result(NamedTuple):
  """What `reconstruct` returns, per target (restarts reduced to the best).

  Attributes:
    x: `[n, batch, h, w, c]` best reconstruction, by gradient distance.
    labels: `[n, batch]` the attacker's labels for it.
    distance: `[n]` its objective value.
    restart: `[n]` which restart won.
    steps: `[n]` steps run by the winning restart.
    converged_step: `[n]` first step below tolerance, -1 if never.
    success_step: `[n]` first step at `success_psnr`, -1 if never (or no
      ground truth).
    seconds: `[n]` attack wall time of the target, all restarts, compile
      excluded.
    seconds_per_step: `[n]` the target's seconds over its steps, restarts
      summed.
    snapshots: `[num_snapshots, n, batch, h, w, c]` of the winning restart.
    diverged: `[n]` whether every restart diverged (never finite).
    compile_seconds: total compile time of the run.
    compiles: programs the run compiled (0 when `runner.CACHE` held them).
  """
  x: np.ndarray
  labels: np.ndarray
  distance: np.ndarray
  restart: np.ndarray
  steps: np.ndarray
  converged_step: np.ndarray
  success_step: np.ndarray
  seconds: np.ndarray
  seconds_per_step: np.ndarray
  snapshots: np.ndarray
  diverged: np.ndarray
  compile_seconds: float
  compiles: int = 0


def over_jobs(fn: Callable[..., Any], in_axes: Sequence[int | None]
              ) -> Callable[..., Any]:
  """`jax.vmap(fn, in_axes)`, except that a batch of one job runs unbatched.

  The result has the batch axis either way. XLA's CPU backend copies the
  L-BFGS memory (megabytes) several times per step in a vmapped loop of
  batch 1, where it updates it in place without the batch axis; a runner
  that attacks one job at a time (`max_parallel=1`) would pay that on
  every step.
  """
  def batched(*args):
    sizes = {jax.tree.leaves(a)[0].shape[0]
             for a, axis in zip(args, in_axes)
             if axis is not None and jax.tree.leaves(a)}
    if sizes != {1}:
      return jax.vmap(fn, in_axes=in_axes)(*args)
    one = [a if axis is None else jax.tree.map(lambda v: v[0], a)
           for a, axis in zip(args, in_axes)]
    return jax.tree.map(lambda v: v[None], fn(*one))
  return batched


@jax.jit
def _take(tree: Any, index: ArrayLike) -> Any:
  """`tree`'s leaves at `index` along their first axis, in one program.

  Jitted: op by op, every leaf's gather compiles on its own the first time
  its shape is seen (0.4 s for the DLG LeNet's targets on a first call).
  """
  return jax.tree.map(lambda a: a[index], tree)


def _padded(lanes: int, size: int) -> np.ndarray:
  """`[size]` lane indices: `0..lanes-1`, then repeats of them (padding)."""
  return np.arange(size) % lanes


def reconstruct(
    attack: Attack,
    params: Any,
    grads: Any,
    true_labels: ArrayLike,
    key: ArrayLike,
    *,
    restarts: int = 1,
    ground_truth: ArrayLike | None = None,
    chunk_size: int = 250,
    max_parallel: int | None = None,
    log_every_seconds: float = 10.0,
    prior: objectives.GaussianPrior | None = None,
    bn_stats: Any = None,
) -> Result:
  """Runs the attack on many targets at once and keeps the best restart.

  All targets x restarts run as one vmapped batch of jobs (at most
  `max_parallel` at a time) in jitted chunks of about `chunk_size` steps.
  After each chunk, jobs that converged leave the batch; once at most half
  of it is still running, the batch shrinks to the running jobs, so a few
  slow targets do not make every target pay for their steps. A run compiles
  at most two batch sizes and one chunk length (`runner.next_size`,
  `runner.chunk_lengths`), and the executables stay in `runner.CACHE` for
  the next call with the same attack and shapes.

  Args:
    attack: the attack.
    params: the shared model's parameters.
    grads: the shared gradients (FedAvg updates with `local_steps > 1`),
      each leaf with a leading `[n]` target axis.
    true_labels: `[n, batch]` int labels, used for 'known' label mode.
    key: PRNG key for the dummy starts.
    restarts: random restarts per target; the lowest final distance wins.
    ground_truth: optional `[n, batch, h, w, c]` images, to record the step
      of success (never used by the attack itself).
    chunk_size: steps per compiled chunk (made equal, see
      `runner.chunk_lengths`).
    max_parallel: most jobs run at once (memory bound); None runs all.
    log_every_seconds: progress logging interval.
    prior: the image prior the objective's `prior_weight` weighs, shared by
      every target.
    bn_stats: each target's BatchNorm statistics (leaves with a leading
      `[n]` axis, e.g. `jax.vmap` of `threat.batch_statistics` over the
      targets) that the objective's `bn_weight` matches.

  Returns:
    A `Result`.
  """
  n = jax.tree.leaves(grads)[0].shape[0]
  true_labels = jnp.asarray(true_labels).reshape(n, attack.batch)
  if ground_truth is not None:
    ground_truth = jnp.asarray(ground_truth, jnp.float32).reshape(
        n, attack.batch, *attack.threat.image_shape)
  if restarts < 1:
    raise ValueError(f'restarts must be >= 1, got {restarts}.')
  # The prior is closed over, so vmap copies it to every target.
  targets = jax.vmap(
      lambda g, y, gt, bn: make_target(attack, g, y, gt, params=params,
                                       prior=prior, bn_stats=bn),
      in_axes=(0, 0, None if ground_truth is None else 0,
               None if bn_stats is None else 0))(
                   grads, true_labels, ground_truth, bn_stats)
  num_jobs = n * restarts
  job_target = np.repeat(np.arange(n), restarts)
  keys = jax.random.split(key, num_jobs)
  width = num_jobs if max_parallel is None else max(1, min(max_parallel,
                                                           num_jobs))
  length, num_chunks = runner.chunk_lengths(attack.num_steps, chunk_size)
  stop_at = (attack.num_steps if length * num_chunks != attack.num_steps
             else None)
  counter = runner.CompileCounter()
  # One program per batch size: its jobs start in their first chunk (from
  # placeholder states), not in a program of their own. params are an
  # argument, not a closed-over constant that XLA would fold into (and
  # slow) every compile.
  chunk_fn = jax.jit(over_jobs(
      lambda s, k, t, p: run_steps(attack, p, start_if_unstarted(attack, s, k),
                                   t, length, stop_at=stop_at),
      in_axes=(0, 0, 0, None)), donate_argnums=0)
  sizes: list[int] = []
  progress = runner.Progress('reconstruct', every_seconds=log_every_seconds)

  final: list[Any] = [None] * num_jobs
  seconds = np.zeros(num_jobs)
  for first in range(0, num_jobs, width):
    group = np.arange(first, min(first + width, num_jobs))
    # Lane i runs job active[lanes[i]]; lanes past the running jobs repeat
    # them and are ignored.
    active, lanes = group, _padded(group.size, width)
    states = unstarted_states(attack, lanes.size)
    for chunk in range(num_chunks):
      job_targets = _take(targets, job_target[active[lanes]])
      job_keys = keys[active[lanes]]
      sizes.append(lanes.size)
      fn = runner.CACHE.compiled(('chunk', attack, length, stop_at), chunk_fn,
                                 states, job_keys, job_targets, params)
      start = time.perf_counter()
      states = jax.block_until_ready(fn(states, job_keys, job_targets, params))
      # Each running job pays an equal share of the chunk, padding included.
      seconds[active] += (time.perf_counter() - start) / active.size
      steps_done = min((chunk + 1) * length, attack.num_steps)
      converged, best_value = jax.device_get(
          (states.converged_step[:active.size],
           states.best_value[:active.size]))
      done = (converged >= 0) | (steps_done >= attack.num_steps)
      finished = np.nonzero(done)[0]
      if finished.size:
        # One transfer for the chunk's finished jobs, without the optimiser
        # state (megabytes per job, never read again).
        kept = jax.device_get(_take(
            states._replace(variables=None, opt_state=None), finished))
        for j, lane in enumerate(finished):
          final[active[lane]] = jax.tree.map(lambda a: a[j], kept)  # pylint: disable=cell-var-from-loop
      # Time left counts every chunk a group could run: an upper bound.
      progress.update(
          first // width * num_chunks + chunk + 1,
          math.ceil(num_jobs / width) * num_chunks,
          f'{sum(f is not None for f in final)}/{num_jobs} jobs finished, '
          f'{active.size - finished.size} running at step {steps_done}, '
          f'best distance {float(np.min(best_value)):.3g}')
      running = np.nonzero(~done)[0]
      if not running.size:
        break
      if finished.size:
        size = runner.next_size(running.size, lanes.size, sizes)
        lanes = _padded(running.size, size)
        states = _take(states, running[lanes])
        active = active[running]
  return _reduce_restarts(attack, final, jax.device_get(
      jnp.argmax(targets.labels, axis=-1)), seconds, n, restarts,
                          counter.seconds, counter.compiles)


def _reduce_restarts(attack: Attack, final: Sequence[AttackState],
                     target_labels: np.ndarray, seconds: np.ndarray, n: int,
                     restarts: int, compile_seconds: float,
                     compiles: int) -> Result:
  """Keeps each target's restart of lowest distance; diverged ones never win."""
  states = jax.tree.map(lambda *a: np.stack(a), *final)
  states = jax.tree.map(lambda a: a.reshape(n, restarts, *a.shape[1:]),
                        states)
  values = states.best_value
  winner = runner.best_restart(values)
  pick = lambda a: a[np.arange(n), winner]
  best = jax.tree.map(pick, states.best)
  steps = pick(states.step)
  if attack.joint:
    labels = np.argmax(best['logits'], axis=-1)
  else:
    labels = np.asarray(target_labels)
  snapshots = pick(states.snapshots)
  # Snapshot steps the job never reached show its final reconstruction.
  unreached = np.asarray(attack.snapshot_steps)[None, :] >= steps[:, None]
  snapshots = np.where(unreached[..., None, None, None, None],
                       best['x'][:, None], snapshots)
  total_seconds = seconds.reshape(n, restarts).sum(axis=1)
  total_steps = states.step.sum(axis=1)
  return Result(
      x=best['x'], labels=labels,
      distance=pick(states.best_value), restart=winner, steps=steps,
      converged_step=pick(states.converged_step),
      success_step=pick(states.success_step), seconds=total_seconds,
      seconds_per_step=total_seconds / np.maximum(total_steps, 1),
      snapshots=np.moveaxis(snapshots, 1, 0),
      diverged=~np.isfinite(values).any(axis=1),
      compile_seconds=compile_seconds, compiles=compiles)
