"""The tutorial nets: shapes, parameter counts, PyTorch init, forward parity, interop
(also with state dicts saved by the tutorials' own code), dropout semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

import funcnets as fn
from conftest import count_compilations

torch = pytest.importorskip("torch")
from funcnets import torch_models  # noqa: E402

# PyTorch's own counts: sum(p.numel() for p in net.parameters())
PARAM_COUNTS = {"mnist_mlp": 79_510, "simple_net": 109_386, "mnist_cnn": 1_199_882, "mastering_cnn": 300_426,
                "cifar_cnn": 299_434}


def test_registry_lists_the_tutorial_nets():
    assert fn.models.names() == ["mnist_mlp", "simple_net", "mnist_cnn", "mastering_cnn", "cifar_cnn"]


@pytest.mark.parametrize("name, options, count", [
    ("mnist_mlp", {"n_hidden": 200}, 784 * 200 + 200 + 200 * 10 + 10),
    ("mnist_mlp", {"n_in": 64, "n_hidden": 32, "n_out": 3}, 64 * 32 + 32 + 32 * 3 + 3),
    ("simple_net", {"input_size": 64, "output_size": 3}, 64 * 128 + 128 + 128 * 64 + 64 + 64 * 3 + 3),
    ("cifar_cnn", {"output_dim": 100}, 299_434 - 330 + 32 * 100 + 100),
    ("mnist_cnn", {"dropout": (0.1, 0.2)}, 1_199_882),
    ("mastering_cnn", {"dropout": (0.0, 0.5)}, 300_426),
])
def test_tutorial_nets_take_their_tutorials_arguments(name, options, count, x64):
    """``SimpleNeuralNet(n_in, n_hidden, n_out)``, ``SimpleNet(input_size, output_size)``,
    ``Net(output_dim)``: counts, the twin built with the same arguments, float64 forward parity."""
    model = fn.models.get(name, **options)
    net = torch_models.twin(model).double().eval()
    assert model.param_count == count == sum(p.numel() for p in net.parameters())
    assert model.num_classes == dict(model.options).get("n_out", dict(model.options).get(
        "output_size", dict(model.options).get("output_dim", 10)))
    params = fn.interop.params_from_torch(model, net.state_dict())
    x = np.random.default_rng(0).standard_normal((4, *model.input_shape))
    theirs = net(torch.from_numpy(torch_models.nchw(x))).detach().numpy()
    assert np.abs(np.asarray(model.apply(params, jnp.asarray(x))) - theirs).max() <= 1e-12


@pytest.mark.parametrize("name", fn.models.names())
def test_equal_nets_are_equal_models(name):
    """Models are static data of the jitted steps: two builds of one net must be equal
    (and hash alike), or every build would compile its steps and init again."""
    assert fn.models.get(name) == fn.models.get(name) and hash(fn.models.get(name)) == hash(fn.models.get(name))
    L = fn.layers
    build = lambda: fn.models.sequential(L.Flatten(), L.Linear(784, 10), input_shape=(28, 28, 1))  # noqa: E731
    assert build() == build()


def test_bad_tutorial_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mnist_mlp: n_hidden must be a positive integer, got 0"):
        fn.models.get("mnist_mlp", n_hidden=0)
    with pytest.raises(ValueError, match="cifar_cnn: output_dim must be a positive integer, got 2.5"):
        fn.models.get("cifar_cnn", output_dim=2.5)
    with pytest.raises(ValueError, match=r"mastering_cnn: dropout must be 2 rate\(s\) in \[0, 1\)"):
        fn.models.get("mastering_cnn", dropout=(0.1,))
    with pytest.raises(TypeError, match="does not take options"):
        fn.models.get("simple_net", n_hidden=10)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'lenet'.*mnist_mlp"):
        fn.models.get("lenet")
    with pytest.raises(TypeError, match="does not take options"):
        fn.models.get("mnist_mlp", dropout=(0.1, 0.1))


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_count_and_output_shape(name, getkey):
    model = fn.models.get(name)
    params = model.init(getkey())
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == PARAM_COUNTS[name]
    assert model.param_count == PARAM_COUNTS[name]
    assert sum(p.numel() for p in torch_models.build(name).parameters()) == PARAM_COUNTS[name]
    out = model.apply(params, jnp.zeros((3, *model.input_shape)))
    assert out.shape == (3, 10) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_param_names_mirror_torch_state_dict(name, getkey):
    model = fn.models.get(name)
    params = model.init(getkey())
    ours = [f"{layer}.{'weight' if leaf == 'kernel' else leaf}" for layer in params for leaf in params[layer]]
    assert sorted(ours) == sorted(torch_models.build(name).state_dict())


def _forward_gap(name, dtype):
    model = fn.models.get(name)
    net = torch_models.build(name).to(dtype).eval()
    params = fn.interop.params_from_torch(model, net.state_dict())
    x = np.random.default_rng(0).standard_normal((8, *model.input_shape))
    x = x.astype(np.float64 if dtype == torch.float64 else np.float32)
    ours = np.asarray(model.apply(params, jnp.asarray(x)))
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    assert ours.dtype == x.dtype
    return np.abs(ours - theirs).max()


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_forward_matches_torch_float32(name):
    torch.manual_seed(0)
    assert _forward_gap(name, torch.float32) <= 1e-5


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_forward_matches_torch_float64(name, x64, layer_path):
    torch.manual_seed(0)
    assert _forward_gap(name, torch.float64) <= 1e-12


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_init_distribution_matches_torch(name):
    """Per layer, over several draws: every value inside PyTorch's bound, and
    mean and std of U(-b, b) (0 and b/sqrt(3)) within 5 standard errors, for
    both funcnets and PyTorch's own init."""
    model = fn.models.get(name)
    draws = 4
    ours = [fn.interop.params_to_numpy_state_dict(model, model.init(jax.random.key(i))) for i in range(draws)]
    theirs = []
    for i in range(draws):
        torch.manual_seed(i)
        theirs.append({k: v.numpy() for k, v in torch_models.build(name).state_dict().items()})
    for layer, spec in model.layers:
        bound = 1 / np.sqrt(spec.fan_in)
        for suffix in ("weight", "bias"):
            key = f"{layer}.{suffix}"
            for source in (ours, theirs):
                values = np.concatenate([d[key].ravel() for d in source])
                n, std = values.size, bound / np.sqrt(3)
                assert np.abs(values).max() <= np.float32(bound), key  # bound rounded to float32
                assert abs(values.mean()) <= 5 * std / np.sqrt(n), key
                # the sample variance of U(-b, b) has std sqrt(4/45) b^2 / sqrt(n)
                assert abs(values.var() - std**2) <= 5 * np.sqrt(4 / 45) * bound**2 / np.sqrt(n), key
                if n >= 1000:  # uniform, not normal: the range is nearly filled
                    assert np.abs(values).max() >= 0.99 * bound, key


def test_init_is_deterministic_and_takes_dtype(x64):
    model = fn.models.get("mnist_mlp")
    a, b = model.init(jax.random.key(0)), model.init(jax.random.key(0))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(model.init(jax.random.key(0), jnp.float64)))


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_torch_round_trip_is_exact(name):
    model = fn.models.get(name)
    state_dict = torch_models.build(name).state_dict()
    back = fn.interop.params_to_torch(model, fn.interop.params_from_torch(model, state_dict))
    assert list(back) == list(state_dict)
    assert all(torch.equal(back[k], state_dict[k]) for k in state_dict)
    params = model.init(jax.random.key(3))
    again = fn.interop.params_from_torch(model, fn.interop.params_to_torch(model, params))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)))


def test_ported_params_load_into_torch_and_agree():
    model = fn.models.get("mnist_cnn")
    params = model.init(jax.random.key(5))
    net = torch_models.build("mnist_cnn").eval()
    net.load_state_dict(fn.interop.params_to_torch(model, params))
    x = np.random.default_rng(1).standard_normal((4, 28, 28, 1)).astype(np.float32)
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    assert np.abs(np.asarray(model.apply(params, jnp.asarray(x))) - theirs).max() <= 1e-5


def test_bad_state_dict_names_the_problem():
    model = fn.models.get("mnist_mlp")
    state_dict = dict(torch_models.build("mnist_mlp").state_dict())
    del state_dict["linear2.bias"]
    with pytest.raises(ValueError, match=r"missing \[.linear2.bias.\]"):
        fn.interop.params_from_torch(model, state_dict)
    wrong = {k: torch.zeros(v.shape[::-1]) for k, v in torch_models.build("mnist_mlp").state_dict().items()}
    with pytest.raises(ValueError, match="shapes do not match mnist_mlp.*linear1.weight"):
        fn.interop.params_from_torch(model, wrong)


@pytest.mark.parametrize("x, error, match", [
    (np.zeros((2, 28, 28)), ValueError, r"shape \(B, 28, 28, 1\) or \(B, 784\), got \(2, 28, 28\)"),
    (np.zeros((2, 28, 28, 3), np.float32), ValueError, "got \\(2, 28, 28, 3\\)"),
    (np.zeros((2, 1, 28, 28), np.float32), ValueError, "looks like NCHW"),
    (np.zeros((2, 28, 28, 1), np.uint8), TypeError, "floating point"),
    ([[0.0]], TypeError, "must be an array"),
])
def test_apply_rejects_bad_input_clearly(x, error, match):
    model = fn.models.get("mnist_mlp") if "784" in match else fn.models.get("mnist_cnn")
    params = model.init(jax.random.key(0))
    with pytest.raises(error, match=match):
        model.apply(params, x)


def test_mlp_takes_flat_input_and_cnn_needs_rng_for_dropout():
    mlp = fn.models.get("mnist_mlp")
    params = mlp.init(jax.random.key(0))
    x = jnp.ones((2, 28, 28, 1))
    assert np.allclose(mlp.apply(params, x), mlp.apply(params, x.reshape(2, 784)))
    cnn = fn.models.get("mnist_cnn")
    with pytest.raises(ValueError, match="needs rng"):
        cnn.apply(cnn.init(jax.random.key(0)), x, train=True)


def test_dropout_differs_between_keys_but_not_at_eval():
    model = fn.models.get("mnist_cnn")
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    a = model.apply(params, x, train=True, rng=jax.random.key(2))
    b = model.apply(params, x, train=True, rng=jax.random.key(3))
    assert not np.allclose(a, b)
    assert np.array_equal(model.apply(params, x, train=True, rng=jax.random.key(2)), a)
    assert np.array_equal(model.apply(params, x), model.apply(params, x, rng=jax.random.key(2)))
    off = fn.models.get("mnist_cnn", dropout=(0.0, 0.0))
    assert np.array_equal(off.apply(params, x, train=True, rng=jax.random.key(2)), model.apply(params, x))


def test_mnist_cnn_draws_both_dropout_masks_at_once():
    """One uniform draw of (B, 12, 12, 64) + (B, 128) numbers: the first part masks
    the pooled features at rate 0.25, the rest fc1's outputs at rate 0.5."""
    model = fn.models.get("mnist_cnn")
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    rng = jax.random.key(2)
    unit = fn.layers.uniform_draws(rng, 4 * 12 * 12 * 64 + 4 * 128)
    first = 4 * 12 * 12 * 64
    h = jax.nn.relu(fn.layers.conv2d(params["conv2"], jax.nn.relu(fn.layers.conv2d(params["conv1"], x))))
    h = fn.layers.dropout_from_unit(fn.layers.max_pool2d(h), 0.25, unit[:first])
    h = jax.nn.relu(fn.layers.linear(params["fc1"], h.reshape(4, -1)))
    h = fn.layers.dropout_from_unit(h, 0.5, unit[first:])
    expected = jax.nn.log_softmax(fn.layers.linear(params["fc2"], h), axis=-1)
    np.testing.assert_allclose(model.apply(params, x, train=True, rng=rng), expected, rtol=1e-6, atol=1e-6)
    kept = np.asarray(unit[:first] < 0.75).mean(), np.asarray(unit[first:] < 0.5).mean()
    assert abs(kept[0] - 0.75) < 0.01 and abs(kept[1] - 0.5) < 0.05, kept


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 4, 4, 1), (3, 13, 13, 2)])
def test_max_pool_matches_torch_forward_and_backward_with_ties(shape, x64, layer_path):
    """Small integers make many ties: PyTorch sends a window's gradient to its first
    maximum (row-major), and so must funcnets; odd sizes floor as F.max_pool2d does."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=shape).astype(np.float64)
    grad = rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    pooled, vjp = jax.vjp(fn.layers.max_pool2d, jnp.asarray(x))
    (grad_x,) = vjp(jnp.asarray(grad))
    x_torch = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    pooled_torch = torch.nn.functional.max_pool2d(x_torch, 2)
    pooled_torch.backward(torch.tensor(grad.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(pooled), pooled_torch.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(grad_x), x_torch.grad.numpy().transpose(0, 2, 3, 1))


def test_init_is_one_draw_cut_in_layer_order_and_one_program():
    """``model.init`` draws ``param_count`` uniforms once and cuts them kernel,
    bias, layer by layer (one random program to compile, not one per tensor)."""
    model = fn.models.get("simple_net")
    key = jax.random.key(11)
    params = model.init(key)
    unit = jax.random.uniform(key, (model.param_count,))
    start = 0
    for name, spec in model.layers:
        size = fn.layers.param_count(spec)
        expected = fn.layers.init_from_unit(spec, unit[start:start + size])
        for leaf in ("kernel", "bias"):
            # equal to float32 rounding: the jitted init may fuse 2b*u - b into one multiply-add
            np.testing.assert_allclose(params[name][leaf], expected[leaf], rtol=0, atol=1e-7)
        start += size
    assert start == model.param_count
    with count_compilations() as counts:
        model.init(jax.random.key(12))
    assert counts["compiled"] == 0   # a new key reuses the compiled program


@pytest.mark.parametrize("shape, kernel_size", [((3, 4, 4, 5), 3), ((2, 7, 6, 3), 3),
                                                 ((3, 7, 6, 1), 3), ((2, 5, 4, 1), 2)])
def test_conv2d_values_and_gradients_match_torch(shape, kernel_size, x64, layer_path):
    """Each of conv2d's ways, against ``F.conv2d`` in float64: XLA's convolution
    on the plain path; on the CPU's fast paths, an output smaller
    than the kernel (4x4 -> 2x2, as cifar_cnn's conv4) runs as a matmul over
    `patches`, one input channel (mnist_cnn's conv1) as `single_channel_conv2d`'s
    sum of shifted windows, the rest through XLA's convolution; the bias
    gradient is `add_bias`'s matrix-vector product or, with one input channel,
    a row of the kernel gradient's matmul."""
    rng = np.random.default_rng(0)
    in_channels, out_channels = shape[-1], 4
    x = rng.normal(size=shape)
    kernel = rng.normal(size=(kernel_size, kernel_size, in_channels, out_channels))
    bias = rng.normal(size=out_channels)
    params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
    y, vjp = jax.vjp(fn.layers.conv2d, params, jnp.asarray(x))
    grad = rng.normal(size=y.shape)
    grad_params, grad_x = vjp(jnp.asarray(grad))

    x_t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    weight_t = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    bias_t = torch.tensor(bias, requires_grad=True)
    y_t = torch.nn.functional.conv2d(x_t, weight_t, bias_t)
    y_t.backward(torch.tensor(grad.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, y_t.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_x, x_t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_params["kernel"], weight_t.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_params["bias"], bias_t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_patches_are_conv2d_windows_in_kernel_order(x64):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 5, 3)))
    kernel = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 3, 4)))
    windows = fn.cpu.patches(x, 3, 2)
    assert windows.shape == (2, 4, 4, 3 * 2 * 3)
    direct = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(windows @ kernel.reshape(-1, 4), direct, rtol=1e-12, atol=1e-12)


def test_add_bias_gradient_keeps_bfloat16_and_sums_exactly():
    """A bfloat16 activation's bias gradient is bfloat16, summed at float32
    precision (asked for with ``preferred_element_type``): 32,768 ones summed
    in bfloat16 would stall at 256."""
    y = jnp.zeros((128, 16, 16, 1), jnp.bfloat16)
    bias = jnp.zeros((1,), jnp.bfloat16)
    _, vjp = jax.vjp(fn.cpu.add_bias, y, bias)
    grad_y, grad_bias = vjp(jnp.ones_like(y))
    assert grad_bias.dtype == jnp.bfloat16 and grad_y.dtype == jnp.bfloat16
    assert float(grad_bias[0]) == 32_768.0   # 2**15, exact in bfloat16


@pytest.mark.parametrize("call, match", [
    (lambda: fn.layers.split_sizes(jnp.zeros(10), [3, 4]), "sum\\(sizes\\) = 7"),
    (lambda: fn.layers.split_sizes(jnp.zeros((2, 5)), [5, 5]), "1-D"),
    (lambda: fn.cpu.patches(jnp.zeros((2, 4, 4, 3)), 5, 3), "H >= kh = 5"),
    (lambda: fn.cpu.patches(jnp.zeros((4, 4, 3)), 3, 3), "\\(B, H, W, C\\)"),
    (lambda: fn.cpu.add_bias(jnp.zeros((2, 3, 3, 8)), jnp.zeros(4)), "bias must have shape \\(8,\\)"),
    (lambda: fn.cpu.single_channel_conv2d(jnp.zeros((2, 5, 5, 3)), jnp.zeros((3, 3, 1, 4)), jnp.zeros(4)),
     "x must be \\(B, H, W, 1\\)"),
    (lambda: fn.cpu.single_channel_conv2d(jnp.zeros((2, 5, 5, 1)), jnp.zeros((3, 3, 1, 4)), jnp.zeros(3)),
     "bias must have shape \\(4,\\)"),
    (lambda: fn.cpu.single_channel_conv2d(jnp.zeros((2, 2, 5, 1)), jnp.zeros((3, 3, 1, 4)), jnp.zeros(4)),
     "does not fit"),
    (lambda: fn.layers.dropout_from_unit(jnp.zeros((2, 5)), 0.5, jnp.zeros(9)), "x.size = 10"),
    (lambda: fn.layers.uniform_draws(jax.random.key(0), -1), "n must be a non-negative integer"),
    (lambda: fn.layers.uniform_draws(jax.random.key(0), 2.5), "n must be a non-negative integer"),
])
def test_layer_helpers_reject_mismatched_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10_000])
def test_uniform_draws_are_threefry_words_as_floats_in_0_1(n, layer_path):
    """With a Threefry key: the hash of the counters 0..n-1 in pairs, each word's
    top 23 bits as jax.random.uniform maps them; legacy raw keys give the same;
    an rbg key falls back to jax.random.uniform."""
    key = jax.random.key(5)
    draws = fn.layers.uniform_draws(key, n)
    words = np.asarray(threefry_2x32(jax.random.key_data(key), jnp.arange(n, dtype=jnp.uint32)))
    assert draws.dtype == jnp.float32 and draws.shape == (n,)
    np.testing.assert_array_equal(draws, (words >> 9).astype(np.float32) / 2.0**23)
    np.testing.assert_array_equal(fn.layers.uniform_draws(jax.random.PRNGKey(5), n), draws)
    np.testing.assert_array_equal(jax.jit(fn.layers.uniform_draws, static_argnums=1)(key, n), draws)
    rbg = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(fn.layers.uniform_draws(rbg, n), jax.random.uniform(rbg, (n,)))
    if n == 10_000:
        assert 0.0 <= float(draws.min()) and float(draws.max()) < 1.0
        assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float((draws < 0.25).mean()) - 0.25) < 0.015
        assert not np.array_equal(fn.layers.uniform_draws(jax.random.key(6), n), draws)


def test_threefry2x32_hash_is_jaxs_bit_for_bit():
    """Random words and keys, the extremes included, hash as JAX's primitive does
    (``threefry_2x32`` hashes the first half of its counts with the second)."""
    random_words = np.random.default_rng(0).integers(0, 2**32, size=(4, 1000), dtype=np.uint32)
    cases = [(0, 0, 0, 0), (2**32 - 1,) * 4,                        # all-zero and all-one words
             (random_words[0, 5], random_words[1, 5], random_words[2], random_words[3])]
    for key0, key1, x0, x1 in cases:
        x0, x1 = np.broadcast_to(np.uint32(x0), (1000,)), np.broadcast_to(np.uint32(x1), (1000,))
        expected = np.asarray(threefry_2x32(jnp.asarray([key0, key1], jnp.uint32), jnp.concatenate([x0, x1])))
        hashed = jax.jit(fn.cpu.threefry2x32_hash)(jnp.uint32(key0), jnp.uint32(key1), x0, x1)
        np.testing.assert_array_equal(np.concatenate([np.asarray(h) for h in hashed]), expected)


def test_threefry2x32_hash_rejects_other_words():
    words = jnp.zeros(3, jnp.uint32)
    with pytest.raises(TypeError, match="must be uint32 scalars"):
        fn.cpu.threefry2x32_hash(jnp.uint32(1), jnp.uint32(2), words.astype(jnp.int32), words)
    with pytest.raises(TypeError, match="must be uint32 scalars"):
        fn.cpu.threefry2x32_hash(words, jnp.uint32(2), words, words)
    with pytest.raises(ValueError, match="x0 and x1 must have the same shape"):
        fn.cpu.threefry2x32_hash(jnp.uint32(1), jnp.uint32(2), words, words[:2])


def test_uniform_draws_rejects_a_non_key():
    with pytest.raises(TypeError, match="uniform_draws: rng must be a PRNG key"):
        fn.layers.uniform_draws(jnp.zeros(3), 5)


def test_dropout_draws_its_own_mask_and_is_the_identity_at_eval():
    x = jnp.ones((200, 50))
    key = jax.random.key(3)
    assert fn.layers.dropout(x, 0.5, key, train=False) is x
    dropped = fn.layers.dropout(x, 0.25, key, train=True)
    expected = fn.layers.dropout_from_unit(x, 0.25, fn.layers.uniform_draws(key, x.size))
    np.testing.assert_array_equal(dropped, expected)
    assert set(np.unique(np.asarray(dropped))) == {0.0, np.float32(1 / 0.75)}
    assert abs(float((dropped > 0).mean()) - 0.75) < 0.02


# --- the tutorials' own code --------------------------------------------------------------
# Each class below is written as its tutorial writes it (modern PyTorch: super().__init__()),
# independently of funcnets.torch_models: a state_dict it saves must load into funcnets.

class TutorialSimpleNeuralNet(torch.nn.Module):   # "A Neural Net in PyTorch"
    def __init__(self, n_in, n_hidden, n_out):
        super().__init__()
        self.linear1 = torch.nn.Linear(n_in, n_hidden)
        self.linear2 = torch.nn.Linear(n_hidden, n_out)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = torch.nn.functional.relu(self.linear1(x))
        return torch.nn.functional.log_softmax(self.linear2(x), dim=-1)


class TutorialConvNet(torch.nn.Module):   # "Mastering PyTorch" ch. 1, mnist_pytorch.ipynb
    def __init__(self):
        super().__init__()
        self.cn1 = torch.nn.Conv2d(1, 16, 3, 1)
        self.cn2 = torch.nn.Conv2d(16, 32, 3, 1)
        self.dp1 = torch.nn.Dropout2d(0.10)
        self.dp2 = torch.nn.Dropout2d(0.25)
        self.fc1 = torch.nn.Linear(4608, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.nn.functional.relu(self.cn1(x))
        x = torch.nn.functional.relu(self.cn2(x))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = self.dp1(x)
        x = torch.flatten(x, 1)
        x = torch.nn.functional.relu(self.fc1(x))
        x = self.dp2(x)
        return torch.nn.functional.log_softmax(self.fc2(x), dim=1)


class TutorialCifarNet(torch.nn.Module):   # "Deep Learning Deep Dive", luspr/deep-learning-deep-dive
    def __init__(self, output_dim):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 3), torch.nn.ReLU(),
            torch.nn.Conv2d(128, 128, 3), torch.nn.ReLU(), torch.nn.Conv2d(128, 64, 3),
            torch.nn.AdaptiveAvgPool2d(1))
        self.fc = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(),
                                      torch.nn.Linear(32, output_dim))

    def forward(self, x):
        x = self.conv.forward(x)
        x = x.view(x.shape[0], 64)
        return self.fc.forward(x)


@pytest.mark.filterwarnings("ignore:dropout2d. Received a 2-D input")   # the book's dp2, as it ran
@pytest.mark.parametrize("name, tutorial_net", [
    ("mnist_mlp", lambda: TutorialSimpleNeuralNet(784, 100, 10)),
    ("mastering_cnn", TutorialConvNet),
    ("cifar_cnn", lambda: TutorialCifarNet(10)),
])
def test_a_state_dict_saved_by_the_tutorials_code_loads(name, tutorial_net, tmp_path, x64):
    torch.manual_seed(0)
    net = tutorial_net().double().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    model = fn.models.get(name)
    params = fn.interop.params_from_torch(model, torch.load(tmp_path / "net.pt"))
    assert sorted(params) == sorted({key.rsplit(".", 1)[0] for key in net.state_dict()})
    x = np.random.default_rng(0).standard_normal((4, *model.input_shape))
    theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    assert np.abs(np.asarray(model.apply(params, jnp.asarray(x))) - theirs).max() <= 1e-12
    assert torch_models.build(name).load_state_dict(net.state_dict())   # and into the twin


def test_dropout2d_zeroes_whole_channels(getkey):
    x = jnp.ones((16, 12, 12, 32))
    y = np.asarray(fn.layers.dropout2d(x, 0.25, getkey(), train=True))
    per_channel = y.reshape(16, 144, 32)
    assert (per_channel.min(axis=1) == per_channel.max(axis=1)).all()   # each channel all kept or all zero
    assert set(np.unique(y).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
    dropped = (per_channel[:, 0, :] == 0).mean()
    assert abs(dropped - 0.25) < 5 * np.sqrt(0.25 * 0.75 / (16 * 32))
    assert fn.layers.dropout2d(x, 0.25, None, train=False) is x
    with pytest.raises(ValueError, match=r"NHWC map \(B, H, W, C\), got shape \(16, 64\)"):
        fn.layers.dropout2d(jnp.ones((16, 64)), 0.25, getkey(), train=True)


@pytest.mark.parametrize("name", ["mastering_cnn", "cifar_cnn"])
def test_dropout_draws_by_key_and_eval_is_deterministic(name, getkey):
    model = fn.models.get(name)
    params = model.init(getkey())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, *model.input_shape)), jnp.float32)
    key = getkey()
    a = model.apply(params, x, train=True, rng=key)
    assert np.array_equal(a, model.apply(params, x, train=True, rng=key))
    assert not np.array_equal(a, model.apply(params, x, train=True, rng=getkey()))
    assert np.array_equal(model.apply(params, x), model.apply(params, x))
    assert not np.array_equal(a, model.apply(params, x))
    off = fn.models.get(name, dropout=(0.0,) * len(model.dropout) if name != "cifar_cnn" else 0.0)
    assert np.array_equal(off.apply(params, x, train=True, rng=key), model.apply(params, x))
