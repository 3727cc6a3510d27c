"""Training speed, funcnets against PyTorch, measured in one run.

    python -m experiments.tools.bench                       # every tutorial net; Markdown + JSON in reports/bench/
    python -m experiments.tools.bench --models mnist_cnn --repeats 5 --cnn-window 60
    python -m experiments.tools.bench --models mnist_cnn --system-malloc   # glibc's malloc defaults for all
    python -m experiments.tools.bench --device gpu          # on a GPU, both frameworks (the default where both see one)
    python -m experiments.tools.bench --end-to-end          # whole scripts, Enter to result (experiments.tools.end_to_end)

For each model at its tutorial batch size (MLP 64, MNIST CNN 64, Mastering CNN 32, CIFAR CNN 16,
SimpleNet 64), on random data of the real shapes (60,000 28x28x1 images, or
50,000 32x32x3), with the tutorial's optimizer, the contestants are:

- ``torch tutorial``: ``DataLoader(TensorDataset, shuffle=True)``,
  ``zero_grad/backward/step``, ``loss.item()`` every step, as the tutorials write it;
- ``torch well (N threads)``: the data as one tensor, a ``randperm`` sliced per
  batch, no per-step host read, at 1 and at all threads;
- ``torch.compile``: the same loop with ``torch.compile(model)`` (skipped with
  ``--no-torch-compile``, or reported with the reason when it fails);
- ``funcnets loop``: `funcnets.training.run_steps` with one jitted step per
  batch, the data on the device, no host sync inside the window;
- ``funcnets epoch``: the same window as one compiled loop program
  (what `fn.train_epoch` runs: for every model on a GPU, for the MLPs on the CPU).

``--device gpu`` (the default when JAX and PyTorch both see a GPU) runs every
contestant there: the tutorial loop moves each batch to the GPU as the
tutorials do (``data.to(device)``), ``torch well (GPU)`` keeps the data there,
and a window ends with ``torch.cuda.synchronize()``. Both frameworks compute
in full float32 (``jax_default_matmul_precision="float32"``, PyTorch's
``allow_tf32`` off for matmuls and cuDNN), as the parity suite does;
``--tf32`` puts both on TF32 instead. JAX does not preallocate GPU memory
here (the two frameworks share the GPU), and peak GPU memory is reported for
each.

Each contestant first runs one untimed window (its compile time is the first
step alone, measured before it), then the contestants take turns, window by
window, ``--repeats`` times, so drift on the machine hits all alike; a window
ends with a sync (``block_until_ready``; PyTorch on CPU is synchronous). A
window is a whole epoch for the MLPs and ``--cnn-window`` steps for the CNNs,
scaled to an epoch (the steps are alike, so the time is linear in them).
Reported: median time per epoch, samples/s, the ratio to each PyTorch
variant (paired: in each round, the other's window time over this one's;
the median over rounds, with its range, so drift between rounds cancels),
the first-step (compile) time, the process's page faults per step (a
page the kernel maps and zeroes: memory that ``malloc`` gave back and
takes again), and the fraction of the machine's
float32 GEMM peak (measured in the same run, best of JAX and PyTorch on a
2048^3 matmul, 8192^3 on a GPU) that the FLOPs XLA counts for the step reach.

For the models named by ``--whole-training`` (default ``mnist_mlp``, whose
target is a whole training in under a second on a GPU), the tutorial's whole
training in funcnets is timed as well: a fresh state, the data put on the
device, and 10 calls of `fn.train_epoch` (reshuffled every epoch, the ragged
last batch included), to the last step's result; once cold, with JAX's
caches cleared (compiles included), then warm (median of 3).

Each model runs in its own process, so its peak host memory (``ru_maxrss``)
is its own; the funcnets path's resident data is reported in dataset copies.
That process sets up host memory as funcnets does on the CPU
(`funcnets.host_memory`: freed blocks stay for the next step) before any
contestant runs, so PyTorch's contestants get the same ``malloc`` settings;
``--system-malloc`` leaves glibc's defaults for all of them instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

CASES = {  # model: (batch size, image shape, training images, optimizer, lr)
    "mnist_mlp": (64, (28, 28, 1), 60_000, "sgd", 0.01),
    "simple_net": (64, (28, 28, 1), 60_000, "adam", 1e-3),
    "mnist_cnn": (64, (28, 28, 1), 60_000, "adadelta", 1.0),
    "mastering_cnn": (32, (28, 28, 1), 60_000, "adadelta", 0.5),
    "cifar_cnn": (16, (32, 32, 3), 50_000, "adam", 1e-3),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _minor_faults() -> int:
    """Minor page faults of this process so far: each a page the kernel mapped
    and zeroed, the cost of memory that ``malloc`` handed back and takes again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def torch_device(device: str) -> str:
    """PyTorch's name for the bench's ``device`` (``"cpu"`` or ``"gpu"``)."""
    return "cuda" if device == "gpu" else "cpu"


def torch_sync(device: str) -> None:
    """Wait for PyTorch's queued GPU work (PyTorch on the CPU is synchronous)."""
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


def set_precision(device: str, tf32: bool) -> str:
    """Both frameworks' float32 matmul and convolution precision on a GPU: full
    float32 (JAX's ``"float32"``; PyTorch's ``allow_tf32`` off for matmuls and
    cuDNN, whose convolutions default to TF32), or TF32 in both. The CPU has
    no TF32: nothing to set. Returns what was set, in words."""
    if device != "gpu":
        return "float32"
    import jax
    import torch

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "float32")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return ("TF32 matmuls and convolutions in both frameworks" if tf32
            else "full float32 in both frameworks, no TF32")


def resolve_device(requested: str) -> str:
    """``"cpu"`` or ``"gpu"`` for ``--device`` (``"auto"``: the GPU when JAX and
    PyTorch both see one). Raises ValueError, saying what to install, for a
    GPU one framework cannot use."""
    if requested == "cpu":
        return "cpu"
    import jax
    import torch

    try:
        jax_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        jax_gpu = False
    torch_gpu = torch.cuda.is_available()
    if requested == "auto":
        return "gpu" if jax_gpu and torch_gpu else "cpu"
    if not jax_gpu:
        raise ValueError(f"--device gpu: JAX sees no GPU (its devices: {jax.devices()}); install its CUDA "
                         "build (pip install -e \".[cuda]\") on a machine with an NVIDIA GPU")
    if not torch_gpu:
        raise ValueError(f"--device gpu: PyTorch {torch.__version__} sees no GPU; install a CUDA build of "
                         "torch (the torch extra pins a CPU wheel)")
    return "gpu"


def gemm_peak(n: int | None = None, repeats: int = 5, device: str = "cpu") -> dict[str, float]:
    """float32 FLOP/s of an ``n x n x n`` matmul (2048 on the CPU, 8192 on a
    GPU) on ``device``, at the precision `set_precision` set: best of JAX and PyTorch."""
    import jax
    import jax.numpy as jnp
    import torch

    n = n or (8192 if device == "gpu" else 2048)
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32), jax.devices(device)[0])
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    jax_times, torch_times = [], []
    ta = torch.from_numpy(np.array(a)).to(torch_device(device))
    torch.mm(ta, ta)
    torch_sync(device)
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.mm(ta, ta)
        torch_sync(device)
        torch_times.append(time.perf_counter() - start)
    flops = 2.0 * n ** 3
    del ta
    if device == "gpu":
        torch.cuda.empty_cache()   # the model processes that follow share this GPU
    return {"jax": flops / min(jax_times), "torch": flops / min(torch_times),
            "peak": flops / min(min(jax_times), min(torch_times)), "n": n}


# --- contestants: prepare() -> (first_step_seconds, run_window(w)) ----------------------

def funcnets_contestant(name, images, labels, batch, window, *, scan):
    import jax
    import jax.numpy as jnp

    import funcnets as fn
    from funcnets.cpu import compiler_options
    from funcnets.training import apply_step, epoch_order, run_steps

    model = fn.models.get(name)
    _, _, _, optimizer, lr = CASES[name]
    state = fn.create_train_state(model, fn.optim.create(optimizer, lr=lr), jax.random.key(0))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    steps = len(labels) // batch
    order = epoch_order(len(labels), jax.random.key(1))[: steps * batch].reshape(steps, batch)
    start = time.perf_counter()
    state, metrics = run_steps(state, x, y, order[:1], scan=scan)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    cost = jax.jit(apply_step, compiler_options=compiler_options() or None).lower(
        state, x[:batch], y[:batch]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    holder = {"state": state}

    def run_window(w):
        # A dynamic slice compiles once; `order[start:][:window]` compiled two slices
        # for every new start inside the timed window (80-160 ms: up to a fifth of
        # a cifar_cnn window).
        rows = jax.lax.dynamic_slice_in_dim(order, (w * window) % (steps - window + 1), window)
        holder["state"], out = run_steps(holder["state"], x, y, rows, scan=scan)
        jax.block_until_ready(out)

    return first, run_window, float(cost.get("flops", 0.0))


def _torch_setup(name, images, labels, device="cpu"):
    """The tutorial's net (on ``device``) and optimizer, its loss, and the data
    as NCHW tensors (on the CPU: the tutorial loop's DataLoader reads them there)."""
    import torch

    from funcnets import torch_models
    from funcnets.parity import OptimizerSpec

    _, _, _, optimizer, lr = CASES[name]
    torch.manual_seed(0)
    net = torch_models.build(name).to(torch_device(device))
    opt, _ = OptimizerSpec(optimizer, {"lr": lr}).torch(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))
    return net, opt, torch_models.loss_fn(name), x, y


def torch_tutorial_contestant(name, images, labels, batch, window, device="cpu"):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    net, opt, loss_fn, x, y = _torch_setup(name, images, labels, device)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    threads = torch.get_num_threads()
    target_device = torch_device(device)

    def run_window(w):
        torch.set_num_threads(threads)
        running_loss = 0.0
        for step, (data, target) in enumerate(loader):
            if step == window:
                break
            data, target = data.to(target_device), target.to(target_device)
            opt.zero_grad()
            loss = loss_fn(net(data), target)
            loss.backward()
            opt.step()
            running_loss += loss.item()

    start = time.perf_counter()
    data, target = next(iter(loader))
    opt.zero_grad()
    loss_fn(net(data.to(target_device)), target.to(target_device)).backward()
    opt.step()
    torch_sync(device)
    return time.perf_counter() - start, run_window, None


def torch_well_contestant(name, images, labels, batch, window, *, threads, compiled=False, device="cpu"):
    import torch

    net, opt, loss_fn, x, y = _torch_setup(name, images, labels, device)
    x, y = x.to(torch_device(device)), y.to(torch_device(device))   # on a GPU, put there once
    model = torch.compile(net) if compiled else net
    steps = len(labels) // batch

    def step(rows):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[rows]), y[rows])
        loss.backward()
        opt.step()
        return loss.detach()

    def run_window(w):
        torch.set_num_threads(threads)
        perm = torch.randperm(len(labels), device=x.device)
        offset = (w * window) % (steps - window + 1)
        for i in range(offset, offset + window):
            step(perm[i * batch:(i + 1) * batch])
        torch_sync(device)

    torch.set_num_threads(threads)
    start = time.perf_counter()
    step(torch.arange(batch, device=x.device))
    torch_sync(device)
    return time.perf_counter() - start, run_window, None


def whole_training(name: str, images: np.ndarray, labels: np.ndarray, *, epochs: int = 10,
                   warm_runs: int = 3) -> dict:
    """The tutorial's whole training in funcnets, as a user runs it: a fresh
    state, the data put on the device once, ``epochs`` calls of
    `fn.train_epoch` (the tutorial's batch size, reshuffled every epoch, the
    ragged last batch included), timed to the last step's result. First cold
    (JAX's in-memory caches cleared, so its programs compile), then the median
    of ``warm_runs`` warm runs."""
    import jax
    import jax.numpy as jnp

    import funcnets as fn

    batch, _, _, optimizer, lr = CASES[name]
    model = fn.models.get(name)
    tx = fn.optim.create(optimizer, lr=lr)  # one optimizer: a new one is a new static, so a new compile

    def run() -> float:
        start = time.perf_counter()
        state = fn.create_train_state(model, tx, jax.random.key(0))
        x, y = jnp.asarray(images), jnp.asarray(labels)
        for epoch in range(epochs):
            state, metrics = fn.train_epoch(state, x, y, batch_size=batch, rng=jax.random.key(epoch + 1))
        jax.block_until_ready((state, metrics))
        return time.perf_counter() - start

    jax.clear_caches()
    cold = run()
    warm = [run() for _ in range(warm_runs)]
    return {"epochs": epochs, "cold_seconds": cold, "warm_seconds": statistics.median(warm),
            "warm_runs_seconds": warm}


def _gpu_memory_peaks_mb() -> dict[str, float]:
    """Peak GPU memory of this process: JAX's allocator's and PyTorch's."""
    import jax
    import torch

    stats = jax.devices("gpu")[0].memory_stats() or {}
    return {"jax": stats.get("peak_bytes_in_use", 0) / 2 ** 20, "torch": torch.cuda.max_memory_allocated() / 2 ** 20}


def bench_model(name: str, *, repeats: int, cnn_window: int | None, torch_compile: bool,
                examples: int | None = None, device: str = "cpu", tf32: bool = False,
                whole: bool = False) -> dict:
    """Every contestant on one model, interleaved; its results row. ``examples``
    shrinks the dataset (for a quick check of the script itself); ``device``
    is ``"cpu"`` or ``"gpu"`` (`resolve_device`); ``whole`` also times the
    whole training (`whole_training`)."""
    import jax
    import jax.numpy  # noqa: F401
    import torch

    import funcnets as fn
    from funcnets import host_memory
    from funcnets.training import uses_scan

    if device == "gpu" and jax.default_backend() != "gpu":
        raise ValueError(f"device='gpu' but JAX runs on {jax.default_backend()!r}")
    jax.config.update("jax_enable_compilation_cache", False)  # first steps compile, even with a cache set
    precision = set_precision(device, tf32)
    # On the CPU, before any contestant: all run under one malloc setting. On a GPU
    # funcnets leaves malloc alone (its steps' temporaries live on the GPU).
    host_malloc = (host_memory.reuse_freed_blocks() if device == "cpu"
                   else "glibc's defaults (funcnets sets malloc up for CPU steps only)")
    batch, shape, n, optimizer, lr = CASES[name]
    n = examples or n
    jax.numpy.zeros(1).block_until_ready()  # the runtime's own memory is not the data's
    if device == "gpu":
        torch.zeros(1, device=torch_device(device))   # PyTorch's CUDA context, as JAX's above
    rss_start = _rss_bytes()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, *shape), np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    dataset_bytes = images.nbytes + labels.nbytes
    is_cnn = name.endswith("cnn")
    steps_per_epoch = n // batch
    window = (cnn_window or 40) if is_cnn and device == "cpu" else steps_per_epoch
    window = min(window, steps_per_epoch)

    contestants = {}
    first_steps, flops = {}, None
    first, run, flops = funcnets_contestant(name, images, labels, batch, window, scan=False)
    contestants["funcnets loop"], first_steps["funcnets loop"] = run, first
    rss_funcnets = _rss_bytes()
    live_bytes = sum(a.nbytes for a in jax.live_arrays())  # its device copy, state, orders
    if uses_scan(fn.models.get(name)):  # the whole-epoch path funcnets itself picks
        first, run, _ = funcnets_contestant(name, images, labels, batch, window, scan=True)
        contestants["funcnets epoch"], first_steps["funcnets epoch"] = run, first
    first, run, _ = torch_tutorial_contestant(name, images, labels, batch, window, device)
    contestants["torch tutorial"], first_steps["torch tutorial"] = run, first
    all_threads = torch.get_num_threads()
    # On a GPU the host threads hardly matter: one "done well" contestant.
    for threads in (sorted({1, all_threads}) if device == "cpu" else [all_threads]):
        label = (f"torch well ({threads} thread{'s' if threads > 1 else ''})" if device == "cpu"
                 else "torch well (GPU)")
        first, run, _ = torch_well_contestant(name, images, labels, batch, window, threads=threads, device=device)
        contestants[label], first_steps[label] = run, first
    notes = {}
    if torch_compile:
        try:
            first, run, _ = torch_well_contestant(name, images, labels, batch, window, threads=all_threads,
                                                  compiled=True, device=device)
            contestants["torch.compile"], first_steps["torch.compile"] = run, first
        except Exception as error:  # reported, not fatal: torch.compile depends on the toolchain
            notes["torch.compile"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    torch.set_num_threads(all_threads)

    for run in contestants.values():  # warm-up window, untimed
        run(0)
    times = {label: [] for label in contestants}
    faults = {label: [] for label in contestants}   # minor page faults of the process per window
    for r in range(repeats):
        for label, run in contestants.items():
            faults_before, start = _minor_faults(), time.perf_counter()
            run(r + 1)
            times[label].append(time.perf_counter() - start)
            faults[label].append(_minor_faults() - faults_before)
    scale = steps_per_epoch / window
    rows = {}
    for label, samples in times.items():
        epoch = statistics.median(samples) * scale
        rows[label] = {"epoch_seconds": epoch, "samples_per_second": steps_per_epoch * batch / epoch,
                       "first_step_seconds": first_steps[label], "spread": (max(samples) - min(samples)) * scale,
                       "page_faults_per_step": statistics.median(faults[label]) / window}
    for label in rows:
        rows[label]["speedups"] = paired_speedups(times, label)
    result = {"model": name, "batch_size": batch, "optimizer": f"{optimizer}(lr={lr})", "window_steps": window,
              "steps_per_epoch": steps_per_epoch, "repeats": repeats, "flops_per_step": flops, "rows": rows,
              "notes": notes, "host_malloc": host_malloc, "dataset_mb": dataset_bytes / 2 ** 20,
              "device": device, "precision": precision, "tf32": tf32 and device == "gpu",
              "funcnets_resident_dataset_copies": (rss_funcnets - rss_start) / dataset_bytes,
              "funcnets_live_dataset_copies": (dataset_bytes + live_bytes) / dataset_bytes,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "gpu":
        result["gpu_memory_peak_mb"] = _gpu_memory_peaks_mb()
    if whole:   # last: it clears JAX's caches, and its arrays are not in the memory figures above
        result["whole_training"] = whole_training(name, images, labels)
    return result


def paired_speedups(times: dict[str, list[float]], label: str) -> dict[str, dict[str, float]]:
    """``label``'s speedup over each reference, round by round: in round ``r``
    the reference's window time over ``label``'s (the two ran minutes apart at
    most, so the machine's drift mostly cancels); the median over rounds and
    the lowest and highest. ``torch well (best)`` is the thread count with the
    lowest median time."""
    wells = [name for name in times if name.startswith("torch well")]
    best_well = min(wells, key=lambda name: statistics.median(times[name])) if wells else None
    references = {"tutorial": "torch tutorial", "well": best_well, "compile": "torch.compile"}
    speedups = {}
    for key, reference in references.items():
        if reference not in times:   # a contestant that did not run (None: no torch well)
            continue
        ratios = [theirs / ours for theirs, ours in zip(times[reference], times[label])]
        speedups[key] = {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios)}
    return speedups


def _speedup(row: dict, key: str) -> str:
    ratio = row.get("speedups", {}).get(key)
    return "-" if ratio is None else f"{ratio['median']:.2f}x"


def markdown(results: list[dict], peak: dict, environment: dict) -> str:
    on_gpu = any(r.get("device") == "gpu" for r in results)
    where = (f"GPU: {environment.get('gpu', environment.get('jax_device'))}, "
             f"{'; '.join(sorted({r['precision'] for r in results}))}; " if on_gpu else "")
    machine = (f"Machine: {environment['machine']}; {where}jax {environment['jax']}, "
               f"torch {environment.get('torch')}; {'TF32' if any(r.get('tf32') for r in results) else 'float32'} GEMM peak "
               f"{peak['peak'] / 1e9:,.0f} GFLOP/s "
               f"(JAX {peak['jax'] / 1e9:,.0f}, PyTorch {peak['torch'] / 1e9:,.0f}). Host memory, for every "
               f"contestant alike: {'; '.join(sorted({r['host_malloc'] for r in results}))}.")
    header = ("| model (batch) | contestant | s/epoch | samples/s | first step (s) | vs torch tutorial | "
              "vs torch well (best) | vs torch.compile | % of GEMM peak |")
    lines = [machine, "", header, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        rows = result["rows"]
        for label, row in rows.items():
            flops = result["flops_per_step"]
            peak_share = (f"{100 * flops * result['steps_per_epoch'] / row['epoch_seconds'] / peak['peak']:.1f}"
                          if flops and label.startswith("funcnets") else "")
            lines.append(
                f"| `{result['model']}` ({result['batch_size']}) | {label} | {row['epoch_seconds']:.2f} | "
                f"{row['samples_per_second']:,.0f} | {row['first_step_seconds']:.2f} | "
                f"{_speedup(row, 'tutorial')} | {_speedup(row, 'well')} | "
                f"{_speedup(row, 'compile')} | {peak_share} |")
        for label, note in result["notes"].items():
            lines.append(f"| `{result['model']}` ({result['batch_size']}) | {label} | {note} | | | | | | |")
    spreads = [f"`{r['model']}` {label} vs torch tutorial {row['speedups']['tutorial']['low']:.2f}-"
               f"{row['speedups']['tutorial']['high']:.2f}x"
               for r in results for label, row in r["rows"].items()
               if label.startswith("funcnets") and "tutorial" in row.get("speedups", {})]
    lines += ["", "Ratios are speedups, the other's window time over this row's (above 1: this row is "
              "faster), taken round by round (each round runs every contestant once, one after another) "
              "and reported as the median over rounds; their range over rounds: " + ", ".join(spreads) + ". "
              "Page faults per step (median over windows): " + ", ".join(
                  f"`{r['model']}` " + ", ".join(f"{label} {row['page_faults_per_step']:,.0f}"
                                                 for label, row in r["rows"].items()) for r in results) + ". "
              "Peak host memory per model process: " + ", ".join(
                  f"`{r['model']}` {r['peak_rss_mb']:.0f} MB (dataset {r['dataset_mb']:.0f} MB; funcnets holds "
                  f"{r['funcnets_live_dataset_copies']:.2f} copies live, the NumPy arrays and all its JAX arrays; "
                  f"resident growth {r['funcnets_resident_dataset_copies']:.1f} copies)" for r in results) + "."]
    if on_gpu:
        lines[-1] += " Peak GPU memory per model process: " + ", ".join(
            f"`{r['model']}` JAX {r['gpu_memory_peak_mb']['jax']:.0f} MB, PyTorch "
            f"{r['gpu_memory_peak_mb']['torch']:.0f} MB" for r in results if "gpu_memory_peak_mb" in r) + "."
    wholes = [r for r in results if "whole_training" in r]
    if wholes:
        lines += ["", "Whole training in funcnets (a fresh state, the data put on the device, "
                  "`fn.train_epoch` per epoch, to the last step's result): " + ", ".join(
                      f"`{r['model']}` {w['epochs']} epochs in {w['warm_seconds']:.2f} s warm (median of "
                      f"{len(w['warm_runs_seconds'])}), {w['cold_seconds']:.2f} s cold (compiles included)"
                      for r in wholes for w in [r["whole_training"]]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pathlib.Path:
    argv = sys.argv[1:] if argv is None else argv
    if "--end-to-end" in argv:   # whole scripts, Enter to result: experiments.tools.end_to_end takes the other flags
        from experiments.tools import end_to_end

        return end_to_end.main([a for a in argv if a != "--end-to-end"])
    p = argparse.ArgumentParser(prog="python -m experiments.tools.bench", description=__doc__.splitlines()[0],
                                epilog="--end-to-end: time each experiment script as a whole process instead "
                                       "(python -m experiments.tools.end_to_end --help for its flags)")
    p.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cnn-window", type=int, default=None,
                   help="timed steps per window for the CNNs on the CPU (default 40; a whole epoch on a GPU)")
    p.add_argument("--no-torch-compile", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where both frameworks run (auto: the GPU when JAX and PyTorch both see one)")
    p.add_argument("--tf32", action="store_true",
                   help="on a GPU, TF32 matmuls and convolutions in both frameworks (default: full float32)")
    p.add_argument("--whole-training", nargs="*", choices=list(CASES), default=["mnist_mlp"], metavar="MODEL",
                   help="models whose whole 10-epoch training funcnets also times (default: mnist_mlp; "
                        "none: no models)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (FUNCNETS_HOST_MALLOC=system) instead of the setting "
                        "funcnets makes on the CPU; applies to every contestant")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--one-model-json", default=None, help=argparse.SUPPRESS)  # the child process's output
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.cnn_window is not None and args.cnn_window < 1):
        p.error("--repeats and --cnn-window must be at least 1")

    if args.one_model_json:
        result = bench_model(args.models[0], repeats=args.repeats, cnn_window=args.cnn_window,
                             torch_compile=not args.no_torch_compile, device=args.device, tf32=args.tf32,
                             whole=args.models[0] in args.whole_training)
        pathlib.Path(args.one_model_json).write_text(json.dumps(result))
        return pathlib.Path(args.one_model_json)

    from experiments.tutorial import check_host_malloc, environment
    from funcnets import host_memory

    child_env = dict(os.environ)
    if args.device != "cpu":
        # The two frameworks share the GPU: JAX takes memory as it needs it
        # instead of 75% of the GPU at start (read when its backend starts).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        child_env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        p.error(str(error))
    if device == "cpu":
        child_env["JAX_PLATFORMS"] = "cpu"   # a machine with a GPU, benchmarked on its CPU
        if not args.system_malloc:
            check_host_malloc(p)  # a bad FUNCNETS_HOST_MALLOC fails here, not in each child
    elif args.system_malloc:
        p.error("--system-malloc: funcnets sets malloc up for CPU steps only; it has no effect with --device gpu")
    if args.tf32 and device != "gpu":
        p.error("--tf32: TF32 is a GPU precision; the CPU computes float32")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = set_precision(device, args.tf32)
    peak = gemm_peak(device=device)
    results = []
    for model in args.models:
        child = out / f"{model}.json"
        command = [sys.executable, "-m", "experiments.tools.bench", "--models", model, "--repeats", str(args.repeats),
                   "--device", device, "--whole-training", *args.whole_training, "--one-model-json", str(child)]
        if args.cnn_window is not None:
            command += ["--cnn-window", str(args.cnn_window)]
        if args.no_torch_compile:
            command.append("--no-torch-compile")
        if args.tf32:
            command.append("--tf32")
        print(f"benchmarking {model} on the {device.upper()} ...", flush=True)
        subprocess.run(command, check=True,
                       env={**child_env, **({host_memory.OPT_OUT: "system"} if args.system_malloc else {})})
        results.append(json.loads(child.read_text()))
    env = environment()
    env["host_malloc"] = "; ".join(sorted({r["host_malloc"] for r in results}))  # the model processes'
    env["precision"] = precision
    if device == "gpu":
        import torch

        env["gpu"] = torch.cuda.get_device_name()
    table = markdown(results, peak, env)
    (out / "bench.md").write_text(table)
    (out / "bench.json").write_text(json.dumps({"gemm_peak": peak, "results": results, "environment": env,
                                                "command": " ".join(["python", "-m", "experiments.tools.bench",
                                                                     *argv])},
                                               indent=2) + "\n")
    print(table + f"\nTable: {out / 'bench.md'}")
    return out


if __name__ == "__main__":
    main()
