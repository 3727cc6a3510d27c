"""Moving parameters between funcnets and PyTorch.

``state_dict["<module>.weight"]`` / ``["<module>.bias"]`` map one to one to
``params["<module>"]["kernel"]`` / ``["bias"]``; only the layout changes
(`funcnets.layers` lists it). Values are copied exactly, so
``params_to_torch(model, params_from_torch(model, sd))`` equals ``sd`` bit for
bit, and so does the other way round.

>>> import torch, funcnets as fn
>>> from funcnets import torch_models
>>> model = fn.models.get("mnist_cnn")
>>> net = torch_models.build("mnist_cnn")
>>> params = fn.interop.params_from_torch(model, net.state_dict())
>>> _ = net.load_state_dict(fn.interop.params_to_torch(model, params))
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from funcnets import layers
from funcnets.models import Model, ModelState, Params, Variables
from funcnets.training import TrainState


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; torch itself is not needed here
        return value.detach().cpu().numpy()
    return np.asarray(value)


def torch_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """PyTorch's ``state_dict`` keys and shapes for ``model``, in PyTorch's order
    (buffers included: batch norm's running statistics)."""
    return {key: shape for key, (_, _, _, shape) in _entries(model).items()}


def _entries(model: Model) -> dict[str, tuple[str, str, Any, tuple[int, ...]]]:
    """``state_dict`` key -> (layer name, funcnets name, layer spec or ``"state"`` for a
    buffer, PyTorch shape), in PyTorch's order (a layer's params, then its buffers)."""
    if not model.layers:
        raise ValueError(f"{model.name} is a model of one's own (funcnets.models.from_flax/from_functions): "
                         "funcnets does not know its PyTorch layers, so it cannot map a state_dict to it")
    entries = {}
    for name, spec in model.layers:
        for suffix, (param, shape) in layers.torch_params(spec).items():
            entries[f"{name}.{suffix}"] = (name, param, spec, shape)
        for buffer, (shape, _) in layers.state_shapes(spec).items():
            entries[f"{name}.{buffer}"] = (name, buffer, "state", shape)
    return entries


def params_from_torch(model: Model, state_dict: Mapping[str, Any]) -> Params:
    """funcnets params from a PyTorch ``state_dict`` (torch tensors or NumPy arrays).

    The dtype is kept (a ``model.double()`` state dict gives float64 params
    when ``jax_enable_x64`` is on). Missing, unexpected or misshapen entries
    raise a ``ValueError`` naming them. For a net with model state the buffers
    are read too, and the result is a `funcnets.models.Variables` (params and
    state), which ``create_train_state(..., params=)`` takes whole.
    """
    entries = _entries(model)
    missing = [k for k in entries if k not in state_dict]
    unexpected = [k for k in state_dict if k not in entries]
    if missing or unexpected:
        raise ValueError(f"state_dict does not match {model.name}: missing {missing}, "
                         f"unexpected {unexpected}")
    arrays = {k: _to_numpy(state_dict[k]) for k in entries}
    wrong = {k: a.shape for k, a in arrays.items() if a.shape != entries[k][3]}
    if wrong:
        raise ValueError(f"state_dict shapes do not match {model.name}: got {wrong}, "
                         f"expected {({k: entries[k][3] for k in wrong})}")
    params: Params = {name: {} for name, _ in model.layers}
    state: ModelState = {}
    for key, (name, param, spec, _) in entries.items():
        if spec == "state":   # a buffer; num_batches_tracked as int32 (PyTorch's is int64)
            value = arrays[key].astype(np.int32) if param == "num_batches_tracked" else arrays[key]
            state.setdefault(name, {})[param] = jnp.asarray(value)
        else:
            params[name][param] = jnp.asarray(layers.param_from_torch(spec, param, arrays[key]))
    return Variables(params, state) if model.has_state else params


def params_to_numpy_state_dict(model: Model, params: Params | Variables) -> OrderedDict[str, np.ndarray]:
    """PyTorch's ``state_dict`` layout, as NumPy arrays (no torch needed); for a net with
    model state, ``params`` is a `funcnets.models.Variables` (or a train state)."""
    entries = _entries(model)   # a clear error for a model without PyTorch layers
    params, state = _params_and_state(model, params)
    params, state = jax.device_get((params, state))
    state_dict = OrderedDict()
    for key, (name, param, spec, _) in entries.items():
        if spec == "state":
            value = np.asarray(state[name][param])
            state_dict[key] = value.astype(np.int64) if param == "num_batches_tracked" else value
            continue
        if name not in params:
            raise ValueError(f"params have no entry {name!r} for {model.name}; got {sorted(params)}")
        state_dict[key] = np.ascontiguousarray(layers.param_to_torch(spec, param, np.asarray(params[name][param])))
    return state_dict


def _params_and_state(model: Model, given) -> tuple[Params, ModelState]:
    if isinstance(given, TrainState):
        return given.params, given.model_state
    if isinstance(given, Variables):
        return given.params, given.state
    if model.has_state:
        raise ValueError(f"{model.name} keeps model state (batch norm's running statistics), which a PyTorch "
                         "state_dict holds too: pass funcnets.models.Variables(params, state) or the train state")
    return given, {}


def params_to_torch(model: Model, params: Params | Variables) -> OrderedDict[str, Any]:
    """A PyTorch ``state_dict`` (torch tensors) that ``load_state_dict`` takes: params
    alone, or for a net with model state a `funcnets.models.Variables` or the train state."""
    import torch

    return OrderedDict((k, torch.from_numpy(v.copy()))
                       for k, v in params_to_numpy_state_dict(model, params).items())
