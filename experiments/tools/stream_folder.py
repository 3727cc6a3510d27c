"""One epoch of `fn.fit` over an image folder larger than the memory the process may use.

    python -m experiments.tools.stream_folder --root /tmp/gratings --address-space 3G

Makes (once) ``<root>/{train,test}/<class>/<n>.jpg``: ``--images`` training images of
``--size`` x ``--size`` RGB in 10 classes (a sine grating at 18 degrees per class, a
random phase, tint and pixel noise; JPEG quality 90), whose decoded training split
(``N x size x size x 3`` bytes) is larger than ``--address-space``. Then, with the
process's address space limited to that (``RLIMIT_AS``, set before JAX starts):

1. decoding on one core: images per second and milliseconds an image, the source
   read in order in this process;
2. one epoch of ``fn.fit`` of a small CNN (8x8 average pool, conv 3-16 3x3, ReLU,
   2x2 max pool, fc 3600-10; Adam 1e-3, batch 64) over
   ``fn.data.image_folder(root, "train", stream=True)``, decoded by ``--workers`` Grain
   processes, with its time, images per second and test accuracy, and the peak
   resident memory of this process and of its workers;
3. the same split through the decoding path (``stream=False``), which needs the
   whole split in memory: under the limit it raises ``MemoryError``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import time

import numpy as np


def _bytes(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def make_folder(root: pathlib.Path, images: int, size: int, test_images: int = 1000, seed: int = 0) -> None:
    """The grating folder (skipped where ``root/.complete`` says it was made with these numbers)."""
    from PIL import Image

    marker = root / ".complete"
    recipe = {"images": images, "size": size, "test_images": test_images, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for split, count in (("train", images), ("test", test_images)):
        for n in range(count):
            label = n % 10
            angle = np.pi * label / 10
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * 3 * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
            tint = rng.uniform(0.4, 1.0, 3).astype(np.float32)
            pixels = 128 + 90 * wave[..., None] * tint + rng.normal(0, 20, (size, size, 3))
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{n:06d}.jpg", quality=90)
    marker.write_text(json.dumps(recipe))


def peak_resident_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest finished child."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--images", type=int, default=32000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--address-space", default="3G", help="RLIMIT_AS for this process and its workers")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="reports/stream_folder")
    args = p.parse_args(argv)
    root = pathlib.Path(args.root)
    start = time.perf_counter()
    make_folder(root, args.images, args.size)
    made = time.perf_counter() - start
    limit = _bytes(args.address_space)
    decoded_bytes = args.images * args.size * args.size * 3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import grain
    import jax
    import optax

    import funcnets as fn

    L = fn.layers
    train = fn.data.image_folder(root, "train", stream=True, cache_dir=False)
    test = fn.data.image_folder(root, "test", stream=True, cache_dir=False)
    on_disk = sum(f.stat().st_size for f in (root / "train").rglob("*.jpg"))
    print(f"{train.description}: {len(train)} images of {train.image_shape}, {on_disk / 2**20:.0f} MiB as JPEG, "
          f"{decoded_bytes / 2**30:.2f} GiB decoded; address space limited to {limit / 2**30:.2f} GiB")

    count = min(2000, len(train))
    t = time.perf_counter()
    for i in range(count):
        train[(i * 7919) % len(train)]
    one_core = count / (time.perf_counter() - t)
    print(f"decoding on one core: {one_core:.0f} images/s ({1000 / one_core:.2f} ms an image)")

    fn.data.allow_grain_workers()
    model = fn.models.sequential(L.AvgPool2d(8), ("conv", L.Conv2d(3, 16, 3)), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                                 ("fc", L.Linear(16 * 15 * 15, 10)), input_shape=(args.size, args.size, 3),
                                 name="grating_cnn")
    known = fn.data.DatasetInfo("gratings", "train", 10, train.class_names, train.image_shape, (0.5,) * 3,
                                (0.25,) * 3, "")   # the generator's levels, without a statistics pass
    normalize = fn.data.Normalize.of(known)
    rng = jax.random.key(0)
    state = fn.create_train_state(model, optax.adam(1e-3), rng)

    def epoch(e):
        stream = grain.MapDataset.source(train).shuffle(seed=e).batch(64).to_iter_dataset()
        return stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=args.workers)) if args.workers else stream

    t = time.perf_counter()
    _, history = fn.fit(state, epoch, grain.MapDataset.source(test).batch(250), epochs=1, rng=rng,
                        transform=normalize, report=fn.loop.Report(progress=False))
    seconds = time.perf_counter() - t
    main_mb, worker_mb = peak_resident_mb()
    print(f"one epoch of fit, {args.workers} decoding workers: {seconds:.1f} s ({len(train) / seconds:.0f} images/s), "
          f"test accuracy {100 * history[-1]['test_accuracy']:.2f}%; peak resident memory {main_mb:.0f} MB "
          f"(this process), {worker_mb:.0f} MB (largest worker)")

    try:
        fn.data.image_folder(root, "train", cache_dir=False)
        whole = "decoded: no MemoryError (the limit was above the split's size)"
    except MemoryError as error:
        whole = f"MemoryError: {error}"
    print(f"the same split decoded whole (stream=False) under the limit: {whole}")
    result = {"root": str(root), "images": len(train), "image_shape": list(train.image_shape),
              "jpeg_mib": on_disk / 2**20, "decoded_gib": decoded_bytes / 2**30, "address_space_gib": limit / 2**30,
              "made_s": made, "decode_one_core_images_per_s": one_core, "workers": args.workers,
              "epoch_s": seconds, "epoch_images_per_s": len(train) / seconds,
              "test_accuracy": history[-1]["test_accuracy"], "peak_resident_mb": main_mb,
              "peak_worker_resident_mb": worker_mb, "decoded_whole": whole}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
