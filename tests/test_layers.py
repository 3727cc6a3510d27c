"""The layers "Mastering PyTorch" ch. 1 names (recurrent, DeConv, max/min/mean pooling,
sigmoid, TanH, Leaky ReLU) and their kin, against ``torch.nn`` in float64:
forward, gradients (params and input), PyTorch's init bounds and ``state_dict``
names, both ways; and shapes that do not fit, named when the net is built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

torch = pytest.importorskip("torch")
from torch import nn as tnn  # noqa: E402

from funcnets import torch_models  # noqa: E402

L = fn.layers

# name: (entries before the classifier head, one example's input shape)
CASES = {
    "sigmoid": ([("fc0", L.Linear(6, 5)), L.Sigmoid()], (6,)),
    "tanh": ([("fc0", L.Linear(6, 5)), L.Tanh()], (6,)),
    "leaky_relu": ([("fc0", L.Linear(6, 5)), L.LeakyReLU(0.2)], (6,)),
    "leaky_relu_default": ([("fc0", L.Linear(6, 5)), L.LeakyReLU()], (6,)),
    "gelu": ([("fc0", L.Linear(6, 5)), L.GELU()], (6,)),
    "gelu_tanh": ([("fc0", L.Linear(6, 5)), L.GELU("tanh")], (6,)),
    "elu": ([("fc0", L.Linear(6, 5)), L.ELU(0.7)], (6,)),
    "silu": ([("fc0", L.Linear(6, 5)), L.SiLU()], (6,)),
    "softmax": ([("fc0", L.Linear(6, 5)), L.Softmax(dim=1)], (6,)),
    "softmax_channels": ([("c0", L.Conv2d(2, 3, 3)), L.Softmax(dim=1), L.Flatten()], (5, 6, 2)),
    "softmax_implicit_dim": ([("c0", L.Conv2d(2, 3, 3)), L.Softmax(), L.Flatten()], (5, 6, 2)),
    "max_pool_overlapping": ([("c0", L.Conv2d(2, 3, 1)), L.MaxPool2d(3, stride=2, padding=1), L.Flatten()],
                             (7, 9, 2)),
    "avg_pool": ([("c0", L.Conv2d(2, 3, 1)), L.AvgPool2d(2), L.Flatten()], (7, 9, 2)),
    "avg_pool_padded": ([("c0", L.Conv2d(2, 3, 1)), L.AvgPool2d(3, stride=2, padding=1), L.Flatten()], (7, 9, 2)),
    "min_pool": ([("c0", L.Conv2d(2, 3, 1)), L.MinPool2d(2), L.Flatten()], (7, 9, 2)),
    "min_pool_padded": ([("c0", L.Conv2d(2, 3, 1)), L.MinPool2d(3, 2, 1), L.Flatten()], (7, 9, 2)),
    "adaptive_avg_pool": ([("c0", L.Conv2d(2, 3, 1)), L.AdaptiveAvgPool2d((3, 4)), L.Flatten()], (7, 9, 2)),
    "adaptive_avg_pool_int": ([("c0", L.Conv2d(2, 3, 1)), L.AdaptiveAvgPool2d(2), L.Flatten()], (7, 9, 2)),
    "adaptive_avg_pool_none": ([("c0", L.Conv2d(2, 3, 1)), L.AdaptiveAvgPool2d((None, 4)), L.Flatten()],
                               (7, 9, 2)),
    "deconv": ([("d0", L.ConvTranspose2d(2, 3, 4)), L.Flatten()], (5, 5, 2)),
    "deconv_strided": ([("d0", L.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)), L.Flatten()],
                       (4, 5, 2)),
    "deconv_wide_padding": ([("d0", L.ConvTranspose2d(2, 3, 3, stride=3, padding=3)), L.Flatten()], (4, 4, 2)),
    "rnn": ([("rnn", L.RNN(5, 4, batch_first=True)), L.Last()], (6, 5)),
    "rnn_relu_stacked_bidirectional": ([("rnn", L.RNN(5, 4, num_layers=2, nonlinearity="relu", batch_first=True,
                                                      bidirectional=True)), L.Last()], (6, 5)),
    "lstm": ([("rnn", L.LSTM(5, 4, batch_first=True)), L.Last()], (6, 5)),
    "lstm_stacked_bidirectional": ([("rnn", L.LSTM(5, 4, num_layers=2, batch_first=True, bidirectional=True)),
                                    L.Flatten()], (6, 5)),
    "lstm_no_bias": ([("rnn", L.LSTM(5, 4, bias=False, batch_first=True)), L.Last()], (6, 5)),
    "gru": ([("rnn", L.GRU(5, 4, batch_first=True)), L.Last()], (6, 5)),
    "gru_stacked_bidirectional": ([("rnn", L.GRU(5, 4, num_layers=3, batch_first=True, bidirectional=True)),
                                   L.Last()], (6, 5)),
}


def _net(case: str):
    entries, input_shape = CASES[case]
    features = L.output_shape(L.Flatten(), _shape_after(entries, input_shape))[0]
    return fn.models.sequential(*entries, ("head", L.Linear(features, 3)), input_shape=input_shape, name=case)


def _shape_after(entries, shape):
    for entry in entries:
        spec = entry[1] if type(entry) is tuple else entry   # a (name, layer) pair; layers are NamedTuples
        shape = L.output_shape(spec, shape)
    return shape


def _torch_input(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(torch_models.nchw(x)).requires_grad_(True)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_equal_the_torch_twin_in_float64(case, x64):
    model = _net(case)
    torch.manual_seed(0)
    twin = torch_models.twin(model).double()
    assert sorted(twin.state_dict()) == sorted(fn.interop.torch_shapes(model))
    params = fn.interop.params_from_torch(model, twin.state_dict())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, *model.input_shape))
    weights = rng.standard_normal((4, 3))

    def loss(params, x):
        return jnp.sum(model.apply(params, x) * weights)

    ours = model.apply(params, jnp.asarray(x))
    grads, grad_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    inputs = _torch_input(x)
    theirs = twin(inputs)
    (theirs * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=0, atol=1e-12)
    grad_theirs = inputs.grad.numpy()
    if x.ndim == 4:
        grad_theirs = grad_theirs.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(grad_x), grad_theirs, rtol=0, atol=1e-12)
    as_torch = fn.interop.params_to_numpy_state_dict(model, grads)
    for key, parameter in twin.named_parameters():
        np.testing.assert_allclose(as_torch[key], parameter.grad.numpy(), rtol=0, atol=1e-12, err_msg=key)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize("case", sorted(CASES))
def test_init_draws_from_pytorchs_bounds_and_state_dicts_round_trip(case):
    model = _net(case)
    params = model.init(jax.random.key(0))
    torch.manual_seed(0)
    twin = torch_models.twin(model)
    theirs = {k: v.numpy() for k, v in twin.state_dict().items()}
    ours = fn.interop.params_to_numpy_state_dict(model, params)
    assert list(ours) == list(theirs)                            # PyTorch's names, in its order
    assert model.param_count == sum(p.numel() for p in twin.parameters())
    specs = dict(model.layers)
    for key in ours:
        assert ours[key].shape == theirs[key].shape, key
        bound = 1.0 / np.sqrt(specs[key.rsplit(".", 1)[0]].fan_in)   # funcnets' bound for this layer
        for drawn in (ours[key], theirs[key]):                        # PyTorch draws within it too
            assert np.abs(drawn).max() <= bound * (1 + 1e-6), key
            if drawn.size >= 100:                                     # and both fill [-b, b]
                assert np.abs(drawn).max() >= 0.9 * bound, key
    twin.load_state_dict(fn.interop.params_to_torch(model, params))
    back = fn.interop.params_from_torch(model, twin.state_dict())
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))


def test_activation_gradients_at_zero_are_pytorchs(x64):
    x = np.array([-2.0, -0.0, 0.0, 1e-3, 3.0])
    pairs = [(L.ReLU(), tnn.ReLU()), (L.LeakyReLU(0.1), tnn.LeakyReLU(0.1)), (L.ELU(0.5), tnn.ELU(0.5)),
             (L.GELU(), tnn.GELU()), (L.SiLU(), tnn.SiLU()), (L.Sigmoid(), tnn.Sigmoid()), (L.Tanh(), tnn.Tanh())]
    for ours, theirs in pairs:
        grad = jax.vmap(jax.grad(lambda v, spec=ours: L.activation(spec, v)))(jnp.asarray(x))
        inputs = torch.from_numpy(x).requires_grad_(True)
        theirs(inputs).sum().backward()
        np.testing.assert_allclose(np.asarray(grad), inputs.grad.numpy(), rtol=0, atol=1e-15, err_msg=str(ours))


@pytest.mark.parametrize("spec_type", [L.RNN, L.LSTM, L.GRU])
def test_recurrent_layers_time_major_as_nn_modules_are(spec_type, x64):
    """``batch_first=False`` in the functional form: ``(T, B, F) -> (T, B, dirs * H)``."""
    spec = spec_type(3, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    theirs = getattr(tnn, spec_type.__name__)(3, 5, num_layers=2, bidirectional=True).double()
    params = {name: jnp.asarray(value.detach().numpy()) for name, value in theirs.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((7, 2, 3))
    expected = theirs(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(np.asarray(L.recurrent(spec, params, jnp.asarray(x))), expected, rtol=0, atol=1e-12)


def test_composed_nets_match_modules_written_by_hand(x64):
    """LeNet-5 (Tanh, mean-pooling) and a row-by-row LSTM, as a PyTorch user writes them."""

    class LeNet5(tnn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = tnn.Conv2d(1, 6, 5, padding=2), tnn.Conv2d(6, 16, 5)
            self.f1, self.f2, self.f3 = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, 10)

        def forward(self, x):
            x = torch.nn.functional.avg_pool2d(torch.tanh(self.c1(x)), 2)
            x = torch.nn.functional.avg_pool2d(torch.tanh(self.c2(x)), 2)
            x = torch.tanh(self.f2(torch.tanh(self.f1(torch.flatten(x, 1)))))
            return self.f3(x)

    class RowLSTM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = tnn.LSTM(28, 16, batch_first=True)
            self.fc = tnn.Linear(16, 10)

        def forward(self, x):
            out, _ = self.rnn(x)
            return torch.log_softmax(self.fc(out[:, -1]), dim=1)

    lenet = fn.models.sequential(
        ("c1", L.Conv2d(1, 6, 5, padding=2)), L.Tanh(), L.AvgPool2d(2), ("c2", L.Conv2d(6, 16, 5)), L.Tanh(),
        L.AvgPool2d(2), L.Flatten(), ("f1", L.Linear(400, 120)), L.Tanh(), ("f2", L.Linear(120, 84)), L.Tanh(),
        ("f3", L.Linear(84, 10)), input_shape=(28, 28, 1), name="lenet5")
    rows = fn.models.sequential(("rnn", L.LSTM(28, 16, batch_first=True)), L.Last(), ("fc", L.Linear(16, 10)),
                                L.LogSoftmax(), input_shape=(28, 28), name="row_lstm")
    x = np.random.default_rng(0).standard_normal((3, 28, 28, 1))
    for model, theirs, torch_x in ((lenet, LeNet5(), torch_models.nchw(x)), (rows, RowLSTM(), x[..., 0])):
        torch.manual_seed(0)
        theirs = theirs.double()
        assert model.param_count == sum(p.numel() for p in theirs.parameters())
        params = fn.interop.params_from_torch(model, theirs.state_dict())
        expected = theirs(torch.from_numpy(np.ascontiguousarray(torch_x))).detach().numpy()
        np.testing.assert_allclose(np.asarray(model.apply(params, jnp.asarray(x))), expected, rtol=0, atol=1e-12)
    assert lenet.param_count == 61706


def test_recurrent_dropout_follows_the_key_and_is_off_in_eval():
    model = fn.models.sequential(("rnn", L.GRU(5, 4, num_layers=2, dropout=0.5, batch_first=True)), L.Last(),
                                 ("fc", L.Linear(4, 3)), input_shape=(6, 5))
    assert model.dropout == (0.5,) and model.needs_rng
    params = model.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 5)), jnp.float32)
    a = model.apply(params, x, train=True, rng=jax.random.key(1))
    assert np.array_equal(a, model.apply(params, x, train=True, rng=jax.random.key(1)))
    assert not np.array_equal(a, model.apply(params, x, train=True, rng=jax.random.key(2)))
    assert not np.array_equal(a, model.apply(params, x))
    state = fn.create_train_state(model, fn.optim.adam(lr=1e-2), jax.random.key(0))
    labels = jnp.asarray([0, 1], jnp.int32)
    state, metrics = fn.train_epoch(state, jnp.tile(x, (8, 1, 1)), jnp.tile(labels, 8), batch_size=4,
                                    rng=jax.random.key(3))
    assert metrics["loss"].shape == (4,) and np.isfinite(metrics["loss"]).all()


@pytest.mark.parametrize("entries, input_shape, message", [
    ([("up", L.ConvTranspose2d(3, 2, 3)), L.Flatten(), L.Linear(2, 2)], (4, 4, 2),
     r"layer 'up' \(ConvTranspose2d\) expects an \(H, W, 3\) map, gets shape \(4, 4, 2\)"),
    ([("up", L.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)), L.Flatten(), L.Linear(2, 2)], (4, 4, 2),
     r"'up' \(ConvTranspose2d\) output_padding must be >= 0 and smaller than stride 2"),
    ([("rnn", L.LSTM(10, 4, batch_first=True)), L.Last(), L.Linear(4, 2)], (6, 5),
     r"layer 'rnn' \(LSTM\) expects a \(T, 10\) sequence, gets shape \(6, 5\)"),
    ([("rnn", L.LSTM(5, 4)), L.Last(), L.Linear(4, 2)], (6, 5), r"'rnn' \(LSTM\) needs batch_first=True"),
    ([("rnn", L.RNN(5, 4, nonlinearity="sigmoid", batch_first=True)), L.Last(), L.Linear(4, 2)], (6, 5),
     r"nonlinearity must be 'tanh' or 'relu'"),
    ([L.Conv2d(1, 2, 3), ("last", L.Last()), L.Linear(2, 2)], (6, 6, 1),
     r"layer 'last' \(Last\) expects a \(T, features\) sequence, gets shape \(4, 4, 2\)"),
    ([L.Conv2d(1, 2, 3), ("pool", L.AvgPool2d(2, padding=2)), L.Flatten(), L.Linear(2, 2)], (6, 6, 1),
     r"layer 'pool' \(AvgPool2d\) padding 2 must be at most half the kernel size 2"),
    ([L.Conv2d(1, 2, 3), ("pool", L.MinPool2d(5)), L.Flatten(), L.Linear(2, 2)], (6, 6, 1),
     r"layer 'pool' \(MinPool2d\) a 5x5 pool is larger than its input of shape \(4, 4, 2\)"),
    ([L.Linear(4, 4), ("act", L.GELU("erf")), L.Linear(4, 2)], (4,), r"approximate must be 'none' or 'tanh'"),
    ([L.Linear(4, 4), ("sm", L.Softmax(dim=2)), L.Linear(4, 2)], (4,), r"dim 2 is out of range for a 2-D input"),
    ([L.Conv2d(1, 2, 3), ("ap", L.AdaptiveAvgPool2d(0)), L.Flatten(), L.Linear(2, 2)], (6, 6, 1),
     r"output_size must be a positive int"),
])
def test_shapes_that_do_not_fit_fail_when_built_naming_the_layer(entries, input_shape, message):
    with pytest.raises(ValueError, match=message):
        fn.models.sequential(*entries, input_shape=input_shape)


def test_a_row_model_takes_one_channel_images_as_rows():
    model = fn.models.sequential(("rnn", L.RNN(28, 8, batch_first=True)), L.Last(), ("fc", L.Linear(8, 10)),
                                 L.LogSoftmax(), input_shape=(28, 28))
    params = model.init(jax.random.key(0))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 28, 28, 1)), jnp.float32)
    np.testing.assert_array_equal(model.apply(params, images), model.apply(params, images[..., 0]))
    with pytest.raises(ValueError, match=r"must have shape \(B, 28, 28\)"):
        model.apply(params, jnp.zeros((2, 28, 28, 3)))
