"""The PyTorch side of every experiment, written the way pytorch/examples'
``mnist/main.py`` writes it: a ``train(...)`` and a ``test(...)`` function, a
``DataLoader`` over a ``TensorDataset``, ``zero_grad / backward / step``, a
``StepLR`` stepped once per epoch, ``torch.save`` of model and optimizer.

Two changes make it comparable with funcnets step by step, and no others:
- the ``DataLoader``'s sampler replays funcnets' epoch order
  (`experiments.tutorial.epoch_orders`), so both frameworks see the same batches;
- it writes funcnets' metrics records (`funcnets.metrics.MetricsLog`), with each
  step's loss, and times the training loop apart from the test pass.

The nets are `funcnets.torch_models`, the twins of the JAX models.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from funcnets import torch_models
from funcnets.metrics import MetricsLog, epoch_line
from funcnets.parity import OptimizerSpec


class EpochOrder(Sampler):
    """Yields epoch ``e``'s precomputed order; ``set_epoch(e)`` picks it, as
    ``DistributedSampler.set_epoch`` does."""

    def __init__(self, orders: list[np.ndarray]):
        self.orders = orders
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.orders[self.epoch].tolist())

    def __len__(self) -> int:
        return len(self.orders[self.epoch])


def train(model, loss_fn, train_loader, optimizer, epoch, *, log_interval, record) -> dict:
    """One epoch; returns the epoch's mean loss and accuracy and its training time."""
    model.train()
    start = time.perf_counter()
    chunk_start = start
    losses, accuracies = [], []
    chunk_first = 0  # the first batch of the steps since the last record
    last = len(train_loader) - 1
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = loss_fn(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append((output.argmax(dim=1) == target).float().mean().item())
        if batch_idx + 1 - chunk_first == log_interval or batch_idx == last:
            seconds = time.perf_counter() - chunk_start
            step = epoch * len(train_loader) + batch_idx + 1
            record({"kind": "step", "step": step, "epoch": epoch,
                    "loss": float(np.mean(losses[chunk_first:])), "accuracy": float(np.mean(accuracies[chunk_first:])),
                    "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "losses": losses[chunk_first:]})
            chunk_first = batch_idx + 1
            chunk_start = time.perf_counter()
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)),
            "train_seconds": time.perf_counter() - start, "lr": optimizer.param_groups[0]["lr"]}


def test(model, loss_fn, test_loader, *, dropout_on: bool = False) -> dict:
    """Mean loss and accuracy over the test set; in ``eval()`` mode unless
    ``dropout_on`` (as a tutorial that never calls ``net.eval()`` tests)."""
    model.train(dropout_on)
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += loss_fn(output, target, reduction="sum").item()
            correct += (output.argmax(dim=1) == target).sum().item()
    n = len(test_loader.dataset)
    return {"test_loss": test_loss / n, "test_accuracy": correct / n}


def _tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """NHWC arrays -> an NCHW ``TensorDataset``, as ``ToTensor`` lays images out."""
    return TensorDataset(torch.from_numpy(torch_models.nchw(images)),
                         torch.from_numpy(labels.astype(np.int64)))


def _save(path: pathlib.Path, payload: dict) -> None:
    """``torch.save`` through a temporary file and a rename: a kill leaves the old checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def run(tutorial, args, data, metrics_path: pathlib.Path, *, orders: list[np.ndarray],
        init: dict[str, np.ndarray] | None = None, checkpoint_dir: pathlib.Path | None = None,
        log: Callable[[str], None] = print) -> list[dict]:
    """Train ``tutorial``'s net under ``args``; the per-epoch records."""
    from experiments.tutorial import model_options, optimizer_kwargs

    torch.manual_seed(args.seed)
    model = torch_models.build(tutorial.model, **model_options(tutorial, args))
    model = model.double() if args.float64 else model.float()
    if init is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.items()})
    loss_fn = torch_models.loss_fn(tutorial.model)
    optimizer, _ = OptimizerSpec(args.optimizer, optimizer_kwargs(tutorial, args)).torch(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args.gamma) if args.gamma else None

    sampler = EpochOrder(orders)
    train_images, test_images = data.normalized()
    train_loader = DataLoader(_tensors(train_images, data.train_labels), batch_size=args.batch_size,
                              sampler=sampler)
    test_loader = DataLoader(_tensors(test_images, data.test_labels), batch_size=args.test_batch_size)

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
                        record=metrics.write)
        entry = {"kind": "epoch", "step": (epoch + 1) * len(train_loader), "epoch": epoch,
                 "loss": trained["loss"], "accuracy": trained["accuracy"], **test(model, loss_fn, test_loader),
                 "lr": trained["lr"], "seconds": time.perf_counter() - epoch_start,
                 "train_seconds": trained["train_seconds"]}
        metrics.write(entry)
        history.append(entry)
        log(epoch_line(entry, args.epochs))
        if scheduler is not None:
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
