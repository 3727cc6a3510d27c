"""CIFAR-10 (JPEG q75 copy) streamed from its archive, with and without torchvision's
augmentation, on the CIFAR tutorial's ``Net`` and a batch-norm variant of it.

    python -m experiments.augment_cifar --data-dir ../shared/data/cifar10-jpeg

The archive is read image by image (``fn.data.image_folder(..., stream=True)``: its
JPEG bytes copied once into the cache, each image decoded when Grain reads it), in
a new shuffled order each epoch (``grain.MapDataset.shuffle(seed=epoch)``), batch 16,
Adam lr 1e-3 and cross-entropy (the tutorial's recipe). Each net trains twice from
the same init on the same batches:

- ``plain``: ``Normalize`` with the training split's channel statistics only;
- ``augmented``: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, then that
  ``Normalize`` (torchvision's usual CIFAR training transforms), run on the device
  in the compiled step; evaluation applies the ``Normalize`` only.

Nets: ``cifar_cnn`` (`funcnets.models.cifar_cnn`, the tutorial's) and ``cifar_bn``
(`experiments.layer_nets.cifar_bn`: a ``BatchNorm2d`` after each conv).
Printed and written to ``--out`` (``results.json``): per epoch the train loss, the test
loss and accuracy (eval mode) and the seconds, decoding included.

``--step-cost`` measures instead what the augmentation costs a step: ``fn.training.run_steps``
over the same 1,600 images on the device (100 steps of 16), plain and augmented
in turn for ``--rounds`` rounds; the median milliseconds a step of each.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import grain
import jax
import optax

import funcnets as fn
from experiments.layer_nets import cifar_bn

NETS = {"cifar_cnn": fn.models.cifar_cnn, "cifar_bn": cifar_bn}


def archive(data_dir: str) -> pathlib.Path:
    """The CIFAR-10 image-folder archive (or unpacked tree) in ``data_dir``."""
    root = pathlib.Path(data_dir)
    packed = sorted(root.glob("*.tar.gz"))
    return packed[0] if packed and not (root / "train").is_dir() else root


def batches(source, batch_size: int, *, seed: int | None = None, workers: int = 0, examples: int | None = None):
    """``source`` in Grain batches of ``batch_size``: shuffled by ``seed`` (None: in order),
    decoded by the loader's thread, or by ``workers`` processes. ``examples``: only that
    many images, a fixed random choice (the archive's order is by class)."""
    dataset = grain.MapDataset.source(source)
    if examples is not None:
        dataset = dataset.shuffle(seed=0)[:examples]
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    stream = dataset.batch(batch_size).to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8))
    return stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)) if workers else stream


def run(net: str, augmented: bool, train, test, *, epochs: int, seed: int, workers: int,
        examples: int | None = None) -> dict:
    transform = transforms(train.info)["augmented" if augmented else "plain"]
    rng = jax.random.key(seed)
    state = fn.create_train_state(NETS[net](), optax.adam(1e-3), rng)
    start = time.perf_counter()
    _, history = fn.fit(state, lambda epoch: batches(train, 16, seed=1000 * seed + epoch, workers=workers,
                                                                 examples=examples),
                        batches(test, 500), epochs=epochs, rng=rng, transform=transform,
                        report=fn.loop.Report(progress=False))
    return {"net": net, "augmented": augmented, "seconds": time.perf_counter() - start,
            "epochs": [{k: e[k] for k in ("loss", "test_loss", "test_accuracy", "seconds")} for e in history]}


def transforms(info) -> dict:
    normalize = fn.data.Normalize.of(info)
    return {"plain": normalize,
            "augmented": fn.data.Compose([fn.data.RandomCrop(32, padding=4), fn.data.RandomHorizontalFlip(), normalize])}


def step_cost(net: str, train, *, rounds: int, seed: int) -> dict:
    """Median ms a training step, plain and augmented, over the same on-device batches."""
    import numpy as np

    images, labels = (np.concatenate(parts) for parts in zip(*list(batches(train, 16, seed=seed, examples=1600))))
    images, labels = jax.device_put(images), jax.device_put(labels)
    index = jax.device_put(np.arange(1600, dtype=np.int32).reshape(100, 16))
    times: dict[str, list[float]] = {"plain": [], "augmented": []}
    for round_ in range(rounds + 1):   # round 0 compiles
        for name, transform in transforms(train.info).items():
            state = fn.create_train_state(NETS[net](), optax.adam(1e-3), jax.random.key(seed))
            start = time.perf_counter()
            state, metrics = fn.training.run_steps(state, images, labels, index, transform=transform)
            jax.block_until_ready(metrics)
            if round_:
                times[name].append(1000 * (time.perf_counter() - start) / 100)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="the folder of cifar10-jpeg.tar.gz (or of train/ and test/)")
    p.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["cifar_cnn", "cifar_bn"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=0,
                   help="Grain worker processes decoding (0: the loader's thread; CIFAR's 32x32 JPEGs decode "
                        "faster there than through worker processes)")
    p.add_argument("--train-examples", type=int, default=None, help="the first N training images (a quick check)")
    p.add_argument("--step-cost", action="store_true", help="only measure what augmentation costs a step")
    p.add_argument("--rounds", type=int, default=5, help="--step-cost's rounds")
    p.add_argument("--out", default="reports/augment_cifar")
    args = p.parse_args(argv)
    if args.workers:
        fn.data.allow_grain_workers()
    root = archive(args.data_dir)
    train = fn.data.image_folder(root, "train", name="cifar10", stream=True)
    test = fn.data.image_folder(root, "test", name="cifar10", stream=True)
    print(f"{train.info.source}: {len(train)} training and {len(test)} test images, read image by image; "
          f"Adam 1e-3, batch 16, {args.epochs} epochs")
    if args.step_cost:
        costs = {net: step_cost(net, train, rounds=args.rounds, seed=args.seed) for net in args.nets}
        for net, cost in costs.items():
            print(f"{net}: {cost['plain']:.1f} ms a step plain, {cost['augmented']:.1f} ms augmented "
                  f"({cost['augmented'] / cost['plain']:.2f}x), median of {args.rounds} rounds of 100 steps")
        return costs
    rows = []
    for net in args.nets:
        for augmented in (False, True):
            rows.append(run(net, augmented, train, test, epochs=args.epochs, seed=args.seed, workers=args.workers,
                            examples=args.train_examples))
            last = rows[-1]["epochs"][-1]
            print(f"{net} {'augmented' if augmented else 'plain'}: {100 * last['test_accuracy']:.2f}% test "
                  f"after {args.epochs} epochs, {rows[-1]['seconds']:.0f} s", flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"data": train.info.source, "train_examples": args.train_examples or len(train), "epochs": args.epochs, "seed": args.seed, "workers": args.workers,
              "runs": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| net | augmentation | epoch | train loss | test loss | test accuracy | s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for e, epoch in enumerate(row["epochs"], start=1):
            print(f"| `{row['net']}` | {'crop + flip' if row['augmented'] else 'none'} | {e} | {epoch['loss']:.4f} | "
                  f"{epoch['test_loss']:.4f} | {100 * epoch['test_accuracy']:.2f}% | {epoch['seconds']:.0f} |")
    return result


if __name__ == "__main__":
    main()
