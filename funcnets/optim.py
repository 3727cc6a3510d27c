"""PyTorch's optimizers, with PyTorch's argument names, defaults and maths, as Optax transforms.

Every constructor returns an ``optax.GradientTransformation`` built by
``optax.chain``-ing Optax primitives; a funcnets transform appears only where
Optax has none for PyTorch's maths, or (`scale_by_adadelta`) where Optax's
way of writing the same maths compiles badly on XLA:CPU. ``lr`` is a float or
an Optax schedule (a function of the step count, e.g. `step_lr`).

Notation, per parameter tensor ``p`` with gradient ``g`` at step ``t = 1, 2, ...``;
every optimizer first applies, in PyTorch's order::

    g <- -g              if maximize
    g <- g + wd * p      if weight_decay (L2; AdamW instead decays p directly)

==========  ===========================================  ===========================
PyTorch     chain                                        differs from Optax's alias
==========  ===========================================  ===========================
SGD         trace (or trace_with_dampening), lr          dampening; first step raw g
Adagrad     scale_by_sum_of_squares, lr / (1+(t-1)decay) acc. starts at 0, eps outside
Adadelta    scale_by_adadelta (ours), lr                 optax's default lr=None ascends
RMSprop     scale_by_rms/stddev(eps outside), trace, lr  alpha .99, eps outside sqrt
Adam        adam_update (lr inside)                      L2 wd; AMSGrad; fp32 bias corr.
AdamW       adam_update, decoupled decay -lr*wd*p        default wd 1e-2
==========  ===========================================  ===========================

>>> import funcnets as fn
>>> tx = fn.optim.sgd(lr=0.01, momentum=0.9, nesterov=True)
>>> tx = fn.optim.create("adam", lr=1e-3, betas=(0.9, 0.999))
>>> tx = fn.optim.adadelta(lr=fn.optim.step_lr(0.5, step_size=1, gamma=0.7, steps_per_epoch=938))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


# --- schedules: torch.optim.lr_scheduler (funcnets.lr_scheduler) ------------------------

from funcnets.lr_scheduler import (  # noqa: E402, F401 (fn.optim.<scheduler>, as torch.optim.lr_scheduler)
    PlateauState, ReduceLROnPlateau, Schedule, chained_scheduler, constant_lr, cosine_annealing_lr,
    cosine_annealing_warm_restarts, cyclic_lr, exponential_lr, has_plateau, lambda_lr, linear_lr, multi_step_lr,
    multiplicative_lr, one_cycle_lr, polynomial_lr, reduce_lr_on_plateau, sequential_lr, step_lr, step_plateau)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_lr(lr: ScalarOrSchedule) -> None:
    if callable(lr) or isinstance(lr, ReduceLROnPlateau):
        return
    _require(isinstance(lr, (int, float, jax.Array)) and not isinstance(lr, bool),
             f"lr must be a float or an Optax schedule, got {lr!r}")
    _require(float(lr) >= 0.0, f"Invalid learning rate: {lr}")


def learning_rate_at(lr: ScalarOrSchedule, count):
    """The learning rate at update ``count`` (0-based): ``lr(count)`` for a schedule, else ``lr``."""
    return lr(count) if callable(lr) else lr


def _lr_in_state(lr) -> optax.GradientTransformation:   # noqa: ARG001 (the name is the state's key)
    return optax.identity()


def expose_learning_rate(lr: ScalarOrSchedule) -> optax.GradientTransformation:
    """A link that changes no update and keeps ``lr`` in the optimizer state, as
    Optax does for any hyperparameter (``optax.inject_hyperparams``): after a
    step, ``opt_state``'s ``hyperparams["lr"]`` is the rate that step used (a
    schedule evaluated at its count). Every optimizer here ends with it; read
    it with `learning_rate`."""
    return optax.inject_hyperparams(_lr_in_state)(lr=lr)


def learning_rate(opt_state) -> jax.Array | None:
    """The learning rate in ``opt_state`` (`expose_learning_rate`, or the rate a
    `reduce_lr_on_plateau` has set): the last step's, or before any step the first
    one's; with parameter groups, the group of the parameters no pattern matched;
    None for an optimizer that does not keep it.

    >>> import jax.numpy as jnp, funcnets as fn
    >>> tx = fn.optim.sgd(lr=0.01)
    >>> print(fn.optim.learning_rate(tx.init({"w": jnp.zeros(3)})))
    0.01
    """
    hyperparams = getattr(opt_state, "hyperparams", None)   # Optax's InjectHyperparamsState
    if isinstance(hyperparams, dict) and "lr" in hyperparams:
        return jnp.asarray(hyperparams["lr"])
    if isinstance(opt_state, PlateauScaleState):
        return opt_state.plateau.lr
    inner = getattr(opt_state, "inner_states", None)        # optax.multi_transform: parameter groups
    if isinstance(inner, dict):
        for label in sorted(inner, key=lambda name: name != _DEFAULT_GROUP):   # the default group's first
            found = learning_rate(getattr(inner[label], "inner_state", inner[label]))
            if found is not None:
                return found
        return None
    if isinstance(opt_state, (tuple, list)):
        for part in opt_state:
            found = learning_rate(part)
            if found is not None:
                return found
    return None


def _prologue(maximize: bool, weight_decay: float) -> list[optax.GradientTransformation]:
    """PyTorch's gradient preamble: negate for ``maximize``, then add L2 ``wd * p``."""
    steps = []
    if maximize:
        steps.append(optax.scale(-1.0))
    if weight_decay != 0:
        steps.append(optax.add_decayed_weights(weight_decay))
    return steps


# --- funcnets transforms, where Optax has no primitive ---------------------------

class TraceWithDampeningState(NamedTuple):
    count: jax.Array
    trace: Any


def trace_with_dampening(momentum: ScalarOrSchedule, dampening: float = 0.0,
                         nesterov: bool = False) -> optax.GradientTransformation:
    """SGD's momentum buffer with PyTorch's ``dampening``, and a momentum that may
    change per update (``momentum(t)``: `one_cycle_lr`, `cyclic_lr`)::

        b_1 = g_1                                  (the raw first gradient)
        b_t = m_t * b_{t-1} + (1 - dampening) * g_t
        d_t = g_t + m_t * b_t  if nesterov  else  b_t

    ``optax.trace`` is this with a constant momentum and ``dampening = 0`` only (its
    zero-initialised buffer then gives ``b_1 = g_1``).
    """

    def init_fn(params):
        return TraceWithDampeningState(count=jnp.zeros([], jnp.int32),
                                       trace=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        m = learning_rate_at(momentum, state.count)
        trace = jax.tree.map(
            lambda g, b: jnp.where(first, g, m * b + (1 - dampening) * g).astype(g.dtype), updates, state.trace)
        out = jax.tree.map(lambda g, b: (g + m * b).astype(g.dtype), updates, trace) if nesterov else trace
        return out, TraceWithDampeningState(count=optax.safe_increment(state.count), trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleBySumOfSquaresState(NamedTuple):
    sum_of_squares: Any


def scale_by_sum_of_squares(initial_accumulator_value: float = 0.0,
                            eps: float = 1e-10) -> optax.GradientTransformation:
    """Adagrad's scaling as PyTorch computes it::

        s_t = s_{t-1} + g_t^2,   s_0 = initial_accumulator_value
        u_t = g_t / (sqrt(s_t) + eps)

    ``optax.scale_by_rss`` starts at 0.1 and puts ``eps`` inside the square root.
    """

    def init_fn(params):
        return ScaleBySumOfSquaresState(optax.tree.full_like(params, initial_accumulator_value))

    def update_fn(updates, state, params=None):
        del params
        sums = jax.tree.map(lambda g, s: s + g * g, updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return updates, ScaleBySumOfSquaresState(sums)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
    """``optax.scale_by_adadelta``'s maths and state (``optax.ScaleByAdaDeltaState``,
    ``e_g`` = ``v``, ``e_x`` = ``u``), with ``u_t`` computed without ``d_t``::

        v_t = rho v_{t-1} + (1 - rho) g_t^2
        d_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t                  (the update)
        u_t = rho u_{t-1} + (1 - rho) (u_{t-1} + eps) / (v_t + eps) g_t^2   (= ... d_t^2)

    the same numbers up to rounding (float64 parity with ``torch.optim.Adadelta``
    is tested). Why: when ``u_t`` squares ``d_t``, both outputs share two square
    roots, which XLA:CPU writes to arrays of their own and reads twice; this
    form is three passes over the params instead of five (docs/performance.md).
    """

    _require(0.0 <= rho <= 1.0, f"Invalid rho value: {rho}")
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")

    def init_fn(params):
        return optax.ScaleByAdaDeltaState(e_g=optax.tree.zeros_like(params), e_x=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        e_g = optax.tree.update_moment(updates, state.e_g, rho, 2)
        deltas = jax.tree.map(lambda g, v, u: jnp.sqrt(u + eps) / jnp.sqrt(v + eps) * g, updates, e_g, state.e_x)
        e_x = jax.tree.map(lambda g, v, u: rho * u + (1 - rho) * ((u + eps) / (v + eps) * (g * g)),
                           updates, e_g, state.e_x)
        return deltas, optax.ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return optax.GradientTransformation(init_fn, update_fn)


class AdamUpdateState(NamedTuple):
    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any  # () unless amsgrad


def _bias_correction(beta, step: jax.Array) -> jax.Array:
    """``1 - beta^t`` as ``-expm1(t * log(beta))``: PyTorch computes it in Python
    double; in float32 this form keeps full relative precision, ``1 - beta**t`` does not."""
    step = step.astype(jnp.result_type(float))
    if isinstance(beta, (int, float)) and beta == 0.0:
        return jnp.ones_like(step)
    return -jnp.expm1(step * jnp.log(jnp.asarray(beta, step.dtype)))


def adam_update(lr: ScalarOrSchedule, b1: ScalarOrSchedule, b2: float, eps: float,
                amsgrad: bool) -> optax.GradientTransformation:
    """The Adam step of ``torch.optim.Adam``, learning rate included, in PyTorch's operation order::

        m_t = lerp(m_{t-1}, g_t, 1 - b1)           v_t = b2 v_{t-1} + (1 - b2) g_t^2
        v^_t = max(v^_{t-1}, v_t) if amsgrad else v_t      (the raw moment, before correction)
        denom = sqrt(v^_t) / sqrt(1 - b2^t) + eps
        u_t = -(lr_t / (1 - b1^t)) * m_t / denom

    Differs from ``optax.scale_by_adam`` + ``scale_by_learning_rate``:
    ``optax.amsgrad`` keeps the max of the *bias-corrected* moment, and Optax
    computes ``1 - b^t`` as ``1 - b**t`` in the parameter dtype, which in float32
    loses precision as ``b^t -> 1`` and makes curves drift from PyTorch's after
    ~100 steps. The learning rate is applied inside so that the float32
    roundings are PyTorch's (``addcdiv_(m, denom, value=-step_size)``). ``b1`` may
    change per update (``b1(t)``, as `one_cycle_lr` cycles it); the bias correction
    then uses the current one, as PyTorch's does.
    """

    def init_fn(params):
        # Distinct buffers per moment: a state holding one array twice cannot be donated.
        return AdamUpdateState(count=jnp.zeros([], jnp.int32), exp_avg=optax.tree.zeros_like(params),
                               exp_avg_sq=optax.tree.zeros_like(params),
                               max_exp_avg_sq=optax.tree.zeros_like(params) if amsgrad else ())

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        beta1 = learning_rate_at(b1, state.count)
        exp_avg = jax.tree.map(lambda g, m: (m + (1 - beta1) * (g - m)).astype(m.dtype), updates, state.exp_avg)
        exp_avg_sq = jax.tree.map(lambda g, v: b2 * v + ((1 - b2) * g) * g, updates, state.exp_avg_sq)
        max_exp_avg_sq = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, exp_avg_sq) if amsgrad else ()
        second = max_exp_avg_sq if amsgrad else exp_avg_sq
        step_size = learning_rate_at(lr, state.count) / _bias_correction(beta1, count)
        correction2_sqrt = jnp.sqrt(_bias_correction(b2, count))

        def descent(m, v):
            denom = jnp.sqrt(v) / correction2_sqrt.astype(v.dtype) + eps
            return (-step_size).astype(m.dtype) * m / denom

        updates = jax.tree.map(descent, exp_avg, second)
        return updates, AdamUpdateState(count, exp_avg, exp_avg_sq, max_exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


# --- reduce_lr_on_plateau: the rate in the optimizer state ------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["plateau"], meta_fields=["scheduler"])
@dataclasses.dataclass(frozen=True)
class PlateauScaleState:
    """`scale_by_plateau`'s state: the scheduler's (`funcnets.lr_scheduler.PlateauState`,
    with the lr it has set) and the scheduler itself, static."""

    plateau: PlateauState
    scheduler: ReduceLROnPlateau


def scale_by_plateau(scheduler: ReduceLROnPlateau) -> optax.GradientTransformation:
    """The last link of an optimizer whose ``lr`` is a `reduce_lr_on_plateau`: the chain
    before it runs at lr 1, and this multiplies its update by the lr the scheduler has
    set (`step_plateau` changes it). Every PyTorch optimizer here applies its lr as a
    last factor (Adam's ``lr / (1 - b1^t)``, AdamW's decay ``lr * wd * p`` too), so
    this is PyTorch's setting of ``group["lr"]``, up to rounding."""

    def init_fn(params):
        del params
        return PlateauScaleState(plateau=scheduler.init(), scheduler=scheduler)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: (u * state.plateau.lr).astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _rate(lr) -> tuple[ScalarOrSchedule, list[optax.GradientTransformation]]:
    """The rate an optimizer's chain is built with, and the links that end it: ``lr`` and
    `expose_learning_rate`, or for a `reduce_lr_on_plateau` 1 and `scale_by_plateau`."""
    if isinstance(lr, ReduceLROnPlateau):
        return 1.0, [scale_by_plateau(lr)]
    return lr, [expose_learning_rate(lr)]


def _cycled_momentum(lr, optimizer: str, supported: bool):
    """The momentum schedule of a `one_cycle_lr`/`cyclic_lr` that cycles it, or None."""
    momentum = getattr(lr, "momentum", None)
    if momentum is not None and not supported:
        raise ValueError(f"{optimizer}: optimizer must support momentum or beta1 with `cycle_momentum` option "
                         "enabled (give the scheduler cycle_momentum=False)")
    return momentum


# --- parameter groups --------------------------------------------------------------

_DEFAULT_GROUP = "default"


def parameter_names(params) -> list[str]:
    """The parameters' names in ``params`` leaf order, as patterns of ``groups=`` see them:
    the path joined by dots (``"fc1.kernel"``, ``"layers.0.bias"``)."""
    return [".".join(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _group_labels(params, patterns: list[str], optimizer: str):
    names = parameter_names(params)
    labels, used = [], set()
    for name in names:
        aliases = (name, name[:-len("kernel")] + "weight") if name.endswith("kernel") else (name,)
        for index, pattern in enumerate(patterns):
            if any(fnmatch.fnmatchcase(alias, pattern) for alias in aliases):
                labels.append(f"group{index}")
                used.add(index)
                break
        else:
            labels.append(_DEFAULT_GROUP)
    unused = [pattern for index, pattern in enumerate(patterns) if index not in used]
    if unused:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"{optimizer}: group pattern(s) {unused} match no parameter; the parameters are named "
                         f"{shown} (a kernel also answers to .weight, as in PyTorch's state_dict)")
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def _param_groups(constructor, arguments: dict) -> optax.GradientTransformation:
    """``constructor(**arguments)`` with PyTorch's parameter groups: ``arguments["groups"]``
    maps a glob over parameter names to the options that group overrides."""
    groups = arguments.pop("groups")
    optimizer = constructor.__name__
    _require(isinstance(groups, dict) and all(isinstance(p, str) for p in groups)
             and all(isinstance(o, dict) for o in groups.values()),
             f"{optimizer}: groups must map a pattern to options, e.g. {{'*.bias': {{'weight_decay': 0.0}}}}, "
             f"got {groups!r}")
    allowed = sorted(set(inspect.signature(constructor).parameters) - {"groups"})
    transforms = {_DEFAULT_GROUP: constructor(**arguments)}
    for index, (pattern, options) in enumerate(groups.items()):
        unknown = sorted(set(options) - set(allowed))
        _require(not unknown, f"{optimizer}: group {pattern!r}: unknown option(s) {unknown}; {optimizer} takes "
                              f"{allowed}")
        options = dict(options)
        base = arguments["lr"]
        if "lr" in options and isinstance(options["lr"], (int, float)) and callable(base) or \
                "lr" in options and isinstance(base, ReduceLROnPlateau) and isinstance(options["lr"], (int, float)):
            if not isinstance(base, (Schedule, ReduceLROnPlateau)):
                raise ValueError(f"{optimizer}: group {pattern!r} sets lr={options['lr']}, but the optimizer's lr "
                                 "is an Optax schedule that cannot start from another lr; give the group its own "
                                 "schedule, or use a funcnets scheduler (fn.optim.step_lr, ...)")
            options["lr"] = base.with_lr(options["lr"])   # PyTorch schedules each group from its own lr
        transforms[f"group{index}"] = constructor(**{**arguments, **options})
    patterns = list(groups)
    return optax.multi_transform(transforms, lambda params: _group_labels(params, patterns, optimizer))


# --- the PyTorch optimizers -----------------------------------------------------

def sgd(lr: ScalarOrSchedule = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
        groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.SGD``::

        b_t = g_t (t = 1),  momentum * b_{t-1} + (1 - dampening) * g_t (t > 1)
        d_t = g_t + momentum * b_t  if nesterov  else  b_t   (g_t if momentum = 0)
        p_t = p_{t-1} - lr * d_t

    Built as ``optax.trace`` (momentum, nesterov) when ``dampening = 0``, else
    `trace_with_dampening` (also for a momentum that `one_cycle_lr` or `cyclic_lr`
    cycle), then ``optax.scale_by_learning_rate``. ``groups``: PyTorch's parameter
    groups (`funcnets.optim` module doc), for every optimizer here.
    """
    if groups:
        return _param_groups(sgd, dict(locals()))
    _check_lr(lr)
    _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(not nesterov or (momentum > 0 and dampening == 0),
             "Nesterov momentum requires a momentum and zero dampening")
    cycled = _cycled_momentum(lr, "sgd", supported=True)
    rate, last = _rate(lr)
    steps = _prologue(maximize, weight_decay)
    if cycled is not None:
        steps.append(trace_with_dampening(cycled, dampening, nesterov))
    elif momentum > 0:
        if dampening == 0:
            steps.append(optax.trace(decay=momentum, nesterov=nesterov))
        else:
            steps.append(trace_with_dampening(momentum, dampening))
    steps.append(optax.scale_by_learning_rate(rate))
    return optax.chain(*steps, *last)


def adagrad(lr: ScalarOrSchedule = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False,
            groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.Adagrad``::

        s_t = s_{t-1} + g_t^2   (s_0 = initial_accumulator_value)
        p_t = p_{t-1} - lr / (1 + (t - 1) * lr_decay) * g_t / (sqrt(s_t) + eps)

    `scale_by_sum_of_squares` (Optax's ``scale_by_rss`` starts at 0.1 with eps
    inside the root), then the decayed learning rate as a schedule.
    """
    if groups:
        return _param_groups(adagrad, dict(locals()))
    _check_lr(lr)
    _require(lr_decay >= 0.0, f"Invalid lr_decay value: {lr_decay}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(initial_accumulator_value >= 0.0,
             f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _cycled_momentum(lr, "adagrad", supported=False)
    base, last = _rate(lr)
    rate = base
    if lr_decay != 0:
        def rate(count):
            return learning_rate_at(base, count) / (1 + count * lr_decay)
        if not isinstance(lr, ReduceLROnPlateau):
            last = [expose_learning_rate(rate)]
    return optax.chain(*_prologue(maximize, weight_decay),
                       scale_by_sum_of_squares(initial_accumulator_value, eps),
                       optax.scale_by_learning_rate(rate), *last)


def adadelta(lr: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, *, maximize: bool = False,
             groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.Adadelta``::

        v_t = rho v_{t-1} + (1 - rho) g_t^2
        d_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
        u_t = rho u_{t-1} + (1 - rho) d_t^2
        p_t = p_{t-1} - lr * d_t

    `scale_by_adadelta` (``optax.scale_by_adadelta``'s maths, laid out for
    XLA:CPU) then the learning rate. Beware
    ``optax.adadelta()``: its default ``learning_rate=None`` skips the scaling
    *and its sign flip*, so it climbs the loss; PyTorch's default lr is 1.0.
    """
    if groups:
        return _param_groups(adadelta, dict(locals()))
    _check_lr(lr)
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _cycled_momentum(lr, "adadelta", supported=False)
    rate, last = _rate(lr)
    return optax.chain(*_prologue(maximize, weight_decay),
                       scale_by_adadelta(rho=rho, eps=eps),   # checks rho and eps
                       optax.scale_by_learning_rate(rate), *last)


def rmsprop(lr: ScalarOrSchedule = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
            maximize: bool = False, groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.RMSprop``::

        v_t = alpha v_{t-1} + (1 - alpha) g_t^2
        a_t = alpha a_{t-1} + (1 - alpha) g_t                      (centered only)
        r_t = sqrt(v_t - a_t^2) + eps  if centered  else  sqrt(v_t) + eps
        b_t = momentum b_{t-1} + g_t / r_t,  p_t = p_{t-1} - lr b_t   (momentum > 0)
        p_t = p_{t-1} - lr g_t / r_t                                   (otherwise)

    ``optax.scale_by_rms`` / ``scale_by_stddev`` with ``eps_in_sqrt=False``,
    then ``optax.trace(momentum)`` (`trace_with_dampening` for a cycled
    momentum), then the learning rate, in that order.
    ``optax.rmsprop`` defaults to decay 0.9 with eps inside the root.
    """
    if groups:
        return _param_groups(rmsprop, dict(locals()))
    _check_lr(lr)
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(alpha >= 0.0, f"Invalid alpha value: {alpha}")
    cycled = _cycled_momentum(lr, "rmsprop", supported=True)
    rate, last = _rate(lr)
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    steps = _prologue(maximize, weight_decay)
    steps.append(scale(decay=alpha, eps=eps, initial_scale=0.0, eps_in_sqrt=False))
    if cycled is not None:
        steps.append(trace_with_dampening(cycled))
    elif momentum > 0:
        steps.append(optax.trace(decay=momentum))
    steps.append(optax.scale_by_learning_rate(rate))
    return optax.chain(*steps, *last)


def _check_adam(lr, betas, eps, weight_decay) -> tuple[float, float]:
    _check_lr(lr)
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _require(isinstance(betas, (tuple, list)) and len(betas) == 2, f"betas must be a pair, got {betas!r}")
    _require(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
    _require(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    return float(betas[0]), float(betas[1])


def adam(lr: ScalarOrSchedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
         groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.Adam``: `adam_update` (which has the equations) after the
    gradient preamble, so ``weight_decay`` is L2 added to the gradient, as
    PyTorch does (not decoupled: that is `adamw`). A `one_cycle_lr`/`cyclic_lr`
    that cycles momentum cycles ``beta1``."""
    if groups:
        return _param_groups(adam, dict(locals()))
    b1, b2 = _check_adam(lr, betas, eps, weight_decay)
    b1 = _cycled_momentum(lr, "adam", supported=True) or b1
    rate, last = _rate(lr)
    return optax.chain(*_prologue(maximize, weight_decay), adam_update(rate, b1, b2, eps, amsgrad), *last)


def adamw(lr: ScalarOrSchedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
          groups: dict | None = None) -> optax.GradientTransformation:
    """``torch.optim.AdamW``: decoupled weight decay, default 1e-2 (Optax's is 1e-4)::

        p_t = p_{t-1} (1 - lr_t * wd) + (the Adam step of `adam_update`)

    built as `adam_update` then ``optax.add_decayed_weights(-lr_t * wd)``.
    """
    if groups:
        return _param_groups(adamw, dict(locals()))
    b1, b2 = _check_adam(lr, betas, eps, weight_decay)
    b1 = _cycled_momentum(lr, "adamw", supported=True) or b1
    rate, last = _rate(lr)
    steps = _prologue(maximize, 0.0)
    steps.append(adam_update(rate, b1, b2, eps, amsgrad))
    if weight_decay != 0:
        steps.append(optax.add_decayed_weights(lambda count: -learning_rate_at(rate, count) * weight_decay))
    return optax.chain(*steps, *last)


# --- gradient clipping and accumulation ----------------------------------------------

def clip_grad_norm(max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_`` as an Optax transformation, to chain before an
    optimizer (``optax.chain(fn.optim.clip_grad_norm(1.0), fn.optim.adam(lr=1e-3))``)::

        n = || (||g_1||_p, ||g_2||_p, ...) ||_p            (max |g| for p = inf)
        g <- g * min(1, max_norm / (n + 1e-6))

    Optax's ``clip_by_global_norm`` divides by ``n`` alone. PyTorch raises when ``n``
    is not finite and ``error_if_nonfinite``; a compiled step cannot, so it makes the
    update NaN, and the next loss stops `fit` (`funcnets.NonFiniteLossError`).
    """
    _require(isinstance(max_norm, (int, float)) and max_norm >= 0, f"max_norm must be >= 0, got {max_norm!r}")
    norm_type = float(norm_type)
    _require(norm_type > 0, f"norm_type must be > 0 or inf, got {norm_type}")

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        if norm_type == float("inf"):
            norms = jnp.stack([jnp.max(jnp.abs(g)) for g in leaves])
            total = jnp.max(norms)
        else:
            norms = jnp.stack([jnp.sum(jnp.abs(g) ** norm_type) ** (1.0 / norm_type) for g in leaves])
            total = jnp.sum(norms ** norm_type) ** (1.0 / norm_type)
        coefficient = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        if error_if_nonfinite:
            coefficient = jnp.where(jnp.isfinite(total), coefficient, jnp.nan)
        return jax.tree.map(lambda g: (g * coefficient).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_grad_value(clip_value: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_value_``: each gradient element clamped to
    ``[-clip_value, clip_value]`` (``optax.clip``), to chain before an optimizer."""
    _require(isinstance(clip_value, (int, float)) and clip_value >= 0, f"clip_value must be >= 0, got {clip_value!r}")
    return optax.clip(float(clip_value))


def accumulate(tx: optax.GradientTransformation, every: int) -> optax.GradientTransformation:
    """Gradient accumulation as PyTorch users write it (``(loss / every).backward()`` over
    ``every`` batches, then one ``step()``): ``optax.MultiSteps``, which averages the
    gradients of ``every`` training steps and applies ``tx`` once, with zero updates in
    between; the sum is kept in the params' dtype (Optax's default is float32, 1e-9 off
    PyTorch in float64). A ragged last batch counts as one, as in PyTorch's loop (each micro-batch
    is divided by ``every``, not by its size). The count runs on across epochs, so
    steps per epoch that do not divide by ``every`` carry their remainder into the next
    epoch (PyTorch's loop, stepping at ``(i + 1) % every == 0``, adds the remainder to
    the next epoch's first step). Schedules count ``tx``'s updates: an epoch-stepped
    scheduler takes ``steps_per_epoch = batches // every``.
    """
    _require(isinstance(every, int) and every >= 1, f"every must be an integer >= 1, got {every!r}")
    return optax.MultiSteps(tx, every_k_schedule=every, accumulator_dtype=None).gradient_transformation()


_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": sgd, "adagrad": adagrad, "adadelta": adadelta, "rmsprop": rmsprop,
    "adam": adam, "adamw": adamw,
}


def names() -> list[str]:
    """The optimizer names `create` takes."""
    return list(_OPTIMIZERS)


def create(name: str, **kwargs) -> optax.GradientTransformation:
    """The optimizer called ``name`` (PyTorch's class name, any case), e.g.
    ``create("SGD", lr=0.01, momentum=0.9)``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(names())}")
    try:
        return _OPTIMIZERS[key](**kwargs)
    except TypeError as error:
        raise TypeError(f"optimizer {key!r}: {error}") from None
