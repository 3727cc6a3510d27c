"""The README's results table: `experiments.compare` over several seeds, aggregated.

    python -m experiments.results --dataset fashion_mnist --seeds 1 2 3 --out reports/results
    python -m experiments.results --aggregate-only --out reports/results   # re-read finished runs

Each (experiment, seed) runs ``python -m experiments.compare`` in its own
process (so every first epoch pays its own compilation) into
``<out>/<experiment>-seed<seed>/``. The table gives, per experiment and
framework, the final test accuracy as mean ± standard deviation over seeds
(and each seed's), the steady time per epoch (mean over seeds), and the JAX -
PyTorch accuracy difference per seed, next to what the tutorial reports.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

from experiments.compare import EXPERIMENTS, tutorial_of


def run(experiment: str, seed: int, dataset: str, out: pathlib.Path, extra: list[str]) -> pathlib.Path:
    folder = out / f"{experiment}-seed{seed}"
    command = [sys.executable, "-m", "experiments.compare", experiment, "--seed", str(seed), "--no-progress",
               "--out", str(folder), *(["--dataset", dataset] if dataset else []), *extra]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    return folder


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{100 * mean:.2f}%"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}%"


def aggregate(out: pathlib.Path) -> str:
    """The Markdown table over every ``<out>/<experiment>-seed<k>/results.json``."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*-seed*/results.json")):
        result = json.loads(path.read_text())
        runs.setdefault(result["experiment"], []).append(result)
    lines = ["| experiment | dataset | epochs | seeds | JAX test acc. | PyTorch test acc. | JAX - PyTorch per seed "
             "(points) | JAX s/epoch | PyTorch s/epoch | speedup | tutorial reports |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for experiment in EXPERIMENTS:
        results = runs.get(experiment)
        if not results:
            continue
        jax_runs = [r["runs"]["jax"] for r in results]
        torch_runs = [r["runs"]["torch"] for r in results]
        differences = ", ".join(f"{100 * (j['test_accuracy'] - t['test_accuracy']):+.2f}"
                                for j, t in zip(jax_runs, torch_runs))
        jax_seconds = statistics.mean(r["epoch_seconds"] for r in jax_runs)
        torch_seconds = statistics.mean(r["epoch_seconds"] for r in torch_runs)
        lines.append(
            f"| `{experiment}` | {jax_runs[0]['dataset']} | {jax_runs[0]['epochs']} | "
            f"{', '.join(str(r['seed']) for r in jax_runs)} | {_spread([r['test_accuracy'] for r in jax_runs])} | "
            f"{_spread([r['test_accuracy'] for r in torch_runs])} | {differences} | {jax_seconds:.2f} | "
            f"{torch_seconds:.2f} | {torch_seconds / jax_seconds:.2f}x | "
            f"{tutorial_of(experiment).reported or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m experiments.results", description=__doc__.splitlines()[0])
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=["mnist_mlp", "simple_net", "mnist_cnn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--dataset", default=None, help="passed to every compare (default: each experiment's own)")
    p.add_argument("--out", default="reports/results")
    p.add_argument("--aggregate-only", action="store_true", help="only re-read the finished runs in --out")
    args, extra = p.parse_known_args(argv)
    out = pathlib.Path(args.out)
    if not args.aggregate_only:
        for experiment in args.experiments:
            for seed in args.seeds:
                run(experiment, seed, args.dataset, out, extra)
    table = aggregate(out)
    (out / "results.md").write_text(table)
    print(table + f"\nTable: {out / 'results.md'}")
    return table


if __name__ == "__main__":
    main()
