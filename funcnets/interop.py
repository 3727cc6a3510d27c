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

from funcnets.models import Model, Params


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor; torch itself is not needed here
        return value.detach().cpu().numpy()
    return np.asarray(value)


def torch_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """PyTorch's ``state_dict`` keys and shapes for ``model``, in PyTorch's order."""
    if not model.layers:
        raise ValueError(f"{model.name} is a model of one's own (funcnets.models.from_flax/from_functions): "
                         "funcnets does not know its PyTorch layers, so it cannot map a state_dict to it")
    shapes = {}
    for name, spec in model.layers:
        shapes[f"{name}.weight"] = spec.torch_weight_shape
        shapes[f"{name}.bias"] = spec.torch_weight_shape[:1]
    return shapes


def params_from_torch(model: Model, state_dict: Mapping[str, Any]) -> Params:
    """funcnets params from a PyTorch ``state_dict`` (torch tensors or NumPy arrays).

    The dtype is kept (a ``model.double()`` state dict gives float64 params
    when ``jax_enable_x64`` is on). Missing, unexpected or misshapen entries
    raise a ``ValueError`` naming them.
    """
    expected = torch_shapes(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(f"state_dict does not match {model.name}: missing {missing}, "
                         f"unexpected {unexpected}")
    arrays = {k: _to_numpy(state_dict[k]) for k in expected}
    wrong = {k: a.shape for k, a in arrays.items() if a.shape != expected[k]}
    if wrong:
        raise ValueError(f"state_dict shapes do not match {model.name}: got {wrong}, "
                         f"expected {({k: expected[k] for k in wrong})}")
    return {
        name: {"kernel": jnp.asarray(spec.kernel_from_torch(arrays[f"{name}.weight"])),
               "bias": jnp.asarray(arrays[f"{name}.bias"])}
        for name, spec in model.layers
    }


def params_to_numpy_state_dict(model: Model, params: Params) -> OrderedDict[str, np.ndarray]:
    """PyTorch's ``state_dict`` layout, as NumPy arrays (no torch needed)."""
    torch_shapes(model)   # a clear error for a model without PyTorch layers
    params = jax.device_get(params)
    state_dict = OrderedDict()
    for name, spec in model.layers:
        if name not in params:
            raise ValueError(f"params have no entry {name!r} for {model.name}; got {sorted(params)}")
        state_dict[f"{name}.weight"] = np.ascontiguousarray(spec.kernel_to_torch(np.asarray(params[name]["kernel"])))
        state_dict[f"{name}.bias"] = np.asarray(params[name]["bias"])
    return state_dict


def params_to_torch(model: Model, params: Params) -> OrderedDict[str, Any]:
    """A PyTorch ``state_dict`` (torch tensors) that ``load_state_dict`` takes."""
    import torch

    return OrderedDict((k, torch.from_numpy(v.copy()))
                       for k, v in params_to_numpy_state_dict(model, params).items())
