"""Modules researchers bring from Flax (Linen, NNX) and Equinox, trained through funcnets
on the complete MNIST (`funcnets.bridges`).

    python -m experiments.jax_modules linen_example --data-dir ../shared/data/mnist
    python -m experiments.jax_modules nnx_tutorial --data-dir ../shared/data/mnist
    python -m experiments.jax_modules bn_cnn --data-dir ../shared/data/mnist

- ``linen_example``: the CNN of Flax's ``examples/mnist`` as a Linen module (as the
  example wrote it through Flax 0.10: conv 32 and 64 3x3, ReLU, 2x2 mean pools, dense
  256-10), ``from_flax``; its config: SGD lr 0.1 momentum 0.9, batch 128, 1 epoch,
  images scaled to [0, 1].
- ``nnx_tutorial``: the CNN of Flax's NNX MNIST tutorial (batch norm, dropout with
  ``rngs`` at the call; today's ``examples/mnist`` model too), ``from_flax``; the
  tutorial's run: ``optax.adamw(0.005, 0.9)``, batch 32, 1200 steps, images in [0, 1].
- ``bn_cnn``: one batch-norm CNN (conv 1-16 3x3, BN, ReLU, max pool 2, conv 16-32 3x3,
  BN, ReLU, max pool 2, fc 800-10) four ways: a funcnets ``sequential`` net, PyTorch
  (its twin, `funcnets.parity.compare`), a Flax NNX module and an Equinox module,
  all from one init (PyTorch's, ``torch.manual_seed(seed)``, copied into each), on
  the same batches; Adam lr 1e-3, batch 64, 1 epoch, normalised images.

Printed and written to ``--out`` (``results.json``): test accuracy and loss, seconds
per epoch, and for ``bn_cnn`` the per-step loss gap of each module against the
funcnets net.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from functools import partial

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import funcnets as fn
from funcnets.metrics import read_metrics

L = fn.layers


class LinenExampleCNN(nn.Module):
    """The CNN of Flax's ``examples/mnist`` (Linen), which takes no ``train`` argument."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(features=32, kernel_size=(3, 3))(x)), window_shape=(2, 2), strides=(2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(features=64, kernel_size=(3, 3))(x)), window_shape=(2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(features=256)(x.reshape((x.shape[0], -1))))
        return nn.Dense(features=10)(x)


class NNXTutorialCNN(nnx.Module):
    """The CNN of Flax's NNX MNIST tutorial."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = nnx.relu(self.dropout2(self.linear1(x.reshape(x.shape[0], -1)), rngs=rngs))
        return self.linear2(x)


# --- one batch-norm CNN, four ways ---------------------------------------------------

def bn_cnn() -> fn.models.Model:
    return fn.models.sequential(
        ("conv1", L.Conv2d(1, 16, 3)), ("bn1", L.BatchNorm2d(16)), L.ReLU(), L.MaxPool2d(2),
        ("conv2", L.Conv2d(16, 32, 3)), ("bn2", L.BatchNorm2d(32)), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
        ("fc", L.Linear(32 * 5 * 5, 10)), L.LogSoftmax(), input_shape=(28, 28, 1), name="bn_cnn")


class NNXBNCNN(nnx.Module):
    """`bn_cnn` in Flax NNX, its batch norms set to PyTorch's momentum and epsilon."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, kernel_size=(3, 3), padding="VALID", rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), padding="VALID", rngs=rngs)
        self.bn2 = nnx.BatchNorm(32, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(32 * 5 * 5, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), (2, 2))
        return nnx.log_softmax(self.fc(x.reshape(x.shape[0], -1)))


class EqxBNCNN(eqx.Module):
    """`bn_cnn` in Equinox (one ``(C, H, W)`` example), its batch norms at PyTorch's momentum and epsilon."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    pool: eqx.nn.MaxPool2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 16, 3, key=keys[0])
        self.bn1 = eqx.nn.BatchNorm(16, axis_name="batch", momentum=0.9, eps=1e-5, mode="batch")
        self.conv2 = eqx.nn.Conv2d(16, 32, 3, key=keys[1])
        self.bn2 = eqx.nn.BatchNorm(32, axis_name="batch", momentum=0.9, eps=1e-5, mode="batch")
        self.pool = eqx.nn.MaxPool2d(2, 2)
        self.fc = eqx.nn.Linear(32 * 5 * 5, 10, key=keys[2])

    def __call__(self, x, state):
        x, state = self.bn1(self.conv1(x), state)
        x = self.pool(jax.nn.relu(x))
        x, state = self.bn2(self.conv2(x), state)
        x = self.pool(jax.nn.relu(x))
        return jax.nn.log_softmax(self.fc(x.reshape(-1))), state


def nnx_from(params: dict) -> NNXBNCNN:
    """`NNXBNCNN` holding `bn_cnn`'s params (both keep kernels as ``(kh, kw, in, out)`` and
    flatten ``(H, W, C)``)."""
    module = NNXBNCNN(rngs=nnx.Rngs(0))
    for name in ("conv1", "conv2", "fc"):
        getattr(module, name).kernel.value = jnp.asarray(params[name]["kernel"])
        getattr(module, name).bias.value = jnp.asarray(params[name]["bias"])
    for name in ("bn1", "bn2"):
        getattr(module, name).scale.value = jnp.asarray(params[name]["weight"])
        getattr(module, name).bias.value = jnp.asarray(params[name]["bias"])
    return module


def equinox_from(state_dict: dict) -> tuple[EqxBNCNN, eqx.nn.State]:
    """`EqxBNCNN` holding a PyTorch ``state_dict`` of `bn_cnn` (Equinox keeps PyTorch's
    layouts; its conv biases are ``(C, 1, 1)``)."""
    module, state = eqx.nn.make_with_state(EqxBNCNN)(jax.random.key(0))
    for name in ("conv1", "conv2", "fc", "bn1", "bn2"):
        bias = state_dict[f"{name}.bias"]
        bias = bias.reshape(-1, 1, 1) if name.startswith("conv") else bias
        module = eqx.tree_at(lambda m, n=name: (getattr(m, n).weight, getattr(m, n).bias), module,
                             (jnp.asarray(state_dict[f"{name}.weight"]), jnp.asarray(bias)))
    return module, state


# --- runs ---------------------------------------------------------------------------

def _fit(model, tx, train, test, *, epochs, batch_size, rng, out: pathlib.Path, params=None, transform=None):
    """``fn.fit`` with step losses in ``out``; ``(history, per-step losses)``."""
    state = fn.create_train_state(model, tx, jax.random.key(0), params=params)
    metrics_path = out / "metrics.jsonl"
    _, history = fn.fit(state, train, test, epochs=epochs, batch_size=batch_size, rng=rng, transform=transform,
                        report=fn.loop.Report(metrics_path=metrics_path, progress=False, step_losses=True))
    losses = np.concatenate([r["losses"] for r in read_metrics(metrics_path) if r["kind"] == "step"])
    return history, losses


def _row(history) -> dict:
    last = history[-1]
    return {"test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"], "train_loss": last["loss"],
            "epoch_seconds": [h["train_seconds"] for h in history]}


def _unit_scale(images):
    return images.astype(jnp.float32) / 255.0


def run_tutorial_net(name: str, train, test, seed: int, out: pathlib.Path, steps: int | None) -> dict:
    if name == "linen_example":
        model = fn.models.from_flax(LinenExampleCNN(), input_shape=(28, 28, 1), outputs="logits")
        tx, batch_size = optax.sgd(0.1, momentum=0.9), 128
    else:
        model = fn.models.from_flax(NNXTutorialCNN(rngs=nnx.Rngs(seed)), input_shape=(28, 28, 1), outputs="logits")
        tx, batch_size = optax.adamw(0.005, 0.9), 32
        steps = steps or 1200
    rng = jax.random.key(seed)
    if steps:   # the tutorial's 1200 steps: the first steps * batch images of a shuffled training set
        order = np.asarray(fn.training.epoch_order(len(train[1]), jax.random.fold_in(rng, 99)))[:steps * batch_size]
        train = (train[0][order], train[1][order])
    history, _ = _fit(model, tx, train, test, epochs=1, batch_size=batch_size, rng=rng, out=out,
                      transform=_unit_scale)
    return {"net": name, "params": model.param_count, "batch_size": batch_size, "train_examples": len(train[1]),
            "steps": len(train[1]) // batch_size + bool(len(train[1]) % batch_size), **_row(history)}


def run_bn_cnn(train, test, seed: int, out: pathlib.Path) -> dict:
    import torch

    from funcnets import torch_models

    model = bn_cnn()
    torch.manual_seed(seed)
    twin = torch_models.twin(model)
    state_dict = {k: v.detach().numpy().copy() for k, v in twin.state_dict().items()}
    variables = fn.interop.params_from_torch(model, state_dict)
    start = time.perf_counter()
    compared = fn.parity.compare(model, train, test, torch_module=twin, optimizer="adam", lr=1e-3, epochs=1,
                                 batch_size=64, seed=seed, out=out / "funcnets_vs_torch")
    print(f"compare: {time.perf_counter() - start:.1f} s")
    reference = np.asarray([x for r in read_metrics(out / "funcnets_vs_torch" / "jax" / "metrics.jsonl")
                            if r["kind"] == "step" for x in r["losses"]])
    rng = jax.random.fold_in(jax.random.key(seed), 1)       # compare's data order
    rows = {"funcnets sequential": compared["runs"]["jax"], "PyTorch": compared["runs"]["torch"]}
    gaps = {"PyTorch": compared["per_step_loss_gap"]}
    modules = {
        "Flax NNX": fn.models.from_flax(nnx_from(variables.params), input_shape=(28, 28, 1), outputs="log_probs"),
        "Equinox": fn.models.from_equinox(*equinox_from(state_dict), input_shape=(28, 28, 1), outputs="log_probs"),
    }
    for label, module_model in modules.items():
        print(f"== bn_cnn as {label} ==")
        history, losses = _fit(module_model, fn.optim.adam(lr=1e-3), train, test, epochs=1, batch_size=64, rng=rng,
                               out=out / label.replace(" ", "_").lower())
        rows[label] = _row(history)
        gap = losses - reference
        gaps[label] = {"first": float(gap[0]), "max_abs": float(np.abs(gap).max()),
                       "tail_mean": float(gap[-100:].mean()), "count": len(gap)}
    return {"net": "bn_cnn", "params": model.param_count, "batch_size": 64, "train_examples": len(train[1]),
            "rows": rows, "per_step_gap_to_funcnets": gaps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("net", choices=("linen_example", "nnx_tutorial", "bn_cnn"))
    p.add_argument("--data-dir", required=True, help="the MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="train on the first steps * batch images only")
    p.add_argument("--out", default=None, help="default reports/jax_modules/<net>")
    args = p.parse_args(argv)
    train_split = fn.data.load("mnist", "train", data_dir=args.data_dir, download=False)
    test_split = fn.data.load("mnist", "test", data_dir=args.data_dir, download=False)
    out = pathlib.Path(args.out or f"reports/jax_modules/{args.net}")
    out.mkdir(parents=True, exist_ok=True)
    if args.net == "bn_cnn":
        normalize = partial(fn.data.normalize, info=train_split.info)
        train = (normalize(train_split.images), train_split.labels)
        test = (normalize(test_split.images), test_split.labels)
        if args.steps:
            train = (train[0][:args.steps * 64], train[1][:args.steps * 64])
        result = run_bn_cnn(train, test, args.seed, out)
        print("| net | test acc. | test loss | epoch (s) | per-step loss gap to funcnets (max, last-100 mean) |")
        print("| --- | --- | --- | --- | --- |")
        for label, row in result["rows"].items():
            gap = result["per_step_gap_to_funcnets"].get(label)
            seconds = row["epoch_seconds"] if isinstance(row["epoch_seconds"], float) else row["epoch_seconds"][0]
            gap_cell = "-" if gap is None else f"{gap['max_abs']:.2e}, {gap['tail_mean']:.2e}"
            print(f"| {label} | {100 * row['test_accuracy']:.2f}% | {row['test_loss']:.4f} | {seconds:.1f} | "
                  f"{gap_cell} |")
    else:
        train = (train_split.images, train_split.labels)
        test = (test_split.images, test_split.labels)
        result = run_tutorial_net(args.net, train, test, args.seed, out, args.steps)
        print(f"{args.net}: {result['params']:,} params, {result['steps']} steps of batch {result['batch_size']}: "
              f"test accuracy {100 * result['test_accuracy']:.2f}%, loss {result['test_loss']:.4f}, "
              f"{result['epoch_seconds'][0]:.1f} s")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
