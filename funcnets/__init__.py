"""funcnets: the classic nets of three PyTorch tutorials, in JAX, with PyTorch's numbers.

>>> import jax, funcnets as fn
>>> model = fn.models.get("mnist_mlp")
>>> state = fn.create_train_state(model, fn.optim.sgd(lr=0.01), jax.random.key(0))
>>> int(state.step), sorted(state.params)
(0, ['linear1', 'linear2'])

Modules: `models` (the nets; `bridges`: Flax and Equinox modules as models
and back), `layers` (their pieces and init), `losses`,
`optim` (PyTorch's optimizers on Optax), `training` (state, step, epoch),
`loop` (`fit`), `metrics` (what a run reports), `checkpoint` (Orbax), `data`
(with `download`: the published files, checksummed; `imagefolder`:
class-folder trees; `augment`: torchvision's random crops and flips on the device), `interop` (PyTorch state dicts), `parallel` (devices and
processes), `cpu` (the CPU backend's fast paths), `host_memory` (the
process-wide malloc setting that `fit`, `train_epoch` and `evaluate` make on
the CPU), `keys`, `parity` (funcnets and PyTorch side by side: `parity.compare`),
`plots` (figures of metrics files, with matplotlib), `streams` (training from Grain,
a torch DataLoader or any iterable of batches). `torch_models` and the runs
of `parity` need torch; importing funcnets never imports it.
"""

from funcnets import models  # first: it imports funcnets.bridges, which builds on it
from funcnets import (augment, bridges, checkpoint, cpu, data, download, host_memory, imagefolder, interop, keys, layers, loop,
                      losses, metrics, models, optim, parallel, parity, plots, streams, training)
from funcnets.loop import NonFiniteLossError, fit
from funcnets.training import (TrainState, create_train_state, eval_step, evaluate, make_eval_step,
                               make_train_step, train_epoch, train_step)

__version__ = "0.1.0"

__all__ = [
    "NonFiniteLossError", "TrainState", "augment", "bridges", "checkpoint", "cpu", "create_train_state", "data", "download", "eval_step",
    "evaluate", "fit", "host_memory", "imagefolder", "interop", "keys", "layers", "loop", "losses", "make_eval_step",
    "make_train_step", "metrics", "models", "optim", "parallel", "parity", "plots", "streams", "train_epoch", "train_step", "training",
]
