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
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np

from funcnets import cpu, keys

LayerParams = dict[str, jax.Array]   # one layer's: {"kernel", "bias"}


def param_count(spec: Layer) -> int:
    """How many numbers ``spec``'s params hold (PyTorch's ``numel`` summed)."""
    return sum(math.prod(shape) for shape in spec.param_shapes.values())


def init_from_unit(spec: Layer, unit: jax.Array) -> LayerParams:
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


def torch_default_init(spec: Layer, key: jax.Array, dtype=jnp.float32) -> LayerParams:
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

    def init(self, key: jax.Array, dtype=jnp.float32) -> LayerParams:
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

    def init(self, key: jax.Array, dtype=jnp.float32) -> LayerParams:
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


def linear(params: LayerParams, x: jax.Array) -> jax.Array:
    """``(B, in) -> (B, out)``: ``x @ kernel + bias``."""
    return x @ params["kernel"] + params["bias"][None, :]


def conv2d(params: LayerParams, x: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """``(B, H, W, Cin) -> (B, Ho, Wo, Cout)``: cross-correlation, as PyTorch::

        y[b, h, w, o] = bias[o] + sum_{i, j, c} xp[b, s*h + i, s*w + j, c] * kernel[i, j, c, o]

    with ``xp`` the input zero-padded by ``padding`` on each side, ``s`` the
    ``stride``, ``Ho = (H + 2*padding - kh) // s + 1`` (and ``Wo`` alike).

    XLA's ``conv_general_dilated`` plus the bias; on the CPU, stride 1 without
    padding takes `funcnets.cpu.conv2d` (the same maths, faster there).
    """
    if stride == 1 and padding == 0 and cpu.fast_paths():
        return cpu.conv2d(params, x)
    y = jax.lax.conv_general_dilated(x, params["kernel"], window_strides=(stride, stride),
                                     padding=((padding, padding), (padding, padding)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["bias"][None, None, None, :]


def max_pool2d(x: jax.Array, size: int = 2) -> jax.Array:
    """``F.max_pool2d(x, size)``: ``(B, H, W, C) -> (B, H//size, W//size, C)`` (floor).

    Forward: the max of each ``size x size`` window, read as a reshape to
    ``(B, H//size, size, W//size, size, C)`` (rows and columns past the last
    whole window are dropped, as PyTorch floors) and taken as an elementwise
    ``maximum`` of the ``size**2`` window positions. Backward, as PyTorch's,
    on every backend: each window's gradient goes to its *first* maximum in
    row-major order; ties get nothing more (``jnp.max``'s gradient would split
    ties evenly).
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


def uniform_draws(rng: jax.Array, n: int) -> jax.Array:
    """``n`` float32 draws of ``U[0, 1)`` from ``rng``, for dropout masks.

    With a Threefry key (JAX's default) the 32-bit words are
    ``jax.extend.random.threefry_2x32(key_data(rng), arange(n))``, and each word
    becomes a float as ``jax.random.uniform`` makes one: its top 23 bits as the
    mantissa of a number in ``[1, 2)``, minus 1 (on the CPU the same bits come
    from `funcnets.cpu.threefry_bits`). This hashes each counter once, half
    the work of ``jax.random.uniform``'s partitionable Threefry. Other key kinds
    (``rbg``) use ``jax.random.uniform``. The draws depend only on ``rng`` and
    ``n``, not on the backend or on how the arrays are sharded.
    """
    keys.check_key(rng, "uniform_draws: rng")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"uniform_draws: n must be a non-negative integer, got {n!r}")
    if str(jax.random.key_impl(rng)) != "threefry2x32":
        return jax.random.uniform(rng, (n,), jnp.float32)
    key_data = jax.random.key_data(rng)
    if cpu.fast_paths():
        bits = cpu.threefry_bits(key_data, int(n))
    else:
        bits = jax_random.threefry_2x32(key_data, jax.lax.iota(jnp.uint32, int(n)))
    one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
    return one_to_two - 1.0


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
