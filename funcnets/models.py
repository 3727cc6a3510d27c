"""The four tutorial nets as pure functions over plain nested-dict pytrees.

>>> import jax, jax.numpy as jnp, funcnets as fn
>>> model = fn.models.get("mnist_cnn")
>>> params = model.init(jax.random.key(0))          # {"conv1": {"kernel", "bias"}, ...}
>>> model.apply(params, jnp.zeros((2, 28, 28, 1))).shape
(2, 10)

Parameter names are the PyTorch module names, so ``params["fc1"]["kernel"]``
is ``state_dict["fc1.weight"]`` (transposed; see `funcnets.layers` for the
layouts and `funcnets.interop` for the conversion). Inputs are float NHWC
batches ``(B, H, W, C)``; the MLPs also take flat ``(B, H*W*C)`` batches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from funcnets import layers

Params = dict[str, dict[str, jax.Array]]
Forward = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Model:
    """A model: its layers, a pure forward function, and what it expects.

    Attributes:
      name: registry name (``funcnets.models.names()``).
      layers: ``(torch_module_name, layer_spec)`` pairs, in PyTorch's order.
      forward: ``forward(params, x, *, train, rng, dropout) -> outputs``.
      input_shape: one example's shape, ``(H, W, C)``.
      num_classes: width of the output.
      outputs: ``"log_probs"`` (the net ends in ``log_softmax``; trained
        with NLL as the tutorial does) or ``"logits"`` (trained with
        cross-entropy).
      dropout: dropout rates in forward order; ``(0.0, ...)`` turns dropout off
        (used to compare training curves with PyTorch step for step).

    Models are hashable values, so they can ride along in a jitted train
    state as static data.
    """

    name: str
    layers: tuple[tuple[str, layers.Layer], ...]
    forward: Forward
    input_shape: tuple[int, int, int]
    num_classes: int
    outputs: Literal["log_probs", "logits"]
    dropout: tuple[float, ...] = ()

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Draws every layer from PyTorch's default init; returns a nested dict.

        One ``jax.random.uniform`` draw of `param_count` numbers from ``key``,
        cut in layer order (`funcnets.layers.init_from_unit`), in one jitted
        program per model and dtype: XLA:CPU compiles each random draw on its
        own, about 0.4 s apiece, so a draw per tensor cost the CNNs 4-6 s
        before their first step."""
        layers.check_key(key, "key")
        return _init_params(self, key, jnp.dtype(dtype))

    def apply(self, params: Params, x: jax.Array, *, train: bool = False,
              rng: jax.Array | None = None) -> jax.Array:
        """``(B, H, W, C)`` (or ``(B, H*W*C)`` for MLPs) ``-> (B, num_classes)``.

        ``train=True`` activates dropout, drawn from ``rng``.
        """
        self.check_images(x, "x")
        if train and any(self.dropout) and rng is None:
            raise ValueError(f"{self.name}: train=True applies dropout and needs rng=<PRNG key>")
        return self.forward(params, x, train=train, rng=rng, dropout=self.dropout)

    @property
    def param_count(self) -> int:
        return sum(layers.param_count(spec) for _, spec in self.layers)

    @property
    def accepts_flat_input(self) -> bool:
        return isinstance(self.layers[0][1], layers.Linear)

    def check_images(self, x, argument: str = "images") -> None:
        """Raises a clear error for a batch this model cannot take (works on tracers)."""
        shape = getattr(x, "shape", None)
        dtype = getattr(x, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(f"{argument} must be an array, got {type(x).__name__}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{argument} must be floating point (normalised images), got dtype {dtype}; "
                "convert uint8 images with funcnets' data normalisation or x.astype(jnp.float32)")
        flat = (math.prod(self.input_shape),)
        if len(shape) >= 1 and tuple(shape[1:]) == self.input_shape:
            return
        if self.accepts_flat_input and len(shape) == 2 and tuple(shape[1:]) == flat:
            return
        expected = f"(B, {', '.join(map(str, self.input_shape))})"
        if self.accepts_flat_input:
            expected += f" or (B, {flat[0]})"
        hint = ""
        if len(shape) == 4 and shape[1] == self.input_shape[-1] and shape[-1] != self.input_shape[-1]:
            hint = " (this looks like NCHW; funcnets takes NHWC: x.transpose(0, 2, 3, 1))"
        raise ValueError(f"{self.name}: {argument} must have shape {expected}, got {tuple(shape)}{hint}")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(model: Model, key: jax.Array, dtype) -> Params:
    unit = jax.random.uniform(key, (model.param_count,), dtype)
    pieces = layers.split_sizes(unit, [layers.param_count(spec) for _, spec in model.layers])
    return {name: layers.init_from_unit(spec, piece) for (name, spec), piece in zip(model.layers, pieces)}


# --- forward functions -------------------------------------------------------
# Each layer runs under a `jax.named_scope` of its param name, so XLA's op names
# (profiles, HLO dumps) say which layer an op is for: ``jvp(conv2)/...`` in the
# forward pass, ``transpose(jvp(conv2))/...`` in its gradient. Metadata only:
# the compiled program is the same.

def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _mnist_mlp(params, x, *, train, rng, dropout):
    del train, rng, dropout
    with jax.named_scope("fc1"):
        x = jax.nn.relu(layers.linear(params["fc1"], _flatten(x)))
    with jax.named_scope("fc2"):
        return jax.nn.log_softmax(layers.linear(params["fc2"], x), axis=-1)


def _simple_net(params, x, *, train, rng, dropout):
    del train, rng, dropout
    x = _flatten(x)
    for name in ("fc1", "fc2", "fc3"):
        with jax.named_scope(name):
            x = jax.nn.relu(layers.linear(params[name], x))
    return x


def _mnist_cnn(params, x, *, train, rng, dropout):
    with jax.named_scope("conv1"):
        x = jax.nn.relu(layers.conv2d(params["conv1"], x))
    with jax.named_scope("conv2"):
        x = jax.nn.relu(layers.conv2d(params["conv2"], x))
    with jax.named_scope("max_pool"):
        x = layers.max_pool2d(x, 2)
    masked = train and any(dropout)
    if masked:
        with jax.named_scope("dropout_draws"):
            # Both masks from one draw: (B, 12, 12, 64) then (B, 128) uniforms, one
            # hash and no key split (a split and two draws compiled 1.1 s slower when
            # the hash was JAX's looped one; with layers.threefry2x32_hash, 0-0.3 s).
            sizes = [x.size, x.shape[0] * params["fc1"]["kernel"].shape[1]]
            pooled_unit, fc1_unit = layers.split_sizes(layers.uniform_draws(rng, sum(sizes)), sizes)
        with jax.named_scope("dropout1"):
            x = layers.dropout_from_unit(x, dropout[0], pooled_unit)
    with jax.named_scope("fc1"):
        x = jax.nn.relu(layers.linear(params["fc1"], _flatten(x)))
    if masked:
        with jax.named_scope("dropout2"):
            x = layers.dropout_from_unit(x, dropout[1], fc1_unit)
    with jax.named_scope("fc2"):
        return jax.nn.log_softmax(layers.linear(params["fc2"], x), axis=-1)


def _cifar_cnn(params, x, *, train, rng, dropout):
    del train, rng, dropout
    for name, pool in (("conv1", True), ("conv2", True), ("conv3", False), ("conv4", True)):
        with jax.named_scope(name):
            x = jax.nn.relu(layers.conv2d(params[name], x))
            x = layers.max_pool2d(x) if pool else x
    with jax.named_scope("fc1"):
        x = jax.nn.relu(layers.linear(params["fc1"], _flatten(x)))
    with jax.named_scope("fc2"):
        return layers.linear(params["fc2"], x)


# --- the registry ------------------------------------------------------------

def mnist_mlp() -> Model:
    """784-100-10 MLP, ReLU, log-softmax output ("A Neural Net in PyTorch").

    ``x (B, 28, 28, 1) -> flatten (B, 784) -> fc1 (B, 100) -> relu -> fc2 (B, 10)
    -> log_softmax``; trained with NLL on the log-probabilities. 79,510 params.
    """
    return Model(
        name="mnist_mlp",
        layers=(("fc1", layers.Linear(784, 100)), ("fc2", layers.Linear(100, 10))),
        forward=_mnist_mlp, input_shape=(28, 28, 1), num_classes=10, outputs="log_probs",
    )


def simple_net() -> Model:
    """``SimpleNet`` of "Deep Learning Deep Dive": 784-128-64-10, ReLU after *every* layer.

    ``x -> flatten (B, 784) -> fc1 (128) -> relu -> fc2 (64) -> relu -> fc3 (10) -> relu``.

    The ReLU on the output is the article's, reproduced faithfully. It is
    unusual: the outputs fed to cross-entropy as logits can never be negative,
    and a class whose pre-activation is negative gets a logit of exactly 0 with
    zero gradient, so a wrong class cannot be pushed below 0 and a right one
    stuck below 0 cannot recover. It still trains, a little worse than without
    it. 109,386 params.
    """
    return Model(
        name="simple_net",
        layers=(("fc1", layers.Linear(784, 128)), ("fc2", layers.Linear(128, 64)),
                ("fc3", layers.Linear(64, 10))),
        forward=_simple_net, input_shape=(28, 28, 1), num_classes=10, outputs="logits",
    )


def mnist_cnn(dropout: tuple[float, float] = (0.25, 0.5)) -> Model:
    """The pytorch/examples MNIST ``Net`` ("Mastering PyTorch", chapter 1).

    ======================  ===================
    layer                   output (B, ...)
    ======================  ===================
    input                   28 x 28 x 1
    conv1 1->32 3x3, relu   26 x 26 x 32
    conv2 32->64 3x3, relu  24 x 24 x 64
    max_pool 2              12 x 12 x 64
    dropout1 (0.25)
    flatten                 9216
    fc1 9216->128, relu     128
    dropout2 (0.5)
    fc2 128->10             10, then log_softmax
    ======================  ===================

    1,199,882 params. PyTorch flattens NCHW (C, H, W); funcnets flattens NHWC,
    and `funcnets.interop` permutes fc1's rows once when porting weights, so the
    outputs agree with PyTorch's on ported weights.

    ``dropout``: the two rates; ``(0.0, 0.0)`` turns dropout off.
    """
    rates = tuple(float(r) for r in dropout)
    if len(rates) != 2 or not all(0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"mnist_cnn: dropout must be two rates in [0, 1), got {dropout!r}")
    return Model(
        name="mnist_cnn",
        layers=(("conv1", layers.Conv2d(1, 32, 3)), ("conv2", layers.Conv2d(32, 64, 3)),
                ("fc1", layers.Linear(9216, 128, torch_input_chw=(64, 12, 12))),
                ("fc2", layers.Linear(128, 10))),
        forward=_mnist_cnn, input_shape=(28, 28, 1), num_classes=10, outputs="log_probs",
        dropout=rates,
    )


def cifar_cnn() -> Model:
    """The CIFAR-10 CNN of "Deep Learning Deep Dive", reconstructed.

    The article lists four 3x3 convs 3->64->128->128->64 and Linear 64->32,
    32->10, trained with Adam (lr 1e-3, batch 16, 10 epochs, 61.2% test
    accuracy). Its listing is garbled: no activation or pooling survives, and
    ``x.view(B, 64)`` cannot follow four convs on a 32x32 input. The smallest
    net that keeps every listed layer, PyTorch's default (VALID) padding, and
    reduces the 64 channels to exactly 64 features is:

    ======================  ==========================================
    layer                   output (B, ...), and why
    ======================  ==========================================
    input                   32 x 32 x 3
    conv1 3->64, relu       30 x 30 x 64
    max_pool 2              15 x 15 x 64
    conv2 64->128, relu     13 x 13 x 128
    max_pool 2              6 x 6 x 128   (floor, as F.max_pool2d)
    conv3 128->128, relu    4 x 4 x 128   (no pool: 2x2 would be too
                                           small for conv4's 3x3)
    conv4 128->64, relu     2 x 2 x 64
    max_pool 2              1 x 1 x 64    -> flatten: the 64 features
                                           that ``view(B, 64)`` expects
    fc1 64->32, relu        32            (ReLU between the Linears: a
                                           stack of Linears with nothing
                                           between is one Linear)
    fc2 32->10              10 logits     (trained with cross-entropy)
    ======================  ==========================================

    Choices: ReLU after every conv and fc1 (the article's other nets use ReLU);
    max-pooling (not average) as in the article's MNIST CNN; no padding, no
    dropout, no batch-norm (none is listed). 299,434 params.
    """
    return Model(
        name="cifar_cnn",
        layers=(("conv1", layers.Conv2d(3, 64, 3)), ("conv2", layers.Conv2d(64, 128, 3)),
                ("conv3", layers.Conv2d(128, 128, 3)), ("conv4", layers.Conv2d(128, 64, 3)),
                ("fc1", layers.Linear(64, 32)), ("fc2", layers.Linear(32, 10))),
        forward=_cifar_cnn, input_shape=(32, 32, 3), num_classes=10, outputs="logits",
    )


_REGISTRY: dict[str, Callable[..., Model]] = {
    "mnist_mlp": mnist_mlp,
    "simple_net": simple_net,
    "mnist_cnn": mnist_cnn,
    "cifar_cnn": cifar_cnn,
}


def names() -> list[str]:
    """The registered model names."""
    return list(_REGISTRY)


def get(name: str, **options) -> Model:
    """The model called ``name``; ``options`` go to its constructor (e.g. ``dropout``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as error:
        raise TypeError(f"model {name!r} does not take options {sorted(options)}: {error}") from None
