"""funcnets: the classic nets of three PyTorch tutorials, in JAX, with PyTorch's numbers.

>>> import jax, funcnets as fn
>>> model = fn.models.get("mnist_mlp")
>>> state = fn.create_train_state(model, fn.optim.sgd(lr=0.01), jax.random.key(0))

Modules: `models` (the nets), `layers` (their pieces and init), `losses`, `data` (with
`download`: the published files, checksummed; `imagefolder`: class-folder trees),
`optim` (PyTorch's optimizers on Optax), `checkpoint` (Orbax), `fit` (the loop), `interop` (PyTorch state dicts),
`parallel` (data-parallel over devices and hosts), `host_memory` (malloc settings for CPU steps),
`torch_models` (the PyTorch twins; needs torch).
"""

from funcnets import (checkpoint, cpu, data, download, host_memory, imagefolder, interop, layers, losses, models, optim,
                      parallel)
from funcnets.fit import NonFiniteLossError, fit
from funcnets.training import (TrainState, create_train_state, eval_step, evaluate, make_eval_step,
                               make_train_step, train_epoch, train_step)

__version__ = "0.1.0"

__all__ = [
    "NonFiniteLossError", "TrainState", "checkpoint", "cpu", "create_train_state", "fit", "data", "download", "eval_step",
    "evaluate", "host_memory", "imagefolder", "interop", "layers",
    "losses", "make_eval_step", "make_train_step", "models", "optim", "parallel", "train_epoch", "train_step",
]
