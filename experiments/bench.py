"""Training speed, funcnets against PyTorch, measured in one run.

    python -m experiments.bench                       # all four models; Markdown + JSON in reports/bench/
    python -m experiments.bench --models mnist_cnn --repeats 5 --cnn-window 60
    python -m experiments.bench --models mnist_cnn --system-malloc   # glibc's malloc defaults for all

For each model at its tutorial batch size (MLP 64, MNIST CNN 64, CIFAR CNN 16,
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
- ``funcnets epoch``: the same window as one compiled ``lax.scan`` program
  (what `fn.train_epoch` runs for MLPs).

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
2048^3 matmul) that the FLOPs XLA counts for the step reach.

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
    "mnist_cnn": (64, (28, 28, 1), 60_000, "adadelta", 0.5),
    "cifar_cnn": (16, (32, 32, 3), 50_000, "adam", 1e-3),
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _minor_faults() -> int:
    """Minor page faults of this process so far: each a page the kernel mapped
    and zeroed, the cost of memory that ``malloc`` handed back and takes again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def gemm_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """float32 FLOP/s of an ``n x n x n`` matmul: best of JAX and PyTorch."""
    import jax
    import jax.numpy as jnp
    import torch

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    jax_times, torch_times = [], []
    ta = torch.from_numpy(np.array(a))
    torch.mm(ta, ta)
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        jax_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.mm(ta, ta)
        torch_times.append(time.perf_counter() - start)
    flops = 2.0 * n ** 3
    return {"jax": flops / min(jax_times), "torch": flops / min(torch_times),
            "peak": flops / min(min(jax_times), min(torch_times))}


# --- contestants: prepare() -> (first_step_seconds, run_window(w)) ----------------------

def funcnets_contestant(name, images, labels, batch, window, *, scan):
    import jax
    import jax.numpy as jnp

    import funcnets as fn
    from funcnets.training import apply_step, compiler_options, epoch_order, run_steps

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
    cost = jax.jit(apply_step, compiler_options=compiler_options(model) or None).lower(
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


def _torch_setup(name, images, labels):
    import torch

    from funcnets import torch_models
    from funcnets.parity import OptimizerSpec

    _, _, _, optimizer, lr = CASES[name]
    torch.manual_seed(0)
    net = torch_models.build(name)
    opt, _ = OptimizerSpec(optimizer, {"lr": lr}).torch(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))
    return net, opt, torch_models.loss_fn(name), x, y


def torch_tutorial_contestant(name, images, labels, batch, window):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    net, opt, loss_fn, x, y = _torch_setup(name, images, labels)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    threads = torch.get_num_threads()

    def run_window(w):
        torch.set_num_threads(threads)
        running_loss = 0.0
        for step, (data, target) in enumerate(loader):
            if step == window:
                break
            opt.zero_grad()
            loss = loss_fn(net(data), target)
            loss.backward()
            opt.step()
            running_loss += loss.item()

    start = time.perf_counter()
    data, target = next(iter(loader))
    opt.zero_grad()
    loss_fn(net(data), target).backward()
    opt.step()
    return time.perf_counter() - start, run_window, None


def torch_well_contestant(name, images, labels, batch, window, *, threads, compiled=False):
    import torch

    net, opt, loss_fn, x, y = _torch_setup(name, images, labels)
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
        perm = torch.randperm(len(labels))
        offset = (w * window) % (steps - window + 1)
        for i in range(offset, offset + window):
            step(perm[i * batch:(i + 1) * batch])

    torch.set_num_threads(threads)
    start = time.perf_counter()
    step(torch.arange(batch))
    return time.perf_counter() - start, run_window, None


def bench_model(name: str, *, repeats: int, cnn_window: int, torch_compile: bool,
                examples: int | None = None) -> dict:
    """Every contestant on one model, interleaved; its results row. ``examples``
    shrinks the dataset (for a quick check of the script itself)."""
    import jax
    import jax.numpy  # noqa: F401
    import torch

    import funcnets as fn
    from funcnets import host_memory
    from funcnets.training import uses_scan

    jax.config.update("jax_enable_compilation_cache", False)  # first steps compile, even with a cache set
    host_malloc = host_memory.reuse_freed_blocks()  # before any contestant: all run under one setting
    batch, shape, n, optimizer, lr = CASES[name]
    n = examples or n
    jax.numpy.zeros(1).block_until_ready()  # the runtime's own memory is not the data's
    rss_start = _rss_bytes()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, *shape), np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    dataset_bytes = images.nbytes + labels.nbytes
    is_cnn = name.endswith("cnn")
    steps_per_epoch = n // batch
    window = cnn_window if is_cnn else steps_per_epoch

    contestants = {}
    first_steps, flops = {}, None
    first, run, flops = funcnets_contestant(name, images, labels, batch, window, scan=False)
    contestants["funcnets loop"], first_steps["funcnets loop"] = run, first
    rss_funcnets = _rss_bytes()
    live_bytes = sum(a.nbytes for a in jax.live_arrays())  # its device copy, state, orders
    if uses_scan(fn.models.get(name)):  # the whole-epoch path funcnets itself picks
        first, run, _ = funcnets_contestant(name, images, labels, batch, window, scan=True)
        contestants["funcnets epoch"], first_steps["funcnets epoch"] = run, first
    first, run, _ = torch_tutorial_contestant(name, images, labels, batch, window)
    contestants["torch tutorial"], first_steps["torch tutorial"] = run, first
    all_threads = torch.get_num_threads()
    for threads in sorted({1, all_threads}):
        label = f"torch well ({threads} thread{'s' if threads > 1 else ''})"
        first, run, _ = torch_well_contestant(name, images, labels, batch, window, threads=threads)
        contestants[label], first_steps[label] = run, first
    notes = {}
    if torch_compile:
        try:
            first, run, _ = torch_well_contestant(name, images, labels, batch, window, threads=all_threads,
                                                  compiled=True)
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
    return {"model": name, "batch_size": batch, "optimizer": f"{optimizer}(lr={lr})", "window_steps": window,
            "steps_per_epoch": steps_per_epoch, "repeats": repeats, "flops_per_step": flops, "rows": rows,
            "notes": notes, "host_malloc": host_malloc, "dataset_mb": dataset_bytes / 2 ** 20,
            "funcnets_resident_dataset_copies": (rss_funcnets - rss_start) / dataset_bytes,
            "funcnets_live_dataset_copies": (dataset_bytes + live_bytes) / dataset_bytes,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


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
    lines = [f"Machine: {environment['machine']}; jax {environment['jax']}, torch {environment.get('torch')}; "
             f"float32 GEMM peak {peak['peak'] / 1e9:.0f} GFLOP/s (JAX {peak['jax'] / 1e9:.0f}, "
             f"PyTorch {peak['torch'] / 1e9:.0f}). Host memory, for every contestant alike: "
             f"{'; '.join(sorted({r['host_malloc'] for r in results}))}.", "",
             "| model (batch) | contestant | s/epoch | samples/s | first step (s) | vs torch tutorial | "
             "vs torch well (best) | vs torch.compile | % of GEMM peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cnn-window", type=int, default=40, help="timed steps per window for the CNNs")
    p.add_argument("--no-torch-compile", action="store_true")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (FUNCNETS_HOST_MALLOC=system) instead of the setting "
                        "funcnets makes on the CPU; applies to every contestant")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--one-model-json", default=None, help=argparse.SUPPRESS)  # the child process's output
    args = p.parse_args(argv)

    if args.one_model_json:
        result = bench_model(args.models[0], repeats=args.repeats, cnn_window=args.cnn_window,
                             torch_compile=not args.no_torch_compile)
        pathlib.Path(args.one_model_json).write_text(json.dumps(result))
        return pathlib.Path(args.one_model_json)

    from experiments.tutorial import check_host_malloc, environment
    from funcnets import host_memory

    if not args.system_malloc:
        check_host_malloc(p)  # a bad FUNCNETS_HOST_MALLOC fails here, not in each child
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peak = gemm_peak()
    results = []
    for model in args.models:
        child = out / f"{model}.json"
        command = [sys.executable, "-m", "experiments.bench", "--models", model, "--repeats", str(args.repeats),
                   "--cnn-window", str(args.cnn_window), "--one-model-json", str(child)]
        if args.no_torch_compile:
            command.append("--no-torch-compile")
        print(f"benchmarking {model} ...", flush=True)
        child_env = {**os.environ, **({host_memory.OPT_OUT: "system"} if args.system_malloc else {})}
        subprocess.run(command, check=True, env=child_env)
        results.append(json.loads(child.read_text()))
    env = environment()
    env["host_malloc"] = "; ".join(sorted({r["host_malloc"] for r in results}))  # the model processes'
    table = markdown(results, peak, env)
    (out / "bench.md").write_text(table)
    (out / "bench.json").write_text(json.dumps({"gemm_peak": peak, "results": results, "environment": env,
                                                "command": " ".join(["python", "-m", "experiments.bench",
                                                                     *(argv if argv is not None else sys.argv[1:])])},
                                               indent=2) + "\n")
    print(table + f"\nTable: {out / 'bench.md'}")
    return out


if __name__ == "__main__":
    main()
