"""Models of one's own through funcnets' API: a Flax Linen module (`from_flax`) and a
pair of pure functions (`from_functions`; Linen with batch_stats, NNX and Equinox
are in test_bridges.py): training steps, whole epochs (loop and
scan), evaluation, fit with checkpoints, a mesh; and the errors for what does not fit.
(The SIGKILL-and-resume test of a Flax CNN is in test_fit.py.)"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn


class FlaxCNN(nn.Module):
    """Flax's MNIST-example convention: ``train`` switches dropout on."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(10)(x)


class FlaxMLP(nn.Module):
    """``nn.Dropout``'s convention: ``deterministic``."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.log_softmax(nn.Dense(10)(nn.Dropout(0.2, deterministic=deterministic)(x)))


@pytest.fixture(scope="module")
def digits():
    train = fn.data.load("digits")
    return fn.data.normalize(train.images, train.info), train.labels


def test_a_flax_cnn_trains_through_train_step_and_train_epoch(digits):
    images, labels = digits
    model = fn.models.from_flax(FlaxCNN(), input_shape=(28, 28, 1), outputs="logits")
    assert (model.name, model.num_classes, model.needs_rng) == ("FlaxCNN", 10, True)
    assert model.param_count == 3 * 3 * 8 + 8 + 14 * 14 * 8 * 10 + 10   # Flax convs pad SAME
    state = fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0))
    before = fn.evaluate(state, images, labels)
    state, metrics = fn.train_step(state, (images[:32], labels[:32]))
    assert set(metrics) == {"loss", "accuracy"} and int(state.step) == 1
    for scan in (False, True):   # the per-step loop and the whole-epoch scan
        state, metrics = fn.train_epoch(state, images, labels, batch_size=64, rng=jax.random.key(1), scan=scan)
        assert metrics["loss"].shape == (23,) and np.isfinite(metrics["loss"]).all()
    after = fn.evaluate(state, images, labels)
    assert after["loss"] < before["loss"] - 1.0 and after["accuracy"] > 0.8


def test_flax_dropout_follows_the_key_and_eval_is_deterministic(digits):
    images, _ = digits
    x = jnp.asarray(images[:8])
    for module in (FlaxCNN(), FlaxMLP()):
        model = fn.models.from_flax(module, input_shape=(28, 28, 1), outputs="logits")
        params = model.init(jax.random.key(0))
        a = model.apply(params, x, train=True, rng=jax.random.key(1))
        assert np.array_equal(a, model.apply(params, x, train=True, rng=jax.random.key(1)))
        assert not np.array_equal(a, model.apply(params, x, train=True, rng=jax.random.key(2)))
        assert np.array_equal(model.apply(params, x), model.apply(params, x))
        assert not np.array_equal(a, model.apply(params, x))
        with pytest.raises(ValueError, match="needs rng"):
            model.apply(params, x, train=True)


def test_flax_params_are_the_modules_own_init():
    model = fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs")
    ours = model.init(jax.random.key(3))
    theirs = FlaxMLP().init({"params": jax.random.key(3), "dropout": jax.random.key(3)},
                            jnp.zeros((1, 28, 28, 1)))["params"]
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_init_takes_a_dtype(x64):
    model = fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs")
    assert {leaf.dtype for leaf in jax.tree.leaves(model.init(jax.random.key(0), jnp.float64))} == {
        jnp.dtype(jnp.float64)}


def test_pure_functions_fit_with_checkpoints_and_resume_exactly(digits, tmp_path):
    images, labels = digits

    def init(key):
        return {"w": jax.random.normal(key, (784, 10)) * 0.01, "b": jnp.zeros(10)}

    def apply(params, x, *, train, rng):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None, :]

    model = fn.models.from_functions(init, apply, input_shape=(28, 28, 1), outputs="logits",
                                     name="linear", stochastic=False)
    assert (model.param_count, model.num_classes) == (7850, 10)
    run = dict(epochs=2, batch_size=64, rng=jax.random.key(5), report=fn.loop.Report.silent())
    straight, _ = fn.fit(fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0)),
                         (images, labels), **run)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True) as ckpt:
        fn.fit(fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0)), (images, labels),
               **{**run, "epochs": 1}, checkpointer=ckpt)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_epoch=True, resume=True) as ckpt:
        resumed, _ = fn.fit(fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0)),
                            (images, labels), **run, checkpointer=ckpt)
    jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
    with fn.checkpoint.Checkpointer(tmp_path) as ckpt:   # another architecture is refused
        other = fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs")
        with pytest.raises(fn.checkpoint.CheckpointMismatchError, match="written for model 'linear'"):
            ckpt.restore_latest(fn.create_train_state(other, fn.optim.sgd(lr=0.1), jax.random.key(0)))


@pytest.mark.slow   # CI runs the slow tests
def test_a_flax_model_trains_on_a_mesh(digits):
    images, labels = digits
    model = fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs")
    mesh = fn.parallel.data_mesh()
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.05), jax.random.key(0))
    alone, _ = fn.train_epoch(state, images, labels, batch_size=64, rng=jax.random.key(1))
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.05), jax.random.key(0))
    meshed, _ = fn.train_epoch(state, images, labels, batch_size=64, rng=jax.random.key(1), mesh=mesh)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), alone.params, meshed.params)


def test_what_does_not_fit_is_refused_clearly():
    with pytest.raises(TypeError, match="takes a Flax module"):
        fn.models.from_flax(lambda x: x, input_shape=(28, 28, 1), outputs="logits")
    with pytest.raises(ValueError, match="input_shape must be one example's shape"):
        fn.models.from_flax(FlaxMLP(), input_shape=None, outputs="logits")
    with pytest.raises(ValueError, match="outputs must be 'log_probs' or 'logits'"):
        fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="probs")
    with pytest.raises(ValueError, match=r"apply must return \(B, classes\)"):
        fn.models.from_functions(lambda key: {"w": jnp.zeros(3)}, lambda p, x, *, train, rng: x,
                                 input_shape=(28, 28, 1), outputs="logits")
    model = fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs")
    with pytest.raises(ValueError, match="model of one's own"):
        fn.interop.params_to_numpy_state_dict(model, model.init(jax.random.key(0)))
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0))
    with pytest.raises(ValueError, match=r"FlaxMLP: images must have shape \(B, 28, 28, 1\)"):
        fn.train_step(state, (jnp.zeros((2, 28, 28)), jnp.zeros(2, jnp.int32)))


# --- nets composed of funcnets' layers --------------------------------------------------------

L = fn.layers


def _composed(dropout=(0.1, 0.25)):
    return fn.models.sequential(
        ("conv1", L.Conv2d(1, 8, 3, stride=2, padding=1)), L.ReLU(), ("conv2", L.Conv2d(8, 16, 3)), L.ReLU(),
        L.MaxPool2d(2), L.Dropout2d(dropout[0]), L.Flatten(), ("fc1", L.Linear(16 * 6 * 6, 32)), L.ReLU(),
        L.Dropout(dropout[1]), ("fc2", L.Linear(32, 10)), L.LogSoftmax(), input_shape=(28, 28, 1), name="mine")


def _torch_mine():
    """The same net written in PyTorch by hand, as a user would."""
    torch = pytest.importorskip("torch")
    from torch import nn as tnn

    class Mine(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(1, 8, 3, stride=2, padding=1)
            self.conv2 = tnn.Conv2d(8, 16, 3)
            self.fc1 = tnn.Linear(16 * 6 * 6, 32)
            self.fc2 = tnn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            x = torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1)
            return torch.log_softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)

    return Mine()


def test_a_composed_net_matches_a_pytorch_module_written_by_hand(x64):
    torch = pytest.importorskip("torch")
    from funcnets import torch_models
    from funcnets.parity import OptimizerSpec, jax_curve, synthetic_batches, torch_curve

    model = _composed()
    assert (model.outputs, model.num_classes, model.dropout) == ("log_probs", 10, (0.1, 0.25))
    torch.manual_seed(0)
    theirs = _torch_mine().double().eval()
    assert model.param_count == sum(p.numel() for p in theirs.parameters())
    params = fn.interop.params_from_torch(model, theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1))
    expected = theirs(torch.from_numpy(torch_models.nchw(x))).detach().numpy()
    assert np.abs(np.asarray(model.apply(params, jnp.asarray(x))) - expected).max() <= 1e-12
    # and a few SGD steps (dropout off on both sides), from that init on the same batches
    state_dict = {k: v.numpy() for k, v in theirs.state_dict().items()}
    batches = synthetic_batches(model, 5, 8, seed=1, dtype=np.float64)
    ours, _ = jax_curve(model, OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}), state_dict, batches)
    twin, _ = torch_curve(model, OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}), state_dict, batches)
    np.testing.assert_allclose(ours, twin, rtol=0, atol=1e-12)
    # the twin torch_models builds has the same names and layers
    built = torch_models.twin(model)
    assert sorted(built.state_dict()) == sorted(theirs.state_dict())
    built.load_state_dict(fn.interop.params_to_torch(model, params))


def test_a_composed_net_trains_and_its_dropout_follows_the_key(digits):
    images, labels = digits
    model = _composed()
    state = fn.create_train_state(model, fn.optim.adadelta(lr=1.0), jax.random.key(0))
    before = fn.evaluate(state, images, labels)
    state, _ = fn.train_epoch(state, images, labels, batch_size=32, rng=jax.random.key(1))
    assert fn.evaluate(state, images, labels)["loss"] < before["loss"] - 0.5
    x = jnp.asarray(images[:8])
    a = model.apply(state.params, x, train=True, rng=jax.random.key(2))
    assert not np.array_equal(a, model.apply(state.params, x, train=True, rng=jax.random.key(3)))
    assert np.array_equal(model.apply(state.params, x), model.apply(state.params, x))


def test_compositions_that_do_not_fit_fail_when_built():
    with pytest.raises(ValueError, match=r"layer 'fc1' \(Linear\) expects 100 input features, gets shape \(2304,\)"):
        fn.models.sequential(L.Conv2d(1, 4, 5), L.Flatten(), ("fc1", L.Linear(100, 10)), input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match=r"layer '1' \(MaxPool2d\) a 8x8 pool is larger than its input of shape "
                                         r"\(4, 4, 2\)"):
        fn.models.sequential(L.Conv2d(1, 2, 3), L.MaxPool2d(8), L.Flatten(), L.Linear(2, 2), input_shape=(6, 6, 1))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\) expects an \(H, W, 3\) map, gets shape \(28, 28, 1\)"):
        fn.models.sequential(L.Conv2d(3, 2, 3), L.Flatten(), L.Linear(2 * 26 * 26, 2), input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match=r"gives shape \(26, 26, 2\); a classifier ends in \(classes,\)"):
        fn.models.sequential(L.Conv2d(1, 2, 3), input_shape=(28, 28, 1))
    with pytest.raises(TypeError, match="entry 1 is not a funcnets layer"):
        fn.models.sequential(L.Linear(784, 10), "relu", input_shape=(784,))
    with pytest.raises(ValueError, match="layer name 'a' is empty, repeated"):
        fn.models.sequential(("a", L.Linear(784, 10)), ("a", L.Linear(10, 10)), input_shape=(784,))


def test_dotted_names_nest_as_sequential_attributes_do(x64):
    """``conv.0`` is layer 0 of ``conv``: the twin nests nn.Sequential modules, as the
    CIFAR tutorial's ``Net`` holds ``conv`` and ``fc``; its state_dict ports both ways."""
    torch = pytest.importorskip("torch")
    from funcnets import torch_models

    model = fn.models.sequential(
        ("conv.0", L.Conv2d(3, 4, 3)), ("conv.1", L.ReLU()), ("conv.2", L.GlobalAvgPool2d()), ("view", L.Flatten()),
        ("fc.0", L.Linear(4, 5)), ("fc.1", L.ReLU()), ("fc.2", L.Linear(5, 3)), input_shape=(8, 8, 3), name="nested")
    twin = torch_models.twin(model).double().eval()
    assert list(twin.state_dict()) == ["conv.0.weight", "conv.0.bias", "fc.0.weight", "fc.0.bias",
                                       "fc.2.weight", "fc.2.bias"]
    assert isinstance(twin.conv, torch.nn.Sequential) and isinstance(twin.fc, torch.nn.Sequential)
    params = fn.interop.params_from_torch(model, twin.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    theirs = twin(torch.from_numpy(torch_models.nchw(x))).detach().numpy()
    assert np.abs(np.asarray(model.apply(params, jnp.asarray(x))) - theirs).max() <= 1e-12


def test_compare_puts_a_users_own_net_beside_pytorch(digits, tmp_path):
    """`fn.parity.compare` on a user's sequential net (its twin) and with a PyTorch module
    of the user's own whose state_dict names match: one init, the same batches, the report."""
    images, labels = digits
    train, test = (images[:640], labels[:640]), (images[640:840], labels[640:840])
    net = fn.models.sequential(("conv1", L.Conv2d(1, 4, 3)), ("bn1", L.BatchNorm2d(4)), L.ReLU(), L.MaxPool2d(2),
                               L.Flatten(), ("fc1", L.Linear(4 * 13 * 13, 10)), L.LogSoftmax(),
                               input_shape=(28, 28, 1), name="users_net")
    results = fn.parity.compare(net, train, test, optimizer="adam", lr=1e-3, epochs=2, batch_size=64,
                                out=tmp_path / "twin", log=lambda line: None)
    gap = results["per_step_loss_gap"]
    assert gap["count"] == 20 and gap["max_abs"] < 1e-3      # float32 noise between the frameworks, no more
    runs = results["runs"]
    assert runs["jax"]["epochs"] == runs["torch"]["epochs"] == 2
    assert abs(runs["jax"]["test_accuracy"] - runs["torch"]["test_accuracy"]) <= 0.02
    assert {"report.md", "results.json", "curves.png", "difference.png", "jax", "torch"} <= {
        p.name for p in (tmp_path / "twin").iterdir()}
    report = (tmp_path / "twin" / "report.md").read_text()
    assert "users_net: funcnets (JAX) vs PyTorch" in report and "| 2 |" in report

    mine = _torch_mine()                              # the user's own nn.Module, names as the layers'
    results = fn.parity.compare(_composed(dropout=(0.0, 0.0)), train, test, torch_module=mine, optimizer="sgd",
                                lr=0.05, momentum=0.9, epochs=1, batch_size=64, out=tmp_path / "own",
                                log=lambda line: None)
    assert results["per_step_loss_gap"]["max_abs"] < 1e-3
    with pytest.raises(ValueError, match="state_dict does not fit users_net.*layer names"):
        fn.parity.compare(net, train, test, torch_module=_torch_mine(), out=tmp_path / "bad", log=lambda line: None)
    with pytest.raises(ValueError, match="has no PyTorch twin"):
        fn.parity.compare(fn.models.from_flax(FlaxMLP(), input_shape=(28, 28, 1), outputs="log_probs"), train,
                          test, out=tmp_path / "flax", log=lambda line: None)
