"""A streamed epoch against the arrays path: the same MNIST batches, the same net, one process.

    python -m experiments.tools.stream_bench --data-dir ../shared/data/mnist

Trains ``mnist_mlp`` (SGD 0.01, batch 64) for one epoch through `funcnets.fit` on
the whole split on the device (the arrays path), then on a stream of the same
uint8 NumPy batches in the same order (`funcnets.streams`, each batch copied to the
device a step ahead), both normalised in the step. Each contestant runs a warm-up
epoch, then ``--repeats`` timed epochs, taking turns; printed: the medians and the
stream/arrays ratio (training steps only, as `fit` records ``train_seconds``).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np

import funcnets as fn


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="the MNIST IDX files (default: funcnets' own lookup)")
    p.add_argument("--model", default="mnist_mlp")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    train = fn.data.load("mnist", "train", data_dir=args.data_dir, download=False)
    normalize = fn.data.Normalize.of(train.info)
    model = fn.models.get(args.model)
    rng = jax.random.key(1)
    order = np.asarray(fn.training.epoch_order(len(train.labels), jax.random.fold_in(rng, 0)))
    batches = [(train.images[order[i:i + args.batch_size]], train.labels[order[i:i + args.batch_size]])
               for i in range(0, len(order), args.batch_size)]
    contestants = {
        "arrays": lambda state: fn.fit(state, (train.images, train.labels), epochs=1, batch_size=args.batch_size,
                                       rng=rng, transform=normalize, report=fn.loop.Report.silent()),
        "stream": lambda state: fn.fit(state, batches, epochs=1, rng=rng, transform=normalize,
                                       report=fn.loop.Report.silent()),
    }
    seconds = {name: [] for name in contestants}
    for round_ in range(args.repeats + 1):
        for name, run in contestants.items():
            state = fn.create_train_state(model, fn.optim.sgd(lr=0.01), jax.random.key(0))
            _, history = run(state)
            if round_:   # the first round compiles
                seconds[name].append(history[0]["train_seconds"])
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = medians["stream"] / medians["arrays"]
    for name, values in seconds.items():
        print(f"{name:7s} epoch {medians[name]:.3f} s (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"stream / arrays: {ratio:.2f}x ({args.model}, batch {args.batch_size}, {len(batches)} steps)")
    return {"medians": medians, "ratio": ratio}


if __name__ == "__main__":
    main()
