"""``torch.optim.lr_scheduler`` in funcnets (`funcnets.lr_scheduler`): each schedule
against PyTorch's scheduler in float64, read off the optimizer step by step past
every phase boundary, milestone and restart; the momentum that one-cycle and
cyclic schedules cycle; reduce_lr_on_plateau, in `fit` and resumed; and the
errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

torch = pytest.importorskip("torch")
S = torch.optim.lr_scheduler
O = fn.optim

SPE = 3   # updates per epoch


def torch_rates(make, updates: int, *, per_batch: bool, optimizer: str = "sgd", lr: float = 0.1):
    """The lr (and momentum or beta1) PyTorch's optimizer uses at each update, the scheduler
    stepped after each update (``per_batch``) or after every ``SPE`` updates."""
    weight = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = (torch.optim.SGD([weight], lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam([weight], lr=lr))
    scheduler = make(opt)
    rates, momenta = [], []
    for t in range(updates):
        group = opt.param_groups[0]
        rates.append(float(group["lr"]))
        momenta.append(float(group["momentum"] if optimizer == "sgd" else group["betas"][0]))
        weight.grad = torch.ones_like(weight)
        opt.step()
        if per_batch or (t + 1) % SPE == 0:
            scheduler.step()
    return np.asarray(rates), np.asarray(momenta)


def ours(schedule, updates: int):
    return np.asarray(jax.vmap(schedule)(jnp.arange(updates)))


EPOCH_CASES = {  # name: (funcnets schedule, PyTorch scheduler, epochs)
    "step_lr": (lambda: O.step_lr(0.1, 2, 0.5, steps_per_epoch=SPE), lambda o: S.StepLR(o, 2, 0.5), 8),
    "multi_step_lr": (lambda: O.multi_step_lr(0.1, [2, 5], 0.1, steps_per_epoch=SPE),
                      lambda o: S.MultiStepLR(o, [2, 5], 0.1), 8),
    "exponential_lr": (lambda: O.exponential_lr(0.1, 0.9, steps_per_epoch=SPE), lambda o: S.ExponentialLR(o, 0.9), 6),
    "cosine_annealing_lr": (lambda: O.cosine_annealing_lr(0.1, T_max=3, eta_min=0.01, steps_per_epoch=SPE),
                            lambda o: S.CosineAnnealingLR(o, T_max=3, eta_min=0.01), 11),   # past T_max and 2 T_max
    "cosine_annealing_warm_restarts": (
        lambda: O.cosine_annealing_warm_restarts(0.1, T_0=2, T_mult=2, eta_min=0.001, steps_per_epoch=SPE),
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.001), 16),
    "cosine_annealing_warm_restarts_t_mult_1": (
        lambda: O.cosine_annealing_warm_restarts(0.1, T_0=3, steps_per_epoch=SPE),
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3), 10),
    "linear_lr": (lambda: O.linear_lr(0.1, 0.25, 1.0, total_iters=4, steps_per_epoch=SPE),
                  lambda o: S.LinearLR(o, 0.25, 1.0, total_iters=4), 7),
    "constant_lr": (lambda: O.constant_lr(0.1, 0.5, total_iters=3, steps_per_epoch=SPE),
                    lambda o: S.ConstantLR(o, 0.5, total_iters=3), 6),
    "polynomial_lr": (lambda: O.polynomial_lr(0.1, total_iters=4, power=2.0, steps_per_epoch=SPE),
                      lambda o: S.PolynomialLR(o, total_iters=4, power=2.0), 7),
    "lambda_lr": (lambda: O.lambda_lr(0.1, lambda e: 0.9 ** e, steps_per_epoch=SPE),
                  lambda o: S.LambdaLR(o, lambda e: 0.9 ** e), 6),
    "multiplicative_lr": (lambda: O.multiplicative_lr(0.1, lambda e: 0.95, steps_per_epoch=SPE),
                          lambda o: S.MultiplicativeLR(o, lambda e: 0.95), 6),
    "sequential_lr": (
        lambda: O.sequential_lr([O.constant_lr(0.1, 0.1, total_iters=2, steps_per_epoch=SPE),
                                 O.exponential_lr(0.1, 0.9, steps_per_epoch=SPE)], milestones=[2],
                                steps_per_epoch=SPE),
        lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.1, total_iters=2), S.ExponentialLR(o, 0.9)], milestones=[2]),
        7),
    "sequential_lr_warmup_cosine": (
        lambda: O.sequential_lr([O.linear_lr(0.1, 0.1, total_iters=3, steps_per_epoch=SPE),
                                 O.cosine_annealing_lr(0.1, T_max=4, steps_per_epoch=SPE)], milestones=[3],
                                steps_per_epoch=SPE),
        lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3), S.CosineAnnealingLR(o, T_max=4)],
                                 milestones=[3]), 9),
    "chained_scheduler": (
        lambda: O.chained_scheduler([O.constant_lr(0.1, 0.1, total_iters=2, steps_per_epoch=SPE),
                                     O.exponential_lr(0.1, 0.9, steps_per_epoch=SPE)]),
        lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.1, total_iters=2), S.ExponentialLR(o, 0.9)]), 6),
}


@pytest.mark.parametrize("name", sorted(EPOCH_CASES))
def test_epoch_stepped_schedulers_equal_pytorch(name, x64):
    make_ours, make_torch, epochs = EPOCH_CASES[name]
    expected, _ = torch_rates(make_torch, epochs * SPE, per_batch=False)
    np.testing.assert_allclose(ours(make_ours(), epochs * SPE), expected, rtol=1e-13, atol=1e-15)


BATCH_CASES = {  # name: (funcnets schedule, PyTorch scheduler, updates)
    "one_cycle_lr": (lambda: O.one_cycle_lr(0.1, total_steps=20),
                     lambda o: S.OneCycleLR(o, 0.1, total_steps=20), 20),
    "one_cycle_lr_epochs_linear_three_phase": (
        lambda: O.one_cycle_lr(0.2, epochs=4, steps_per_epoch=5, pct_start=0.25, anneal_strategy="linear",
                               three_phase=True, div_factor=10.0, final_div_factor=100.0),
        lambda o: S.OneCycleLR(o, 0.2, epochs=4, steps_per_epoch=5, pct_start=0.25, anneal_strategy="linear",
                               three_phase=True, div_factor=10.0, final_div_factor=100.0), 20),
    "cyclic_lr_triangular": (lambda: O.cyclic_lr(0.01, 0.1, step_size_up=4, step_size_down=2),
                             lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=4, step_size_down=2), 20),
    "cyclic_lr_triangular2": (lambda: O.cyclic_lr(0.01, 0.1, step_size_up=3, mode="triangular2"),
                              lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="triangular2"), 20),
    "cyclic_lr_exp_range": (lambda: O.cyclic_lr(0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.9),
                            lambda o: S.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.9), 20),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_batch_stepped_schedulers_and_their_momentum_equal_pytorch(name, optimizer, x64):
    make_ours, make_torch, updates = BATCH_CASES[name]
    expected, momenta = torch_rates(make_torch, updates, per_batch=True, optimizer=optimizer)
    schedule = make_ours()
    np.testing.assert_allclose(ours(schedule, updates), expected, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(ours(schedule.momentum, updates), momenta, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["one_cycle_lr", "cyclic_lr_triangular2"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_optimizers_cycle_momentum_as_pytorch_does(name, optimizer, x64):
    """Whole optimizer steps: SGD's momentum, RMSprop's momentum and Adam's beta1
    follow the schedule, as PyTorch's scheduler sets them in the param group."""
    make_ours, make_torch, updates = BATCH_CASES[name]
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(updates, 5))
    weight = torch.nn.Parameter(torch.from_numpy(rng.normal(size=5)))
    start = weight.detach().numpy().copy()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.1),
            "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.1)}[optimizer]
    opt = make([weight])
    scheduler = make_torch(opt)
    for g in grads:
        weight.grad = torch.from_numpy(g.copy())
        opt.step()
        scheduler.step()
    tx = {"sgd": lambda lr: O.sgd(lr=lr, momentum=0.9), "adam": lambda lr: O.adam(lr=lr),
          "rmsprop": lambda lr: O.rmsprop(lr=lr)}[optimizer](make_ours())
    params = jnp.asarray(start)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = params + updates
    np.testing.assert_allclose(np.asarray(params), weight.detach().numpy(), rtol=1e-12, atol=1e-13)


def test_adagrad_and_adadelta_refuse_a_momentum_cycle():
    with pytest.raises(ValueError, match="must support momentum or beta1 with `cycle_momentum`"):
        O.adagrad(lr=O.one_cycle_lr(0.1, total_steps=10))
    O.adagrad(lr=O.one_cycle_lr(0.1, total_steps=10, cycle_momentum=False))


def test_reduce_lr_on_plateau_steps_as_pytorch(x64):
    metrics = [1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.66]
    for options in ({"patience": 1}, {"patience": 2, "cooldown": 2, "factor": 0.5, "min_lr": 0.004},
                    {"mode": "max", "patience": 0, "threshold_mode": "abs", "threshold": 0.05},
                    {"patience": 0, "eps": 0.05}):
        weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.SGD([weight], lr=0.1)
        scheduler = S.ReduceLROnPlateau(opt, **options)
        tx = O.sgd(lr=O.reduce_lr_on_plateau(0.1, **options))
        state = tx.init(jnp.zeros(1))
        for metric in metrics:
            scheduler.step(metric)
            state = O.step_plateau(state, metric)
            assert float(O.learning_rate(state)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-14), options


@pytest.fixture(scope="module")
def digits():
    train, test = fn.data.load("digits", "train"), fn.data.load("digits", "test")
    return ((fn.data.normalize(train.images, train.info)[:256], train.labels[:256]),
            (fn.data.normalize(test.images, test.info), test.labels))


def _plateau_state():
    model = fn.models.get("mnist_mlp", n_hidden=16)
    return fn.create_train_state(model, O.sgd(lr=O.reduce_lr_on_plateau(0.5, patience=0, factor=0.5)),
                                 jax.random.key(0))


def test_fit_steps_reduce_lr_on_plateau_and_resumes_it(digits, tmp_path):
    train, test = digits
    run = dict(epochs=4, batch_size=64, rng=jax.random.key(1), report=fn.loop.Report.silent(),
               plateau_metric="accuracy")
    straight, history = fn.fit(_plateau_state(), train, test, **run)
    rates = [h["lr"] for h in history]
    accuracies = [h["accuracy"] for h in history]
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=0.5)
    scheduler = S.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    expected = []
    for accuracy in accuracies:                      # the lr each epoch trained with, then step(metric)
        expected.append(opt.param_groups[0]["lr"])
        scheduler.step(accuracy)
    assert rates == pytest.approx(expected) and len(set(rates)) > 1
    assert float(O.learning_rate(straight.opt_state)) == pytest.approx(opt.param_groups[0]["lr"])
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True) as ckpt:
        fn.fit(_plateau_state(), train, test, **{**run, "epochs": 2}, checkpointer=ckpt)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True, resume=True) as ckpt:
        resumed, again = fn.fit(_plateau_state(), train, test, **run, checkpointer=ckpt)
    assert [h["lr"] for h in again] == rates[2:]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.opt_state), jax.device_get(resumed.opt_state))
    with pytest.raises(ValueError, match="plateau_metric 'test_loss' is not in the epoch records"):
        fn.fit(_plateau_state(), train, epochs=1, batch_size=64, rng=jax.random.key(1),
               report=fn.loop.Report.silent())


def test_bad_scheduler_arguments_are_named():
    with pytest.raises(ValueError, match="milestones must be increasing"):
        O.multi_step_lr(0.1, [3, 2], steps_per_epoch=1)
    with pytest.raises(ValueError, match="T_max must be an integer >= 1"):
        O.cosine_annealing_lr(0.1, T_max=0, steps_per_epoch=1)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1"):
        O.exponential_lr(0.1, 0.9, steps_per_epoch=0)
    with pytest.raises(ValueError, match="either total_steps OR"):
        O.one_cycle_lr(0.1)
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        O.reduce_lr_on_plateau(0.1, factor=1.0)
    with pytest.raises(ValueError, match="number of schedulers provided to be one more"):
        O.sequential_lr([O.step_lr(0.1, 1, steps_per_epoch=1)], [1], steps_per_epoch=1)
