"""The PyTorch side of every experiment, written the way pytorch/examples'
``mnist/main.py`` writes it: a ``train(...)`` and a ``test(...)`` function, a
``DataLoader`` over a ``TensorDataset``, ``zero_grad / backward / step``, a
``StepLR`` stepped once per epoch, ``torch.save`` of model and optimizer.

Two changes make it comparable with funcnets step by step, and no others:
- the ``DataLoader``'s sampler replays funcnets' epoch order
  (`experiments.tutorial.epoch_orders`), so both frameworks see the same batches;
- it writes funcnets' metrics records (`funcnets.metrics.MetricsLog`), with each
  step's loss, and times the training loop apart from the test pass.

The nets are `funcnets.torch_models`, the twins of the JAX models; ``train``,
``test`` and the sampler are `funcnets.parity`'s, which `funcnets.parity.compare`
runs for any net.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from funcnets import torch_models
from funcnets.metrics import MetricsLog, epoch_line
from funcnets.parity import EpochOrder, OptimizerSpec
from funcnets.parity import torch_dataset as _tensors
from funcnets.parity import torch_test as test
from funcnets.parity import torch_train_epoch as train


def _save(path: pathlib.Path, payload: dict) -> None:
    """``torch.save`` through a temporary file and a rename: a kill leaves the old checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def train_loader_of(args, data, orders: list[np.ndarray]) -> DataLoader:
    """The training ``DataLoader``: the normalised images as NCHW tensors, epoch ``e``
    in ``orders[e]`` (`EpochOrder`; ``loader.sampler.set_epoch(e)``), batch ``args.batch_size``."""
    return DataLoader(_tensors(data.normalize(data.train_images), data.train_labels), batch_size=args.batch_size,
                      sampler=EpochOrder(orders))


def run(tutorial, args, data, metrics_path: pathlib.Path, *, orders: list[np.ndarray],
        init: dict[str, np.ndarray] | None = None, checkpoint_dir: pathlib.Path | None = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Train ``tutorial``'s net under ``args``; the per-epoch records."""
    from experiments.tutorial import model_options, recipe

    torch.manual_seed(args.seed)
    model = torch_models.build(tutorial.model, **model_options(tutorial, args))
    model = model.double() if args.float64 else model.float()
    if init is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.items()})
    loss_fn = torch_models.loss_fn(tutorial.model)
    spec = recipe(tutorial, args, len(orders[0]) // args.batch_size + bool(len(orders[0]) % args.batch_size))
    optimizer, scheduler = spec.torch(model.named_parameters())

    train_loader = train_loader_of(args, data, orders)
    sampler = train_loader.sampler
    test_loader = DataLoader(_tensors(data.normalize(data.test_images), data.test_labels),
                             batch_size=args.test_batch_size)

    checkpoint = checkpoint_dir / "torch_checkpoint.pt" if checkpoint_dir is not None else None
    start_epoch, resume_step = 0, None
    if args.resume and checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        start_epoch, resume_step = saved["epoch"] + 1, saved["step"]
        log(f"Resumed from step {resume_step} (epoch {start_epoch + 1}, batch 0)")
    metrics = MetricsLog(metrics_path, resume_step=resume_step)

    history = []
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        trained = train(model, loss_fn, train_loader, optimizer, epoch, log_interval=args.log_interval,
                        record=metrics.write, spec=spec, scheduler=scheduler)
        entry = {"kind": "epoch", "step": (epoch + 1) * len(train_loader), "epoch": epoch,
                 "loss": trained["loss"], "accuracy": trained["accuracy"], **test(model, loss_fn, test_loader),
                 "lr": trained["lr"], "seconds": time.perf_counter() - epoch_start,
                 "train_seconds": trained["train_seconds"]}
        metrics.write(entry)
        history.append(entry)
        log(epoch_line(entry, args.epochs))
        if spec.steps_with_metric:
            scheduler.step(entry["test_loss"])
        elif scheduler is not None and not spec.steps_per_batch:
            scheduler.step()
        if checkpoint is not None:
            _save(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else None,
                               "rng": torch.get_rng_state(), "epoch": epoch, "step": entry["step"]})
    if tutorial.test_dropout and history:
        from experiments.tutorial import dropout_line

        entry = {"kind": "test_dropout_on", "step": history[-1]["step"], "epoch": history[-1]["epoch"],
                 **test(model, loss_fn, test_loader, dropout_on=True)}
        metrics.write(entry)
        log(dropout_line(entry))
    return history
