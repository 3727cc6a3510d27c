"""funcnets.optim against torch.optim: exact semantics in float64, PyTorch's argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnets as fn
from funcnets.parity import OptimizerSpec, jax_curve, numpy_init, synthetic_batches, torch_curve

STEPLR = {"step_size": 2, "gamma": 0.5, "steps_per_epoch": 25}

# Every flag of every constructor, alone and combined, plus StepLR schedules.
EXACT_CASES = [
    OptimizerSpec("sgd", {"lr": 0.01}),
    OptimizerSpec("sgd", {"lr": 0.01, "momentum": 0.9}),
    OptimizerSpec("sgd", {"lr": 0.01, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3}),
    OptimizerSpec("sgd", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    OptimizerSpec("sgd", {"lr": 1e-3, "momentum": 0.5, "maximize": True}),
    OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}, STEPLR),
    OptimizerSpec("adagrad", {"lr": 0.01}),
    OptimizerSpec("adagrad", {"lr": 0.01, "lr_decay": 0.01, "initial_accumulator_value": 0.1,
                              "weight_decay": 1e-3, "eps": 1e-6}),
    OptimizerSpec("adagrad", {"lr": 0.01, "maximize": True}),
    OptimizerSpec("adagrad", {"lr": 0.05, "lr_decay": 1e-3}, STEPLR),
    OptimizerSpec("adadelta", {}),
    OptimizerSpec("adadelta", {"lr": 0.5, "rho": 0.95, "eps": 1e-5, "weight_decay": 1e-3}),
    OptimizerSpec("adadelta", {"lr": 0.1, "maximize": True}),
    OptimizerSpec("adadelta", {"lr": 1.0}, STEPLR),
    OptimizerSpec("rmsprop", {"lr": 1e-3}),
    OptimizerSpec("rmsprop", {"lr": 1e-3, "centered": True}),
    OptimizerSpec("rmsprop", {"lr": 1e-3, "momentum": 0.9, "alpha": 0.9, "eps": 1e-6}),
    OptimizerSpec("rmsprop", {"lr": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 1e-3}),
    OptimizerSpec("rmsprop", {"lr": 1e-3, "maximize": True}),
    OptimizerSpec("rmsprop", {"lr": 1e-3, "momentum": 0.5}, STEPLR),
    OptimizerSpec("adam", {"lr": 1e-3}),
    OptimizerSpec("adam", {"lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2}),
    OptimizerSpec("adam", {"lr": 1e-3, "amsgrad": True}),
    OptimizerSpec("adam", {"lr": 1e-3, "amsgrad": True, "maximize": True, "weight_decay": 1e-3}),
    OptimizerSpec("adam", {"lr": 3e-3}, STEPLR),
    OptimizerSpec("adamw", {"lr": 1e-3}),
    OptimizerSpec("adamw", {"lr": 1e-3, "weight_decay": 0.1, "amsgrad": True}),
    OptimizerSpec("adamw", {"lr": 1e-3, "betas": (0.0, 0.9), "maximize": True}),
    OptimizerSpec("adamw", {"lr": 3e-3}, STEPLR),
]


@pytest.fixture(scope="module")
def float64_run():
    """mnist_mlp, batch 16, 200 steps, float64 init and batches."""
    model = fn.models.get("mnist_mlp")
    return model, numpy_init(model, 0, np.float64), synthetic_batches(model, 200, 16, 1, np.float64)


@pytest.mark.parametrize("spec", EXACT_CASES, ids=lambda s: s.label())
def test_exact_semantics_in_float64(spec, float64_run, x64):
    pytest.importorskip("torch")
    model, state_dict, batches = float64_run
    ours, our_params = jax_curve(model, spec, state_dict, batches)
    theirs, their_params = torch_curve(model, spec, state_dict, batches)
    assert ours.dtype == np.float64 and ours.shape == (200,)
    assert_float64_parity(ours, theirs, our_params, their_params)


def assert_float64_parity(ours, theirs, our_params, their_params):
    """|dloss| <= 1e-10 and |dparam| <= 1e-9, scaled by the magnitude where it
    exceeds 1 (``maximize`` runs climb to large losses, where float64's own
    resolution is coarser than 1e-10)."""
    assert np.all(np.abs(ours - theirs) <= 1e-10 * np.maximum(1.0, np.abs(theirs)))
    for k in our_params:
        scale = np.maximum(1.0, np.abs(their_params[k]))
        assert np.all(np.abs(our_params[k] - their_params[k]) <= 1e-9 * scale), k


@pytest.mark.parametrize("spec", [
    pytest.param(OptimizerSpec("sgd", {"lr": 0.01, "momentum": 0.9}), marks=pytest.mark.slow),
    pytest.param(OptimizerSpec("adagrad", {"lr": 0.01}), marks=pytest.mark.slow),
    pytest.param(OptimizerSpec("rmsprop", {"lr": 1e-3}), marks=pytest.mark.slow),
    pytest.param(OptimizerSpec("adam", {"lr": 1e-3}), marks=pytest.mark.slow),   # CI runs the slow tests
], ids=lambda s: s.label() if isinstance(s, OptimizerSpec) else None)
@pytest.mark.parametrize("layer_path", ["cpu-fast-paths", "plain-xla"], indirect=True)
def test_exact_semantics_in_float64_on_the_cifar_cnn(spec, x64, layer_path):
    """The cases whose float32 curves are ulp-chaotic on this net (see
    test_curves) agree to rounding in float64: the float32 gaps are not semantics.
    On both of the layers' paths (CPU fast paths and plain XLA); Adam on the fast
    paths in the default run, the rest with the slow tests (~20 s each)."""
    pytest.importorskip("torch")
    model = fn.models.get("cifar_cnn")
    state_dict, batches = numpy_init(model, 0, np.float64), synthetic_batches(model, 10, 4, 1, np.float64)
    ours, our_params = jax_curve(model, spec, state_dict, batches)
    theirs, their_params = torch_curve(model, spec, state_dict, batches)
    assert_float64_parity(ours, theirs, our_params, their_params)


def test_step_lr_counts_epochs_and_stays_float64(x64):
    schedule = fn.optim.step_lr(0.5, step_size=2, gamma=0.1, steps_per_epoch=3)
    values = [float(schedule(jnp.asarray(t))) for t in range(13)]
    assert values == [0.5] * 6 + [0.05] * 6 + [pytest.approx(0.005, rel=1e-15)]
    assert schedule(jnp.asarray(7)).dtype == jnp.float64


def test_adadelta_descends_where_optax_default_ascends():
    """optax.adadelta() has learning_rate=None: no lr scaling and no sign flip."""
    params = {"w": jnp.asarray([3.0])}
    grad = jax.grad(lambda p: jnp.sum(p["w"] ** 2))
    for tx, direction in ((fn.optim.adadelta(), -1), (optax.adadelta(), 1)):
        state = tx.init(params)
        updates, _ = tx.update(grad(params), state, params)
        assert np.sign(float(updates["w"][0])) == direction


def test_scale_by_adadelta_is_optaxs_maths_and_state(x64):
    """Our Adadelta scaling (laid out for XLA:CPU) against optax.scale_by_adadelta
    in float64: same updates and states to rounding, same state type."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=3))}
    ours, theirs = fn.optim.scale_by_adadelta(rho=0.8, eps=1e-4), optax.scale_by_adadelta(rho=0.8, eps=1e-4)
    our_state, their_state = ours.init(params), theirs.init(params)
    assert type(our_state) is type(their_state)
    for _ in range(20):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
        our_updates, our_state = jax.jit(ours.update)(grads, our_state)
        their_updates, their_state = theirs.update(grads, their_state)
        for mine, reference in zip(jax.tree.leaves((our_updates, our_state)),
                                   jax.tree.leaves((their_updates, their_state))):
            np.testing.assert_allclose(mine, reference, rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs, match", [({"rho": 1.5}, "Invalid rho value: 1.5"),
                                           ({"eps": -1e-6}, "Invalid epsilon value")])
def test_scale_by_adadelta_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn.optim.scale_by_adadelta(**kwargs)


def test_adagrad_first_step_uses_zero_accumulator_and_eps_outside():
    g = jnp.asarray([1e-3, -2.0])
    tx = fn.optim.adagrad(lr=0.1, eps=1e-10)
    updates, _ = tx.update({"w": g}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
    np.testing.assert_allclose(updates["w"], -0.1 * g / (jnp.abs(g) + 1e-10), rtol=1e-6)


def test_adamw_default_weight_decay_is_torchs():
    tx = fn.optim.adamw(lr=1.0, betas=(0.0, 0.0), eps=0.0)
    p = {"w": jnp.asarray([2.0])}
    updates, _ = tx.update({"w": jnp.asarray([1.0])}, tx.init(p), p)
    # Adam's step with b1=b2=0 is -lr * sign(g); decoupled decay adds -lr * 1e-2 * p
    np.testing.assert_allclose(updates["w"], [-1.0 - 0.02], rtol=1e-6)


def test_lr_accepts_a_schedule():
    tx = fn.optim.sgd(lr=lambda count: 0.1 / (1 + count))
    p = {"w": jnp.zeros(1)}
    state = tx.init(p)
    first, state = tx.update({"w": jnp.ones(1)}, state, p)
    second, _ = tx.update({"w": jnp.ones(1)}, state, p)
    np.testing.assert_allclose([first["w"][0], second["w"][0]], [-0.1, -0.05], rtol=1e-6)


def test_create_by_name():
    assert fn.optim.names() == ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"]
    assert isinstance(fn.optim.create("Adam", lr=1e-3), optax.GradientTransformation)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of sgd"):
        fn.optim.create("lbfgs")
    with pytest.raises(TypeError, match="optimizer 'sgd'.*betas"):
        fn.optim.create("sgd", betas=(0.9, 0.99))


@pytest.mark.parametrize("build, match", [
    (lambda: fn.optim.sgd(lr=-0.1), "Invalid learning rate"),
    (lambda: fn.optim.sgd(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda: fn.optim.sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "zero dampening"),
    (lambda: fn.optim.sgd(lr=0.1, momentum=-1), "Invalid momentum"),
    (lambda: fn.optim.sgd(lr=0.1, weight_decay=-1), "Invalid weight_decay"),
    (lambda: fn.optim.sgd(lr="fast"), "lr must be a float or an Optax schedule"),
    (lambda: fn.optim.adagrad(lr_decay=-1), "Invalid lr_decay"),
    (lambda: fn.optim.adagrad(initial_accumulator_value=-1), "Invalid initial_accumulator_value"),
    (lambda: fn.optim.adagrad(eps=-1), "Invalid epsilon"),
    (lambda: fn.optim.adadelta(rho=1.5), "Invalid rho"),
    (lambda: fn.optim.rmsprop(alpha=-0.1), "Invalid alpha"),
    (lambda: fn.optim.rmsprop(momentum=-0.1), "Invalid momentum"),
    (lambda: fn.optim.adam(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (lambda: fn.optim.adam(betas=(0.9, -0.1)), "Invalid beta parameter at index 1"),
    (lambda: fn.optim.adamw(betas=(0.9,)), "betas must be a pair"),
    (lambda: fn.optim.adamw(weight_decay=-1e-2), "Invalid weight_decay"),
    (lambda: fn.optim.step_lr(0.1, step_size=0, steps_per_epoch=10), "step_size must be an integer >= 1"),
])
def test_arguments_pytorch_rejects_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_torch_rejects_the_same_arguments():
    """The checks above are PyTorch's own: torch raises on the same inputs."""
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(1))]
    for make in (lambda: torch.optim.SGD(params, lr=0.1, nesterov=True),
                 lambda: torch.optim.SGD(params, lr=-0.1),
                 lambda: torch.optim.Adadelta(params, rho=1.5),
                 lambda: torch.optim.Adam(params, betas=(1.0, 0.999)),
                 lambda: torch.optim.Adagrad(params, lr_decay=-1),
                 lambda: torch.optim.RMSprop(params, alpha=-0.1)):
        with pytest.raises(ValueError):
            make()


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"])
def test_optimizer_state_can_be_donated(name):
    """No two leaves of the state share a buffer (donating such a state fails)."""
    kwargs = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    kwargs.update({"amsgrad": True} if name.startswith("adam") else {})
    tx = fn.optim.create(name, **kwargs)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    update = jax.jit(lambda s: tx.update({"w": jnp.ones(3)}, s, params)[1], donate_argnums=0)
    update(update(state))


def test_the_learning_rate_is_in_the_optimizer_state_and_changes_no_update():
    """Each optimizer keeps its rate as Optax keeps a hyperparameter (inject_hyperparams):
    the last step's, a schedule's value included; the updates are those of the bare chain."""
    import jax.numpy as jnp

    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    schedule = fn.optim.step_lr(0.1, 1, 0.5, steps_per_epoch=2)
    for name in fn.optim.names():
        tx = fn.optim.create(name, lr=schedule)
        state = tx.init(params)
        assert float(fn.optim.learning_rate(state)) == pytest.approx(0.1)
        rates = []
        for _ in range(5):
            _, state = tx.update(params, state, params)
            rates.append(float(fn.optim.learning_rate(state)))
        assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025]), name
    assert fn.optim.learning_rate(optax.adam(1e-3).init(params)) is None


# --- the rest of a PyTorch recipe: schedulers, parameter groups, clipping, accumulation ---------

NO_BIAS_DECAY = {"*.bias": {"weight_decay": 0.0}}
RECIPE_CASES = [
    OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2}, groups=NO_BIAS_DECAY,
                  scheduler=("step_lr", {"step_size": 2, "gamma": 0.5, "steps_per_epoch": 25})),
    OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}, groups={"linear1.*": {"lr": 0.01, "momentum": 0.5}},
                  scheduler=("cosine_annealing_lr", {"T_max": 3, "eta_min": 1e-3, "steps_per_epoch": 25})),
    OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, groups=NO_BIAS_DECAY,
                  scheduler=("one_cycle_lr", {"max_lr": 0.1, "total_steps": 200}), clip={"max_norm": 1.0}),
    OptimizerSpec("adam", {"lr": 1e-3}, clip={"max_norm": 0.5}),
    OptimizerSpec("adam", {"lr": 1e-3}, clip={"max_norm": 0.05, "norm_type": float("inf")}),
    OptimizerSpec("adam", {"lr": 1e-3}, clip={"max_norm": 2.0, "norm_type": 1.0},
                  scheduler=("cyclic_lr", {"base_lr": 1e-4, "max_lr": 1e-3, "step_size_up": 30})),
    OptimizerSpec("adamw", {"lr": 1e-3, "weight_decay": 0.1}, clip={"clip_value": 0.01},
                  groups={"*.bias": {"weight_decay": 0.0}, "linear2.*": {"lr": 1e-2, "betas": (0.8, 0.9)}}),
    OptimizerSpec("rmsprop", {"lr": 1e-3}, scheduler=("one_cycle_lr", {"max_lr": 1e-3, "epochs": 8,
                                                                       "steps_per_epoch": 25})),
    OptimizerSpec("adagrad", {"lr": 0.05}, groups={"linear2.weight": {"lr": 0.01, "lr_decay": 1e-3}},
                  scheduler=("exponential_lr", {"gamma": 0.8, "steps_per_epoch": 25})),
    OptimizerSpec("adadelta", {"lr": 1.0}, groups={"linear1.bias": {"rho": 0.95}},
                  scheduler=("multi_step_lr", {"milestones": [2, 5], "steps_per_epoch": 25})),
    OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}, accumulate=4),
    OptimizerSpec("adam", {"lr": 1e-3}, accumulate=3, clip={"max_norm": 0.5},
                  scheduler=("step_lr", {"step_size": 1, "gamma": 0.7, "steps_per_epoch": 10})),
]


@pytest.mark.parametrize("spec", [case if index in (0, 2, 6, 11) else pytest.param(case, marks=pytest.mark.slow)
                                  for index, case in enumerate(RECIPE_CASES)], ids=lambda s: s.label())
def test_recipes_equal_pytorch_in_float64(spec, float64_run, x64):
    """Schedulers, parameter groups (a group's lr follows the scheduler), clipping
    (2, 1 and inf norms, values) and accumulation, combined, against PyTorch."""
    pytest.importorskip("torch")
    model, state_dict, batches = float64_run
    ours, our_params = jax_curve(model, spec, state_dict, batches)
    theirs, their_params = torch_curve(model, spec, state_dict, batches)
    assert_float64_parity(ours, theirs, our_params, their_params)


def test_accumulation_over_a_ragged_last_batch_equals_pytorch(float64_run, x64):
    pytest.importorskip("torch")
    model, state_dict, batches = float64_run
    batches = batches[:11] + [(batches[11][0][:5], batches[11][1][:5])]   # 3 updates of 4; the last batch 5 rows
    spec = OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}, accumulate=4)
    ours, our_params = jax_curve(model, spec, state_dict, batches)
    theirs, their_params = torch_curve(model, spec, state_dict, batches)
    assert_float64_parity(ours, theirs, our_params, their_params)


def test_groups_clipping_and_accumulation_keep_the_learning_rate_readable():
    params = {"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    tx = optax.chain(fn.optim.clip_grad_norm(1.0),
                     fn.optim.sgd(lr=fn.optim.step_lr(0.1, 1, 0.5, steps_per_epoch=1), momentum=0.9,
                                  groups={"*.bias": {"lr": 0.2}}))
    tx = fn.optim.accumulate(tx, 2)
    state = tx.init(params)
    assert float(fn.optim.learning_rate(state)) == pytest.approx(0.1)   # the default group's
    for _ in range(4):
        _, state = tx.update(params, state, params)
    assert float(fn.optim.learning_rate(state)) == pytest.approx(0.05)   # 2 updates: stepped once


def test_bad_recipe_arguments_are_named():
    params = {"fc1": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"group pattern\(s\) \['conv\*'\] match no parameter.*fc1.kernel"):
        fn.optim.sgd(lr=0.1, groups={"conv*": {"lr": 0.01}}).init(params)
    with pytest.raises(ValueError, match=r"group '\*.bias': unknown option\(s\) \['betas'\]"):
        fn.optim.sgd(lr=0.1, groups={"*.bias": {"betas": (0.9, 0.99)}})
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        fn.optim.clip_grad_norm(-1.0)
    with pytest.raises(ValueError, match="clip_value must be >= 0"):
        fn.optim.clip_grad_value(-0.1)
    with pytest.raises(ValueError, match="cannot start from another lr"):
        fn.optim.sgd(lr=optax.linear_schedule(0.1, 0.0, 100), groups={"*.bias": {"lr": 0.01}})
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        fn.optim.accumulate(fn.optim.sgd(lr=0.1), 0)
