"""The six optimizers on one task, and SGD's zig-zag with and without momentum.

    python -m experiments.optimizers                       # mnist_mlp, --dataset auto, 1 epoch
    python -m experiments.optimizers --model simple_net --epochs 3 --out reports/opt

1. Each of SGD, SGD+momentum, Adagrad, Adadelta, RMSprop and Adam (`funcnets.optim`,
   PyTorch's maths) trains ``--model`` from the same init, on the same batches,
   for ``--epochs``; ``optimizers.png`` overlays their loss curves and
   ``optimizers.md``/``.json`` give final accuracy, loss and time per epoch.
2. ``zigzag.png``: gradient descent on the ill-conditioned quadratic
   ``f(x, y) = (x^2 + 20 y^2) / 2`` from (-4, 1): plain SGD bounces across the
   steep ``y`` direction while it creeps along ``x``; momentum averages the
   bounces away and builds up speed along the valley. Paths over contour lines.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnets as fn
from experiments import tutorial as common
from funcnets import plots
from funcnets.metrics import read_metrics

# name, torch.optim arguments: the learning rates the tutorials and PyTorch's docs use for these nets
OPTIMIZERS = (
    ("SGD", "sgd", {"lr": 0.01}),
    ("SGD momentum 0.9", "sgd", {"lr": 0.01, "momentum": 0.9}),
    ("Adagrad", "adagrad", {"lr": 0.01}),
    ("Adadelta", "adadelta", {"lr": 1.0}),
    ("RMSprop", "rmsprop", {"lr": 1e-3}),
    ("Adam", "adam", {"lr": 1e-3}),
)
CONDITION = 20.0  # curvature ratio of the quadratic
ZIGZAG_START = (-4.0, 1.0)
ZIGZAG_RUNS = (("SGD lr 0.09", {"lr": 0.09}),
               ("SGD lr 0.09, momentum 0.5", {"lr": 0.09, "momentum": 0.5}),
               ("SGD lr 0.03, momentum 0.7", {"lr": 0.03, "momentum": 0.7}))


def quadratic(x, y):
    """``(x^2 + CONDITION * y^2) / 2``: curvature 1 along x, CONDITION along y."""
    return 0.5 * (x ** 2 + CONDITION * y ** 2)


def descend(tx: optax.GradientTransformation, start, steps: int) -> np.ndarray:
    """The path ``(steps + 1, 2)`` of ``tx`` on `quadratic` from ``start``."""
    grad = jax.grad(lambda p: quadratic(p[0], p[1]))

    @jax.jit
    def step(point, opt_state):
        updates, opt_state = tx.update(grad(point), opt_state, point)
        return optax.apply_updates(point, updates), opt_state

    point = jnp.asarray(start, jnp.float32)
    opt_state = tx.init(point)
    path = [point]
    for _ in range(steps):
        point, opt_state = step(point, opt_state)
        path.append(point)
    return np.asarray(jnp.stack(path))


def zigzag(out: pathlib.Path, steps: int = 40) -> tuple[pathlib.Path, dict]:
    paths = {label: descend(fn.optim.sgd(**kwargs), ZIGZAG_START, steps) for label, kwargs in ZIGZAG_RUNS}
    final = {label: float(quadratic(*path[-1])) for label, path in paths.items()}
    figure = plots.plot_trajectories(
        quadratic, paths, out / "zigzag.png",
        title=f"f(x, y) = (x² + {CONDITION:g}·y²)/2 from {ZIGZAG_START}, {steps} steps")
    return figure, final


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.optimizers", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["mnist_mlp", "simple_net", "mnist_cnn"], default="mnist_mlp")
    p.add_argument("--dataset", choices=("auto",) + common.MNIST_LIKE, default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=common.positive(int), default=1)
    p.add_argument("--batch-size", type=common.positive(int), default=64)
    p.add_argument("--test-batch-size", type=common.positive(int), default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help=f"{common.DRY_RUN_BATCHES} batches, one epoch")
    p.add_argument("--out", default=None, help="report folder (default: reports/optimizers-<model>-<dataset>)")
    args = p.parse_args(argv)
    args.float64 = False
    args.train_examples = None
    args.command = common.command_line("experiments.optimizers", argv)
    if args.dry_run:
        args.epochs = 1
    return args


def main(argv: list[str] | None = None) -> pathlib.Path:
    args = parse(argv)
    tutorial = common.Tutorial(name="optimizers", model=args.model, source="", datasets=common.MNIST_LIKE,
                               optimizer="sgd", lr=0.01, batch_size=args.batch_size,
                               test_batch_size=args.test_batch_size, epochs=args.epochs)
    data = common.load_data(tutorial, args)
    out = pathlib.Path(args.out or f"reports/optimizers-{args.model}-{data.dataset}")
    model = fn.models.get(args.model)
    init = model.init(jax.random.key(args.seed))
    curves, rows = {}, []
    for label, name, kwargs in OPTIMIZERS:
        print(f"\n== {label}: {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) ==")
        params = jax.tree.map(jnp.copy, init)  # fit donates the state
        state = fn.create_train_state(model, fn.optim.create(name, **kwargs), jax.random.key(args.seed),
                                      params=params)
        metrics_path = out / "runs" / f"{label.replace(' ', '_').lower()}.jsonl"
        _, history = fn.fit(state, (data.train_images, data.train_labels), (data.test_images, data.test_labels),
                            epochs=args.epochs, batch_size=args.batch_size, rng=common.data_key(args.seed),
                            test_batch_size=args.test_batch_size, transform=data.normalize,
                            report=fn.loop.Report(metrics_path=metrics_path, progress=False, step_losses=True))
        curves[label] = plots.step_losses(read_metrics(metrics_path))
        last = history[-1]
        rows.append({"optimizer": label, "torch": f"torch.optim.{name}", **kwargs,
                     "train_loss": last["loss"], "test_loss": last["test_loss"],
                     "test_accuracy": last["test_accuracy"],
                     "epoch_seconds": common.timing(history, len(data.train_labels))["epoch_seconds"]})
    plots.plot_optimizer_curves(curves, out / "optimizers.png",
                                title=f"{args.model} on {data.dataset}: six optimizers, same init and batches")
    figure, final = zigzag(out)
    lines = [f"# Six optimizers on {args.model} ({data.dataset}, {args.epochs} epoch(s), batch {args.batch_size}, "
             f"seed {args.seed})", "", "| optimizer | lr | train loss | test loss | test accuracy | s/epoch |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['optimizer']} | {r['lr']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
              f"{100 * r['test_accuracy']:.2f}% | {r['epoch_seconds']:.2f} |" for r in rows]
    lines += ["", "![optimizers](optimizers.png)", "", "## SGD's zig-zag", "",
              f"f(x, y) = (x² + {CONDITION:g}·y²)/2 from {ZIGZAG_START}; f after 40 steps:", ""]
    lines += [f"- {label}: {value:.3g}" for label, value in final.items()]
    lines += ["", "![zigzag](zigzag.png)", "", "Reproduce: `" + args.command + "`"]
    (out / "optimizers.md").write_text("\n".join(lines) + "\n")
    (out / "optimizers.json").write_text(json.dumps({"rows": rows, "zigzag_final": final,
                                                     "dataset": data.dataset, "command": args.command,
                                                     "environment": common.environment()}, indent=2) + "\n")
    print("\n" + "\n".join(lines[2:2 + 2 + len(rows)]))
    print(f"\nReport: {out / 'optimizers.md'}\nPlots: {out / 'optimizers.png'}, {figure}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
