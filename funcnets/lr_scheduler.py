"""``torch.optim.lr_scheduler``, each scheduler an Optax schedule equal to PyTorch's.

A schedule maps the 0-based update count ``t`` to the learning rate that update
uses. PyTorch's schedulers are stepped by hand, most once per epoch; the
schedules here give, at update ``t``, the lr PyTorch's optimizer uses for its
``t``-th step (from 0) when its scheduler is stepped as its documentation says:

- after each epoch (``steps_per_epoch=`` updates; epoch ``e = t // steps_per_epoch``):
  `step_lr`, `multi_step_lr`, `exponential_lr`, `cosine_annealing_lr`,
  `cosine_annealing_warm_restarts`, `linear_lr`, `constant_lr`, `polynomial_lr`,
  `lambda_lr`, `multiplicative_lr`, and `sequential_lr`/`chained_scheduler` of them;
  ``steps_per_epoch=1`` steps them after each update instead;
- after each batch: `one_cycle_lr`, `cyclic_lr`;
- after each evaluation, with the metric: `reduce_lr_on_plateau`, which `fit` steps.

Each takes PyTorch's arguments, names, order and defaults after its first, the
optimizer's ``lr`` that PyTorch's scheduler starts from (`one_cycle_lr` and
`cyclic_lr` start with their own, ``max_lr`` and ``base_lr``, as in PyTorch).
Give the schedule as an optimizer's ``lr``::

    tx = fn.optim.sgd(lr=fn.optim.cosine_annealing_lr(0.1, T_max=10, steps_per_epoch=938), momentum=0.9)

`one_cycle_lr` and `cyclic_lr` also cycle the momentum (SGD's ``momentum``, RMSprop's,
Adam's ``beta1``) when ``cycle_momentum=True``, PyTorch's default: the optimizer
reads it from the schedule (`Schedule.momentum`). A schedule rebuilt from another
starting lr (`Schedule.with_lr`) serves a parameter group with its own ``lr``.
Rates are computed in the default float type, float64 under ``jax_enable_x64``.
Float64 parity with every scheduler, stepped past its phase boundaries, is tested.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Count = jax.Array


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_lr(lr, name: str = "lr") -> float:
    _require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0,
             f"{name} must be a float >= 0, got {lr!r}")
    return float(lr)


def _check_steps(steps_per_epoch) -> int:
    _require(isinstance(steps_per_epoch, int) and not isinstance(steps_per_epoch, bool) and steps_per_epoch >= 1,
             f"steps_per_epoch must be an integer >= 1 (updates per epoch; 1 steps the scheduler after every "
             f"update), got {steps_per_epoch!r}")
    return steps_per_epoch


def _float(value):
    return jnp.asarray(value, jnp.result_type(float))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A PyTorch scheduler as an Optax schedule: ``schedule(t)`` is update ``t``'s lr.

    Attributes:
      name: PyTorch's class, e.g. ``"CosineAnnealingLR"``.
      lr: the lr it starts from (PyTorch's ``initial_lr``).
      rate: ``rate(lr, t)``: the lr at update ``t`` for a start ``lr``.
      momentum: ``momentum(t)``, the momentum (or Adam's beta1) at update ``t``
        for a scheduler that cycles it; None otherwise.
    """

    name: str
    lr: float
    rate: Callable[[float, Count], jax.Array]
    momentum: Callable[[Count], jax.Array] | None = None

    def __call__(self, count) -> jax.Array:
        return self.rate(self.lr, count)

    def with_lr(self, lr: float) -> Schedule:
        """The same scheduler over a parameter group whose lr is ``lr``, as PyTorch
        schedules each group from its own ``initial_lr``."""
        return dataclasses.replace(self, lr=_check_lr(lr))


def _epoch_schedule(name: str, lr: float, steps_per_epoch: int, of_epoch: Callable[[float, Count], jax.Array]
                    ) -> Schedule:
    """A scheduler stepped after each epoch: ``of_epoch(lr, e)`` at epoch ``e = t // steps_per_epoch``."""
    steps = _check_steps(steps_per_epoch)
    return Schedule(name, _check_lr(lr), lambda base, count: of_epoch(base, jnp.asarray(count) // steps))


# --- stepped after each epoch ------------------------------------------------------

def step_lr(lr: float, step_size: int, gamma: float = 0.1, *, steps_per_epoch: int) -> Schedule:
    """``StepLR``: ``lr * gamma ** (e // step_size)``."""
    _require(isinstance(step_size, int) and step_size >= 1, f"step_size must be an integer >= 1, got {step_size!r}")
    _require(gamma >= 0, f"gamma must be >= 0, got {gamma}")
    return _epoch_schedule("StepLR", lr, steps_per_epoch,
                           lambda base, e: base * jnp.power(_float(gamma), e // step_size))


def multi_step_lr(lr: float, milestones: Sequence[int], gamma: float = 0.1, *, steps_per_epoch: int) -> Schedule:
    """``MultiStepLR``: ``lr * gamma ** (number of milestones <= e)``; ``milestones``
    are epoch indices, increasing (PyTorch counts a repeated one twice; here it is refused)."""
    milestones = list(milestones)
    _require(all(isinstance(m, int) and m >= 0 for m in milestones),
             f"milestones must be epoch indices (integers >= 0), got {milestones!r}")
    _require(all(a < b for a, b in zip(milestones, milestones[1:])),
             f"milestones must be increasing, got {milestones!r}")
    table = jnp.asarray(milestones, jnp.int32) if milestones else None

    def of_epoch(base, e):
        passed = 0 if table is None else jnp.searchsorted(table, e, side="right")
        return base * jnp.power(_float(gamma), passed)

    return _epoch_schedule("MultiStepLR", lr, steps_per_epoch, of_epoch)


def exponential_lr(lr: float, gamma: float, *, steps_per_epoch: int) -> Schedule:
    """``ExponentialLR``: ``lr * gamma ** e``."""
    return _epoch_schedule("ExponentialLR", lr, steps_per_epoch, lambda base, e: base * jnp.power(_float(gamma), e))


def _cosine(eta_min: float, base, position, period):
    return eta_min + (base - eta_min) * (1 + jnp.cos(math.pi * _float(position) / period)) / 2


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0, *, steps_per_epoch: int) -> Schedule:  # noqa: N803
    """``CosineAnnealingLR``: ``eta_min + (lr - eta_min) (1 + cos(pi e / T_max)) / 2``,
    for every epoch: past ``T_max`` it climbs back to ``lr`` by ``2 T_max`` and keeps
    cycling, as PyTorch's recursive form does (``optax.cosine_decay_schedule`` holds
    at its floor)."""
    _require(isinstance(T_max, int) and T_max >= 1, f"T_max must be an integer >= 1, got {T_max!r}")
    return _epoch_schedule("CosineAnnealingLR", lr, steps_per_epoch,
                           lambda base, e: _cosine(eta_min, base, e, T_max))


def cosine_annealing_warm_restarts(lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0, *,  # noqa: N803
                                   steps_per_epoch: int) -> Schedule:
    """``CosineAnnealingWarmRestarts``: cosine from ``lr`` to ``eta_min`` over ``T_i``
    epochs, restarting at ``lr``; ``T_0`` epochs first, each next cycle ``T_mult`` times longer::

        lr_e = eta_min + (lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2
    """
    _require(isinstance(T_0, int) and T_0 >= 1, f"Expected positive integer T_0, but got {T_0!r}")
    _require(isinstance(T_mult, int) and T_mult >= 1, f"Expected integer T_mult >= 1, but got {T_mult!r}")
    starts, length = [0], T_0          # each cycle's first epoch (to 2**31)
    while starts[-1] + length < 2 ** 31 and len(starts) < 10 ** 5:
        starts.append(starts[-1] + length)
        length *= T_mult
    starts_table = jnp.asarray(starts, jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
    lengths = jnp.asarray([T_0 * T_mult ** i if T_mult > 1 else T_0 for i in range(len(starts))], jnp.float64
                          if jax.config.jax_enable_x64 else jnp.float32)

    def of_epoch(base, e):
        if T_mult == 1:
            return _cosine(eta_min, base, e % T_0, T_0)
        cycle = jnp.searchsorted(starts_table, e, side="right") - 1
        return _cosine(eta_min, base, e - starts_table[cycle], lengths[cycle].astype(jnp.result_type(float)))

    return _epoch_schedule("CosineAnnealingWarmRestarts", lr, steps_per_epoch, of_epoch)


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5, *,
              steps_per_epoch: int) -> Schedule:
    """``LinearLR``: the factor goes linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` epochs, then stays: ``lr * (start + (end - start) min(e, total_iters) / total_iters)``."""
    _require(0 < start_factor <= 1, "Starting multiplicative factor expected to be greater than 0 and less or "
                                    "equal to 1.")
    _require(0 <= end_factor <= 1, "Ending multiplicative factor expected to be between 0 and 1.")
    _require(isinstance(total_iters, int) and total_iters >= 1, f"total_iters must be an integer >= 1, got "
                                                                 f"{total_iters!r}")

    def of_epoch(base, e):
        return base * (start_factor + (end_factor - start_factor) * _float(jnp.minimum(e, total_iters)) / total_iters)

    return _epoch_schedule("LinearLR", lr, steps_per_epoch, of_epoch)


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5, *, steps_per_epoch: int) -> Schedule:
    """``ConstantLR``: ``lr * factor`` for the first ``total_iters`` epochs, then ``lr``."""
    _require(0 <= factor <= 1, "Constant multiplicative factor expected to be between 0 and 1.")
    _require(isinstance(total_iters, int) and total_iters >= 0, f"total_iters must be an integer >= 0, got "
                                                                 f"{total_iters!r}")
    return _epoch_schedule("ConstantLR", lr, steps_per_epoch,
                           lambda base, e: jnp.where(e < total_iters, base * _float(factor), _float(base)))


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0, *, steps_per_epoch: int) -> Schedule:
    """``PolynomialLR``: ``lr * (1 - min(e, total_iters) / total_iters) ** power``."""
    _require(isinstance(total_iters, int) and total_iters >= 1, f"total_iters must be an integer >= 1, got "
                                                                 f"{total_iters!r}")
    return _epoch_schedule("PolynomialLR", lr, steps_per_epoch, lambda base, e: base * jnp.power(
        1.0 - _float(jnp.minimum(e, total_iters)) / total_iters, power))


def lambda_lr(lr: float, lr_lambda: Callable[[jax.Array], jax.Array], *, steps_per_epoch: int) -> Schedule:
    """``LambdaLR``: ``lr * lr_lambda(e)``; ``lr_lambda`` takes the epoch as a traced
    integer, so it is written with ``jnp`` (``lambda e: 0.95 ** e`` works as is)."""
    _require(callable(lr_lambda), f"lr_lambda must be a function of the epoch, got {lr_lambda!r}")
    return _epoch_schedule("LambdaLR", lr, steps_per_epoch, lambda base, e: base * _float(lr_lambda(e)))


def multiplicative_lr(lr: float, lr_lambda: Callable[[jax.Array], jax.Array], *, steps_per_epoch: int) -> Schedule:
    """``MultiplicativeLR``: each epoch multiplies the lr by ``lr_lambda(e)``:
    ``lr * prod_{k=1..e} lr_lambda(k)`` (a loop of ``e`` products in the step)."""
    _require(callable(lr_lambda), f"lr_lambda must be a function of the epoch, got {lr_lambda!r}")

    def of_epoch(base, e):
        product = jax.lax.fori_loop(1, e + 1, lambda k, acc: acc * _float(lr_lambda(k)), _float(1.0))
        return base * product

    return _epoch_schedule("MultiplicativeLR", lr, steps_per_epoch, of_epoch)


def sequential_lr(schedulers: Sequence[Schedule], milestones: Sequence[int], *, steps_per_epoch: int) -> Schedule:
    """``SequentialLR``: ``schedulers[i]`` from epoch ``milestones[i-1]`` on, restarted
    there (its epoch 0 is the milestone), as PyTorch steps it. Each scheduler is
    built from the same ``lr``; PyTorch's ``SequentialLR(optimizer, schedulers,
    milestones)`` without the optimizer, which the schedulers already name."""
    schedulers = list(schedulers)
    milestones = list(milestones)
    _require(len(schedulers) >= 1 and all(isinstance(s, Schedule) for s in schedulers),
             "sequential_lr expects funcnets schedulers (fn.optim.step_lr, ...)")
    _require(len(milestones) == len(schedulers) - 1,
             f"Sequential Schedulers expects number of schedulers provided to be one more than the number of "
             f"milestone points, but got number of schedulers {len(schedulers)} and the number of milestones to be "
             f"equal to {len(milestones)}")
    _require(all(a < b for a, b in zip(milestones, milestones[1:])), f"milestones must be increasing, got {milestones}")
    _require(len({s.lr for s in schedulers}) == 1, "every scheduler of sequential_lr must start from the same lr "
                                                    "(they share PyTorch's optimizer)")
    steps = _check_steps(steps_per_epoch)
    starts = [0, *milestones]

    def rate(base, count):
        count = jnp.asarray(count)
        index = jnp.searchsorted(jnp.asarray(starts), count // steps, side="right") - 1
        branches = [lambda c, s=s, m=m: _float(s.rate(base, c - m * steps)) for s, m in zip(schedulers, starts)]
        return jax.lax.switch(index, branches, count)

    return Schedule("SequentialLR", schedulers[0].lr, rate)


def chained_scheduler(schedulers: Sequence[Schedule]) -> Schedule:
    """``ChainedScheduler``: every scheduler stepped together, their factors multiplied:
    ``lr * prod_i (s_i(t) / lr)``. This is PyTorch's chained recursion for the
    multiplicative schedulers (`step_lr`, `multi_step_lr`, `exponential_lr`,
    `linear_lr`, `constant_lr`, `polynomial_lr`, `lambda_lr`, `multiplicative_lr`,
    and `cosine_annealing_lr` with ``eta_min=0``)."""
    schedulers = list(schedulers)
    _require(len(schedulers) >= 1 and all(isinstance(s, Schedule) for s in schedulers),
             "chained_scheduler expects funcnets schedulers (fn.optim.step_lr, ...)")
    _require(len({s.lr for s in schedulers}) == 1, "every scheduler of chained_scheduler must start from the same lr")
    _require(all(s.momentum is None for s in schedulers), "chained_scheduler takes no momentum-cycling scheduler")

    def rate(base, count):
        out = _float(base)
        for s in schedulers:
            out = out * (_float(s.rate(1.0, count)))
        return out

    return Schedule("ChainedScheduler", schedulers[0].lr, rate)


# --- stepped after each batch --------------------------------------------------------

def _anneal(strategy: str, start, end, pct):
    if strategy == "cos":
        return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def one_cycle_lr(max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    """``OneCycleLR``, stepped after each update (``epochs * steps_per_epoch`` or
    ``total_steps`` updates). From ``max_lr / div_factor`` up to ``max_lr`` over the first
    ``pct_start`` of the steps, then down to ``max_lr / div_factor / final_div_factor``
    (with ``three_phase``: back to the start, then down), cosine or linear; momentum
    (or Adam's beta1) the other way, between ``max_momentum`` and ``base_momentum``.
    Phase ``i`` runs from step ``s_{i-1}`` to ``s_i`` (``s_0 = pct_start * total - 1``,
    then ``2 pct_start total - 2`` for three phases, last ``total - 1``), at
    ``pct = (t - s_{i-1}) / (s_i - s_{i-1})``. PyTorch raises past the last step;
    here the lr stays at its last value.
    """
    max_lr = _check_lr(max_lr, "max_lr")
    if total_steps is None:
        _require(epochs is not None and steps_per_epoch is not None,
                 "You must define either total_steps OR (epochs AND steps_per_epoch)")
        _require(isinstance(epochs, int) and epochs > 0, f"Expected positive integer epochs, but got {epochs}")
        _require(isinstance(steps_per_epoch, int) and steps_per_epoch > 0,
                 f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
        total_steps = epochs * steps_per_epoch
    _require(isinstance(total_steps, int) and total_steps > 0,
             f"Expected positive integer total_steps, but got {total_steps}")
    _require(0 <= pct_start <= 1 and isinstance(pct_start, float), f"Expected float between 0 and 1 pct_start, "
                                                                    f"but got {pct_start}")
    _require(anneal_strategy in ("cos", "linear"), f"anneal_strategy must be one of 'cos' or 'linear', instead "
                                                   f"got {anneal_strategy}")
    initial = max_lr / div_factor
    minimum = initial / final_div_factor
    if three_phase:
        ends = [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1]
        lrs = [(initial, max_lr), (max_lr, initial), (initial, minimum)]
        momenta = [(max_momentum, base_momentum), (base_momentum, max_momentum), (max_momentum, max_momentum)]
    else:
        ends = [float(pct_start * total_steps) - 1, total_steps - 1]
        lrs = [(initial, max_lr), (max_lr, minimum)]
        momenta = [(max_momentum, base_momentum), (base_momentum, max_momentum)]

    def along(pairs, count):
        return _phase_value(ends, pairs, _float(jnp.minimum(jnp.asarray(count), total_steps - 1)), anneal_strategy)

    def rate(base, count):
        return along([(a * base / max_lr, b * base / max_lr) for a, b in lrs], count)

    momentum = (lambda count: along(momenta, count)) if cycle_momentum else None
    return Schedule("OneCycleLR", max_lr, rate, momentum)


def _phase_value(ends, pairs, step, strategy):
    """PyTorch's phase search: the first phase whose end is >= ``step`` (or the last)."""
    value = None
    start = 0.0
    starts = []
    for end in ends:
        starts.append(start)
        start = end
    for index in reversed(range(len(ends))):
        a, b = pairs[index]
        here = _anneal(strategy, a, b, (step - starts[index]) / (ends[index] - starts[index]))
        value = here if value is None else jnp.where(step <= ends[index], here, value)
    return value


def cyclic_lr(base_lr: float, max_lr: float, step_size_up: int = 2000, step_size_down: int | None = None,
              mode: str = "triangular", gamma: float = 1.0, scale_fn: Callable | None = None,
              scale_mode: str = "cycle", cycle_momentum: bool = True, base_momentum: float = 0.8,
              max_momentum: float = 0.9) -> Schedule:
    """``CyclicLR``, stepped after each update: the lr climbs from ``base_lr`` to
    ``max_lr`` over ``step_size_up`` updates and back over ``step_size_down``::

        cycle = floor(1 + t / total),  x = 1 + t / total - cycle
        f = x / r if x <= r else (x - 1) / (r - 1)         (r = step_size_up / total)
        lr_t = base_lr + (max_lr - base_lr) f scale(cycle or t)

    ``mode``: ``"triangular"`` (scale 1), ``"triangular2"`` (halved each cycle),
    ``"exp_range"`` (``gamma ** t``); or ``scale_fn`` (jnp-traceable) with
    ``scale_mode``. Momentum goes ``max_momentum - (max - base) f scale``.
    """
    base_lr, max_lr = _check_lr(base_lr, "base_lr"), _check_lr(max_lr, "max_lr")
    _require(mode in ("triangular", "triangular2", "exp_range") or scale_fn is not None,
             "mode is invalid and scale_fn is None")
    _require(isinstance(step_size_up, int) and step_size_up >= 1, f"step_size_up must be an integer >= 1, got "
                                                                   f"{step_size_up!r}")
    up = float(step_size_up)
    down = float(step_size_down) if step_size_down is not None else up
    total = up + down
    ratio = up / total
    if scale_fn is None:
        scale_fn, scale_mode = {"triangular": (lambda x: 1.0, "cycle"),
                                "triangular2": (lambda x: 1 / (2.0 ** (x - 1)), "cycle"),
                                "exp_range": (lambda x: gamma ** x, "iterations")}[mode]

    def position(count):
        count = _float(count)
        cycle = jnp.floor(1 + count / total)
        x = 1.0 + count / total - cycle
        factor = jnp.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        return factor * _float(scale_fn(cycle if scale_mode == "cycle" else count))

    def rate(base, count):
        return base + (max_lr * base / base_lr - base if base_lr else max_lr) * position(count)

    if base_lr == 0:
        def rate(base, count):  # noqa: F811 (a zero base_lr cannot scale per group)
            return base + (max_lr - base) * position(count)

    momentum = (lambda count: max_momentum - (max_momentum - base_momentum) * position(count)) \
        if cycle_momentum else None
    return Schedule("CyclicLR", base_lr, rate, momentum)


# --- stepped with a metric: reduce_lr_on_plateau --------------------------------------

class PlateauState(NamedTuple):
    """`reduce_lr_on_plateau`'s state in the optimizer state: the lr it has set, the
    best metric so far, bad epochs since, and the cooldown left."""

    lr: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """``ReduceLROnPlateau``: give it as an optimizer's ``lr``; `fit` steps it after
    each epoch's evaluation with a metric (`step_plateau`). See `reduce_lr_on_plateau`."""

    lr: float
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    momentum: Any = None

    def with_lr(self, lr: float) -> ReduceLROnPlateau:
        return dataclasses.replace(self, lr=_check_lr(lr))

    def init(self) -> PlateauState:
        worst = jnp.inf if self.mode == "min" else -jnp.inf
        return PlateauState(lr=_float(self.lr), best=_float(worst), num_bad_epochs=jnp.zeros((), jnp.int32),
                            cooldown_counter=jnp.zeros((), jnp.int32))

    def step(self, state: PlateauState, metric) -> PlateauState:
        """One PyTorch ``scheduler.step(metric)``: a pure function of the state."""
        current = _float(metric)
        if self.mode == "min":
            better = current < (state.best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                                else state.best - self.threshold)
        else:
            better = current > (state.best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                                else state.best + self.threshold)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        new_lr = jnp.maximum(state.lr * self.factor, self.min_lr)
        lr = jnp.where(reduce & (state.lr - new_lr > self.eps), new_lr, state.lr)
        return PlateauState(lr=lr.astype(state.lr.dtype), best=best.astype(state.best.dtype),
                            num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
                            cooldown_counter=jnp.where(reduce, self.cooldown, cooldown).astype(jnp.int32))


def reduce_lr_on_plateau(lr: float, mode: str = "min", factor: float = 0.1, patience: int = 10,
                         threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                         min_lr: float = 0.0, eps: float = 1e-8) -> ReduceLROnPlateau:
    """``ReduceLROnPlateau``: after ``patience`` epochs without improvement of the
    metric (by ``threshold``, relative or absolute, ``mode`` min or max), the lr is
    multiplied by ``factor`` (not below ``min_lr``; a change under ``eps`` is skipped),
    then ``cooldown`` epochs pass before counting again.

    Give it as the ``lr`` of any funcnets optimizer. It sets the lr the optimizer
    uses, kept in the optimizer state (so `fn.optim.learning_rate`, the metrics file
    and checkpoints hold it, and a resumed run goes on exactly). `fit` steps it after
    each epoch's evaluation with the test loss, or the metric named by
    ``fit(plateau_metric=...)``; in a loop of one's own, `step_plateau`.
    """
    _check_lr(lr)
    _require(factor < 1.0, "Factor should be < 1.0.")
    _require(mode in ("min", "max"), f"mode {mode} is unknown!")
    _require(threshold_mode in ("rel", "abs"), f"threshold mode {threshold_mode} is unknown!")
    _require(isinstance(patience, int) and patience >= 0, f"patience must be an integer >= 0, got {patience!r}")
    _require(isinstance(cooldown, int) and cooldown >= 0, f"cooldown must be an integer >= 0, got {cooldown!r}")
    return ReduceLROnPlateau(float(lr), mode, factor, patience, threshold, threshold_mode, cooldown, float(min_lr), eps)


def step_plateau(opt_state, metric):
    """``opt_state`` with every `reduce_lr_on_plateau` in it stepped with ``metric`` (one
    ``scheduler.step(metric)``); unchanged without one. Pure: jit it or not."""
    from funcnets.optim import PlateauScaleState

    def visit(node):
        if isinstance(node, PlateauScaleState):
            return dataclasses.replace(node, plateau=node.scheduler.step(node.plateau, metric))
        return node

    return jax.tree.map(visit, opt_state, is_leaf=lambda node: isinstance(node, PlateauScaleState))


def has_plateau(opt_state) -> bool:
    """Whether ``opt_state`` holds a `reduce_lr_on_plateau` (which `fit` then steps)."""
    from funcnets.optim import PlateauScaleState

    return any(isinstance(node, PlateauScaleState) for node in jax.tree.leaves(
        opt_state, is_leaf=lambda node: isinstance(node, PlateauScaleState)))
