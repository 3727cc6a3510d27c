"""Layers as pure functions over parameter dicts, initialised as PyTorch does.

Each parameterised layer is described by a small spec (`Linear`, `Conv2d`)
that knows its shapes, its PyTorch default init and how its parameters map to
and from a PyTorch ``state_dict``. The forward maths are plain functions
(`linear`, `conv2d`, `max_pool2d`, `dropout`) on NHWC arrays.

Layouts (JAX-native, so the forward needs no transposes):

=========  ==========================  ==============================
layer      funcnets ``kernel``          PyTorch ``weight``
=========  ==========================  ==============================
Linear     (in_features, out_features)  (out_features, in_features)
Conv2d     (kh, kw, in_ch, out_ch) HWIO (out_ch, in_ch, kh, kw) OIHW
=========  ==========================  ==============================

PyTorch's default init (``reset_parameters`` of ``nn.Linear``/``nn.Conv2d``)
is ``kaiming_uniform_(weight, a=sqrt(5))``, i.e. with gain
``sqrt(2 / (1 + a^2)) = sqrt(1/3)`` and bound ``gain * sqrt(3 / fan_in)``::

    weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

with ``fan_in = in_features`` (Linear) or ``in_ch * kh * kw`` (Conv2d). Flax's
defaults (lecun-normal kernels, zero biases) differ; these do not.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]


def param_count(spec: Layer) -> int:
    """How many numbers ``spec``'s params hold (PyTorch's ``numel`` summed)."""
    return sum(math.prod(shape) for shape in spec.param_shapes.values())


def init_from_unit(spec: Layer, unit: jax.Array) -> Params:
    """PyTorch's default init of ``spec`` from ``param_count(spec)`` draws of
    ``U[0, 1)`` (``unit``, 1-D): each param, in `param_shapes` order (kernel,
    then bias), takes the next ``prod(shape)`` draws ``u`` as ``max(-b, 2b*u - b)``
    with ``b = 1/sqrt(fan_in)``, the map of ``jax.random.uniform(minval=-b,
    maxval=b)``."""
    bound = 1.0 / math.sqrt(spec.fan_in)
    shapes = spec.param_shapes
    pieces = split_sizes(unit, [math.prod(shape) for shape in shapes.values()])
    return {name: jnp.maximum(-bound, piece * (2 * bound) - bound).reshape(shape)
            for (name, shape), piece in zip(shapes.items(), pieces)}


def split_sizes(unit: jax.Array, sizes: list[int]) -> list[jax.Array]:
    """``unit`` (1-D, ``sum(sizes)`` long) cut into consecutive pieces of ``sizes``."""
    if unit.ndim != 1 or unit.shape[0] != sum(sizes):
        raise ValueError(f"split_sizes: unit must be 1-D with sum(sizes) = {sum(sizes)} numbers, "
                         f"got shape {tuple(unit.shape)}")
    return jnp.split(unit, np.cumsum(sizes)[:-1])


def torch_default_init(spec: Layer, key: jax.Array, dtype=jnp.float32) -> Params:
    """``spec``'s params drawn as PyTorch's ``reset_parameters`` does (module
    docstring), from one ``jax.random.uniform`` draw (`init_from_unit`)."""
    return init_from_unit(spec, jax.random.uniform(key, (param_count(spec),), dtype))


class Linear(NamedTuple):
    """``nn.Linear(in_features, out_features)``: ``y = x @ kernel + bias``.

    ``torch_input_chw``: when the layer follows PyTorch's ``torch.flatten`` of
    an NCHW activation of shape ``(C, H, W)``, the row order of PyTorch's
    weight is C-major while funcnets flattens NHWC (C-minor). The rows are
    permuted once, when porting weights, so the forward pays nothing.
    """

    in_features: int
    out_features: int
    torch_input_chw: tuple[int, int, int] | None = None

    @property
    def fan_in(self) -> int:
        return self.in_features

    @property
    def torch_weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"kernel": (self.in_features, self.out_features), "bias": (self.out_features,)}

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        return torch_default_init(self, key, dtype)

    def kernel_from_torch(self, weight: np.ndarray) -> np.ndarray:
        if self.torch_input_chw is not None:
            c, h, w = self.torch_input_chw
            weight = weight.reshape(self.out_features, c, h, w).transpose(0, 2, 3, 1)
            weight = weight.reshape(self.out_features, self.in_features)
        return weight.T

    def kernel_to_torch(self, kernel: np.ndarray) -> np.ndarray:
        weight = kernel.T
        if self.torch_input_chw is not None:
            c, h, w = self.torch_input_chw
            weight = weight.reshape(self.out_features, h, w, c).transpose(0, 3, 1, 2)
            weight = weight.reshape(self.out_features, self.in_features)
        return weight


class Conv2d(NamedTuple):
    """``nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0)``.

    An ``H x W`` input gives ``((H + 2p - k) // s + 1) x ((W + 2p - k) // s + 1)``
    (PyTorch's default ``padding=0`` is XLA's ``'VALID'``).
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size**2

    @property
    def torch_weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel_size
        return {"kernel": (k, k, self.in_channels, self.out_channels), "bias": (self.out_channels,)}

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        return torch_default_init(self, key, dtype)

    def kernel_from_torch(self, weight: np.ndarray) -> np.ndarray:
        return weight.transpose(2, 3, 1, 0)

    def kernel_to_torch(self, kernel: np.ndarray) -> np.ndarray:
        return kernel.transpose(3, 2, 0, 1)


Layer = Linear | Conv2d


# --- layers without parameters, for composing nets (funcnets.models.sequential) -----------

class ReLU(NamedTuple):
    """``nn.ReLU()``."""


class MaxPool2d(NamedTuple):
    """``nn.MaxPool2d(kernel_size)`` (stride = kernel_size, floor): `max_pool2d`."""

    kernel_size: int = 2


class GlobalAvgPool2d(NamedTuple):
    """``nn.AdaptiveAvgPool2d(1)``: ``(B, H, W, C) -> (B, 1, 1, C)``, the mean over H and W."""


class Flatten(NamedTuple):
    """``nn.Flatten()``: ``(B, ...) -> (B, prod(...))`` (a following `Linear` is ported
    to PyTorch's NCHW flattening automatically)."""


class Dropout(NamedTuple):
    """``nn.Dropout(p)``: `dropout`."""

    p: float = 0.5


class Dropout2d(NamedTuple):
    """``nn.Dropout2d(p)`` on an NHWC map: `dropout2d` (whole channels)."""

    p: float = 0.5


class LogSoftmax(NamedTuple):
    """``nn.LogSoftmax(dim=1)``: log-probabilities over the classes."""


Stateless = ReLU | MaxPool2d | GlobalAvgPool2d | Flatten | Dropout | Dropout2d | LogSoftmax


def output_shape(spec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One example's shape after ``spec`` (``shape`` without the batch axis, NHWC);
    a ValueError saying why when ``spec`` cannot take ``shape``."""
    if isinstance(spec, Linear):
        if shape != (spec.in_features,):
            raise ValueError(f"expects {spec.in_features} input features, gets shape {shape}"
                             + (" (add a Flatten before it)" if len(shape) > 1 else ""))
        return (spec.out_features,)
    if isinstance(spec, Conv2d):
        if len(shape) != 3 or shape[-1] != spec.in_channels:
            raise ValueError(f"expects an (H, W, {spec.in_channels}) map, gets shape {shape}")
        h, w = (size + 2 * spec.padding - spec.kernel_size for size in shape[:2])
        if h < 0 or w < 0:
            raise ValueError(f"a {spec.kernel_size}x{spec.kernel_size} kernel (padding {spec.padding}) does not "
                             f"fit an input of shape {shape}")
        return (h // spec.stride + 1, w // spec.stride + 1, spec.out_channels)
    if isinstance(spec, (MaxPool2d, GlobalAvgPool2d, Dropout2d)):
        if len(shape) != 3:
            raise ValueError(f"expects an (H, W, C) map, gets shape {shape}")
        if isinstance(spec, MaxPool2d):
            if spec.kernel_size > min(shape[:2]):
                raise ValueError(f"a {spec.kernel_size}x{spec.kernel_size} pool is larger than its input of "
                                 f"shape {shape}")
            return (shape[0] // spec.kernel_size, shape[1] // spec.kernel_size, shape[2])
        return (1, 1, shape[2]) if isinstance(spec, GlobalAvgPool2d) else shape
    if isinstance(spec, Flatten):
        return (math.prod(shape),)
    if isinstance(spec, (ReLU, Dropout, LogSoftmax)):
        return shape
    raise TypeError(f"not a funcnets layer: {spec!r}")


def linear(params: Params, x: jax.Array) -> jax.Array:
    """``(B, in) -> (B, out)``: ``x @ kernel + bias``."""
    return x @ params["kernel"] + params["bias"][None, :]


def conv2d(params: Params, x: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """``(B, H, W, Cin) -> (B, H-k+1, W-k+1, Cout)``: cross-correlation, as PyTorch::

        y[b, h, w, o] = bias[o] + sum_{i, j, c} x[b, h+i, w+j, c] * kernel[i, j, c, o]

    With a ``stride`` or zero ``padding`` (on each side), XLA's convolution
    with those, plus the bias; the shapes below are for stride 1, no padding.

    Two shapes leave XLA's convolution:

    - one input channel (``mnist_cnn``'s conv1, ``mastering_cnn``'s cn1):
      `single_channel_conv2d`, the ``kh*kw`` shifted windows' weighted sum;
    - an output smaller than the kernel in both spatial dims (e.g. a 3x3
      kernel on a 4x4 map, 2x2 out): one matmul over its `patches` (im2col).
      For that shape XLA:CPU computes the input gradient as a convolution
      with the operands swapped, batch last, which took 2.5 ms of a 19 ms
      step of the earlier reconstruction of ``cifar_cnn`` (max-pools between
      its convs); the matmul's gradients are matmuls.

    Otherwise the bias is added by `add_bias`.
    """
    kernel = params["kernel"]
    kh, kw, in_channels, out_channels = kernel.shape
    if stride != 1 or padding != 0:
        y = jax.lax.conv_general_dilated(x, kernel, window_strides=(stride, stride),
                                         padding=((padding, padding), (padding, padding)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return add_bias(y, params["bias"])
    if in_channels == 1:
        return single_channel_conv2d(x, kernel, params["bias"])
    if x.shape[1] - kh + 1 < kh and x.shape[2] - kw + 1 < kw:
        y = patches(x, kh, kw) @ kernel.reshape(kh * kw * in_channels, out_channels)
    else:
        y = _xla_conv2d(x, kernel)
    return add_bias(y, params["bias"])


def _xla_conv2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def single_channel_conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`conv2d` of a one-channel input, ``(B, H, W, 1) -> (B, Ho, Wo, Cout)``, as
    the weighted sum of its ``kh*kw`` shifted windows ``x_ij = x[:, i:i+Ho, j:j+Wo, :]``::

        y = bias + sum_{i, j} x_ij * kernel[i, j, 0]          (broadcast over Cout)

    one elementwise pass that XLA fuses with the ReLU after it. Gradients, for
    an output gradient ``g`` flattened to ``G (B*Ho*Wo, Cout)``::

        [kernel; bias] grad = [X; 1] @ G      X: (kh*kw, B*Ho*Wo), row i*kw+j = x_ij

    one matmul for both (the last row of ones sums ``g`` for the bias,
    accumulated in at least float32); the input's gradient is XLA's, and is
    not computed when nothing needs it (a net's first layer).

    Why: XLA:CPU's convolution packs 9-long im2col rows for this shape, and
    its weight gradient transposes the output gradient first. ``mnist_cnn``'s
    two-core step went from 71.0 to 67.2 ms this way (interleaved A/B, median
    of 30 windows; in a later A/B, 49.7 -> 46.6 ms, and on one thread 83.7
    -> 78.7 ms). With three input channels (a CIFAR net's first conv, 27
    strided windows) the same way was slower (19.1 -> 23.4 ms), so it is kept
    to one.
    """
    _check_single_channel(x, kernel, bias)
    return _single_channel_forward(x, kernel, bias)


def _check_single_channel(x, kernel, bias):
    kh, kw, in_channels, out_channels = kernel.shape
    if in_channels != 1 or x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"single_channel_conv2d: x must be (B, H, W, 1) and kernel (kh, kw, 1, Cout), "
                         f"got x {tuple(x.shape)} and kernel {tuple(kernel.shape)}")
    if bias.shape != (out_channels,):
        raise ValueError(f"single_channel_conv2d: bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    if not (kh <= x.shape[1] and kw <= x.shape[2]):
        raise ValueError(f"single_channel_conv2d: a {kh}x{kw} kernel does not fit x of shape {tuple(x.shape)}")


def _shifted_windows(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
    """``[x[:, i:i+Ho, j:j+Wo, :] for i < kh for j < kw]``, row-major in ``(i, j)``."""
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]


def _single_channel_forward(x, kernel, bias):
    kh, kw, _, out_channels = kernel.shape
    taps = kernel.reshape(kh * kw, 1, 1, 1, out_channels)
    y = bias.reshape(1, 1, 1, out_channels)
    for tap, window in zip(taps, _shifted_windows(x, kh, kw)):
        y = y + window * tap
    return y


def _single_channel_vjp_forward(x, kernel, bias):
    return single_channel_conv2d(x, kernel, bias), (x, kernel, bias)


def _single_channel_vjp_backward(saved, grad):
    x, kernel, bias = saved
    kh, kw, _, out_channels = kernel.shape
    windows = _shifted_windows(x, kh, kw)
    rows = jnp.stack([*windows, jnp.ones_like(windows[0])]).reshape(kh * kw + 1, -1)
    accumulate = jnp.promote_types(grad.dtype, jnp.float32)
    kernel_and_bias = jax.lax.dot(rows, grad.reshape(-1, out_channels), preferred_element_type=accumulate)
    grad_x = jax.vjp(lambda x: _xla_conv2d(x, kernel), x)[1](grad)[0]
    return (grad_x, kernel_and_bias[:-1].reshape(kernel.shape).astype(kernel.dtype),
            kernel_and_bias[-1].astype(bias.dtype))


single_channel_conv2d.defvjp(_single_channel_vjp_forward, _single_channel_vjp_backward)


def patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col: ``(B, H, W, C) -> (B, H-kh+1, W-kw+1, kh*kw*C)``, the window at each
    output position flattened in HWIO order (row ``i``, column ``j``, channel
    ``c`` at ``(i*kw + j)*C + c``), so ``patches(x) @ kernel.reshape(-1, Cout)``
    is ``conv2d`` without the bias."""
    if x.ndim != 4 or not (1 <= kh <= x.shape[1] and 1 <= kw <= x.shape[2]):
        raise ValueError(f"patches: x must be (B, H, W, C) with H >= kh = {kh} >= 1 and "
                         f"W >= kw = {kw} >= 1, got shape {tuple(x.shape)}")
    return jnp.concatenate(_shifted_windows(x, kh, kw), axis=-1)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, ``(..., C) + (C,)``. Its gradient for the
    bias, ``sum over all but the last axis of g``, is computed as the
    matrix-vector product ``ones(N) @ g.reshape(N, C)`` (accumulated in at
    least float32): XLA:CPU's reductions run at about 2 ns an element, 7x
    slower than its matrix-vector product, and the conv biases' gradients
    took 2.7 ms of a 19 ms step of the earlier ``cifar_cnn`` reconstruction."""
    if bias.shape != y.shape[-1:]:
        raise ValueError(f"add_bias: bias must have shape ({y.shape[-1]},) to match y's last axis, "
                         f"got {tuple(bias.shape)} for y of shape {tuple(y.shape)}")
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def _add_bias_forward(y, bias):
    return add_bias(y, bias), None


def _add_bias_backward(_, grad):
    rows = grad.reshape(-1, grad.shape[-1])
    accumulate = jnp.promote_types(grad.dtype, jnp.float32)
    bias_grad = jax.lax.dot(jnp.ones(rows.shape[0], grad.dtype), rows, preferred_element_type=accumulate)
    return grad, bias_grad.astype(grad.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


def max_pool2d(x: jax.Array, size: int = 2) -> jax.Array:
    """``F.max_pool2d(x, size)``: ``(B, H, W, C) -> (B, H//size, W//size, C)`` (floor).

    Forward: the max of each ``size x size`` window, read as a reshape to
    ``(B, H//size, size, W//size, size, C)`` (rows and columns past the last
    whole window are dropped, as PyTorch floors) and taken as an elementwise
    ``maximum`` of the ``size**2`` window positions (XLA:CPU runs that 5x
    faster than a reduction over the two window axes). Backward, as
    PyTorch's: each window's gradient goes to its *first* maximum in row-major
    order; ties get nothing more. (JAX's own ``reduce_window`` gradient, a select-and-scatter,
    is 1.5x slower for the whole MNIST CNN step on CPU; ``jnp.max``'s would
    split ties evenly.)
    """
    return _max_pool(x, size)


def _windows(x: jax.Array, size: int) -> jax.Array:
    b, h, w, c = x.shape
    h2, w2 = h // size, w // size
    return x[:, :h2 * size, :w2 * size, :].reshape(b, h2, size, w2, size, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, size: int) -> jax.Array:
    windows = _windows(x, size)
    corners = [windows[:, :, i, :, j, :] for i in range(size) for j in range(size)]
    return functools.reduce(jnp.maximum, corners)


def _max_pool_forward(x, size):
    pooled = _max_pool(x, size)
    return pooled, (x, pooled)


def _max_pool_backward(size, saved, grad):
    x, pooled = saved
    windows = _windows(x, size)
    taken = jnp.zeros(pooled.shape, bool)
    rows = []
    for i in range(size):
        columns = []
        for j in range(size):
            first = (windows[:, :, i, :, j, :] == pooled) & ~taken
            taken = taken | first
            columns.append(jnp.where(first, grad, jnp.zeros_like(grad)))
        rows.append(jnp.stack(columns, axis=3))       # (B, H2, W2, size, C)
    grad_windows = jnp.stack(rows, axis=2)            # (B, H2, size, W2, size, C)
    b, h2, _, w2, _, c = grad_windows.shape
    grad_x = grad_windows.reshape(b, h2 * size, w2 * size, c)
    return (jnp.pad(grad_x, ((0, 0), (0, x.shape[1] - h2 * size), (0, x.shape[2] - w2 * size), (0, 0))),)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, train: bool) -> jax.Array:
    """Inverted dropout as ``nn.Dropout(rate)``: zero with probability ``rate``,
    scale survivors by ``1 / (1 - rate)``; the identity when not training.
    The mask is `dropout_from_unit`'s from ``x.size`` `uniform_draws` of ``rng``."""
    if not train or rate == 0.0:
        return x
    return dropout_from_unit(x, rate, uniform_draws(rng, x.size))


def dropout2d(x: jax.Array, rate: float, rng: jax.Array | None, train: bool) -> jax.Array:
    """``nn.Dropout2d(rate)`` on an NHWC map ``(B, H, W, C)``: each of the ``B*C``
    channels is zeroed whole with probability ``rate`` (one `uniform_draws`
    draw each), survivors scaled by ``1 / (1 - rate)``; the identity when not
    training."""
    if not train or rate == 0.0:
        return x
    if x.ndim != 4:
        raise ValueError(f"dropout2d: x must be an NHWC map (B, H, W, C), got shape {tuple(x.shape)}")
    return dropout2d_from_unit(x, rate, uniform_draws(rng, x.shape[0] * x.shape[3]))


def dropout2d_from_unit(x: jax.Array, rate: float, unit: jax.Array) -> jax.Array:
    """`dropout2d` (training) with its mask given as ``B*C`` draws of ``U[0, 1)``,
    channel ``c`` of image ``b`` kept where ``unit[b*C + c] < 1 - rate``."""
    batch, channels = x.shape[0], x.shape[-1]
    if unit.size != batch * channels:
        raise ValueError(f"dropout2d_from_unit: unit must hold B*C = {batch * channels} draws, got {unit.size}")
    if rate == 0.0:
        return x
    keep = unit.reshape(batch, 1, 1, channels) < 1.0 - rate
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def check_key(key, argument: str) -> None:
    """TypeError, naming ``argument``, unless ``key`` is a PRNG key
    (``jax.random.key``) or a legacy ``uint32[2]`` one (``jax.random.PRNGKey``)."""
    if not isinstance(key, jax.Array) or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            or (key.dtype == jnp.uint32 and key.shape == (2,))):
        raise TypeError(f"{argument} must be a PRNG key such as jax.random.key(0), got {key!r}")


def uniform_draws(rng: jax.Array, n: int) -> jax.Array:
    """``n`` float32 draws of ``U[0, 1)`` from ``rng``, for dropout masks.

    With a Threefry key (JAX's default) the 32-bit words are those of
    ``jax.extend.random.threefry_2x32(key_data(rng), arange(n))``: the counters
    ``0 .. n-1`` cut into halves (a zero appended when ``n`` is odd), counter
    ``i`` of the first half paired with counter ``i`` of the second, each pair
    hashed to two words (`threefry2x32_hash`); and each word becomes a float
    as ``jax.random.uniform`` makes one: its top 23 bits as the mantissa of a
    number in ``[1, 2)``, minus 1. ``jax.random.uniform`` itself (partitionable
    Threefry, JAX's default since 0.5) hashes every counter and keeps the XOR
    of the two words, twice the hashing: for ``mnist_cnn``'s 598,016 mask draws
    a step that way took 61.6 ms against 57.9 ms this way (interleaved A/B,
    median of 30 windows; 120 -> 114 core-ms). Other key kinds (``rbg``) use
    ``jax.random.uniform``. The draws depend only on ``rng`` and ``n``, not on
    how the arrays are sharded.
    """
    check_key(rng, "uniform_draws: rng")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"uniform_draws: n must be a non-negative integer, got {n!r}")
    if str(jax.random.key_impl(rng)) != "threefry2x32":
        return jax.random.uniform(rng, (n,), jnp.float32)
    half = (int(n) + 1) // 2
    first = jax.lax.iota(jnp.uint32, half)
    second = first + np.uint32(half)
    if n % 2:
        second = jnp.where(first == half - 1, np.uint32(0), second)   # threefry_2x32's padding
    key_data = jax.random.key_data(rng)
    bits = jnp.concatenate(threefry2x32_hash(key_data[0], key_data[1], first, second))[:n]
    one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one_to_two - 1.0


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32_hash(key0: jax.Array, key1: jax.Array, x0: jax.Array, x1: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds; Salmon et al. 2011), the hash behind JAX's
    default PRNG: ``uint32`` words ``(x0, x1)`` (same shape) under the key
    ``(key0, key1)`` to two ``uint32`` words, bit for bit as JAX's
    ``threefry2x32`` primitive. Five times: four rounds of::

        x0 += x1;  x1 = rotl(x1, r) ^ x0          r in (13, 15, 26, 6), then (17, 29, 16, 24)

    then the key injection ``x0 += k[s+1];  x1 += k[s+2] + s + 1`` (``s`` the
    pass, ``k`` the key words with ``k[2] = key0 ^ key1 ^ 0x1BD11BDA``, indices
    mod 3), after ``x0 += k[0];  x1 += k[1]`` at the start.

    Why not the primitive: on the CPU JAX lowers it as a ``fori_loop`` of the
    five passes, which XLA runs as a while loop, each pass a handful of
    separate sweeps over the arrays. Written out, it is one elementwise loop
    that XLA fuses with the counters (`uniform_draws`) and their consumers.
    ``mnist_cnn``'s step (598,016 draws), in eight interleaved A/B runs on two
    cores (paired medians of 15-60 windows of 20 steps): 1.007x, 1.04x,
    1.10x, 1.14x, 0.994x, 1.17x, 1.016x and 1.001x faster; on one thread,
    without page faults, 79.4 -> 78.7 ms. A small gain, not seen in every
    run. The bits are the same.
    """
    dtypes = [jnp.result_type(word) for word in (key0, key1, x0, x1)]
    if any(dtype != jnp.uint32 for dtype in dtypes) or jnp.shape(key0) or jnp.shape(key1):
        raise TypeError(f"threefry2x32_hash: key0 and key1 must be uint32 scalars and x0, x1 uint32 "
                        f"arrays, got dtypes {[str(d) for d in dtypes]} and key shapes "
                        f"{jnp.shape(key0)}, {jnp.shape(key1)}")
    if jnp.shape(x0) != jnp.shape(x1):
        raise ValueError(f"threefry2x32_hash: x0 and x1 must have the same shape, "
                         f"got {jnp.shape(x0)} and {jnp.shape(x1)}")
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for step in range(5):
        for r in _THREEFRY_ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + keys[(step + 1) % 3]
        x1 = x1 + keys[(step + 2) % 3] + np.uint32(step + 1)
    return x0, x1


def dropout_from_unit(x: jax.Array, rate: float, unit: jax.Array) -> jax.Array:
    """`dropout` (training) with its mask given as ``x.size`` draws of
    ``U[0, 1)``: keep where ``unit < 1 - rate`` (``jax.random.bernoulli``'s
    rule). Lets a net draw all its masks at once (`funcnets.models`)."""
    if unit.size != x.size:
        raise ValueError(f"dropout_from_unit: unit must hold x.size = {x.size} draws, got {unit.size}")
    if rate == 0.0:
        return x
    keep = unit.reshape(x.shape) < 1.0 - rate
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
