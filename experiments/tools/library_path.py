"""The speed a library user gets: `fn.train_epoch` and `fn.fit` called from one's
own code, against the tutorial's PyTorch loop, each in a fresh process with
its own defaults, taking turns in one run.

    python -m experiments.tools.library_path                       # mnist_cnn, mastering_cnn; reports/library_path/
    python -m experiments.tools.library_path --models mnist_cnn --steps 120 --repeats 5
    python -m experiments.tools.library_path --host-malloc system   # funcnets on glibc's defaults too

`experiments.tools.bench` runs every contestant in one process under one
``malloc`` setting, which it makes up front; a user's process has no such
setup. Here each contestant is its own process, started with the environment
as it is (``FUNCNETS_HOST_MALLOC`` and glibc's ``MALLOC_*`` variables removed),
so funcnets runs with what its epoch functions do by themselves
(`funcnets.host_memory.for_cpu_steps`) and PyTorch with glibc's defaults:

- ``funcnets train_epoch``: ``fn.train_epoch`` over ``--steps`` batches of random
  data of the real shape, at the tutorial's batch size and optimizer; the second
  call is timed (the first compiles);
- ``funcnets fit``: ``fn.fit`` for 2 epochs of the same data (no test split, no
  bar, no lines); the second epoch's ``train_seconds``;
- ``torch tutorial``: the tutorial's loop as `experiments.tools.bench` runs it
  (``DataLoader(shuffle=True)``, ``zero_grad/backward/step``, ``loss.item()``),
  its second window of ``--steps`` batches.

Reported per model: the median seconds per step of each contestant, and the
ratio PyTorch / funcnets, the median over rounds of each round's ratio (with
its range), so drift between rounds cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

from experiments.tools.bench import CASES

CONTESTANTS = ("funcnets train_epoch", "funcnets fit", "torch tutorial")


def _data(name: str, steps: int) -> tuple[np.ndarray, np.ndarray, int]:
    batch, shape, _, _, _ = CASES[name]
    rng = np.random.default_rng(0)
    n = steps * batch
    return rng.standard_normal((n, *shape), np.float32), rng.integers(0, 10, n).astype(np.int32), batch


def time_contestant(contestant: str, name: str, steps: int, host_malloc: str | None = None) -> float:
    """Seconds per step of one contestant, its second pass over ``steps`` batches."""
    images, labels, batch = _data(name, steps)
    if contestant == "torch tutorial":
        from experiments.tools.bench import torch_tutorial_contestant

        _, run_window, _ = torch_tutorial_contestant(name, images, labels, batch, steps)
        run_window(0)
        start = time.perf_counter()
        run_window(1)
        return (time.perf_counter() - start) / steps
    import jax

    import funcnets as fn

    _, _, _, optimizer, lr = CASES[name]
    state = fn.create_train_state(fn.models.get(name), fn.optim.create(optimizer, lr=lr), jax.random.key(0))
    if contestant == "funcnets fit":
        _, history = fn.fit(state, (images, labels), epochs=2, batch_size=batch, rng=jax.random.key(1),
                            report=fn.loop.Report.silent(), host_malloc=host_malloc)
        return history[1]["train_seconds"] / steps
    x, y = jax.device_put(images), jax.device_put(labels)
    state, metrics = fn.train_epoch(state, x, y, batch_size=batch, rng=jax.random.key(1), host_malloc=host_malloc)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = fn.train_epoch(state, x, y, batch_size=batch, rng=jax.random.key(2), host_malloc=host_malloc)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def _user_environment() -> dict:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("FUNCNETS_HOST_MALLOC", "MALLOC_")) and "glibc.malloc" not in v}


def _in_own_process(contestant: str, name: str, steps: int, host_malloc: str | None) -> dict:
    choice = [] if host_malloc is None else ["--host-malloc", host_malloc]
    done = subprocess.run([sys.executable, "-m", "experiments.tools.library_path", "--child", contestant,
                           "--models", name, "--steps", str(steps), *choice],
                          capture_output=True, text=True, env=_user_environment(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contestant} on {name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["said"] = [line for line in done.stderr.splitlines() if line.startswith("funcnets: host memory")]
    return result


def bench_model(name: str, *, steps: int, repeats: int, host_malloc: str | None = None) -> dict:
    """Every contestant on ``name``, ``repeats`` rounds in turns; its row."""
    seconds = {c: [] for c in CONTESTANTS}
    said = set()
    for _ in range(repeats):
        for contestant in CONTESTANTS:
            result = _in_own_process(contestant, name, steps, host_malloc)
            seconds[contestant].append(result["seconds_per_step"])
            said.update(result["said"])
    ratios = {}
    for contestant in CONTESTANTS[:2]:
        paired = [t / f for t, f in zip(seconds["torch tutorial"], seconds[contestant])]
        ratios[contestant] = {"median": statistics.median(paired), "min": min(paired), "max": max(paired)}
    return {"model": name, "batch_size": CASES[name][0], "steps": steps, "repeats": repeats,
            "seconds_per_step": {c: statistics.median(s) for c, s in seconds.items()},
            "all_seconds_per_step": seconds, "speedup_over_torch_tutorial": ratios, "funcnets_said": sorted(said)}


def markdown(results: list[dict], command: str) -> str:
    import platform

    import jax
    import torch

    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `{command}`: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"jax {jax.__version__}, torch {torch.__version__}; each contestant a fresh process with the user's "
             "environment, in turns.", "",
             "| model (batch) | funcnets train_epoch | funcnets fit | torch tutorial | train_epoch vs torch | "
             "fit vs torch |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        ms = {c: f"{1000 * s:.1f} ms" for c, s in r["seconds_per_step"].items()}
        ratio = {c: f"**{v['median']:.2f}x** ({v['min']:.2f}-{v['max']:.2f})"
                 for c, v in r["speedup_over_torch_tutorial"].items()}
        lines.append(f"| {r['model']} ({r['batch_size']}) | {ms['funcnets train_epoch']} | {ms['funcnets fit']} | "
                     f"{ms['torch tutorial']} | {ratio['funcnets train_epoch']} | {ratio['funcnets fit']} |")
    said = sorted({line for r in results for line in r["funcnets_said"]})
    if said:
        lines += ["", "What funcnets said it changed in the process:", "", *[f"    {line}" for line in said]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pathlib.Path | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mnist_cnn", "mastering_cnn"], choices=sorted(CASES))
    p.add_argument("--steps", type=int, default=120, help="batches per timed pass (default 120)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every contestant (default 3)")
    p.add_argument("--host-malloc", choices=["reuse", "system"], default=None,
                   help="funcnets' host_malloc argument (default: its own default); 'system' measures "
                        "funcnets with glibc's malloc defaults, as before its epoch functions set it")
    p.add_argument("--out", default="reports/library_path")
    p.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps({"seconds_per_step": time_contestant(args.child, args.models[0], args.steps,
                                                              args.host_malloc)}))
        return None
    results = [bench_model(name, steps=args.steps, repeats=args.repeats, host_malloc=args.host_malloc)
               for name in args.models]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.tools.library_path " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(results, command.strip())
    (out / "library_path.md").write_text(report)
    (out / "library_path.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report)
    return out


if __name__ == "__main__":
    main()
