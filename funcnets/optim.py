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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


# --- schedules ----------------------------------------------------------------

def step_lr(lr: float, step_size: int, gamma: float = 0.1, *, steps_per_epoch: int) -> optax.Schedule:
    """PyTorch's ``StepLR`` (stepped once per epoch) as an Optax schedule over steps::

        lr_t = lr * gamma ** ((t // steps_per_epoch) // step_size)

    for the 0-based update count ``t``. Computed in the default float type, so it
    stays float64 under ``jax_enable_x64`` (``optax.exponential_decay`` would not).
    """
    _require(isinstance(lr, (int, float)) and lr >= 0, f"Invalid learning rate: {lr}")
    _require(isinstance(step_size, int) and step_size >= 1, f"step_size must be an integer >= 1, got {step_size!r}")
    _require(isinstance(steps_per_epoch, int) and steps_per_epoch >= 1,
             f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    _require(gamma >= 0, f"gamma must be >= 0, got {gamma}")
    steps_per_decay = step_size * steps_per_epoch

    def schedule(count):
        return lr * jnp.power(gamma, count // steps_per_decay)

    return schedule


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_lr(lr: ScalarOrSchedule) -> None:
    if callable(lr):
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
    """The learning rate in ``opt_state`` (`expose_learning_rate`): the last step's,
    or before any step the first one's; None for an optimizer that does not keep it.

    >>> import jax.numpy as jnp, funcnets as fn
    >>> tx = fn.optim.sgd(lr=0.01)
    >>> print(fn.optim.learning_rate(tx.init({"w": jnp.zeros(3)})))
    0.01
    """
    hyperparams = getattr(opt_state, "hyperparams", None)   # Optax's InjectHyperparamsState
    if isinstance(hyperparams, dict) and "lr" in hyperparams:
        return jnp.asarray(hyperparams["lr"])
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


def trace_with_dampening(momentum: float, dampening: float) -> optax.GradientTransformation:
    """SGD's momentum buffer with PyTorch's ``dampening``::

        b_1 = g_1                                  (the raw first gradient)
        b_t = momentum * b_{t-1} + (1 - dampening) * g_t

    ``optax.trace`` is this with ``dampening = 0`` only (its zero-initialised
    buffer then gives ``b_1 = g_1``). Nesterov needs zero dampening in PyTorch,
    so it is not offered here.
    """

    def init_fn(params):
        return TraceWithDampeningState(count=jnp.zeros([], jnp.int32),
                                       trace=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        first = state.count == 0
        trace = jax.tree.map(
            lambda g, b: jnp.where(first, g, momentum * b + (1 - dampening) * g), updates, state.trace)
        return trace, TraceWithDampeningState(count=optax.safe_increment(state.count), trace=trace)

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


def _bias_correction(beta: float, step: jax.Array) -> jax.Array:
    """``1 - beta^t`` as ``-expm1(t * log(beta))``: PyTorch computes it in Python
    double; in float32 this form keeps full relative precision, ``1 - beta**t`` does not."""
    step = step.astype(jnp.result_type(float))
    if beta == 0.0:
        return jnp.ones_like(step)
    return -jnp.expm1(step * jnp.log(jnp.asarray(beta, step.dtype)))


def adam_update(lr: ScalarOrSchedule, b1: float, b2: float, eps: float,
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
    roundings are PyTorch's (``addcdiv_(m, denom, value=-step_size)``).
    """

    def init_fn(params):
        # Distinct buffers per moment: a state holding one array twice cannot be donated.
        return AdamUpdateState(count=jnp.zeros([], jnp.int32), exp_avg=optax.tree.zeros_like(params),
                               exp_avg_sq=optax.tree.zeros_like(params),
                               max_exp_avg_sq=optax.tree.zeros_like(params) if amsgrad else ())

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        exp_avg = jax.tree.map(lambda g, m: m + (1 - b1) * (g - m), updates, state.exp_avg)
        exp_avg_sq = jax.tree.map(lambda g, v: b2 * v + ((1 - b2) * g) * g, updates, state.exp_avg_sq)
        max_exp_avg_sq = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, exp_avg_sq) if amsgrad else ()
        second = max_exp_avg_sq if amsgrad else exp_avg_sq
        step_size = learning_rate_at(lr, state.count) / _bias_correction(b1, count)
        correction2_sqrt = jnp.sqrt(_bias_correction(b2, count))

        def descent(m, v):
            denom = jnp.sqrt(v) / correction2_sqrt.astype(v.dtype) + eps
            return (-step_size).astype(m.dtype) * m / denom

        updates = jax.tree.map(descent, exp_avg, second)
        return updates, AdamUpdateState(count, exp_avg, exp_avg_sq, max_exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


# --- the PyTorch optimizers -----------------------------------------------------

def sgd(lr: ScalarOrSchedule = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False
        ) -> optax.GradientTransformation:
    """``torch.optim.SGD``::

        b_t = g_t (t = 1),  momentum * b_{t-1} + (1 - dampening) * g_t (t > 1)
        d_t = g_t + momentum * b_t  if nesterov  else  b_t   (g_t if momentum = 0)
        p_t = p_{t-1} - lr * d_t

    Built as ``optax.trace`` (momentum, nesterov) when ``dampening = 0``, else
    `trace_with_dampening`, then ``optax.scale_by_learning_rate``.
    """
    _check_lr(lr)
    _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(not nesterov or (momentum > 0 and dampening == 0),
             "Nesterov momentum requires a momentum and zero dampening")
    steps = _prologue(maximize, weight_decay)
    if momentum > 0:
        if dampening == 0:
            steps.append(optax.trace(decay=momentum, nesterov=nesterov))
        else:
            steps.append(trace_with_dampening(momentum, dampening))
    steps.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*steps, expose_learning_rate(lr))


def adagrad(lr: ScalarOrSchedule = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False
            ) -> optax.GradientTransformation:
    """``torch.optim.Adagrad``::

        s_t = s_{t-1} + g_t^2   (s_0 = initial_accumulator_value)
        p_t = p_{t-1} - lr / (1 + (t - 1) * lr_decay) * g_t / (sqrt(s_t) + eps)

    `scale_by_sum_of_squares` (Optax's ``scale_by_rss`` starts at 0.1 with eps
    inside the root), then the decayed learning rate as a schedule.
    """
    _check_lr(lr)
    _require(lr_decay >= 0.0, f"Invalid lr_decay value: {lr_decay}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(initial_accumulator_value >= 0.0,
             f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    rate = lr
    if lr_decay != 0:
        def rate(count):
            return learning_rate_at(lr, count) / (1 + count * lr_decay)
    return optax.chain(*_prologue(maximize, weight_decay),
                       scale_by_sum_of_squares(initial_accumulator_value, eps),
                       optax.scale_by_learning_rate(rate), expose_learning_rate(rate))


def adadelta(lr: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, *, maximize: bool = False) -> optax.GradientTransformation:
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
    _check_lr(lr)
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    return optax.chain(*_prologue(maximize, weight_decay),
                       scale_by_adadelta(rho=rho, eps=eps),   # checks rho and eps
                       optax.scale_by_learning_rate(lr), expose_learning_rate(lr))


def rmsprop(lr: ScalarOrSchedule = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
            maximize: bool = False) -> optax.GradientTransformation:
    """``torch.optim.RMSprop``::

        v_t = alpha v_{t-1} + (1 - alpha) g_t^2
        a_t = alpha a_{t-1} + (1 - alpha) g_t                      (centered only)
        r_t = sqrt(v_t - a_t^2) + eps  if centered  else  sqrt(v_t) + eps
        b_t = momentum b_{t-1} + g_t / r_t,  p_t = p_{t-1} - lr b_t   (momentum > 0)
        p_t = p_{t-1} - lr g_t / r_t                                   (otherwise)

    ``optax.scale_by_rms`` / ``scale_by_stddev`` with ``eps_in_sqrt=False``,
    then ``optax.trace(momentum)``, then the learning rate, in that order.
    ``optax.rmsprop`` defaults to decay 0.9 with eps inside the root.
    """
    _check_lr(lr)
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _require(momentum >= 0.0, f"Invalid momentum value: {momentum}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    _require(alpha >= 0.0, f"Invalid alpha value: {alpha}")
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    steps = _prologue(maximize, weight_decay)
    steps.append(scale(decay=alpha, eps=eps, initial_scale=0.0, eps_in_sqrt=False))
    if momentum > 0:
        steps.append(optax.trace(decay=momentum))
    steps.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*steps, expose_learning_rate(lr))


def _check_adam(lr, betas, eps, weight_decay) -> tuple[float, float]:
    _check_lr(lr)
    _require(eps >= 0.0, f"Invalid epsilon value: {eps}")
    _require(isinstance(betas, (tuple, list)) and len(betas) == 2, f"betas must be a pair, got {betas!r}")
    _require(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
    _require(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay}")
    return float(betas[0]), float(betas[1])


def adam(lr: ScalarOrSchedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False
         ) -> optax.GradientTransformation:
    """``torch.optim.Adam``: `adam_update` (which has the equations) after the
    gradient preamble, so ``weight_decay`` is L2 added to the gradient, as
    PyTorch does (not decoupled: that is `adamw`)."""
    b1, b2 = _check_adam(lr, betas, eps, weight_decay)
    return optax.chain(*_prologue(maximize, weight_decay), adam_update(lr, b1, b2, eps, amsgrad),
                       expose_learning_rate(lr))


def adamw(lr: ScalarOrSchedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False
          ) -> optax.GradientTransformation:
    """``torch.optim.AdamW``: decoupled weight decay, default 1e-2 (Optax's is 1e-4)::

        p_t = p_{t-1} (1 - lr_t * wd) + (the Adam step of `adam_update`)

    built as `adam_update` then ``optax.add_decayed_weights(-lr_t * wd)``.
    """
    b1, b2 = _check_adam(lr, betas, eps, weight_decay)
    steps = _prologue(maximize, 0.0)
    steps.append(adam_update(lr, b1, b2, eps, amsgrad))
    if weight_decay != 0:
        steps.append(optax.add_decayed_weights(lambda count: -learning_rate_at(lr, count) * weight_decay))
    return optax.chain(*steps, expose_learning_rate(lr))


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
