"""Side-by-side training runs of funcnets and PyTorch from the same init and batches.

A run is described without torch: an initial ``state_dict`` in PyTorch's layout
(`numpy_init`, drawn from PyTorch's init distributions by NumPy), a batch
stream (`synthetic_batches`), and an optimizer spec (`OptimizerSpec`). The
same description trains funcnets (`jax_curve`) and PyTorch (`torch_curve`,
which imports torch), so their loss curves can be compared step by step, or
against curves recorded earlier (``experiments/tools/reference_curves.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnets import interop, layers, optim
from funcnets.models import Model
from funcnets.training import create_train_state, train_step


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """``torch.optim.<name>(**kwargs)``, optionally with ``StepLR(step_size, gamma)``
    stepped every ``steps_per_epoch`` steps; the same as ``funcnets.optim.create``."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_lr: dict[str, Any] | None = None  # {"step_size", "gamma", "steps_per_epoch"}

    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        sched = f"+steplr({self.step_lr['step_size']},{self.step_lr['gamma']})" if self.step_lr else ""
        return f"{self.name}({args}){sched}"

    def funcnets(self):
        kwargs = dict(self.kwargs)
        if self.step_lr:
            kwargs["lr"] = optim.step_lr(kwargs["lr"], self.step_lr["step_size"], self.step_lr["gamma"],
                                         steps_per_epoch=self.step_lr["steps_per_epoch"])
        return optim.create(self.name, **kwargs)

    def torch(self, parameters):
        """``(optimizer, scheduler or None)`` over ``parameters``."""
        import torch

        classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                   "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop,
                   "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        optimizer = classes[self.name](parameters, **self.kwargs)
        scheduler = None
        if self.step_lr:
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=self.step_lr["step_size"], gamma=self.step_lr["gamma"])
        return optimizer, scheduler


def numpy_init(model: Model, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """A ``state_dict`` drawn from PyTorch's default init with NumPy (torch-free):
    every weight and bias ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn in
    ``state_dict`` order from ``np.random.default_rng(seed)`` in float64, then cast."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for name, spec in model.layers:
        bound = 1.0 / np.sqrt(spec.fan_in)
        for suffix, (param, shape) in layers.torch_params(spec).items():
            if isinstance(spec, layers.NORMS):   # constant init: weight ones, bias zeros
                state_dict[f"{name}.{suffix}"] = np.full(shape, 1.0 if param == "weight" else 0.0, dtype)
            else:
                state_dict[f"{name}.{suffix}"] = rng.uniform(-bound, bound, shape).astype(dtype)
        for buffer, (shape, kind) in layers.state_shapes(spec).items():
            start = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}[buffer]
            state_dict[f"{name}.{buffer}"] = np.full(shape, start, dtype if kind == "float" else np.int64)
    return state_dict


def synthetic_batches(model: Model, steps: int, batch_size: int, seed: int,
                      dtype=np.float32, noise: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A learnable, deterministic stream: ``x = template[y] + noise * N(0, 1)``, NHWC.

    One standard-normal template per class and labels uniform over the
    classes, all from ``np.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((model.num_classes, *model.input_shape))
    batches = []
    for _ in range(steps):
        labels = rng.integers(0, model.num_classes, batch_size)
        images = templates[labels] + noise * rng.standard_normal((batch_size, *model.input_shape))
        batches.append((images.astype(dtype), labels.astype(np.int32)))
    return batches


def jax_curve(model: Model, spec: OptimizerSpec, state_dict, batches) -> tuple[np.ndarray, dict]:
    """Train funcnets from ``state_dict`` on ``batches``, dropout off;
    ``(losses per step, final state_dict)``.

    The dtype of ``state_dict`` and ``batches`` is kept (float64 needs ``jax_enable_x64``).
    """
    model = dataclasses.replace(model, dropout=tuple(0.0 for _ in model.dropout))
    params = interop.params_from_torch(model, state_dict)
    state = create_train_state(model, spec.funcnets(), jax.random.key(0), params=params)
    losses = []
    for images, labels in batches:
        state, metrics = train_step(state, (jnp.asarray(images), jnp.asarray(labels)))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses)), dict(interop.params_to_numpy_state_dict(model, state))


def torch_curve(model: Model, spec: OptimizerSpec, state_dict, batches) -> tuple[np.ndarray, dict]:
    """The same run in PyTorch (``model.double()`` when the inputs are float64),
    dropout off so both nets see identical maths: ``eval()`` mode during training,
    or for a net with batch norm (whose training mode differs) ``train()`` mode
    with every dropout rate set to 0."""
    import torch

    from funcnets import torch_models

    dtype = next(iter(state_dict.values())).dtype
    net = torch_models.twin(model)
    net = net.double() if dtype == np.float64 else net.float()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    net.eval()
    if model.has_state:
        net.train()
        for module in net.modules():
            if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
                module.p = 0.0
            elif isinstance(module, torch.nn.RNNBase):
                module.dropout = 0.0
    loss_of = torch_models.loss_for(model)
    optimizer, scheduler = spec.torch(net.parameters())
    losses = []
    for step, (images, labels) in enumerate(batches, start=1):
        optimizer.zero_grad()
        x = torch.from_numpy(torch_models.nchw(images))
        loss = loss_of(net(x), torch.from_numpy(labels.astype(np.int64)))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if scheduler is not None and step % spec.step_lr["steps_per_epoch"] == 0:
            scheduler.step()
    final = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return torch.stack(losses).numpy(), final
