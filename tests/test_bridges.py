"""Modules of Flax Linen (with ``batch_stats``), Flax NNX and Equinox (``eqx.nn.State``)
through every funcnets entry point, back to their library, and the errors for what
cannot work. (Kill-and-resume: test_fit.py; 8 devices: parallel_devices.py.)"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from module_nets import NAMES, model_of

import funcnets as fn


@pytest.fixture(scope="module")
def digits():
    split = fn.data.load("digits", "train")
    return fn.data.normalize(split.images, split.info)[:300], split.labels[:300]


def _close(a, b, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol), a, b)


@pytest.mark.parametrize("name", ["nnx_bn", pytest.param("linen_bn", marks=pytest.mark.slow),
                                  pytest.param("eqx_bn", marks=pytest.mark.slow)])   # the slow ones: CI runs them
def test_every_entry_point_trains_the_module_and_its_statistics(name, digits, x64):
    """The same steps through every entry point; float64, where XLA's other fusions of a
    step alone and in a scan leave ~1e-15 instead of float32's ~1e-5 after a few steps."""
    images, labels = digits[0].astype(np.float64), digits[1]
    model = model_of(name)
    assert model.has_state and model.needs_rng
    def fresh():   # training steps donate the state they take
        return fn.create_train_state(model, fn.optim.sgd(lr=0.1, momentum=0.9), jax.random.key(0),
                                     dtype=jnp.float64)

    order = np.asarray(fn.training.epoch_order(len(labels), jax.random.key(1))).reshape(-1, 50)
    by_steps = fresh()
    for rows in order:
        by_steps, _ = fn.train_step(by_steps, (jnp.asarray(images[rows]), jnp.asarray(labels[rows])))
    runs = [by_steps]
    for scan in (True, False):
        state, _ = fn.train_epoch(fresh(), images, labels, batch_size=50, rng=jax.random.key(1), scan=scan)
        runs.append(state)
    for other in runs[1:]:
        _close((runs[0].params, runs[0].model_state), (other.params, other.model_state), atol=1e-10)
    # fit's epoch e visits epoch_order(n, fold_in(rng, e))
    order = np.asarray(fn.training.epoch_order(len(labels), jax.random.fold_in(jax.random.key(1), 0)))
    by_epoch, _ = fn.train_epoch(fresh(), images[order], labels[order], batch_size=50)
    state, history = fn.fit(fresh(), (images, labels), (images, labels), epochs=1, batch_size=50,
                            rng=jax.random.key(1), report=fn.loop.Report.silent())
    _close((by_epoch.params, by_epoch.model_state), (state.params, state.model_state), atol=1e-10)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), model.init_state(), state.model_state)
    assert any(jax.tree.leaves(moved)), "training steps must update the running statistics"
    # evaluation reads the running statistics and draws no dropout
    scores = fn.evaluate(state, images, labels, batch_size=100)
    outputs = model.apply(state.params, jnp.asarray(images), state=state.model_state)
    assert scores["accuracy"] == pytest.approx(float(np.mean(np.argmax(outputs, -1) == labels)))
    assert scores["accuracy"] == pytest.approx(history[0]["test_accuracy"])
    _, unchanged = model.apply_with_state(state.params, state.model_state, jnp.asarray(images[:8]))
    jax.tree.map(np.testing.assert_array_equal, unchanged, state.model_state)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_follows_the_step_key_and_evaluation_is_deterministic(name, digits):
    model = model_of(name)
    params, state = model.init(jax.random.key(0)), model.init_state()
    x = jnp.asarray(digits[0][:16])

    def train(key):
        return np.asarray(model.apply_with_state(params, state, x, train=True, rng=key)[0])

    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    np.testing.assert_array_equal(model.apply(params, x, state=state), model.apply(params, x, state=state))
    with pytest.raises(ValueError, match="needs rng"):
        model.apply(params, x, train=True)


def _library_forward(name, back, x):
    """The trained module's evaluation forward, run in its own library."""
    if name == "linen_bn":
        from module_nets import LinenBN

        return LinenBN().apply(back, x, train=False)
    if name == "nnx_bn":
        return nnx.view(back, deterministic=True, use_running_average=True)(x)
    module, state = back
    module = eqx.nn.inference_mode(module)
    out, _ = jax.vmap(module, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(
        jnp.moveaxis(x, -1, 1), state)
    return out


@pytest.mark.parametrize("name", ["nnx_bn", "eqx_bn", pytest.param("linen_bn", marks=pytest.mark.slow)])
def test_the_trained_module_comes_back_to_its_library(name, digits, tmp_path):
    images, labels = digits
    model = model_of(name)
    state = fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0))
    state, _ = fn.train_epoch(state, images, labels, batch_size=50, rng=jax.random.key(1))
    back = fn.models.to_equinox(model, state) if name == "eqx_bn" else fn.models.to_flax(model, state)
    if name == "linen_bn":
        assert sorted(back) == ["batch_stats", "params"]
    x = jnp.asarray(images[:32])
    _close(_library_forward(name, back, x), model.apply(state.params, x, state=state.model_state), atol=1e-5)
    # and from there back into funcnets: the same net, carrying on
    if name == "nnx_bn":
        again = fn.models.from_flax(back, input_shape=(28, 28, 1), outputs="log_probs")
        _close(again.init(jax.random.key(5)), state.params)
        _close(again.init_state(), state.model_state)
    if name == "eqx_bn":
        again = fn.models.from_equinox(*back, input_shape=(28, 28, 1), outputs="log_probs")
        _close(again.init(jax.random.key(5)), state.params)
        _close(again.init_state(), state.model_state)
    # checkpoints hold params and statistics
    with fn.checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(state, fn.checkpoint.Progress(1, 0))
    with fn.checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        restored, _ = ckpt.restore_latest(fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0)))
    jax.tree.map(np.testing.assert_array_equal, (restored.params, restored.model_state),
                 jax.device_get((state.params, state.model_state)))
    again, _ = fn.train_step(restored, (jnp.asarray(images[:50], np.float32), jnp.asarray(labels[:50])))  # restored: trains
    assert int(again.step) == int(state.step) + 1
    with pytest.raises(ValueError, match="keeps model state"):
        (fn.models.to_equinox if name == "eqx_bn" else fn.models.to_flax)(model, state.params)


def test_params_are_named_by_the_modules_attributes():
    assert sorted(model_of("nnx_bn").init(jax.random.key(0))) == ["bn", "conv", "fc"]
    assert sorted(model_of("nnx_bn").init(jax.random.key(0))["bn"]) == ["bias", "scale"]
    assert sorted(model_of("nnx_bn").init_state()["bn"]) == ["mean", "var"]
    eqx_params = model_of("eqx_bn").init(jax.random.key(0))
    assert eqx_params["conv"]["weight"].shape == (4, 1, 3, 3)       # PyTorch's layout, as Equinox keeps it
    assert sorted(model_of("linen_bn").init_state()) == ["batch_stats"]


def test_a_module_with_a_list_of_layers_and_no_state():
    class Stack(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(784, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](nnx.relu(self.layers[0](x.reshape(x.shape[0], -1))))

    model = fn.models.from_flax(Stack(nnx.Rngs(0)), input_shape=(28, 28, 1), outputs="logits")
    assert not model.has_state and not model.needs_rng and sorted(model.init(jax.random.key(0))["layers"]) == ["0", "1"]
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0))
    state, metrics = fn.train_step(state, (jnp.zeros((4, 28, 28, 1)), jnp.zeros(4, jnp.int32)))
    assert np.isfinite(float(metrics["loss"])) and state.model_state == {}
    back = fn.models.to_flax(model, state)
    _close(back(jnp.ones((2, 28, 28, 1))), model.apply(state.params, jnp.ones((2, 28, 28, 1))))


def test_float64_params_from_a_float32_module(x64):
    model = model_of("eqx_bn")
    params = model.init(jax.random.key(0), jnp.float64)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0), dtype=jnp.float64)
    state, _ = fn.train_step(state, (jnp.zeros((4, 28, 28, 1), jnp.float64), jnp.zeros(4, jnp.int32)))
    assert state.params["fc"]["weight"].dtype == jnp.float64


def test_what_cannot_work_is_named_with_what_to_change():
    class NoMode(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1)))

    with pytest.raises(TypeError, match=r"keeps \['batch_stats'\] but its __call__ takes no train argument.*"
                                        r"use_running_average=not train"):
        fn.models.from_flax(NoMode(), input_shape=(28, 28, 1), outputs="logits")

    class UpdatesInEval(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(10)(nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1)))

    with pytest.raises(ValueError, match="in evaluation .* updates its model state"):
        fn.models.from_flax(UpdatesInEval(), input_shape=(28, 28, 1), outputs="logits")

    class NeedsMask(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            return nn.Dense(10)(x.reshape(x.shape[0], -1) * mask)

    with pytest.raises(TypeError, match=r"needs 'mask', which funcnets cannot give.*Give it a default"):
        fn.models.from_flax(NeedsMask(), input_shape=(28, 28, 1), outputs="logits")

    class Counting(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(784, 10, rngs=rngs)
            self.calls = nnx.Variable(0)     # a Python int as state: not an array

        def __call__(self, x):
            return self.fc(x.reshape(x.shape[0], -1))

    with pytest.raises(TypeError, match=r"variable \['calls'\].* holds a int, not an array.*nnx.Variable"):
        fn.models.from_flax(Counting(nnx.Rngs(0)), input_shape=(28, 28, 1), outputs="logits")

    module, eqx_state = eqx.nn.make_with_state(__import__("module_nets").EqxBN)(jax.random.key(0))
    with pytest.raises(ValueError, match=r"keeps state \(bn\..*make_with_state"):
        fn.models.from_equinox(module, input_shape=(28, 28, 1), outputs="logits")
    with pytest.raises(TypeError, match="from_flax takes a Flax module .* from_equinox"):
        fn.models.from_flax(module, input_shape=(28, 28, 1), outputs="logits")
    with pytest.raises(TypeError, match="from_equinox takes an equinox.Module"):
        fn.models.from_equinox(nn.Dense(3), input_shape=(28, 28, 1), outputs="logits")
    sequential = fn.models.get("mnist_mlp")
    with pytest.raises(TypeError, match="to_flax takes a model made by funcnets.models.from_flax"):
        fn.models.to_flax(sequential, sequential.init(jax.random.key(0)))
    with pytest.raises(TypeError, match="to_equinox takes a model made by funcnets.models.from_equinox"):
        fn.models.to_equinox(model_of("nnx_bn"), fn.models.Variables({}, {}))
