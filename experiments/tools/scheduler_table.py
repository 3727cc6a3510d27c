"""Each ``torch.optim.lr_scheduler`` against funcnets' and against Optax's nearest schedule.

    python -m experiments.tools.scheduler_table        # the table in docs/parity.md

Every scheduler runs for its case's updates (3 per epoch; past each phase end,
milestone and restart) on a float64 PyTorch optimizer, which gives the lr of
each update; funcnets' schedule (`funcnets.lr_scheduler`) and Optax's nearest
are evaluated at the same updates, Optax's fed the epoch count where PyTorch
steps per epoch (so only the shape differs, not the stepping). Printed: the
largest relative gap to PyTorch, and for Optax the first update where it
differs by more than 1e-9 relative. ReduceLROnPlateau is compared on a metric
sequence: the evaluation after which each first reduces the lr.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from funcnets import lr_scheduler as S  # noqa: E402

SPE = 3


def _torch_rates(make, updates: int, per_batch: bool) -> np.ndarray:
    import torch

    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    scheduler = make(opt)
    rates = []
    for t in range(updates):
        rates.append(float(opt.param_groups[0]["lr"]))
        weight.grad = torch.ones_like(weight)
        opt.step()
        if per_batch or (t + 1) % SPE == 0:
            scheduler.step()
    return np.asarray(rates)


def _gap(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int | None]:
    relative = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-30)
    off = np.flatnonzero(relative > 1e-9)
    return float(relative.max()), (int(off[0]) if off.size else None)


def cases():
    import torch

    L = torch.optim.lr_scheduler
    epoch = lambda schedule: (lambda t: schedule(t // SPE))   # noqa: E731 (Optax's, fed epochs)
    return [  # name, funcnets, PyTorch, per batch, updates, Optax's nearest (name, schedule) or None
        ("StepLR(2, 0.5)", S.step_lr(0.1, 2, 0.5, steps_per_epoch=SPE), lambda o: L.StepLR(o, 2, 0.5), False, 24,
         ("exponential_decay(staircase)", epoch(optax.exponential_decay(0.1, 2, 0.5, staircase=True)))),
        ("MultiStepLR([2, 5])", S.multi_step_lr(0.1, [2, 5], steps_per_epoch=SPE),
         lambda o: L.MultiStepLR(o, [2, 5]), False, 24,
         ("piecewise_constant_schedule", epoch(optax.piecewise_constant_schedule(0.1, {2: 0.1, 5: 0.1})))),
        ("ExponentialLR(0.9)", S.exponential_lr(0.1, 0.9, steps_per_epoch=SPE), lambda o: L.ExponentialLR(o, 0.9),
         False, 18, ("exponential_decay(staircase)", epoch(optax.exponential_decay(0.1, 1, 0.9, staircase=True)))),
        ("CosineAnnealingLR(T_max=4, eta_min=0.01)", S.cosine_annealing_lr(0.1, 4, 0.01, steps_per_epoch=SPE),
         lambda o: L.CosineAnnealingLR(o, 4, 0.01), False, 36,
         ("cosine_decay_schedule", epoch(optax.cosine_decay_schedule(0.1, 4, alpha=0.1)))),
        ("CosineAnnealingWarmRestarts(2, T_mult=2)",
         S.cosine_annealing_warm_restarts(0.1, 2, 2, steps_per_epoch=SPE),
         lambda o: L.CosineAnnealingWarmRestarts(o, 2, 2), False, 42,
         ("sgdr_schedule", epoch(optax.sgdr_schedule([dict(init_value=0.1, peak_value=0.1, decay_steps=n,
                                                            warmup_steps=0, end_value=0.0) for n in (2, 4, 8)])))),
        ("LinearLR(0.25, 1.0, 4)", S.linear_lr(0.1, 0.25, 1.0, 4, steps_per_epoch=SPE),
         lambda o: L.LinearLR(o, 0.25, 1.0, 4), False, 21,
         ("linear_schedule", epoch(optax.linear_schedule(0.025, 0.1, 4)))),
        ("ConstantLR(0.5, 3)", S.constant_lr(0.1, 0.5, 3, steps_per_epoch=SPE), lambda o: L.ConstantLR(o, 0.5, 3),
         False, 18, ("piecewise_constant_schedule", epoch(optax.piecewise_constant_schedule(0.05, {3: 2.0})))),
        ("PolynomialLR(4, 2.0)", S.polynomial_lr(0.1, 4, 2.0, steps_per_epoch=SPE),
         lambda o: L.PolynomialLR(o, 4, 2.0), False, 21,
         ("polynomial_schedule", epoch(optax.polynomial_schedule(0.1, 0.0, 2.0, 4)))),
        ("LambdaLR(0.9 ** e)", S.lambda_lr(0.1, lambda e: 0.9 ** e, steps_per_epoch=SPE),
         lambda o: L.LambdaLR(o, lambda e: 0.9 ** e), False, 18, None),
        ("MultiplicativeLR(0.95)", S.multiplicative_lr(0.1, lambda e: 0.95, steps_per_epoch=SPE),
         lambda o: L.MultiplicativeLR(o, lambda e: 0.95), False, 18, None),
        ("SequentialLR(LinearLR, CosineAnnealingLR, [3])",
         S.sequential_lr([S.linear_lr(0.1, 0.1, total_iters=3, steps_per_epoch=SPE),
                          S.cosine_annealing_lr(0.1, 4, steps_per_epoch=SPE)], [3], steps_per_epoch=SPE),
         lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=3), L.CosineAnnealingLR(o, 4)], [3]), False,
         27, ("join_schedules", epoch(optax.join_schedules([optax.linear_schedule(0.01, 0.1, 3),
                                                            optax.cosine_decay_schedule(0.1, 4)], [3])))),
        ("ChainedScheduler(ConstantLR, ExponentialLR)",
         S.chained_scheduler([S.constant_lr(0.1, 0.1, 2, steps_per_epoch=SPE),
                              S.exponential_lr(0.1, 0.9, steps_per_epoch=SPE)]),
         lambda o: L.ChainedScheduler([L.ConstantLR(o, 0.1, total_iters=2), L.ExponentialLR(o, 0.9)]), False, 18,
         None),
        ("OneCycleLR(0.1, total_steps=30)", S.one_cycle_lr(0.1, total_steps=30),
         lambda o: L.OneCycleLR(o, 0.1, total_steps=30), True, 30,
         ("cosine_onecycle_schedule", optax.cosine_onecycle_schedule(30, 0.1))),
        ("CyclicLR(0.01, 0.1, 4, 2, triangular2)", S.cyclic_lr(0.01, 0.1, 4, 2, mode="triangular2"),
         lambda o: L.CyclicLR(o, 0.01, 0.1, 4, 2, mode="triangular2"), True, 30, None),
    ]


def plateau_row(metrics=(1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.61)) -> str:
    """ReduceLROnPlateau(patience=2): the evaluation (1-based) after which each first lowers the lr."""
    import torch

    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([weight], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    ours = S.reduce_lr_on_plateau(0.1, patience=2)
    ours_state = ours.init()
    optax_tx = optax.contrib.reduce_on_plateau(patience=2)
    optax_state = optax_tx.init(jnp.zeros(1))
    first = {}
    for index, metric in enumerate(metrics, start=1):
        theirs.step(metric)
        ours_state = ours.step(ours_state, metric)
        _, optax_state = optax_tx.update(jnp.zeros(1), optax_state, value=metric)
        for who, lr in (("torch", opt.param_groups[0]["lr"]), ("funcnets", float(ours_state.lr)),
                        ("optax", 0.1 * float(optax_state.scale))):
            if lr < 0.1 and who not in first:
                first[who] = index
    return (f"| ReduceLROnPlateau(patience=2) | reduces after evaluation {first.get('funcnets')}, as PyTorch "
            f"({first.get('torch')}) | `contrib.reduce_on_plateau` | reduces after evaluation {first.get('optax')}, "
            "and scales the updates (an optimizer's own rate and `learning_rate` stay) |")


def main() -> None:
    print("| scheduler | funcnets vs PyTorch (largest relative gap, float64) | Optax's nearest | "
          "Optax vs PyTorch |")
    print("| --- | --- | --- | --- |")
    for name, ours, make, per_batch, updates, optax_schedule in cases():
        theirs = _torch_rates(make, updates, per_batch)
        counts = jnp.arange(updates)
        gap, _ = _gap(np.asarray(jax.vmap(ours)(counts)), theirs)
        if optax_schedule is None:
            optax_cell, optax_gap = "none", "-"
        else:
            optax_name, schedule = optax_schedule
            values = np.asarray([float(schedule(t)) for t in range(updates)])
            largest, first = _gap(values, theirs)
            optax_cell = f"`{optax_name}`"
            optax_gap = "equal (1e-9)" if first is None else (
                f"{largest:.2g} relative, from update {first} (epoch {first // SPE})" if not per_batch
                else f"{largest:.2g} relative, from update {first}")
        print(f"| {name} | {gap:.1e} | {optax_cell} | {optax_gap} |")
    print(plateau_row())


if __name__ == "__main__":
    main()
