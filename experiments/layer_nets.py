"""Nets built of the layers "Mastering PyTorch" ch. 1 names, on real data: funcnets against
PyTorch from one init (PyTorch's, ported), on the same batches in the same order.

    python -m experiments.layer_nets lenet5 --data-dir ../shared/data/mnist
    python -m experiments.layer_nets row_lstm --data-dir ../shared/data/mnist --epochs 2
    python -m experiments.layer_nets cifar_bn --data-dir ../shared/data/cifar10-jpeg

- ``lenet5``: LeNet-5 as PyTorch users write it for 28x28 MNIST: conv 1-6 5x5
  (padding 2), Tanh, AvgPool2d(2), conv 6-16 5x5, Tanh, AvgPool2d(2), fc
  400-120-84-10 with Tanh; cross-entropy; SGD lr 0.05, momentum 0.9, batch 64.
- ``row_lstm``: each image read row by row (28 steps of 28 pixels) by an
  LSTM(28, 128, batch_first=True), its last step into fc 128-10 and
  log-softmax; NLL; Adam lr 1e-3, batch 64.
- ``cifar_bn``: the CIFAR tutorial's ``Net`` with a ``BatchNorm2d`` after each
  conv; cross-entropy; Adam lr 1e-3, batch 16 (the tutorial's), on CIFAR-10.

funcnets trains with `funcnets.fit` (uint8 images normalised in the step); PyTorch
with the tutorial's loop (``zero_grad/backward/step``) over the batches
`funcnets.training.epoch_order` gives funcnets, on the images normalised to the
same values. Printed and written to ``--out`` (``results.json``): each epoch's
train loss, test loss and accuracy in both frameworks, the seconds per epoch,
and the largest per-step loss gap.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

import funcnets as fn
from funcnets.metrics import read_metrics
from funcnets.parity import OptimizerSpec

L = fn.layers


def lenet5() -> fn.models.Model:
    return fn.models.sequential(
        ("c1", L.Conv2d(1, 6, 5, padding=2)), L.Tanh(), L.AvgPool2d(2), ("c2", L.Conv2d(6, 16, 5)), L.Tanh(),
        L.AvgPool2d(2), L.Flatten(), ("f1", L.Linear(400, 120)), L.Tanh(), ("f2", L.Linear(120, 84)), L.Tanh(),
        ("f3", L.Linear(84, 10)), input_shape=(28, 28, 1), name="lenet5")


def row_lstm() -> fn.models.Model:
    return fn.models.sequential(("rnn", L.LSTM(28, 128, batch_first=True)), L.Last(), ("fc", L.Linear(128, 10)),
                                L.LogSoftmax(), input_shape=(28, 28), name="row_lstm")


def cifar_bn() -> fn.models.Model:
    """The CIFAR tutorial's ``Net`` (`funcnets.models.cifar_cnn`) with a ``BatchNorm2d`` after
    each of its four convs."""
    return fn.models.sequential(
        ("conv.0", L.Conv2d(3, 64, 3)), ("conv.1", L.BatchNorm2d(64)), ("conv.2", L.ReLU()),
        ("conv.3", L.Conv2d(64, 128, 3)), ("conv.4", L.BatchNorm2d(128)), ("conv.5", L.ReLU()),
        ("conv.6", L.Conv2d(128, 128, 3)), ("conv.7", L.BatchNorm2d(128)), ("conv.8", L.ReLU()),
        ("conv.9", L.Conv2d(128, 64, 3)), ("conv.10", L.BatchNorm2d(64)), ("conv.11", L.AdaptiveAvgPool2d(1)),
        L.Flatten(), ("fc.0", L.Linear(64, 32)), ("fc.1", L.ReLU()), ("fc.2", L.Dropout(0.5)),
        ("fc.3", L.Linear(32, 10)), input_shape=(32, 32, 3), name="cifar_bn")


NETS = {  # name: (model, optimizer, batch size, epochs, dataset)
    "lenet5": (lenet5, OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9}), 64, 2, "mnist"),
    "row_lstm": (row_lstm, OptimizerSpec("adam", {"lr": 1e-3}), 64, 2, "mnist"),
    "cifar_bn": (cifar_bn, OptimizerSpec("adam", {"lr": 1e-3}), 16, 2, "cifar10"),
}


def torch_run(model, spec: OptimizerSpec, init: dict, train, test, orders, batch_size: int) -> list[dict]:
    """The tutorial's PyTorch loop over ``orders`` (one index array per epoch), from ``init``."""
    import torch

    from funcnets import torch_models

    net = torch_models.twin(model)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.items()})
    optimizer, _ = spec.torch(net.parameters())
    loss_of = torch_models.loss_for(model)

    def as_torch(images):
        return torch.from_numpy(np.ascontiguousarray(images[..., 0] if model.reads_rows else
                                                     torch_models.nchw(images)))

    x, y = as_torch(train[0]), torch.from_numpy(train[1].astype(np.int64))
    x_test, y_test = as_torch(test[0]), torch.from_numpy(test[1].astype(np.int64))
    epochs = []
    for order in orders:
        start = time.perf_counter()
        net.train()
        losses = []
        for first in range(0, len(order), batch_size):
            rows = torch.from_numpy(order[first:first + batch_size].astype(np.int64))
            optimizer.zero_grad()
            loss = loss_of(net(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        net.eval()
        with torch.no_grad():
            test_loss, correct = 0.0, 0
            for first in range(0, len(y_test), 1000):
                out = net(x_test[first:first + 1000])
                test_loss += loss_of(out, y_test[first:first + 1000], reduction="sum").item()
                correct += int((out.argmax(1) == y_test[first:first + 1000]).sum())
        epochs.append({"loss": float(np.mean(losses)), "test_loss": test_loss / len(y_test),
                       "test_accuracy": correct / len(y_test), "seconds": time.perf_counter() - start,
                       "losses": losses})
    return epochs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", choices=sorted(NETS))
    p.add_argument("--data-dir", required=True, help="the MNIST IDX files (CIFAR-10's folder for cifar_bn)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-examples", type=int, default=None, help="the first N training images (a quick check)")
    p.add_argument("--out", default=None, help="default reports/layer_nets/<net>")
    args = p.parse_args(argv)
    import torch

    build, spec, batch_size, epochs, dataset = NETS[args.net]
    epochs = args.epochs or epochs
    model = build()
    train_split = fn.data.load(dataset, "train", data_dir=args.data_dir, download=False)
    test_split = fn.data.load(dataset, "test", data_dir=args.data_dir, download=False)
    normalize = fn.data.Normalize.of(train_split.info)
    n = args.train_examples or len(train_split.labels)
    train = (train_split.images[:n], train_split.labels[:n])
    test = (test_split.images, test_split.labels)
    out = pathlib.Path(args.out or f"reports/layer_nets/{args.net}")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    from funcnets import torch_models

    init = {k: v.numpy().copy() for k, v in torch_models.twin(model).state_dict().items()}
    rng = jax.random.key(args.seed)
    state = fn.create_train_state(model, spec.funcnets(), rng, params=fn.interop.params_from_torch(model, init))
    metrics_path = out / "funcnets.jsonl"
    metrics_path.unlink(missing_ok=True)
    print(f"{args.net} on {train_split.info.source}: {spec.label()}, batch {batch_size}, {epochs} epochs")
    _, history = fn.fit(state, train, test, epochs=epochs, batch_size=batch_size, rng=rng, transform=normalize,
                        report=fn.loop.Report(metrics_path=metrics_path, progress=False, step_losses=True))
    ours_steps = np.concatenate([r["losses"] for r in read_metrics(metrics_path) if r["kind"] == "step"])

    orders = [np.asarray(fn.training.epoch_order(n, jax.random.fold_in(rng, e))) for e in range(epochs)]
    theirs = torch_run(model, spec, init, (normalize(train[0]), train[1]), (normalize(test[0]), test[1]),
                       orders, batch_size)
    theirs_steps = np.concatenate([e.pop("losses") for e in theirs])
    gap = np.abs(ours_steps - theirs_steps)
    result = {"net": args.net, "data": train_split.info.source, "train_examples": n, "batch_size": batch_size,
              "optimizer": spec.label(), "seed": args.seed, "params": model.param_count,
              "funcnets": [{k: e[k] for k in ("loss", "test_loss", "test_accuracy", "seconds")} for e in history],
              "torch": theirs, "step_loss_gap": {"max": float(gap.max()), "mean": float(gap.mean())}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| epoch | funcnets loss | test acc | s | PyTorch loss | test acc | s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for e, (ours, twin) in enumerate(zip(result["funcnets"], theirs), start=1):
        print(f"| {e} | {ours['loss']:.4f} | {100 * ours['test_accuracy']:.2f}% | {ours['seconds']:.1f} | "
              f"{twin['loss']:.4f} | {100 * twin['test_accuracy']:.2f}% | {twin['seconds']:.1f} |")
    print(f"per-step loss gap: max {gap.max():.2e}, mean {gap.mean():.2e}; {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
