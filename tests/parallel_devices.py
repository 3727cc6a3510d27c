"""Data parallel over 1, 2 and 8 devices; run by tests/test_parallel.py in a subprocess
started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must
be set before JAX starts, and must not leak into the other tests).

Tolerances. Sharding the batch changes only the order in which the per-example
gradients are summed (per device, then an all-reduce), never which numbers are
summed. Each parameter of a float32 run may then differ by a few ulps of the
gradient sums per step: after 3 SGD steps at lr 0.01 the largest gap is
7.5e-9 (one float32 ulp of the parameters), against a tolerance of 1e-7.
Adam divides by sqrt(v), which magnifies such differences where gradients are
tiny, so the float32 checks use SGD. In float64 the reduction noise is ~1e-16
relative and Adam agrees to 1e-12 (measured: 2e-15 to 2e-14); bit-for-bit
equality would need the same summation tree on every device count, which no
all-reduce promises.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (run via tests/test_parallel.py)")

DEVICE_COUNTS = (1, 2, 8)
STEPS = 3
BATCH = {"mnist_mlp": 32, "mnist_cnn": 16}   # both divide by 8; the CNN's smaller to keep float64 convs quick


def _data(model, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, *model.input_shape)).astype(dtype)
    labels = rng.integers(0, model.num_classes, n).astype(np.int32)
    return images, labels


def _max_gap(a, b, label: str = "") -> float:
    """The largest elementwise difference of two param trees (printed: ``pytest -s`` shows it)."""
    gap = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))),
                                           a, b)))
    print(f"{label}: largest gap {gap:.1e}")
    return gap


def _fresh(model, tx, dtype):
    return fn.create_train_state(model, tx, jax.random.key(0), dtype=dtype)


# (model, optimizer, dtype, tolerance, device counts). Compiling is most of the time,
# so 2 devices are checked on the MLP's paths, not for every case.
CASES = [
    ("mnist_mlp", "sgd", np.float32, 1e-7, DEVICE_COUNTS),
    ("mnist_cnn", "sgd", np.float32, 1e-7, (1, 8)),   # with dropout: masks must not depend on the sharding
    ("mnist_mlp", "adam", np.float64, 1e-12, (1, 8)),
    pytest.param("mnist_cnn", "adam", np.float64, 1e-12, (1, 8), marks=pytest.mark.slow),  # float64 convs: 18 s
]
EPOCH_CASES = [  # the float64 CNN epoch adds a minute of float64 convolutions and no new path
    ("mnist_mlp", "sgd", np.float32, 1e-7, DEVICE_COUNTS),
    ("mnist_cnn", "sgd", np.float32, 1e-7, (1, 8)),
    ("mnist_mlp", "adam", np.float64, 1e-12, (1, 8)),
]


@pytest.mark.parametrize("name,optimizer,dtype,tolerance,counts", CASES)
def test_train_step_on_sharded_batches_matches_one_device(name, optimizer, dtype, tolerance, counts):
    model = fn.models.get(name)
    tx = fn.optim.create(optimizer, lr=0.01 if optimizer == "sgd" else 1e-3)
    batch_size = BATCH[name]
    images, labels = _data(model, STEPS * batch_size, dtype)
    with jax.enable_x64(dtype == np.float64):
        params = {}
        for count in counts:
            mesh = fn.parallel.data_mesh(jax.devices()[:count])
            state = fn.parallel.replicate(_fresh(model, tx, dtype), mesh)
            for k in range(STEPS):
                rows = slice(k * batch_size, (k + 1) * batch_size)
                batch = fn.parallel.shard_batch((images[rows], labels[rows]), mesh)
                assert batch[0].sharding.spec[0] == fn.parallel.DATA_AXIS
                state, metrics = fn.train_step(state, batch)
            first = state.params[model.layers[0][0]]["kernel"]
            assert len(first.sharding.device_set) == count and first.dtype == dtype
            params[count] = jax.device_get(state.params)
    for count in counts[1:]:
        assert _max_gap(params[1], params[count], f"train_step {name} {optimizer} {np.dtype(dtype)} "
                        f"1 vs {count} devices") <= tolerance, count


@pytest.mark.parametrize("name,optimizer,dtype,tolerance,counts", EPOCH_CASES)
def test_train_epoch_and_evaluate_on_a_mesh_match_one_device(name, optimizer, dtype, tolerance, counts):
    model = fn.models.get(name)
    tx = fn.optim.create(optimizer, lr=0.01 if optimizer == "sgd" else 1e-3)
    batch_size = BATCH[name]
    images, labels = _data(model, STEPS * batch_size + 5, dtype)   # the ragged last batch of 5 runs replicated
    with jax.enable_x64(dtype == np.float64):
        runs = {}
        for count in counts:
            mesh = fn.parallel.data_mesh(jax.devices()[:count])
            state, metrics = fn.train_epoch(_fresh(model, tx, dtype), images, labels, batch_size=batch_size,
                                            rng=jax.random.key(1), mesh=mesh)
            scores = fn.evaluate(state, images, labels, batch_size=16, mesh=mesh)
            runs[count] = jax.device_get(state.params), np.asarray(metrics["loss"]), scores
        for count in counts[1:]:
            assert _max_gap(runs[1][0], runs[count][0], f"train_epoch {name} {optimizer} {np.dtype(dtype)} "
                            f"1 vs {count} devices") <= tolerance, count
            np.testing.assert_allclose(runs[count][1], runs[1][1], rtol=0, atol=100 * tolerance)
            assert runs[count][2]["accuracy"] == runs[1][2]["accuracy"]
            assert runs[count][2]["loss"] == pytest.approx(runs[1][2]["loss"], abs=100 * tolerance)
        assert len(runs[1][1]) == STEPS + 1


def test_fit_on_a_mesh_matches_one_device(tmp_path):
    model = fn.models.get("mnist_mlp")
    batch_size = BATCH["mnist_mlp"]
    train = _data(model, 4 * batch_size, np.float32)
    test = _data(model, 48, np.float32, seed=1)
    histories = {}
    for count in (1, 8):
        mesh = fn.parallel.data_mesh(jax.devices()[:count])
        state = _fresh(model, fn.optim.sgd(lr=0.01), np.float32)
        state, histories[count] = fn.fit(state, train, test, epochs=2, batch_size=batch_size, rng=jax.random.key(2),
                                         log_every=3, mesh=mesh,
                                         report=fn.loop.Report.silent(tmp_path / f"{count}.jsonl"))
    for one, eight in zip(histories[1], histories[8]):
        assert eight["loss"] == pytest.approx(one["loss"], abs=1e-6)
        assert eight["test_accuracy"] == one["test_accuracy"]


def test_a_batch_that_does_not_divide_by_the_devices_is_refused():
    model = fn.models.get("mnist_mlp")
    mesh = fn.parallel.data_mesh()
    images, labels = _data(model, 60, np.float32)
    state = _fresh(model, fn.optim.sgd(lr=0.01), np.float32)
    with pytest.raises(ValueError, match="batch_size 12 does not divide by the 8 devices"):
        fn.train_epoch(state, images, labels, batch_size=12, mesh=mesh)
    with pytest.raises(ValueError, match="batch_size 12 does not divide by the 8 devices"):
        fn.fit(state, (images, labels), epochs=1, batch_size=12, rng=jax.random.key(0), mesh=mesh)
    with pytest.raises(ValueError, match="12 rows in this process.*8 of the mesh's 8 devices"):
        fn.parallel.shard_batch((images[:12], labels[:12]), mesh)
    with pytest.raises(ValueError, match="same number of rows"):
        fn.parallel.shard_batch((images[:16], labels[:8]), mesh)


def test_the_mesh_covers_every_device_and_checks_its_axis():
    mesh = fn.parallel.data_mesh()
    assert mesh.shape == {fn.parallel.DATA_AXIS: 8}
    other = jax.make_mesh((8,), ("batch",))
    with pytest.raises(TypeError, match="'data' axis"):
        fn.parallel.replicate(jnp.zeros(3), other)


def _one_and_eight_devices(model, images, labels, label: str):
    """A float64 SGD epoch and an evaluation on 1 and on 8 devices: params, model state and
    scores agree (``(params, model_state)`` of the 8-device run returned)."""
    runs = {}
    for count in (1, 8):
        mesh = fn.parallel.data_mesh(jax.devices()[:count])
        state, _ = fn.train_epoch(_fresh(model, fn.optim.sgd(lr=0.01), np.float64), images, labels,
                                  batch_size=16, rng=jax.random.key(1), mesh=mesh)
        scores = fn.evaluate(state, images, labels, batch_size=16, mesh=mesh)
        runs[count] = jax.device_get((state.params, state.model_state)), scores
    assert _max_gap(runs[1][0], runs[8][0], f"{label} 1 vs 8 devices") <= 1e-12
    assert runs[8][1]["accuracy"] == runs[1][1]["accuracy"]
    assert runs[8][1]["loss"] == pytest.approx(runs[1][1]["loss"], abs=1e-10)
    return runs[8][0]


def test_batch_norm_on_a_mesh_is_sync_batch_norm():
    """The batch statistics of the global batch (PyTorch's SyncBatchNorm): 8 devices
    train and evaluate as one, running statistics included (float64, SGD: Adam magnifies the
    reduction-order noise of the batch sums where gradients are tiny, to 9e-11 here)."""
    L = fn.layers
    model = fn.models.sequential(("conv", L.Conv2d(1, 4, 3)), ("bn1", L.BatchNorm2d(4)), L.ReLU(), L.Flatten(),
                                 ("fc1", L.Linear(4 * 26 * 26, 16)), ("bn2", L.BatchNorm1d(16)), L.ReLU(),
                                 ("fc2", L.Linear(16, 10)), input_shape=(28, 28, 1), name="bn_net")
    images, labels = _data(model, 3 * 16 + 5, np.float64)
    with jax.enable_x64(True):
        _, model_state = _one_and_eight_devices(model, images, labels, "batch norm")
    assert int(model_state["bn1"]["num_batches_tracked"]) == 4


@pytest.mark.slow   # run by test_parallel's slow case (CI runs both)
@pytest.mark.parametrize("name", ["linen_bn", "nnx_bn", "eqx_bn"])
def test_flax_and_equinox_modules_on_a_mesh_match_one_device(name):
    """Linen (batch_stats), NNX and Equinox modules with batch norm and dropout
    (tests/module_nets.py): 8 devices train, keep statistics and evaluate as one
    (float64, SGD, as the batch-norm case above)."""
    from module_nets import model_of

    with jax.enable_x64(True):
        model = model_of(name)   # built in float64 mode: Equinox's counters are int64 there
        _one_and_eight_devices(model, *_data(model, 3 * 16, np.float64), name)
