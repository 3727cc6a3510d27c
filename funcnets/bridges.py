"""Modules of Flax (Linen, NNX) and Equinox as funcnets models, and back.

A module from one of these libraries becomes a `funcnets.models.Model` (a
`funcnets.models.from_functions` model), so it trains through every entry point:
`funcnets.train_step`, `train_epoch`, `evaluate`, `fit`, checkpoints, exact
resume, ``mesh=``. Its params are nested dicts named by the module's attribute
paths (``params["conv1"]["kernel"]``); what it keeps beside them, batch norm's
statistics, is the train state's ``model_state``: updated in training steps,
read (frozen) in evaluation. Dropout keys come from the step's key.

=========================  ==============================================================
``from_flax(linen_module)``  params: the ``"params"`` collection; model state: every other
                             collection ``module.init`` makes (``batch_stats``), made mutable
                             in training steps
``from_flax(nnx_module)``    params: the ``nnx.Param`` variables; model state: the other
                             variables (``nnx.BatchStat``); train and eval modes by
                             ``nnx.view`` (``deterministic``, ``use_running_average``)
``from_equinox(module, st)`` params: the floating arrays (``eqx.is_inexact_array``); model
                             state: the ``eqx.nn.State``; modes by ``eqx.nn.inference_mode``;
                             called per example under ``jax.vmap(axis_name="batch")``
=========================  ==============================================================

`to_flax` and `to_equinox` give back the library's own module (NNX, Equinox)
or variables (Linen) holding trained weights, to carry on in that library.

An NNX or Equinox module comes with its weights already drawn (its constructor
took the ``nnx.Rngs`` or the key), so the model's ``init`` returns those
weights whatever the key; the key still drives dropout. Linen draws them in
``module.init(key)``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from funcnets import models

Outputs = Literal["log_probs", "logits"]
_MODE_ARGUMENTS = ("train", "training", "deterministic", "use_running_average")


# --- leaves named by their paths --------------------------------------------------

def _part(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


@dataclasses.dataclass(frozen=True, eq=False)
class _Names:
    """A pytree structure with its leaves named by their paths: ``named(tree)`` is the
    nested dict of str keys funcnets trains and checkpoints (``{"conv1": {"kernel": ...}}``);
    ``tree(named)`` rebuilds the library's pytree from it."""

    treedef: Any
    paths: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, template, *, variable_values: bool = False) -> _Names:
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(template)
        paths = []
        for path, _ in with_paths:
            if variable_values and path and _part(path[-1]) == "value":   # an nnx.Variable's .value
                path = path[:-1]
            paths.append(tuple(_part(entry) for entry in path))
        if len(set(paths)) != len(paths):
            raise ValueError(f"two leaves share a name: {sorted(p for p in paths if paths.count(p) > 1)[:2]}")
        return cls(treedef, tuple(paths))

    def named(self, tree):
        leaves = self.treedef.flatten_up_to(tree)
        if self.paths == ((),):
            return leaves[0]
        out: dict = {}
        for path, leaf in zip(self.paths, leaves):
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = leaf
        return out

    def tree(self, named):
        leaves = []
        for path in self.paths:
            node = named
            for part in path:
                node = node[part]
            leaves.append(node)
        return self.treedef.unflatten(leaves)


def _check_arrays(name: str, tree, what: str, advice: str) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            raise TypeError(f"{name}: {what} {jax.tree_util.keystr(path)} holds a {type(leaf).__name__}, not an "
                            f"array; funcnets carries arrays between steps. {advice}")


# --- call signatures -------------------------------------------------------------

def _call_parameters(name: str, call, *, driven: set[str], convention: str) -> dict[str, inspect.Parameter]:
    """``call``'s parameters after the input; raises if one of them needs a value funcnets
    does not give (it passes the input and the arguments in ``driven`` only)."""
    try:
        parameters = list(inspect.signature(call).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
        raise TypeError(f"{name}: its __call__ takes no input; funcnets calls it as {convention}")
    rest = {p.name: p for p in parameters if p is not (positional[0] if positional else None)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = [p for p, param in rest.items() if param.default is param.empty and p not in driven]
    if required:
        raise TypeError(f"{name}: its __call__ needs {', '.join(repr(p) for p in required)}, which funcnets "
                        f"cannot give: it calls the module as {convention}. Give "
                        f"{'them' if len(required) > 1 else 'it'} a default, or wrap the module in one that "
                        "fills them in")
    return rest


def _mode(parameters) -> Any:
    """The keyword arguments of the mode in training (``True``) and evaluation (``False``)
    for a module whose call takes ``train``, ``training``, ``deterministic`` or
    ``use_running_average``."""
    for argument in _MODE_ARGUMENTS:
        if argument in parameters:
            flip = argument in ("deterministic", "use_running_average")
            return lambda train, a=argument, f=flip: {a: (not train) if f else train}
    return lambda train: {}


# --- Flax ------------------------------------------------------------------------

def from_flax(module, *, input_shape: tuple[int, ...], outputs: Outputs, name: str | None = None) -> models.Model:
    """A Flax module, Linen or NNX, as a funcnets model.

    **Linen.** ``module.init`` draws the params. If ``__call__`` takes ``train``
    (Flax's MNIST example), ``training``, ``deterministic`` (``nn.Dropout``'s
    convention) or ``use_running_average``, funcnets sets it for training steps
    and evaluation, and passes the step's key as the ``"dropout"`` rng. Every
    collection besides ``"params"`` that ``init`` makes (``batch_stats``) is
    model state: mutable in training steps, read-only in evaluation (so
    ``nn.BatchNorm(use_running_average=not train)``).

    **NNX.** The module's own weights (drawn by its constructor) are the
    params, its other variables (``nnx.BatchStat``) the model state. Training
    steps run ``nnx.view(module, deterministic=False, use_running_average=False)``,
    evaluation the opposite view. If ``__call__`` takes ``rngs`` (Flax's NNX
    MNIST tutorial) it gets ``nnx.Rngs(step_key)`` in training and None in
    evaluation; rng streams the module holds (``nnx.Dropout(rngs=rngs)``) are
    keyed from the step's key in each training step.

    ``input_shape`` is one example's shape as funcnets feeds it, ``(H, W, C)``
    (Flax's convolutions take NHWC too).

    >>> import flax.linen as nn, funcnets as fn
    >>> class MLP(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train: bool = False):
    ...         x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    ...         x = nn.BatchNorm(use_running_average=not train)(x)
    ...         return nn.Dense(10)(nn.Dropout(0.2, deterministic=not train)(x))
    >>> model = fn.models.from_flax(MLP(), input_shape=(28, 28, 1), outputs="logits")
    >>> model.param_count, model.has_state
    (102026, True)
    """
    import flax.linen as nn
    from flax import nnx

    if isinstance(module, nnx.Module):
        return _from_nnx(module, input_shape, outputs, name or type(module).__name__)
    if not isinstance(module, nn.Module):
        hint = " (a class: pass an instance, e.g. CNN())" if isinstance(module, type) else ""
        raise TypeError(f"from_flax takes a Flax module (flax.linen.Module or flax.nnx.Module), got "
                        f"{type(module).__name__}{hint}; an Equinox module goes to from_equinox")
    return _from_linen(module, input_shape, outputs, name or type(module).__name__)


def _from_linen(module, input_shape, outputs, name) -> models.Model:
    import flax
    import flax.linen as nn

    shape = models._input_shape(name, input_shape)
    parameters = _call_parameters(name, module.__call__, driven=set(_MODE_ARGUMENTS),
                                  convention="module.apply(variables, x[, train=...])")
    mode = _mode(parameters)
    example = jnp.zeros((1, *shape), jnp.float32)

    def variables_of(key):
        variables = module.init({"params": key, "dropout": key}, example, **mode(False))
        return flax.core.unfreeze(variables)

    collections = jax.eval_shape(variables_of, jax.random.key(0))
    if "params" not in collections:
        raise ValueError(f"{name}: module.init made no 'params' collection (collections: {sorted(collections)})")
    mutable = sorted(set(collections) - {"params"})
    if mutable and not parameters.keys() & set(_MODE_ARGUMENTS):
        raise TypeError(f"{name}: the module keeps {mutable} but its __call__ takes no train argument, so funcnets "
                        "cannot run it in evaluation mode; add `train: bool = False` to __call__ and build "
                        "nn.BatchNorm(use_running_average=not train)")

    def init(key):
        variables = variables_of(key)
        if not mutable:
            return variables["params"]
        return models.Variables(variables["params"], {c: variables[c] for c in mutable})

    if not mutable:
        def apply(params, x, *, train, rng):
            rngs = {"dropout": rng} if rng is not None else None
            return module.apply({"params": params}, x, rngs=rngs, **mode(train))
    else:
        def apply(params, state, x, *, train, rng):
            rngs = {"dropout": rng} if rng is not None else None
            variables = {"params": params, **state}
            if not train:
                return module.apply(variables, x, rngs=rngs, **mode(False)), state
            out, updates = module.apply(variables, x, rngs=rngs, mutable=mutable, **mode(True))
            return out, {**state, **flax.core.unfreeze(updates)}

    source = _Source("linen", stateful=bool(mutable),
                     rebuild=lambda params, state: {"params": params, **state})
    try:
        return models.from_functions(init, apply, input_shape=shape, outputs=outputs, name=name,
                                     stochastic=bool(parameters.keys() & set(_MODE_ARGUMENTS)), source=source)
    except flax.errors.ModifyScopeVariableError as error:
        raise ValueError(f"{name}: in evaluation (train=False) the module updates its model state; build it so "
                         f"that evaluation reads the running statistics (nn.BatchNorm(use_running_average=not "
                         f"train)). Flax said: {error}") from None


def _from_nnx(module, input_shape, outputs, name) -> models.Model:
    from flax import nnx

    shape = models._input_shape(name, input_shape)
    parameters = _call_parameters(name, module.__call__, driven={*_MODE_ARGUMENTS, "rngs"},
                                  convention="module(x[, train=...][, rngs=...])")
    mode = _mode(parameters)
    takes_rngs = "rngs" in parameters

    def view(train: bool):
        return nnx.view(module, deterministic=not train, use_running_average=not train, raise_if_not_found=False)

    graph, params, rng_state, state = nnx.split(module, nnx.Param, nnx.RngState, ...)
    train_graph = nnx.split(view(True), nnx.Param, nnx.RngState, ...)[0]
    eval_graph = nnx.split(view(False), nnx.Param, nnx.RngState, ...)[0]
    advice = ("Keep numbers that are not arrays as plain attributes (static), or wrap arrays in nnx.Param / "
              "nnx.BatchStat / nnx.Variable")
    _check_arrays(name, params, "param", advice)
    _check_arrays(name, state, "variable", advice)
    param_names = _Names.of(params, variable_values=True)
    state_names = _Names.of(state, variable_values=True)
    rng_treedef = jax.tree.structure(rng_state)
    rng_template = jax.tree.leaves(rng_state)
    initial = models.Variables(param_names.named(params), state_names.named(state))
    stateful = bool(jax.tree.leaves(state))
    stochastic = bool(rng_template) or takes_rngs or "train" in parameters or "deterministic" in parameters \
        or any(isinstance(node, nnx.Dropout) for _, node in nnx.iter_graph(module))

    def step_streams(rng):
        """The module's rng streams for one training step: key ``i`` is ``fold_in(rng, i)``,
        counts restart at 0 (so every step's dropout follows the step's key)."""
        leaves = []
        for index, leaf in enumerate(rng_template):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaves.append(jax.random.fold_in(rng, index))
            elif leaf.dtype == jnp.uint32 and leaf.ndim == 1:        # raw key data
                leaves.append(jax.random.key_data(jax.random.fold_in(rng, index)).astype(leaf.dtype))
            else:
                leaves.append(jnp.zeros_like(leaf))
        return rng_treedef.unflatten(leaves)

    def init(key):
        del key   # the module's weights were drawn when it was built
        return initial   # Variables(params, {}) for a module without state: has_state is then False

    def apply(params, state, x, *, train, rng):
        streams = step_streams(rng) if train and rng is not None else rng_treedef.unflatten(rng_template)
        net = nnx.merge(train_graph if train else eval_graph, param_names.tree(params), streams,
                        state_names.tree(state))
        arguments = mode(train)
        if takes_rngs:
            arguments["rngs"] = nnx.Rngs(rng) if train and rng is not None else None
        out = net(x, **arguments)
        if not train:
            return out, state
        return out, state_names.named(nnx.split(net, nnx.Param, nnx.RngState, ...)[3])

    source = _Source("nnx", stateful=stateful, rebuild=lambda params, state: nnx.merge(
        graph, param_names.tree(params), rng_state, state_names.tree(state)))
    return models.from_functions(init, apply, input_shape=shape, outputs=outputs, name=name,
                                 stochastic=stochastic, source=source)


# --- Equinox ---------------------------------------------------------------------

def from_equinox(module, state=None, *, input_shape: tuple[int, ...], outputs: Outputs, name: str | None = None,
                 channels_first: bool = True) -> models.Model:
    """An Equinox module as a funcnets model (equinox is an optional extra:
    ``pip install funcnets[equinox]``).

    Equinox modules take one example; funcnets calls the module under
    ``jax.vmap(..., axis_name="batch")`` (the axis name ``eqx.nn.BatchNorm``
    reduces over), with one dropout key per example split from the step's key
    when ``__call__`` takes ``key``. A module with state (batch norm) comes
    with its ``eqx.nn.State``, as ``eqx.nn.make_with_state(Net)(key)`` returns
    them, and is called ``module(x, state, key=...) -> (out, state)``; that
    state is the model state. Training steps run the module with
    ``eqx.nn.inference_mode(module, False)``, evaluation with ``True``. The
    params are its floating arrays (``eqx.is_inexact_array``), named by
    attribute path (``params["conv1"]["weight"]``, in PyTorch's layout, as
    Equinox keeps them).

    Args:
      module: an ``eqx.Module`` with its weights drawn.
      state: its ``eqx.nn.State``, for a module with state.
      input_shape: one example's shape as funcnets feeds it, ``(H, W, C)`` for images.
      outputs: ``"log_probs"`` or ``"logits"``.
      name: what checkpoints and errors call it (default: the class name).
      channels_first: Equinox's convolutions take ``(C, H, W)``: funcnets moves
        the channels of a ``(B, H, W, C)`` batch first before the call.
        False for a module that takes ``(H, W, C)``. Ignored for inputs that
        are not images.

    >>> import jax, equinox as eqx, funcnets as fn
    >>> mlp = eqx.nn.MLP(784, 10, 128, depth=1, key=jax.random.key(0))
    >>> class Flat(eqx.Module):
    ...     mlp: eqx.nn.MLP
    ...     def __call__(self, x):
    ...         return self.mlp(x.reshape(-1))
    >>> model = fn.models.from_equinox(Flat(mlp), input_shape=(28, 28, 1), outputs="logits")
    >>> model.param_count
    101770
    """
    try:
        import equinox as eqx
    except ImportError:
        raise ImportError("from_equinox needs equinox: pip install 'funcnets[equinox]'") from None
    if not isinstance(module, eqx.Module):
        raise TypeError(f"from_equinox takes an equinox.Module, got {type(module).__name__}")
    name = name or type(module).__name__
    shape = models._input_shape(name, input_shape)
    indexes = [(tuple(_part(e) for e in path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda node: isinstance(node, eqx.nn.StateIndex))[0] if isinstance(leaf, eqx.nn.StateIndex)]
    if indexes and state is None:
        raise ValueError(f"{name}: the module keeps state ({'.'.join(indexes[0][0])}); pass it with its "
                         "eqx.nn.State: model, state = eqx.nn.make_with_state(Net)(key); "
                         "from_equinox(model, state, ...)")
    if state is not None and not isinstance(state, eqx.nn.State):
        raise TypeError(f"{name}: state must be the module's eqx.nn.State, got {type(state).__name__}")
    stateful = bool(indexes)
    driven = {"key", "inference"} | ({"state"} if stateful else set())
    parameters = _call_parameters(name, module.__call__, driven=driven,
                                  convention=f"module(x{', state' if stateful else ''}[, key=...])")
    if stateful and "state" not in parameters:
        raise TypeError(f"{name}: the module keeps state, so funcnets calls module(x, state, key=...) -> "
                        "(out, state); its __call__ takes no 'state'")
    takes_key = "key" in parameters
    params, static = eqx.partition(module, eqx.is_inexact_array)
    train_static = eqx.partition(eqx.nn.inference_mode(module, False), eqx.is_inexact_array)[1]
    eval_static = eqx.partition(eqx.nn.inference_mode(module, True), eqx.is_inexact_array)[1]
    param_names = _Names.of(params)
    by_path = {}
    for path, index in indexes:
        node = by_path
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = state.get(index)
    state_names = _Names.of(by_path)
    initial = models.Variables(param_names.named(params), state_names.named(by_path))
    moves_channels = channels_first and len(shape) == 3

    def to_eqx_state(named):
        values = state_names.tree(named)
        floats = [leaf.dtype for leaf in jax.tree.leaves(values) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        # a fresh State (Equinox refuses to .set() one whose successor was made), its floats in the
        # model state's dtype (float64 params cast the statistics too: `Model.init_state`)
        eqx_state = jax.tree.map(lambda leaf: leaf.astype(floats[0]) if floats and jnp.issubdtype(
            leaf.dtype, jnp.floating) else leaf, state)
        for path, index in indexes:
            value = values
            for part in path:
                value = value[part]
            eqx_state = eqx_state.set(index, jax.tree.map(_like, value, eqx_state.get(index)))
        return eqx_state

    def from_eqx_state(eqx_state):
        values = {}
        for path, index in indexes:
            node = values
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = eqx_state.get(index)
        return state_names.named(values)

    def init(key):
        del key   # the module's weights were drawn when it was built
        return initial   # Variables(params, {}) for a module without state: has_state is then False

    def apply(named_params, named_state, x, *, train, rng):
        net = eqx.combine(param_names.tree(named_params), train_static if train else eval_static)
        if moves_channels:
            x = jnp.moveaxis(x, -1, 1)
        keys = jax.random.split(rng, x.shape[0]) if train and takes_key and rng is not None else None
        key_axis = None if keys is None else 0
        if not stateful:
            call = (lambda xi, ki: net(xi, key=ki)) if takes_key else (lambda xi, ki: net(xi))
            return jax.vmap(call, in_axes=(0, key_axis), axis_name="batch")(x, keys), named_state
        call = (lambda xi, si, ki: net(xi, si, key=ki)) if takes_key else (lambda xi, si, ki: net(xi, si))
        out, new_state = jax.vmap(call, in_axes=(0, None, key_axis), out_axes=(0, None),
                                  axis_name="batch")(x, to_eqx_state(named_state), keys)
        return out, (from_eqx_state(new_state) if train else named_state)

    def rebuild(named_params, named_state):
        trained = eqx.combine(param_names.tree(named_params), static)
        return (trained, to_eqx_state(named_state)) if stateful else trained

    source = _Source("equinox", stateful=stateful, rebuild=rebuild)
    return models.from_functions(init, apply, input_shape=shape, outputs=outputs, name=name,
                                 stochastic=takes_key, source=source)


def _like(value, old):
    """``value`` typed as ``old``: Equinox's ``State.set`` refuses a strongly typed
    counter where a weakly typed one was (as a checkpoint or ``device_get`` returns it)."""
    if getattr(old, "weak_type", False) and np.ndim(value) == 0:
        return jax.lax.full_like(old, value)
    return value


# --- back to the library ---------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class _Source:
    """How `to_flax`/`to_equinox` rebuild a library's module: ``rebuild(params, state)``."""

    library: str
    stateful: bool
    rebuild: Callable[[Any, Any], Any]


def _trained(model: models.Model, trained, library: str, call: str) -> tuple[Any, Any, _Source]:
    from funcnets.interop import _params_and_state

    source = model.source
    if not isinstance(model, models.Model) or not isinstance(source, _Source) or \
            (source.library == "equinox") != (library == "equinox"):
        where = "from_equinox" if library == "equinox" else "from_flax"
        raise TypeError(f"{call} takes a model made by funcnets.models.{where}, got "
                        f"{getattr(model, 'name', type(model).__name__)!r}")
    params, state = _params_and_state(model, trained)
    return jax.device_get(params), jax.device_get(state), source


def to_flax(model: models.Model, trained):
    """The Flax module of a `from_flax` model, holding trained weights.

    ``trained`` is the train state (or `funcnets.models.Variables`, or params
    alone for a net without model state). For an NNX module: a new NNX module
    (the given module's class, modes and rng streams) with the trained params
    and statistics. For a Linen module: its variables, ``{"params": ...,
    "batch_stats": ...}``, for ``module.apply``.
    """
    params, state, source = _trained(model, trained, "flax", "to_flax")
    return source.rebuild(params, state)


def to_equinox(model: models.Model, trained):
    """The Equinox module of a `from_equinox` model, holding trained weights:
    ``module`` or, for a module with state, ``(module, state)`` with the trained
    ``eqx.nn.State``. ``trained`` is the train state (or `funcnets.models.Variables`,
    or params alone for a module without state)."""
    params, state, source = _trained(model, trained, "equinox", "to_equinox")
    return source.rebuild(params, state)
