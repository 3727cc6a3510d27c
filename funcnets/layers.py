"""Layers as pure functions over parameter dicts, initialised as PyTorch does.

Each parameterised layer is described by a small spec (`Linear`, `Conv2d`)
that knows its shapes, its PyTorch default init and how its parameters map to
and from a PyTorch ``state_dict``. The forward maths are plain functions
(`linear`, `conv2d`, `max_pool2d`, `dropout`) on NHWC arrays.

Layouts (JAX-native, so the forward needs no transposes):

===============  ==========================  ==============================
layer            funcnets ``kernel``          PyTorch ``weight``
===============  ==========================  ==============================
Linear           (in_features, out_features)  (out_features, in_features)
Conv2d           (kh, kw, in_ch, out_ch) HWIO (out_ch, in_ch, kh, kw) OIHW
ConvTranspose2d  (kh, kw, in_ch, out_ch)      (in_ch, out_ch, kh, kw)
===============  ==========================  ==============================

`RNN`, `LSTM` and `GRU` keep PyTorch's own names and layouts
(``weight_ih_l0`` is ``(gates * hidden, input)``, gates in PyTorch's order).

PyTorch's default init (``reset_parameters`` of ``nn.Linear``/``nn.Conv2d``/
``nn.ConvTranspose2d``) is ``kaiming_uniform_(weight, a=sqrt(5))``, i.e. with
gain ``sqrt(2 / (1 + a^2)) = sqrt(1/3)`` and bound ``gain * sqrt(3 / fan_in)``::

    weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bias   ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))

with ``fan_in = in_features`` (Linear), ``in_ch * kh * kw`` (Conv2d) or
``out_ch * kh * kw`` (ConvTranspose2d: PyTorch reads the fan-in off the
weight's second axis). The recurrent layers draw every param from
``U(-1/sqrt(hidden), 1/sqrt(hidden))``, so their ``fan_in`` is
``hidden_size``. Flax's defaults (lecun-normal kernels, zero biases) differ;
these do not.

Layers without parameters take PyTorch's names and arguments too: the
activations (`ReLU`, `Sigmoid`, `Tanh`, `LeakyReLU`, `GELU`, `ELU`, `SiLU`,
`Softmax`, `LogSoftmax`), the pools (`MaxPool2d`, `AvgPool2d`, `MinPool2d`,
`AdaptiveAvgPool2d`, `GlobalAvgPool2d`), `Flatten`, `Dropout`, `Dropout2d`,
and `Last` (the last step of a sequence).

The norms (`BatchNorm1d`, `BatchNorm2d`, `LayerNorm`, `GroupNorm`) start as
PyTorch's do (``weight`` ones, ``bias`` zeros, no random draws). A batch norm
that tracks running statistics keeps them as model state (`state_shapes`,
`init_state`; PyTorch's buffers ``running_mean``, ``running_var``,
``num_batches_tracked``), which `batch_norm` updates in training.
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


def draw_count(spec: Layer) -> int:
    """How many ``U[0, 1)`` draws ``spec``'s init takes: its `param_count`, but none for the
    norms, whose params start as ones (``weight``) and zeros (``bias``), as PyTorch's."""
    return 0 if isinstance(spec, NORMS) else param_count(spec)


def init_from_unit(spec: Layer, unit: jax.Array) -> LayerParams:
    """PyTorch's default init of ``spec`` from ``param_count(spec)`` draws of
    ``U[0, 1)`` (``unit``, 1-D): each param, in `param_shapes` order (kernel,
    then bias), takes the next ``prod(shape)`` draws ``u`` as ``max(-b, 2b*u - b)``
    with ``b = 1/sqrt(fan_in)``, the map of ``jax.random.uniform(minval=-b,
    maxval=b)``."""
    shapes = spec.param_shapes
    if isinstance(spec, NORMS):
        return {name: (jnp.ones if name == "weight" else jnp.zeros)(shape, unit.dtype) for name, shape in shapes.items()}
    bound = 1.0 / math.sqrt(spec.fan_in)
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


def _conv_param_shapes(spec) -> dict[str, tuple[int, ...]]:
    """A 2-D (transposed) convolution's ``kernel (k, k, in, out)`` and ``bias (out,)``."""
    k = spec.kernel_size
    return {"kernel": (k, k, spec.in_channels, spec.out_channels), "bias": (spec.out_channels,)}


def _default_init(spec, key: jax.Array, dtype=jnp.float32) -> LayerParams:
    """``spec.init``: PyTorch's default init (`torch_default_init`)."""
    return torch_default_init(spec, key, dtype)


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

    param_shapes = property(_conv_param_shapes)
    init = _default_init

    def kernel_from_torch(self, weight: np.ndarray) -> np.ndarray:
        return weight.transpose(2, 3, 1, 0)

    def kernel_to_torch(self, kernel: np.ndarray) -> np.ndarray:
        return kernel.transpose(3, 2, 0, 1)


class ConvTranspose2d(NamedTuple):
    """``nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    output_padding=0)`` ("DeConv"): `conv_transpose2d`.

    An ``H x W`` input gives ``(H - 1) * s - 2p + k + output_padding`` rows (and
    columns alike); ``output_padding < stride``, as PyTorch requires.
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0

    @property
    def fan_in(self) -> int:
        return self.out_channels * self.kernel_size**2

    @property
    def torch_weight_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.out_channels, self.kernel_size, self.kernel_size)

    param_shapes = property(_conv_param_shapes)
    init = _default_init

    def kernel_from_torch(self, weight: np.ndarray) -> np.ndarray:
        return weight.transpose(2, 3, 0, 1)

    def kernel_to_torch(self, kernel: np.ndarray) -> np.ndarray:
        return kernel.transpose(2, 3, 0, 1)


def _directions(spec) -> int:
    return 2 if spec.bidirectional else 1


def _recurrent_fan_in(spec) -> int:   # every param ~ U(-1/sqrt(hidden), 1/sqrt(hidden))
    return spec.hidden_size


def _recurrent_param_shapes(spec) -> dict[str, tuple[int, ...]]:
    """PyTorch's ``_flat_weights_names`` and shapes, in its order."""
    shapes, width = {}, spec.GATES * spec.hidden_size
    for layer in range(spec.num_layers):
        inputs = spec.input_size if layer == 0 else spec.hidden_size * spec.directions
        for direction in range(spec.directions):
            suffix = f"_l{layer}{'_reverse' if direction else ''}"
            shapes[f"weight_ih{suffix}"] = (width, inputs)
            shapes[f"weight_hh{suffix}"] = (width, spec.hidden_size)
            if spec.bias:
                shapes[f"bias_ih{suffix}"] = (width,)
                shapes[f"bias_hh{suffix}"] = (width,)
    return shapes


class RNN(NamedTuple):
    """``nn.RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False)``: `recurrent`, with
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    GATES = 1
    directions = property(_directions)
    fan_in = property(_recurrent_fan_in)
    param_shapes = property(_recurrent_param_shapes)
    init = _default_init


class LSTM(NamedTuple):
    """``nn.LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``: `recurrent`, PyTorch's gates in its
    order ``i, f, g, o``::

        i, f, g, o = sigma(.), sigma(.), tanh(.), sigma(.)   of x_t W_ih^T + b_ih + h W_hh^T + b_hh
        c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    GATES = 4
    directions = property(_directions)
    fan_in = property(_recurrent_fan_in)
    param_shapes = property(_recurrent_param_shapes)
    init = _default_init


class GRU(NamedTuple):
    """``nn.GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``: `recurrent`, PyTorch's gates ``r, z, n``::

        r = sigma(x W_ir^T + b_ir + h W_hr^T + b_hr),  z = sigma(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h_t = (1 - z) * n + z * h_{t-1}
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    GATES = 3
    directions = property(_directions)
    fan_in = property(_recurrent_fan_in)
    param_shapes = property(_recurrent_param_shapes)
    init = _default_init


Recurrent = RNN | LSTM | GRU
class BatchNorm2d(NamedTuple):
    """``nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)`` on NHWC maps: `batch_norm` over the batch and both
    spatial axes, per channel.

    Params ``weight`` (ones) and ``bias`` (zeros) when ``affine``; model state
    (`funcnets.models.Model.init_state`) ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` (0) when
    ``track_running_stats``: PyTorch's ``state_dict`` names and starting values.
    """

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


class BatchNorm1d(NamedTuple):
    """``nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True)`` on ``(B, num_features)``: `batch_norm` over the batch;
    params and state as `BatchNorm2d`'s."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


class LayerNorm(NamedTuple):
    """``nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``
    over the trailing ``normalized_shape`` axes of a vector or sequence (``(F,)`` or
    ``(T, F)`` per example): ``(x - mean) / sqrt(var + eps) * weight + bias``, the
    biased variance, no state. On an NHWC map PyTorch's trailing axes are
    ``(C, H, W)``: use ``GroupNorm(1, C)`` there (the same statistics)."""

    normalized_shape: int | tuple[int, ...]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True


class GroupNorm(NamedTuple):
    """``nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)``: the channels in
    ``num_groups`` consecutive groups, each example's group normalised over its
    channels and positions (biased variance), then per-channel ``weight``, ``bias``;
    no state."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True


def _norm_param_shapes(spec) -> dict[str, tuple[int, ...]]:
    if isinstance(spec, LayerNorm):
        shape = _normalized_shape(spec)
        if not spec.elementwise_affine:
            return {}
        return {"weight": shape, "bias": shape} if spec.bias else {"weight": shape}
    channels = spec.num_channels if isinstance(spec, GroupNorm) else spec.num_features
    return {"weight": (channels,), "bias": (channels,)} if spec.affine else {}


def _normalized_shape(spec: LayerNorm) -> tuple[int, ...]:
    shape = spec.normalized_shape
    return (shape,) if isinstance(shape, int) else tuple(shape)


for _norm in (BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm):
    _norm.param_shapes = property(_norm_param_shapes)
    _norm.fan_in = 1   # unused: the norms' init is constant (`draw_count`)
NORMS = (BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm)
BATCH_NORMS = (BatchNorm1d, BatchNorm2d)


def state_shapes(spec) -> dict[str, tuple[tuple[int, ...], str]]:
    """The model state ``spec`` keeps: name -> (shape, ``"float"`` or ``"int"``); PyTorch's
    buffers of a batch norm that tracks running statistics, else nothing."""
    if isinstance(spec, BATCH_NORMS) and spec.track_running_stats:
        return {"running_mean": ((spec.num_features,), "float"), "running_var": ((spec.num_features,), "float"),
                "num_batches_tracked": ((), "int")}
    return {}


def init_state(spec, dtype=jnp.float32) -> LayerParams:
    """``spec``'s model state as PyTorch's ``reset_running_stats`` leaves it: mean 0,
    variance 1, ``num_batches_tracked`` 0 (int32; PyTorch's is int64)."""
    fill = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}
    return {name: jnp.full(shape, fill[name], dtype if kind == "float" else jnp.int32)
            for name, (shape, kind) in state_shapes(spec).items()}


Layer = Linear | Conv2d | ConvTranspose2d | RNN | LSTM | GRU | BatchNorm1d | BatchNorm2d | LayerNorm | GroupNorm
WITH_PARAMS = (Linear, Conv2d, ConvTranspose2d, RNN, LSTM, GRU, *NORMS)


def torch_params(spec: Layer) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``spec``'s PyTorch ``state_dict`` entries, in PyTorch's order: suffix (``"weight"``)
    -> (funcnets param name, PyTorch shape)."""
    if isinstance(spec, (RNN, LSTM, GRU, *NORMS)):
        return {name: (name, shape) for name, shape in spec.param_shapes.items()}
    return {"weight": ("kernel", spec.torch_weight_shape), "bias": ("bias", spec.param_shapes["bias"])}


def param_from_torch(spec: Layer, name: str, array: np.ndarray) -> np.ndarray:
    """PyTorch's layout of param ``name`` (funcnets' name) to funcnets'."""
    return spec.kernel_from_torch(array) if name == "kernel" else array


def param_to_torch(spec: Layer, name: str, array: np.ndarray) -> np.ndarray:
    """funcnets' layout of param ``name`` to PyTorch's."""
    return spec.kernel_to_torch(array) if name == "kernel" else array


# --- layers without parameters, for composing nets (funcnets.models.sequential) -----------

class ReLU(NamedTuple):
    """``nn.ReLU()``: ``max(x, 0)`` (gradient 0 at 0, as PyTorch's)."""


class Sigmoid(NamedTuple):
    """``nn.Sigmoid()``: ``1 / (1 + exp(-x))``."""


class Tanh(NamedTuple):
    """``nn.Tanh()``."""


class LeakyReLU(NamedTuple):
    """``nn.LeakyReLU(negative_slope=0.01)``: ``x`` where ``x > 0``, else
    ``negative_slope * x`` (so the gradient at 0 is ``negative_slope``, as PyTorch's)."""

    negative_slope: float = 0.01


class GELU(NamedTuple):
    """``nn.GELU(approximate='none')``: ``x * Phi(x)`` (``'tanh'``: the tanh approximation)."""

    approximate: str = "none"


class ELU(NamedTuple):
    """``nn.ELU(alpha=1.0)``: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""

    alpha: float = 1.0


class SiLU(NamedTuple):
    """``nn.SiLU()``: ``x * sigmoid(x)``."""


class Softmax(NamedTuple):
    """``nn.Softmax(dim=None)``: ``exp(x) / sum(exp(x))`` along PyTorch's ``dim`` of the
    NCHW tensor (on funcnets' NHWC maps, ``dim=1`` is the channel axis); ``None``
    is PyTorch's implicit choice (dim 1 for 2-D and 4-D inputs, else 0)."""

    dim: int | None = None


class MaxPool2d(NamedTuple):
    """``nn.MaxPool2d(kernel_size, stride=None, padding=0)``: `max_pool2d` (``stride``
    None is ``kernel_size``; floor mode; padding counts as ``-inf``)."""

    kernel_size: int = 2
    stride: int | None = None
    padding: int = 0


class AvgPool2d(NamedTuple):
    """``nn.AvgPool2d(kernel_size, stride=None, padding=0)`` (mean-pooling): `avg_pool2d`
    (PyTorch's defaults ``ceil_mode=False, count_include_pad=True``: a window's
    padding counts as zeros in its mean)."""

    kernel_size: int
    stride: int | None = None
    padding: int = 0


class MinPool2d(NamedTuple):
    """Min-pooling, which PyTorch has no layer for: its reading ``-max_pool2d(-x)``
    (`min_pool2d`), with `MaxPool2d`'s arguments; the twin is
    ``funcnets.torch_models.MinPool2d``."""

    kernel_size: int = 2
    stride: int | None = None
    padding: int = 0


class AdaptiveAvgPool2d(NamedTuple):
    """``nn.AdaptiveAvgPool2d(output_size)``: `adaptive_avg_pool2d` (an int, or a pair
    whose ``None`` keeps that input size)."""

    output_size: int | tuple[int | None, int | None]


class Last(NamedTuple):
    """The last step of a sequence: ``(B, T, H) -> (B, H)``, ``x[:, -1]`` (after a
    ``batch_first`` `RNN`/`LSTM`/`GRU`); its twin is ``funcnets.torch_models.Last``."""


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


Stateless = (ReLU | Sigmoid | Tanh | LeakyReLU | GELU | ELU | SiLU | Softmax | MaxPool2d | AvgPool2d | MinPool2d
             | AdaptiveAvgPool2d | GlobalAvgPool2d | Flatten | Dropout | Dropout2d | LogSoftmax | Last)
ACTIVATIONS = (ReLU, Sigmoid, Tanh, LeakyReLU, GELU, ELU, SiLU, Softmax)
POOLS = (MaxPool2d, AvgPool2d, MinPool2d)


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
    if isinstance(spec, ConvTranspose2d):
        if len(shape) != 3 or shape[-1] != spec.in_channels:
            raise ValueError(f"expects an (H, W, {spec.in_channels}) map, gets shape {shape}")
        if not 0 <= spec.output_padding < spec.stride:
            raise ValueError(f"output_padding must be >= 0 and smaller than stride {spec.stride}, "
                             f"got {spec.output_padding}")
        h, w = ((size - 1) * spec.stride - 2 * spec.padding + spec.kernel_size + spec.output_padding
                for size in shape[:2])
        if h < 1 or w < 1:
            raise ValueError(f"padding {spec.padding} leaves no output from an input of shape {shape}")
        return (h, w, spec.out_channels)
    if isinstance(spec, BatchNorm2d):
        if len(shape) != 3 or shape[-1] != spec.num_features:
            raise ValueError(f"expects an (H, W, {spec.num_features}) map, gets shape {shape}")
        return shape
    if isinstance(spec, BatchNorm1d):
        if shape != (spec.num_features,):
            raise ValueError(f"expects ({spec.num_features},) features, gets shape {shape}"
                             + (" (BatchNorm2d normalises maps)" if len(shape) == 3 else ""))
        return shape
    if isinstance(spec, LayerNorm):
        normalized = _normalized_shape(spec)
        if len(shape) == 3:
            raise ValueError(f"takes vectors or sequences; on an NHWC map of shape {shape} use "
                             f"GroupNorm(1, {shape[-1]}) (the same statistics as LayerNorm over (C, H, W))")
        if tuple(shape[len(shape) - len(normalized):]) != normalized:
            raise ValueError(f"normalizes trailing axes {normalized}, gets shape {shape}")
        return shape
    if isinstance(spec, GroupNorm):
        if shape[-1] != spec.num_channels or len(shape) not in (1, 3):
            raise ValueError(f"expects (H, W, {spec.num_channels}) or ({spec.num_channels},), gets shape {shape}")
        if spec.num_channels % spec.num_groups:
            raise ValueError(f"num_channels {spec.num_channels} must divide by num_groups {spec.num_groups}")
        return shape
    if isinstance(spec, (RNN, LSTM, GRU)):
        _check_recurrent(spec)
        if len(shape) != 2 or shape[-1] != spec.input_size:
            raise ValueError(f"expects a (T, {spec.input_size}) sequence, gets shape {shape}")
        return (shape[0], spec.hidden_size * spec.directions)
    if isinstance(spec, Last):
        if len(shape) != 2:
            raise ValueError(f"expects a (T, features) sequence, gets shape {shape}")
        return (shape[1],)
    if isinstance(spec, (*POOLS, AdaptiveAvgPool2d, GlobalAvgPool2d, Dropout2d)):
        if len(shape) != 3:
            raise ValueError(f"expects an (H, W, C) map, gets shape {shape}")
        if isinstance(spec, POOLS):
            k, stride, pad = pool_window(spec)
            if pad > k // 2:
                raise ValueError(f"padding {pad} must be at most half the kernel size {k}")
            if k > min(shape[:2]) + 2 * pad:
                raise ValueError(f"a {k}x{k} pool is larger than its input of shape {shape}"
                                 + (f" with padding {pad}" if pad else ""))
            return (*((size + 2 * pad - k) // stride + 1 for size in shape[:2]), shape[2])
        if isinstance(spec, AdaptiveAvgPool2d):
            return (*adaptive_size(spec.output_size, shape[:2]), shape[2])
        return (1, 1, shape[2]) if isinstance(spec, GlobalAvgPool2d) else shape
    if isinstance(spec, Flatten):
        return (math.prod(shape),)
    if isinstance(spec, Softmax):
        softmax_axis(spec.dim, len(shape) + 1)
        return shape
    if isinstance(spec, (*ACTIVATIONS, Dropout, LogSoftmax)):
        if isinstance(spec, GELU) and spec.approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {spec.approximate!r}")
        return shape
    raise TypeError(f"not a funcnets layer: {spec!r}")


def _check_recurrent(spec) -> None:
    if isinstance(spec, RNN) and spec.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {spec.nonlinearity!r}")
    if not isinstance(spec.num_layers, int) or spec.num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {spec.num_layers!r}")
    if not 0.0 <= spec.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {spec.dropout!r}")


def pool_window(spec) -> tuple[int, int, int]:
    """``(kernel, stride, padding)`` of a pooling layer (``stride`` None is the kernel)."""
    return spec.kernel_size, spec.kernel_size if spec.stride is None else spec.stride, spec.padding


def adaptive_size(output_size, size: tuple[int, int]) -> tuple[int, int]:
    """``AdaptiveAvgPool2d``'s output ``(h, w)`` for an input of ``size``."""
    pair = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(pair) != 2 or any(o is not None and (not isinstance(o, int) or o < 1) for o in pair):
        raise ValueError(f"output_size must be a positive int or a pair of them (None keeps a size), "
                         f"got {output_size!r}")
    return tuple(s if o is None else o for o, s in zip(pair, size))


def softmax_axis(dim: int | None, ndim: int) -> int:
    """funcnets' axis for PyTorch's softmax ``dim`` of an ``ndim``-D tensor (NCHW for 4-D,
    whose channel ``dim=1`` is funcnets' last axis); None is PyTorch's implicit dim."""
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim {dim} is out of range for a {ndim}-D input (batch included)")
    dim %= ndim
    return (0, 3, 1, 2)[dim] if ndim == 4 else dim


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


def pool2d(x: jax.Array, kind: str, kernel_size: int, stride: int | None = None, padding: int = 0) -> jax.Array:
    """``F.max_pool2d`` (``kind="max"``), ``F.avg_pool2d`` or min-pooling (``-max_pool2d(-x)``)
    on NHWC ``(B, H, W, C) -> (B, Ho, Wo, C)``, ``Ho = (H + 2p - k) // s + 1``.

    Max and min pad with ``-inf``/``+inf``; the mean pads with zeros and divides
    by ``k * k`` (``count_include_pad=True``). Non-overlapping max-pooling
    without padding is `max_pool2d`; the other windows are
    ``lax.reduce_window``, whose max gradient also goes to each window's first
    maximum, as PyTorch's.
    """
    stride = kernel_size if stride is None else stride
    if kind == "min":
        return -pool2d(-x, "max", kernel_size, stride, padding)
    if kind == "max" and stride == kernel_size and padding == 0:
        return max_pool2d(x, kernel_size)
    window, strides = (1, kernel_size, kernel_size, 1), (1, stride, stride, 1)
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
    if kind == "avg":
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
        return total / (kernel_size * kernel_size)
    raise ValueError(f"pool2d: kind must be 'max', 'avg' or 'min', got {kind!r}")


def adaptive_avg_pool2d(x: jax.Array, output_size) -> jax.Array:
    """``F.adaptive_avg_pool2d``: ``(B, H, W, C) -> (B, h, w, C)``; output row ``i`` is the
    mean of input rows ``floor(i H / h)`` to ``ceil((i + 1) H / h)`` (PyTorch's
    windows), as one averaging matrix per axis."""
    h, w = adaptive_size(output_size, x.shape[1:3])
    rows, columns = _adaptive_matrix(x.shape[1], h, x.dtype), _adaptive_matrix(x.shape[2], w, x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, columns)


def _adaptive_matrix(size: int, out: int, dtype) -> jax.Array:
    matrix = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return jnp.asarray(matrix, dtype)


def conv_transpose2d(params: LayerParams, x: jax.Array, stride: int = 1, padding: int = 0,
                     output_padding: int = 0) -> jax.Array:
    """``F.conv_transpose2d`` on NHWC: ``(B, H, W, Cin) -> (B, Ho, Wo, Cout)``, the gradient
    of `conv2d` with respect to its input::

        y[b, s*h + i - p, s*w + j - p, o] += x[b, h, w, c] * kernel[i, j, c, o]   (+ bias[o])

    ``Ho = (H - 1) s - 2p + k + output_padding``. Computed as a stride-1 convolution
    of ``x`` dilated by ``s`` (``lhs_dilation``) with the kernel flipped, padded by
    ``k - 1 - p`` (plus ``output_padding`` after).
    """
    k = params["kernel"].shape[0]
    before, after = k - 1 - padding, k - 1 - padding + output_padding
    y = jax.lax.conv_general_dilated(x, params["kernel"][::-1, ::-1], window_strides=(1, 1),
                                     padding=((before, after), (before, after)), lhs_dilation=(stride, stride),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["bias"][None, None, None, :]


def recurrent(spec: Recurrent, params: LayerParams, x: jax.Array, *, dropout_units=None) -> jax.Array:
    """``nn.RNN``/``nn.LSTM``/``nn.GRU``'s first output: every step's hidden state of the
    last layer, ``(B, T, dirs * H)`` (``batch_first``) or ``(T, B, dirs * H)``, from
    zero initial states. Each layer's input products ``x W_ih^T + b_ih`` are one
    matmul over all steps; the steps are a ``lax.scan``. A bidirectional layer
    runs a second set of weights (``_reverse``) over the reversed sequence and
    concatenates ``[forward, backward]`` features. ``dropout_units``: in
    training, ``num_layers - 1`` arrays of ``U[0, 1)`` draws, one per layer
    output but the last (`dropout_from_unit` at ``spec.dropout``), as PyTorch's
    ``dropout`` argument applies."""
    sequence = jnp.swapaxes(x, 0, 1) if spec.batch_first else x   # (T, B, features)
    for layer in range(spec.num_layers):
        outputs = []
        for direction in range(spec.directions):
            suffix = f"_l{layer}{'_reverse' if direction else ''}"
            inputs = sequence[::-1] if direction else sequence
            states = _run_cell(spec, params, suffix, inputs)
            outputs.append(states[::-1] if direction else states)
        sequence = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
        if dropout_units is not None and layer < spec.num_layers - 1:
            sequence = dropout_from_unit(sequence, spec.dropout, dropout_units[layer])
    return jnp.swapaxes(sequence, 0, 1) if spec.batch_first else sequence


def _run_cell(spec: Recurrent, params: LayerParams, suffix: str, inputs: jax.Array) -> jax.Array:
    """One direction of one layer over ``inputs (T, B, F)``: the hidden states ``(T, B, H)``."""
    w_ih, w_hh = params[f"weight_ih{suffix}"], params[f"weight_hh{suffix}"]
    projected = inputs @ w_ih.T                              # (T, B, gates * H)
    b_hh = None
    if spec.bias:
        projected = projected + params[f"bias_ih{suffix}"][None, None, :]
        b_hh = params[f"bias_hh{suffix}"][None, :]
    hidden = jnp.zeros((inputs.shape[1], spec.hidden_size), inputs.dtype)

    def recurrent_part(h):
        out = h @ w_hh.T
        return out if b_hh is None else out + b_hh

    if isinstance(spec, LSTM):
        def step(carry, x_t):
            h, c = carry
            i, f, g, o = jnp.split(x_t + recurrent_part(h), 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        _, states = jax.lax.scan(step, (hidden, hidden), projected)
    elif isinstance(spec, GRU):
        def step(h, x_t):
            x_r, x_z, x_n = jnp.split(x_t, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(recurrent_part(h), 3, axis=-1)
            r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            h = (1.0 - z) * n + z * h
            return h, h

        _, states = jax.lax.scan(step, hidden, projected)
    else:
        act = jnp.tanh if spec.nonlinearity == "tanh" else jax.nn.relu

        def step(h, x_t):
            h = act(x_t + recurrent_part(h))
            return h, h

        _, states = jax.lax.scan(step, hidden, projected)
    return states


def recurrent_dropout_sizes(spec: Recurrent, batch: int, steps: int) -> list[int]:
    """How many dropout draws `recurrent` takes in training: one mask of
    ``B * T * dirs * H`` per layer output but the last (none at rate 0)."""
    if spec.dropout == 0.0 or spec.num_layers == 1:
        return []
    return [batch * steps * spec.directions * spec.hidden_size] * (spec.num_layers - 1)


def batch_norm(spec, params: LayerParams, state: LayerParams, x: jax.Array, *, train: bool
               ) -> tuple[jax.Array, LayerParams]:
    """``nn.BatchNorm1d/2d``: ``(y, new_state)`` for ``x`` ``(B, C)`` or NHWC ``(B, H, W, C)``.

    In training, or without running statistics: the batch's per-channel mean and
    biased variance over every axis but the channels::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    and, tracking running statistics in training, with ``n`` values per channel::

        num_batches_tracked += 1;  f = momentum, or 1 / num_batches_tracked when momentum is None
        running_mean = (1 - f) running_mean + f mean
        running_var  = (1 - f) running_var  + f var * n / (n - 1)     (the unbiased variance)

    In evaluation, tracking: the running statistics instead. The statistics and
    the normalisation run in at least float32 (as under ``torch.autocast``), the
    result in ``x``'s dtype; the state keeps its dtype. Under a mesh the batch
    axes span every device, so the statistics are the global batch's (PyTorch's
    ``SyncBatchNorm``).
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(dtype)
    axes = tuple(range(x.ndim - 1))

    def per_channel(v):   # (C,) -> (1, ..., 1, C), broadcast against x
        return v.astype(dtype).reshape((1,) * (x.ndim - 1) + (-1,))

    new_state = state
    if train or not spec.track_running_stats:
        if cpu.fast_paths():   # the sums as matrix-vector products (`funcnets.cpu.batch_norm_train`)
            ones = jnp.ones((x.shape[-1],), dtype)
            weight = params["weight"].astype(dtype) if spec.affine else ones
            bias = params["bias"].astype(dtype) if spec.affine else jnp.zeros_like(ones)
            y, mean, var = cpu.batch_norm_train(xf, weight, bias, spec.eps)
            mean, var = per_channel(mean), per_channel(var)
        else:
            mean = jnp.mean(xf, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)
            y = None
        if train and spec.track_running_stats:
            count = math.prod(x.shape[:-1])
            tracked = state["num_batches_tracked"] + 1
            factor = (1.0 / tracked if spec.momentum is None else spec.momentum)
            stats_dtype = state["running_mean"].dtype
            mean_, var_ = jax.lax.stop_gradient((mean.reshape(-1), var.reshape(-1) * (count / max(count - 1, 1))))
            new_state = {
                "running_mean": ((1 - factor) * state["running_mean"] + factor * mean_).astype(stats_dtype),
                "running_var": ((1 - factor) * state["running_var"] + factor * var_).astype(stats_dtype),
                "num_batches_tracked": tracked}
        if y is not None:
            return y.astype(x.dtype), new_state
    else:
        mean, var = per_channel(state["running_mean"]), per_channel(state["running_var"])
    y = (xf - mean) / jnp.sqrt(var + spec.eps)
    if spec.affine:
        y = y * per_channel(params["weight"]) + per_channel(params["bias"])
    return y.astype(x.dtype), new_state


def layer_norm(spec: LayerNorm, params: LayerParams, x: jax.Array) -> jax.Array:
    """``nn.LayerNorm``: each example normalised over its trailing ``normalized_shape``
    axes (mean, biased variance), then ``* weight + bias`` elementwise."""
    axes = tuple(range(x.ndim - len(_normalized_shape(spec)), x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + spec.eps)
    lead = (1,) * (x.ndim - len(axes))
    if spec.elementwise_affine:
        y = y * params["weight"].reshape(lead + params["weight"].shape)
        if spec.bias:
            y = y + params["bias"].reshape(lead + params["bias"].shape)
    return y


def group_norm(spec: GroupNorm, params: LayerParams, x: jax.Array) -> jax.Array:
    """``nn.GroupNorm`` on ``(B, C)`` or NHWC ``(B, H, W, C)``: channels in ``num_groups``
    consecutive groups, each (example, group) normalised over its positions and
    channels (biased variance), then per-channel ``weight``, ``bias``."""
    groups = x.reshape(*x.shape[:-1], spec.num_groups, x.shape[-1] // spec.num_groups)
    axes = tuple(range(1, groups.ndim - 2)) + (groups.ndim - 1,)
    mean = jnp.mean(groups, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(groups - mean), axis=axes, keepdims=True)
    y = ((groups - mean) / jnp.sqrt(var + spec.eps)).reshape(x.shape)
    if not spec.affine:
        return y
    lead = (1,) * (x.ndim - 1)
    return y * params["weight"].reshape(lead + (-1,)) + params["bias"].reshape(lead + (-1,))


def activation(spec, x: jax.Array) -> jax.Array:
    """The activation layer ``spec`` (`ACTIVATIONS`) on ``x``, as ``torch.nn`` computes it."""
    if isinstance(spec, ReLU):
        return jax.nn.relu(x)
    if isinstance(spec, Sigmoid):
        return jax.nn.sigmoid(x)
    if isinstance(spec, Tanh):
        return jnp.tanh(x)
    if isinstance(spec, LeakyReLU):
        return jnp.where(x > 0, x, x * spec.negative_slope)
    if isinstance(spec, GELU):
        return jax.nn.gelu(x, approximate=spec.approximate == "tanh")
    if isinstance(spec, ELU):
        negative = jnp.where(x > 0, jnp.zeros_like(x), x)   # expm1 of x <= 0 only (no overflow); gradient 1 there
        return jnp.where(x > 0, x, spec.alpha * jnp.expm1(negative))
    if isinstance(spec, SiLU):
        return jax.nn.silu(x)
    if isinstance(spec, Softmax):
        return jax.nn.softmax(x, axis=softmax_axis(spec.dim, x.ndim))
    raise TypeError(f"not an activation layer: {spec!r}")


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
