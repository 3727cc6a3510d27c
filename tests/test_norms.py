"""Layers with state: BatchNorm1d/2d (running statistics as model state), LayerNorm and
GroupNorm, against ``torch.nn`` in float64, and the model state through every entry
point (train_step, train_epoch on both paths, evaluate, fit, interop with buffers,
bf16 compute). Kill -9 resume: tests/test_fit.py; one device against a mesh:
tests/parallel_devices.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

torch = pytest.importorskip("torch")

from funcnets import torch_models  # noqa: E402
from funcnets.parity import OptimizerSpec, jax_curve, synthetic_batches, torch_curve  # noqa: E402

L = fn.layers


def bn_cnn(momentum=0.1, affine=True, track=True, dropout=0.0):
    return fn.models.sequential(
        ("conv1", L.Conv2d(1, 4, 3)), ("bn1", L.BatchNorm2d(4, momentum=momentum, affine=affine,
                                                            track_running_stats=track)), L.ReLU(),
        L.MaxPool2d(2), L.Dropout2d(dropout), L.Flatten(), ("fc1", L.Linear(4 * 5 * 5, 16)),
        ("bn2", L.BatchNorm1d(16, momentum=momentum, affine=affine, track_running_stats=track)), L.ReLU(),
        ("fc2", L.Linear(16, 3)), L.LogSoftmax(), input_shape=(12, 12, 1), name="bn_cnn")


def bn_mlp():
    return fn.models.sequential(L.Flatten(), ("fc1", L.Linear(784, 32)), ("bn1", L.BatchNorm1d(32)), L.ReLU(),
                                L.Dropout(0.2), ("fc2", L.Linear(32, 10)), input_shape=(28, 28, 1), name="bn_mlp")


@pytest.mark.parametrize("options", [{}, {"momentum": None}, {"affine": False}, {"track": False},
                                     {"dropout": 0.3}])
def test_batch_norm_trains_as_pytorch_in_float64(options, x64, layer_path):
    """Losses per step, params and running statistics after 6 steps, then the eval outputs;
    on the CPU's fast path (`funcnets.cpu.batch_norm_train`) and XLA's plain ops."""
    model = bn_cnn(**options)
    torch.manual_seed(0)
    twin = torch_models.twin(model).double()
    init = {k: v.numpy().copy() for k, v in twin.state_dict().items()}
    batches = synthetic_batches(model, 6, 8, seed=1, dtype=np.float64)
    spec = OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9})
    ours, ours_final = jax_curve(model, spec, init, batches)
    theirs, theirs_final = torch_curve(model, spec, init, batches)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    assert sorted(ours_final) == sorted(theirs_final)
    for key in theirs_final:
        np.testing.assert_allclose(ours_final[key], theirs_final[key], rtol=0, atol=1e-12, err_msg=key)
    if options.get("track", True):
        assert int(ours_final["bn1.num_batches_tracked"]) == 6
    # evaluation: the running statistics (PyTorch's eval())
    variables = fn.interop.params_from_torch(model, theirs_final) if model.has_state else (
        fn.interop.params_from_torch(model, theirs_final), {})
    params, state = variables
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in theirs_final.items()})
    x = batches[0][0]
    expected = twin.eval()(torch.from_numpy(torch_models.nchw(x))).detach().numpy()
    got = model.apply(params, jnp.asarray(x), state=state) if model.has_state else model.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-12)


def test_norm_layers_match_torch_forward_and_gradients(x64):
    cases = [
        (fn.models.sequential(("fc", L.Linear(6, 5)), ("ln", L.LayerNorm(5)), ("head", L.Linear(5, 3)),
                              input_shape=(6,)), (6,)),
        (fn.models.sequential(("fc", L.Linear(6, 5)), ("ln", L.LayerNorm(5, bias=False, eps=1e-3)),
                              ("head", L.Linear(5, 3)), input_shape=(6,)), (6,)),
        (fn.models.sequential(("rnn", L.GRU(5, 4, batch_first=True)), ("ln", L.LayerNorm((6, 4))), L.Flatten(),
                              ("head", L.Linear(24, 3)), input_shape=(6, 5)), (6, 5)),
        (fn.models.sequential(("c", L.Conv2d(2, 6, 3)), ("gn", L.GroupNorm(3, 6)), L.Flatten(),
                              ("head", L.Linear(6 * 3 * 4, 3)), input_shape=(5, 6, 2)), (5, 6, 2)),
        (fn.models.sequential(("c", L.Conv2d(2, 6, 3)), ("gn", L.GroupNorm(1, 6, affine=False)), L.Flatten(),
                              ("head", L.Linear(6 * 3 * 4, 3)), input_shape=(5, 6, 2)), (5, 6, 2)),
    ]
    for model, shape in cases:
        torch.manual_seed(0)
        twin = torch_models.twin(model).double()
        with torch.no_grad():   # not PyTorch's ones and zeros, so that the affine part is tested
            for name, parameter in twin.named_parameters():
                if name.startswith(("ln.", "gn.")):
                    parameter.copy_(torch.rand_like(parameter) + 0.5)
        params = fn.interop.params_from_torch(model, twin.state_dict())
        x = np.random.default_rng(0).standard_normal((4, *shape))
        weights = np.random.default_rng(1).standard_normal((4, 3))
        grads = jax.grad(lambda p: jnp.sum(model.apply(p, jnp.asarray(x)) * weights))(params)
        out = twin(torch.from_numpy(torch_models.nchw(x)))
        (out * torch.from_numpy(weights)).sum().backward()
        np.testing.assert_allclose(np.asarray(model.apply(params, jnp.asarray(x))), out.detach().numpy(),
                                   rtol=0, atol=1e-12)
        as_torch = fn.interop.params_to_numpy_state_dict(model, grads)
        for key, parameter in twin.named_parameters():
            np.testing.assert_allclose(as_torch[key], parameter.grad.numpy(), rtol=0, atol=1e-12, err_msg=key)


def _digits():
    split = fn.data.load("digits", "train")
    return fn.data.normalize(split.images, split.info)[:300], split.labels[:300]


def test_the_model_state_goes_through_every_entry_point(tmp_path):
    images, labels = _digits()
    model = bn_mlp()
    fresh = fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0))
    assert model.has_state and sorted(fresh.model_state["bn1"]) == ["num_batches_tracked", "running_mean",
                                                                      "running_var"]
    order = fn.training.epoch_order(len(labels), jax.random.key(1))
    by_steps = fresh
    for rows in np.asarray(order).reshape(-1, 50):
        by_steps, _ = fn.train_step(by_steps, (jnp.asarray(images[rows]), jnp.asarray(labels[rows])))
    results = [by_steps]
    for scan in (True, False):
        state, _ = fn.train_epoch(fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0)),
                                  images, labels, batch_size=50, rng=jax.random.key(1), scan=scan)
        results.append(state)
    state, history = fn.fit(fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0)),
                            (images, labels), (images, labels), epochs=1, batch_size=50,
                            rng=jax.random.key(1),
                            report=fn.loop.Report.silent())
    for other in results[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                     (results[0].params, results[0].model_state), (other.params, other.model_state))
    assert int(results[1].model_state["bn1"]["num_batches_tracked"]) == 6
    assert int(state.model_state["bn1"]["num_batches_tracked"]) == 6
    # evaluation reads the running statistics, not the batch's
    scores = fn.evaluate(state, images, labels, batch_size=100)
    outputs = model.apply(state.params, jnp.asarray(images), state=state.model_state)
    expected = float(np.mean(np.argmax(np.asarray(outputs), -1) == labels))
    assert scores["accuracy"] == pytest.approx(expected) == pytest.approx(history[0]["test_accuracy"])
    batch_stats = model.apply(state.params, jnp.asarray(images[:100]), train=True, rng=jax.random.key(0))
    assert not np.allclose(np.asarray(batch_stats), np.asarray(outputs[:100]))
    # a checkpoint holds the state; a restore brings it back
    with fn.checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(state, fn.checkpoint.Progress(1, 0))
    with fn.checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        restored, _ = ckpt.restore_latest(fresh)
    jax.tree.map(np.testing.assert_array_equal, restored.model_state, jax.device_get(state.model_state))


def test_state_dicts_carry_the_buffers_both_ways():
    model = bn_cnn()
    torch.manual_seed(0)
    twin = torch_models.twin(model)
    twin.train()(torch.randn(8, 1, 12, 12))          # running statistics that are not the initial ones
    variables = fn.interop.params_from_torch(model, twin.state_dict())
    assert isinstance(variables, fn.models.Variables)
    assert int(variables.state["bn1"]["num_batches_tracked"]) == 1
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0), params=variables)
    jax.tree.map(np.testing.assert_array_equal, state.model_state, variables.state)
    back = fn.interop.params_to_torch(model, state)
    assert list(back) == list(twin.state_dict())
    assert back["bn1.num_batches_tracked"].dtype == torch.int64
    twin.load_state_dict(back)
    for key, value in twin.state_dict().items():
        np.testing.assert_array_equal(back[key].numpy(), value.numpy())
    with pytest.raises(ValueError, match="keeps model state.*Variables"):
        fn.interop.params_to_torch(model, state.params)
    fresh = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0), params=variables.params)
    assert int(fresh.model_state["bn1"]["num_batches_tracked"]) == 0   # params alone: the state starts afresh


def test_bfloat16_compute_keeps_the_statistics_float32():
    images, labels = _digits()
    state = fn.create_train_state(bn_mlp(), fn.optim.adam(lr=1e-3), jax.random.key(0), compute_dtype=jnp.bfloat16)
    state, metrics = fn.train_epoch(state, images, labels, batch_size=50, rng=jax.random.key(1))
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    assert state.model_state["bn1"]["running_mean"].dtype == jnp.float32
    assert state.model_state["bn1"]["running_var"].dtype == jnp.float32
    assert float(jnp.abs(state.model_state["bn1"]["running_mean"]).sum()) > 0


def test_a_net_without_state_is_unchanged():
    model = fn.models.get("mnist_cnn")
    state = fn.create_train_state(model, fn.optim.adadelta(lr=1.0), jax.random.key(0))
    assert not model.has_state and state.model_state == {} and model.init_state() == {}
    assert "model_state" not in fn.checkpoint.fingerprint(state)
    assert "model_state" not in fn.checkpoint._arrays(state)


def test_what_cannot_work_is_named():
    model = bn_mlp()
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"keeps running statistics.*state=train_state.model_state"):
        model.apply(params, jnp.zeros((2, 28, 28, 1)))
    with pytest.raises(ValueError, match="model state does not fit bn_mlp"):
        fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0),
                              params=fn.models.Variables(params, {"bn1": {"running_mean": jnp.zeros(3)}}))
    with pytest.raises(ValueError, match=r"layer 'bn' \(BatchNorm2d\) expects an \(H, W, 3\) map"):
        fn.models.sequential(L.Conv2d(1, 4, 3), ("bn", L.BatchNorm2d(3)), L.Flatten(), L.Linear(4 * 4 * 4, 2),
                             input_shape=(6, 6, 1))
    with pytest.raises(ValueError, match=r"layer 'ln' \(LayerNorm\) takes vectors or sequences.*GroupNorm\(1, 4\)"):
        fn.models.sequential(L.Conv2d(1, 4, 3), ("ln", L.LayerNorm((4, 4, 4))), L.Flatten(), L.Linear(64, 2),
                             input_shape=(6, 6, 1))
    with pytest.raises(ValueError, match="num_channels 4 must divide by num_groups 3"):
        fn.models.sequential(L.Conv2d(1, 4, 3), ("gn", L.GroupNorm(3, 4)), L.Flatten(), L.Linear(64, 2),
                             input_shape=(6, 6, 1))
