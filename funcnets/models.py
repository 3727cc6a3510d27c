"""The tutorial nets, and nets of one's own, as pure functions over plain nested-dict pytrees.

>>> import jax, jax.numpy as jnp, funcnets as fn
>>> model = fn.models.get("mnist_cnn")
>>> params = model.init(jax.random.key(0))          # {"conv1": {"kernel", "bias"}, ...}
>>> model.apply(params, jnp.zeros((2, 28, 28, 1))).shape
(2, 10)

Parameter names are the PyTorch module names, so ``params["fc1"]["kernel"]``
is ``state_dict["fc1.weight"]`` (transposed; see `funcnets.layers` for the
layouts and `funcnets.interop` for the conversion). Inputs are float NHWC
batches ``(B, H, W, C)``; the MLPs also take flat ``(B, H*W*C)`` batches.

Four ways to a `Model`: `sequential` composes funcnets' layers as
``nn.Sequential`` does; `from_flax` takes a Flax module (Linen or NNX) and
`from_equinox` an Equinox module (`funcnets.bridges`; `to_flax`/`to_equinox`
give them back trained); `from_functions` takes a pair of pure
``init``/``apply`` functions. The tutorial nets below are
`sequential` nets, each next to the others in a few lines.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnets import keys, layers

Params = dict[str, dict[str, jax.Array]]
ModelState = dict[str, dict[str, jax.Array]]   # per layer: batch norm's running statistics


class Variables(NamedTuple):
    """A net's params and its model state together (what a PyTorch ``state_dict`` holds
    for a net with buffers: `funcnets.interop.params_from_torch`)."""

    params: Params
    state: ModelState
Forward = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Model:
    """A model: its layers, a pure forward function, and what it expects.

    Attributes:
      name: registry name (``funcnets.models.names()``).
      layers: ``(torch_module_name, layer_spec)`` pairs, in PyTorch's order.
      forward: ``forward(params, state, x, *, train, rng, dropout) -> (outputs, state)``;
        ``state`` is the model state (`init_state`; ``{}`` for a net without one).
      input_shape: one example's shape, ``(H, W, C)`` (or ``(features,)`` for
        an MLP on flat rows).
      num_classes: width of the output.
      outputs: ``"log_probs"`` (the net ends in ``log_softmax``; trained
        with NLL as the tutorial does) or ``"logits"`` (trained with
        cross-entropy).
      dropout: dropout rates in forward order; ``(0.0, ...)`` turns dropout off
        (used to compare training curves with PyTorch step for step).
      options: the constructor arguments it was built with, as ``(name, value)``
        pairs (``funcnets.torch_models.twin`` builds the PyTorch twin with them).
      init_fn: a model of one's own (`from_functions`, `from_flax`): its
        ``init(key) -> params``, used instead of the layers' PyTorch init.
      stochastic: whether ``train=True`` needs an ``rng`` (default: any dropout).
      sequence: a `sequential` net's ``(name, layer)`` entries, every layer
        (its PyTorch twin is the ``nn.Sequential`` of the same entries).
      source: the Flax or Equinox module a model of one's own came from
        (`funcnets.bridges`), which ``to_flax``/``to_equinox`` rebuild with
        trained weights.

    Models are hashable values, so they can ride along in a jitted train
    state as static data.
    """

    name: str
    layers: tuple[tuple[str, layers.Layer], ...]
    forward: Forward
    input_shape: tuple[int, ...]
    num_classes: int
    outputs: Literal["log_probs", "logits"]
    dropout: tuple[float, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    init_fn: Callable[[jax.Array], Any] | None = None
    stochastic: bool | None = None
    sequence: tuple[tuple[str, Any], ...] | None = None
    source: Any = None

    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Fresh parameters from ``key``, in ``dtype``: a nested dict.

        funcnets' nets draw every layer from PyTorch's default init: one
        ``jax.random.uniform`` draw of `param_count` numbers, cut in layer
        order (`funcnets.layers.init_from_unit`), in one jitted program per
        model and dtype (XLA:CPU compiles each random draw on its own, about
        0.4 s apiece). A model of one's own (`from_flax`, `from_functions`)
        runs its own ``init_fn(key)``, its floating params cast to ``dtype`` (a
        module of Flax NNX or Equinox comes with its weights drawn, which
        ``init_fn`` returns whatever the key: `funcnets.bridges`)."""
        keys.check_key(key, "key")
        if self.init_fn is not None:
            return _init_custom(self, key, jnp.dtype(dtype))
        return _init_params(self, key, jnp.dtype(dtype))

    def apply(self, params: Params, x: jax.Array, *, train: bool = False,
              rng: jax.Array | None = None, state: ModelState | None = None) -> jax.Array:
        """``(B, H, W, C)`` (or ``(B, H*W*C)`` for MLPs) ``-> (B, num_classes)``.

        ``train=True`` activates dropout, drawn from ``rng``, and batch norm's
        batch statistics. A net with model state (`has_state`) evaluates with
        its running statistics, so ``train=False`` needs ``state``
        (`apply_with_state` also returns the updated state).
        """
        if state is None:
            if self.has_state and not train:
                raise ValueError(f"{self.name}: the net keeps running statistics (batch norm); evaluating "
                                 "needs them: apply(params, x, state=train_state.model_state)")
            state = self.init_state() if self.has_state else {}
        return self.apply_with_state(params, state, x, train=train, rng=rng)[0]

    def apply_with_state(self, params: Params, state: ModelState, x: jax.Array, *, train: bool = False,
                         rng: jax.Array | None = None) -> tuple[jax.Array, ModelState]:
        """``(outputs, new_state)``: `apply` with the model state (`init_state`; ``{}``
        without one), updated in training (batch norm's running statistics) and
        returned unchanged in evaluation."""
        self.check_images(x, "x")
        if train and self.needs_rng and rng is None:
            raise ValueError(f"{self.name}: train=True applies dropout and needs rng=<PRNG key>")
        return self.forward(params, state, x, train=train, rng=rng, dropout=self.dropout)

    def init_state(self, dtype=jnp.float32) -> ModelState:
        """The model state a fresh net starts with, its floats in ``dtype``: per batch-norm
        layer (tracking running statistics) ``{"running_mean", "running_var",
        "num_batches_tracked"}``, as PyTorch's buffers start; ``{}`` for a net without.
        A model of one's own whose ``init_fn`` returns `Variables` starts from
        their state (drawn with key 0: running statistics are not random)."""
        if self.init_fn is not None:
            return _init_custom_state(self, jnp.dtype(dtype)) if self.has_state else {}
        if self.sequence is None:
            return {}
        return {name: layers.init_state(spec, dtype) for name, spec in self.sequence if layers.state_shapes(spec)}

    @property
    def has_state(self) -> bool:
        """Whether the net keeps model state (running statistics) beside its params."""
        if self.init_fn is not None:
            return bool(jax.tree.leaves(_custom_state_shapes(self)))
        return self.sequence is not None and any(layers.state_shapes(spec) for _, spec in self.sequence)

    @property
    def needs_rng(self) -> bool:
        """Whether ``train=True`` draws random numbers (dropout), so needs ``rng``."""
        return any(self.dropout) if self.stochastic is None else self.stochastic

    @property
    def param_count(self) -> int:
        if self.init_fn is not None:
            return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(self.param_shapes()))
        return sum(layers.param_count(spec) for _, spec in self.layers)

    def param_shapes(self):
        """The params' tree of ``jax.ShapeDtypeStruct`` (traced once per model; nothing is computed)."""
        return _param_shapes(self)

    @property
    def accepts_flat_input(self) -> bool:
        return bool(self.layers) and isinstance(self.layers[0][1], layers.Linear)

    @property
    def reads_rows(self) -> bool:
        """Whether it starts with a recurrent layer on ``(T, features)`` sequences, so also
        takes one-channel images ``(B, T, features, 1)`` as sequences of rows."""
        return (self.sequence is not None and isinstance(self.sequence[0][1], layers.Recurrent.__args__)
                and len(self.input_shape) == 2)

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
        if self.reads_rows and len(shape) == 4 and tuple(shape[1:]) == (*self.input_shape, 1):
            return
        expected = f"(B, {', '.join(map(str, self.input_shape))})"
        if self.accepts_flat_input and len(self.input_shape) > 1:
            expected += f" or (B, {flat[0]})"
        hint = ""
        if len(shape) == 4 and shape[1] == self.input_shape[-1] and shape[-1] != self.input_shape[-1]:
            hint = " (this looks like NCHW; funcnets takes NHWC: x.transpose(0, 2, 3, 1))"
        raise ValueError(f"{self.name}: {argument} must have shape {expected}, got {tuple(shape)}{hint}")


@functools.lru_cache(maxsize=64)
def _param_shapes(model: Model):
    return jax.eval_shape(model.init, jax.random.key(0))


@functools.lru_cache(maxsize=64)
def _custom_state_shapes(model: Model):
    initial = jax.eval_shape(model.init_fn, jax.random.key(0))
    return initial.state if isinstance(initial, Variables) else {}


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, tree)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_custom(model: Model, key: jax.Array, dtype):
    initial = model.init_fn(key)
    return _cast_floats(initial.params if isinstance(initial, Variables) else initial, dtype)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_custom_state(model: Model, dtype):
    return _cast_floats(model.init_fn(jax.random.key(0)).state, dtype)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(model: Model, key: jax.Array, dtype) -> Params:
    draws = [layers.draw_count(spec) for _, spec in model.layers]
    unit = jax.random.uniform(key, (sum(draws),), dtype)
    pieces = layers.split_sizes(unit, draws)
    return {name: layers.init_from_unit(spec, piece) for (name, spec), piece in zip(model.layers, pieces)}


# --- models of one's own -------------------------------------------------------

def sequential(*entries, input_shape: tuple[int, ...], name: str = "sequential") -> Model:
    """A net composed of funcnets' layers, as ``nn.Sequential`` composes PyTorch's.

    ``entries`` are layers (`funcnets.layers`: ``Linear``, ``Conv2d``,
    ``ConvTranspose2d``, ``RNN``/``LSTM``/``GRU`` with ``batch_first=True`` and
    ``Last``, the activations, the pools, the norms, ``Flatten``, ``Dropout``,
    ``Dropout2d``, ``Softmax``, ``LogSoftmax``) or ``(name, layer)`` pairs;
    unnamed ones are named by their index, as ``nn.Sequential`` names them, so
    ``params["0"]`` is ``state_dict["0.weight"]``. A dotted name nests, as an
    ``nn.Sequential`` attribute does: ``"conv.0"`` is layer 0 of ``conv``. The net gets PyTorch's
    default init, `param_count`, interop both ways, a PyTorch twin
    (``funcnets.torch_models.twin``: the ``nn.Sequential`` of the same
    entries) and every training entry point. It ends in log-probabilities
    (trained with NLL) when its last layer is ``LogSoftmax``, else in logits
    (cross-entropy). Shapes are checked when it is built: a layer that cannot
    take its input raises a ValueError naming the layer and both shapes.
    In training, all dropout masks come from one draw of the step's key. Batch
    norms keep model state (`Model.init_state`). A net
    that starts with a recurrent layer takes ``(B, T, features)`` sequences
    (``input_shape=(T, features)``), and one-channel images ``(B, T, features, 1)``
    as rows: a row-by-row MNIST classifier is ``sequential(("rnn", LSTM(28, 128,
    batch_first=True)), Last(), ("fc", Linear(128, 10)), LogSoftmax(),
    input_shape=(28, 28))``.

    >>> import funcnets as fn
    >>> L = fn.layers
    >>> net = fn.models.sequential(
    ...     ("conv1", L.Conv2d(1, 16, 3)), L.ReLU(), L.MaxPool2d(2), L.Dropout2d(0.1), L.Flatten(),
    ...     ("fc1", L.Linear(16 * 13 * 13, 64)), L.ReLU(), L.Dropout(0.25), ("fc2", L.Linear(64, 10)),
    ...     L.LogSoftmax(), input_shape=(28, 28, 1), name="small_cnn")
    >>> net.param_count, net.outputs
    (173930, 'log_probs')
    """
    input_shape = _input_shape(name, input_shape)
    if not entries:
        raise ValueError(f"{name}: sequential needs at least one layer")
    named, shape, inputs, param_layers, rates = [], input_shape, [], [], []
    for index, entry in enumerate(entries):
        layer_name, spec = entry if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) \
            else (str(index), entry)
        if not isinstance(spec, (*layers.WITH_PARAMS, *layers.Stateless.__args__)):
            raise TypeError(f"{name}: entry {index} is not a funcnets layer (funcnets.layers.Linear, Conv2d, "
                            f"ReLU, ...): {entry!r}")
        if isinstance(spec, layers.Recurrent.__args__) and not spec.batch_first:
            raise ValueError(f"{name}: layer {layer_name!r} ({type(spec).__name__}) needs batch_first=True in a "
                             "sequential net: funcnets' batches are (B, T, features)")
        if any(layer_name == other for other, _ in named) or "" in layer_name.split("."):
            raise ValueError(f"{name}: layer name {layer_name!r} is empty, repeated or has an empty part")
        if isinstance(spec, layers.Linear) and named and isinstance(named[-1][1], layers.Flatten) \
                and len(inputs[-1]) == 3:
            h, w, c = inputs[-1]                         # PyTorch flattened (C, H, W); funcnets (H, W, C)
            if c > 1 and h * w > 1:
                spec = spec._replace(torch_input_chw=(c, h, w))
        inputs.append(shape)
        try:
            shape = layers.output_shape(spec, shape)
        except ValueError as error:
            raise ValueError(f"{name}: layer {layer_name!r} ({type(spec).__name__}) {error}") from None
        named.append((layer_name, spec))
        if isinstance(spec, layers.WITH_PARAMS):
            param_layers.append((layer_name, spec))
        if isinstance(spec, (layers.Dropout, layers.Dropout2d)):
            rates.append(float(spec.p))
        elif isinstance(spec, layers.Recurrent.__args__) and spec.num_layers > 1 and spec.dropout:
            rates.append(float(spec.dropout))
    if len(shape) != 1:
        raise ValueError(f"{name}: the last layer gives shape {shape}; a classifier ends in (classes,) "
                         "(add a Flatten and a Linear)")
    if not param_layers:
        raise ValueError(f"{name}: no layer with parameters (Linear, Conv2d, ConvTranspose2d, RNN, LSTM or GRU)")
    _rates(name, rates, len(rates))
    outputs = "log_probs" if isinstance(named[-1][1], layers.LogSoftmax) else "logits"
    sequence = tuple(named)
    return Model(name=name, layers=tuple(param_layers), forward=_SequentialForward(sequence),
                 input_shape=input_shape, num_classes=shape[0], outputs=outputs, dropout=tuple(rates),
                 sequence=sequence)


@dataclasses.dataclass(frozen=True)
class _SequentialForward:
    """`sequential`'s forward as a value: nets of equal entries are equal models, so
    jitted steps and inits compiled for one serve the other."""

    sequence: tuple[tuple[str, Any], ...]

    def __call__(self, params, state, x, *, train, rng, dropout):
        return _sequential_forward(self.sequence, params, state, x, train=train, rng=rng, dropout=dropout)


def _sequential_forward(sequence, params, state, x, *, train, rng, dropout):
    """`sequential`'s forward: each layer in turn, under a `jax.named_scope` of its
    name (so XLA's op names, in profiles and HLO dumps, say which layer an op is
    for: ``jvp(conv2)/...`` forward, ``transpose(jvp(conv2))/...`` its gradient;
    metadata only), the i-th dropout layer at rate ``dropout[i]``. In training, every mask comes from one `layers.uniform_draws`
    of ``rng``, cut in layer order (one hash for all: faster to compile and
    run than a key split and a draw per layer). Returns ``(outputs, state)``,
    the batch norms' entries of ``state`` updated in training."""
    new_state = dict(state)
    if x.ndim > 2 and isinstance(sequence[0][1], layers.Linear):   # images into a first Linear
        x = x.reshape(x.shape[0], -1)
    if x.ndim == 4 and isinstance(sequence[0][1], layers.Recurrent.__args__):   # one-channel images as rows
        x = x.reshape(x.shape[:3])
    masked = train and any(dropout)
    units = iter(_dropout_units(sequence, x, rng) if masked else ())
    rates = iter(dropout)
    for layer_name, spec in sequence:
        with jax.named_scope(layer_name):
            if isinstance(spec, layers.Linear):
                x = layers.linear(params[layer_name], x)
            elif isinstance(spec, layers.Conv2d):
                x = layers.conv2d(params[layer_name], x, spec.stride, spec.padding)
            elif isinstance(spec, layers.ConvTranspose2d):
                x = layers.conv_transpose2d(params[layer_name], x, spec.stride, spec.padding, spec.output_padding)
            elif isinstance(spec, layers.Recurrent.__args__):
                draws = None
                if spec.num_layers > 1 and spec.dropout:
                    rate = next(rates)
                    draws = [next(units) for _ in range(spec.num_layers - 1)] if masked and rate else None
                    spec = spec._replace(dropout=rate)
                x = layers.recurrent(spec, params[layer_name], x, dropout_units=draws)
            elif isinstance(spec, layers.ACTIVATIONS):
                x = layers.activation(spec, x)
            elif isinstance(spec, layers.POOLS):
                x = layers.pool2d(x, {layers.MaxPool2d: "max", layers.AvgPool2d: "avg",
                                      layers.MinPool2d: "min"}[type(spec)], *layers.pool_window(spec))
            elif isinstance(spec, layers.AdaptiveAvgPool2d):
                x = layers.adaptive_avg_pool2d(x, spec.output_size)
            elif isinstance(spec, layers.GlobalAvgPool2d):
                x = jnp.mean(x, axis=(1, 2), keepdims=True)
            elif isinstance(spec, layers.Flatten):
                x = x.reshape(x.shape[0], -1)
            elif isinstance(spec, layers.Last):
                x = x[:, -1]
            elif isinstance(spec, (layers.Dropout, layers.Dropout2d)):
                rate = next(rates)
                if masked:
                    from_unit = layers.dropout2d_from_unit if isinstance(spec, layers.Dropout2d) \
                        else layers.dropout_from_unit
                    x = from_unit(x, rate, next(units))
            elif isinstance(spec, layers.LogSoftmax):
                x = jax.nn.log_softmax(x, axis=-1)
            elif isinstance(spec, layers.BATCH_NORMS):
                x, layer_state = layers.batch_norm(spec, params[layer_name], state.get(layer_name, {}), x,
                                                   train=train)
                if layer_state:
                    new_state[layer_name] = layer_state
            elif isinstance(spec, layers.LayerNorm):
                x = layers.layer_norm(spec, params[layer_name], x)
            elif isinstance(spec, layers.GroupNorm):
                x = layers.group_norm(spec, params[layer_name], x)
    return x, new_state


def _dropout_units(sequence, x, rng) -> list[jax.Array]:
    """The ``U[0, 1)`` draws of every dropout layer of ``sequence`` for the batch
    ``x``: one `layers.uniform_draws`, cut into each layer's ``B * features``
    (``Dropout``) or ``B * C`` (``Dropout2d``)."""
    shape, sizes = tuple(x.shape[1:]), []
    for _, spec in sequence:
        if isinstance(spec, layers.Dropout):
            sizes.append(x.shape[0] * math.prod(shape))
        elif isinstance(spec, layers.Dropout2d):
            sizes.append(x.shape[0] * shape[-1])
        elif isinstance(spec, layers.Recurrent.__args__):
            sizes.extend(layers.recurrent_dropout_sizes(spec, x.shape[0], shape[0]))
        shape = layers.output_shape(spec, shape) if not isinstance(spec, layers.Linear) or len(shape) == 1 \
            else (spec.out_features,)
    with jax.named_scope("dropout_draws"):
        return layers.split_sizes(layers.uniform_draws(rng, sum(sizes)), sizes)


def from_functions(init: Callable[[jax.Array], Any], apply: Callable[..., Any], *,
                   input_shape: tuple[int, ...], outputs: Literal["log_probs", "logits"],
                   name: str = "custom", stochastic: bool = True, source: Any = None) -> Model:
    """A model from a pair of pure functions, for every funcnets entry point
    (`funcnets.train_step`, `train_epoch`, `evaluate`, `fit`, checkpoints, ``mesh=``).

    Args:
      init: ``init(key) -> params``, any pytree of arrays; or, for a net that
        keeps model state beside its params (batch norm's running statistics),
        ``init(key) -> Variables(params, state)``.
      apply: ``apply(params, x, *, train, rng) -> (B, classes)``; with model state
        ``apply(params, state, x, *, train, rng) -> ((B, classes), new_state)``,
        the state updated in training and returned as given in evaluation.
        ``rng`` is the step's PRNG key when ``train`` is true (for dropout), else None.
      input_shape: one example's shape, e.g. ``(28, 28, 1)``.
      outputs: ``"log_probs"`` (trained with NLL) or ``"logits"`` (cross-entropy).
      name: what checkpoints and errors call it.
      stochastic: whether ``train=True`` needs ``rng``.
      source: the library module behind it (`funcnets.bridges` sets it).

    >>> import jax, jax.numpy as jnp, funcnets as fn
    >>> def init(key):
    ...     return {"w": jax.random.normal(key, (784, 10)) * 0.01, "b": jnp.zeros(10)}
    >>> def apply(params, x, *, train, rng):
    ...     return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
    >>> model = fn.models.from_functions(init, apply, input_shape=(28, 28, 1), outputs="logits",
    ...                                  name="linear", stochastic=False)
    >>> model.param_count
    7850
    """
    if not callable(init) or not callable(apply):
        raise TypeError("from_functions: init and apply must be functions")
    input_shape = _input_shape(name, input_shape)
    if outputs not in ("log_probs", "logits"):
        raise ValueError(f"{name}: outputs must be 'log_probs' or 'logits', got {outputs!r}")
    stateful = isinstance(jax.eval_shape(init, jax.random.key(0)), Variables)

    def forward(params, state, x, *, train, rng, dropout):
        del dropout
        rng = rng if train else None
        if stateful:
            return apply(params, state, x, train=train, rng=rng)
        return apply(params, x, train=train, rng=rng), state

    model = Model(name=name, layers=(), forward=forward, input_shape=input_shape, num_classes=0,
                  outputs=outputs, init_fn=init, stochastic=bool(stochastic), source=source)
    example = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    result = jax.eval_shape(lambda p, s, x: forward(p, s, x, train=False, rng=None, dropout=()),
                            model.param_shapes(), _custom_state_shapes(model), example)
    out = result[0] if isinstance(result, tuple) and len(result) == 2 else result
    if getattr(out, "ndim", None) != 2 or out.shape[0] != 2:
        form = "(outputs, state) with outputs " if stateful else ""
        raise ValueError(f"{name}: apply must return {form}(B, classes) for a "
                         f"(B, {', '.join(map(str, input_shape))}) batch, got {getattr(out, 'shape', type(out).__name__)}")
    return dataclasses.replace(model, num_classes=int(out.shape[1]))


def _input_shape(name: str, input_shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"{name}: input_shape must be one example's shape, e.g. (28, 28, 1), got {input_shape!r}")
    return shape


# --- modules of Flax and Equinox (funcnets.bridges) ---------------------------------

from funcnets.bridges import from_equinox, from_flax, to_equinox, to_flax  # noqa: E402, F401


# --- the registry ------------------------------------------------------------

def mnist_mlp(n_in: int = 784, n_hidden: int = 100, n_out: int = 10) -> Model:
    """``SimpleNeuralNet`` of "A Neural Net in PyTorch": 784-100-10, ReLU, log-softmax.

    ``x (B, 28, 28, 1) -> flatten (B, 784) -> linear1 (B, 100) -> relu -> linear2 (B, 10)
    -> log_softmax``; trained with NLL on the log-probabilities. 79,510 params.
    The layer names are the tutorial's (``linear1``, ``linear2``), and so are
    its arguments: ``SimpleNeuralNet(n_in, n_hidden, n_out)`` ("The only
    parameter we can choose here is the number of neurons in the hidden
    layer"). With ``n_in`` other than 784 the net takes flat ``(B, n_in)`` inputs.
    """
    sizes = [_size("mnist_mlp", arg, value) for arg, value in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out))]
    net = sequential(
        layers.Flatten(),
        ("linear1", layers.Linear(sizes[0], sizes[1])), layers.ReLU(),
        ("linear2", layers.Linear(sizes[1], sizes[2])), layers.LogSoftmax(),
        input_shape=_flat_input_shape(n_in), name="mnist_mlp")
    return dataclasses.replace(net, options=(("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)))


def simple_net(input_size: int = 784, output_size: int = 10) -> Model:
    """``SimpleNet`` of "Deep Learning Deep Dive": 784-128-64-10, ReLU after *every* layer.

    ``x -> flatten (B, 784) -> fc1 (128) -> relu -> fc2 (64) -> relu -> fc3 (10) -> relu``.

    The ReLU on the output is the article's, reproduced faithfully. It is
    unusual: the outputs fed to cross-entropy as logits can never be negative,
    and a class whose pre-activation is negative gets a logit of exactly 0 with
    zero gradient, so a wrong class cannot be pushed below 0 and a right one
    stuck below 0 cannot recover. It still trains, a little worse than without
    it. 109,386 params.
    """
    net = sequential(
        layers.Flatten(),
        ("fc1", layers.Linear(_size("simple_net", "input_size", input_size), 128)), layers.ReLU(),
        ("fc2", layers.Linear(128, 64)), layers.ReLU(),
        ("fc3", layers.Linear(64, _size("simple_net", "output_size", output_size))), layers.ReLU(),
        input_shape=_flat_input_shape(input_size), name="simple_net")
    return dataclasses.replace(net, options=(("input_size", input_size), ("output_size", output_size)))


def mnist_cnn(dropout: tuple[float, float] = (0.25, 0.5)) -> Model:
    """pytorch/examples' MNIST ``Net`` (``mnist/main.py``), the best-known MNIST CNN.

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
    rates = _rates("mnist_cnn", dropout, 2)
    net = sequential(
        ("conv1", layers.Conv2d(1, 32, 3)), layers.ReLU(),
        ("conv2", layers.Conv2d(32, 64, 3)), layers.ReLU(),
        layers.MaxPool2d(2), ("dropout1", layers.Dropout(rates[0])), layers.Flatten(),
        ("fc1", layers.Linear(9216, 128)), layers.ReLU(), ("dropout2", layers.Dropout(rates[1])),
        ("fc2", layers.Linear(128, 10)), layers.LogSoftmax(),
        input_shape=(28, 28, 1), name="mnist_cnn")
    return dataclasses.replace(net, options=(("dropout", rates),))


def mastering_cnn(dropout: tuple[float, float] = (0.10, 0.25)) -> Model:
    """``ConvNet`` of "Mastering PyTorch", chapter 1 (the book's ``mnist_pytorch.ipynb``).

    ========================  ===================
    layer                     output (B, ...)
    ========================  ===================
    input                     28 x 28 x 1
    cn1 1->16 3x3, relu       26 x 26 x 16
    cn2 16->32 3x3, relu      24 x 24 x 32
    max_pool 2                12 x 12 x 32
    dp1 Dropout2d (0.10)      whole channels
    flatten                   4608
    fc1 4608->64, relu        64
    dp2 Dropout2d (0.25)      on (B, 64): element-wise
    fc2 64->10                10, then log_softmax
    ========================  ===================

    ``Dropout2d`` on the pooled ``(B, 12, 12, 32)`` map zeroes whole channels
    (one draw per image and channel). On the 2-D ``(B, 64)`` input of ``dp2``,
    PyTorch (2.13) warns that 2-D input is deprecated and applies ordinary
    element-wise dropout, one draw per unit; so does this net. 300,426 params.

    ``dropout``: the two rates; ``(0.0, 0.0)`` turns dropout off.
    """
    rates = _rates("mastering_cnn", dropout, 2)
    net = sequential(
        ("cn1", layers.Conv2d(1, 16, 3)), layers.ReLU(),
        ("cn2", layers.Conv2d(16, 32, 3)), layers.ReLU(),
        layers.MaxPool2d(2), ("dp1", layers.Dropout2d(rates[0])), layers.Flatten(),
        ("fc1", layers.Linear(4608, 64)), layers.ReLU(),
        ("dp2", layers.Dropout(rates[1])),             # Dropout2d on (B, 64): element-wise
        ("fc2", layers.Linear(64, 10)), layers.LogSoftmax(),
        input_shape=(28, 28, 1), name="mastering_cnn")
    return dataclasses.replace(net, options=(("dropout", rates),))


def cifar_cnn(output_dim: int = 10, dropout: float = 0.5) -> Model:
    """The CIFAR-10 ``Net(output_dim=10)`` of "Deep Learning Deep Dive", as its
    author's code (github.com/luspr/deep-learning-deep-dive) writes it::

        conv = Sequential(Conv2d(3, 64, 3), ReLU(), Conv2d(64, 128, 3), ReLU(),
                          Conv2d(128, 128, 3), ReLU(), Conv2d(128, 64, 3), AdaptiveAvgPool2d(1))
        fc   = Sequential(Linear(64, 32), ReLU(), Dropout(), Linear(32, 10))

    ======================  ===================
    layer                   output (B, ...)
    ======================  ===================
    input                   32 x 32 x 3
    conv.0 3->64, relu      30 x 30 x 64
    conv.2 64->128, relu    28 x 28 x 128
    conv.4 128->128, relu   26 x 26 x 128
    conv.6 128->64          24 x 24 x 64 (no ReLU)
    conv.7 global mean      64
    fc.0 64->32, relu       32
    fc.2 dropout (0.5)
    fc.3 32->10             10 logits (cross-entropy)
    ======================  ===================

    Parameter names are the ``nn.Sequential`` indices of the author's
    ``state_dict`` (``conv.0`` ... ``fc.3``). 299,434 params.

    ``output_dim``: the classes (the author's argument); ``dropout``: the rate
    of ``fc.2``; ``0.0`` turns it off.
    """
    (rate,) = _rates("cifar_cnn", (dropout,), 1)
    net = sequential(
        ("conv.0", layers.Conv2d(3, 64, 3)), ("conv.1", layers.ReLU()),
        ("conv.2", layers.Conv2d(64, 128, 3)), ("conv.3", layers.ReLU()),
        ("conv.4", layers.Conv2d(128, 128, 3)), ("conv.5", layers.ReLU()),
        ("conv.6", layers.Conv2d(128, 64, 3)), ("conv.7", layers.GlobalAvgPool2d()),
        ("view", layers.Flatten()),                      # x.view(B, 64)
        ("fc.0", layers.Linear(64, 32)), ("fc.1", layers.ReLU()), ("fc.2", layers.Dropout(rate)),
        ("fc.3", layers.Linear(32, _size("cifar_cnn", "output_dim", output_dim))),
        input_shape=(32, 32, 3), name="cifar_cnn")
    return dataclasses.replace(net, options=(("output_dim", output_dim), ("dropout", rate)))


def _size(name: str, argument: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: {argument} must be a positive integer, got {value!r}")
    return int(value)


def _flat_input_shape(n_in: int) -> tuple[int, ...]:
    """MNIST's images for 784 inputs (flat ``(B, 784)`` batches work too); else flat ``(n_in,)`` rows."""
    return (28, 28, 1) if n_in == 28 * 28 else (n_in,)


def _rates(name: str, dropout, count: int) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in dropout)
    except (TypeError, ValueError):
        rates = ()
    if len(rates) != count or not all(0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"{name}: dropout must be {count} rate(s) in [0, 1), got {dropout!r}")
    return rates


_REGISTRY: dict[str, Callable[..., Model]] = {
    "mnist_mlp": mnist_mlp,
    "simple_net": simple_net,
    "mnist_cnn": mnist_cnn,
    "mastering_cnn": mastering_cnn,
    "cifar_cnn": cifar_cnn,
}


def names() -> list[str]:
    """The registered model names."""
    return list(_REGISTRY)


def get(name: str, **options) -> Model:
    """The tutorial net called ``name``, built with its tutorial's arguments.

    Args:
      name: one of `names` (``mnist_mlp``, ``simple_net``, ``mnist_cnn``,
        ``mastering_cnn``, ``cifar_cnn``).
      **options: its constructor's arguments: ``n_in``/``n_hidden``/``n_out``
        (``mnist_mlp``), ``input_size``/``output_size`` (``simple_net``),
        ``output_dim`` (``cifar_cnn``), and ``dropout`` rates for the nets with
        dropout.

    Returns:
      A `Model`; equal calls give equal models (they share compiled steps).

    Raises:
      ValueError: an unknown name (the message lists the known ones).
      TypeError: an option the net does not take.

    >>> import funcnets as fn
    >>> fn.models.get("mnist_mlp", n_hidden=200).param_count
    159010
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as error:
        raise TypeError(f"model {name!r} does not take options {sorted(options)}: {error}") from None
