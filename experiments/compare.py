"""JAX and PyTorch side by side: one experiment, the same init, the same batches.

    python -m experiments.compare mnist_mlp                 # the README's main job
    python -m experiments.compare mnist_cnn --epochs 1 --out reports/cnn
    python -m experiments.compare cifar10_cnn --data-dir ~/data --dry-run
    python -m experiments.compare cifar10_cnn --data-dir ~/data --out reports/cifar --report-only

Both frameworks start from one PyTorch init (``torch.manual_seed(seed)``, the
net's ``state_dict`` ported to funcnets), visit the same batches in the same
order (`experiments.tutorial`), and train one after the other in this process.
Dropout masks are each framework's own. The report folder holds:

- ``curves.png``: loss per step and per epoch, and accuracy, both frameworks overlaid;
- ``difference.png``: loss(JAX) - loss(PyTorch) per step;
- ``report.md``, ``results.csv``, ``results.json``: final train/test loss and
  accuracy, time per epoch in steady state, first epoch (compile included, or
  loaded from JAX's compilation cache, `experiments.tutorial.compile_cache`),
  samples/s and parameters per framework, and their ratio JAX/PyTorch;
  the command, the versions and the device;
- ``jax/`` and ``torch/``: each run's metrics file, plot and summary.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import pathlib
import sys

import numpy as np

from experiments import tutorial as common
from funcnets import plots
from funcnets.data import DatasetNotFoundError
from funcnets.metrics import read_metrics
from funcnets.parity import epoch_table, step_gap

EXPERIMENTS = ("mnist_mlp", "mnist_cnn", "mastering_cnn", "cifar10_cnn", "simple_net")
COLUMNS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds",
           "first_epoch_seconds", "samples_per_second", "parameters")


def tutorial_of(experiment: str) -> common.Tutorial:
    return importlib.import_module(f"experiments.{experiment}").TUTORIAL


def parse(argv: list[str] | None):
    """The experiment, then the flags of its own script (all but --framework,
    --checkpoint-dir, --resume and --metrics-out, which compare sets)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("experiment", nargs="?", choices=EXPERIMENTS)
    known, rest = first.parse_known_args(argv)
    if known.experiment is None:
        usage = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.splitlines()[0])
        usage.add_argument("experiment", choices=EXPERIMENTS)
        usage.parse_args(rest)  # --help, or a clear "required" error
        usage.error("the following arguments are required: experiment")
    tutorial = tutorial_of(known.experiment)
    p = common.parser(tutorial, prog=f"python -m experiments.compare {known.experiment}",
                      description=f"{tutorial.name}: funcnets vs PyTorch from the same init and batches.")
    p.add_argument("--out", default=None, help="report folder (default: reports/<experiment>-<dataset>)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite the report from the runs already in --out (each framework's "
                        "metrics file; a run stopped early is reported for the epochs it finished)")
    p.add_argument("--torch-epochs", type=common.positive(int), default=None, metavar="N",
                   help="train PyTorch for only the first N of --epochs (same init and batches), where "
                        "its whole run would take too long; the report compares the epochs both ran")
    args = p.parse_args(rest)
    args.command = common.command_line("experiments.compare", argv)
    if args.report_only and args.out is None:
        p.error("--report-only needs --out (the folder of the runs to report)")
    for flag in ("framework", "checkpoint_dir", "resume", "metrics_out"):
        if getattr(args, flag) != p.get_default(flag):
            p.error(f"--{flag.replace('_', '-')} is set by compare itself")
    common.check_args(tutorial, args, p)
    try:
        import torch  # noqa: F401
    except ImportError:
        p.error("compare needs PyTorch: pip install -e '.[torch]'")
    return tutorial, args


def torch_init(model_name: str, seed: int, **options) -> dict[str, np.ndarray]:
    """PyTorch's own init of the net (built with ``options``) under
    ``torch.manual_seed(seed)``, as float64 arrays."""
    import torch

    from funcnets import torch_models

    torch.manual_seed(seed)
    net = torch_models.build(model_name, **options).double()
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def ratio_row(rows: dict[str, dict]) -> dict[str, float | None]:
    def ratio(column):
        a, b = rows["jax"][column], rows["torch"][column]
        return None if not b else a / b

    return {column: ratio(column) for column in COLUMNS}


def _cell(value, column: str) -> str:
    if value is None:
        return "-"
    if column == "parameters":
        return f"{int(value):,}"
    if column.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if column == "samples_per_second":
        return f"{value:,.0f}"
    return f"{value:.4f}" if column.endswith("loss") else f"{value:.3f}"


def _cache_note(cache: dict | None) -> str:
    if not cache or not cache["loaded"]:
        return ""
    return f" (JAX loaded {cache['loaded']} compiled program(s) from the compilation cache {cache['directory']})"


def markdown(tutorial, args, summaries: dict[str, dict], ratios: dict, steps: dict) -> str:
    env = summaries["jax"]["environment"]
    header = ["framework", *COLUMNS]
    lines = [f"# {tutorial.name}: funcnets (JAX) vs PyTorch", "",
             f"{tutorial.source}; {summaries['jax']['dataset']} ({summaries['jax']['dataset_source']}; "
             f"chosen by {summaries['jax']['dataset_choice']}), {summaries['jax']['epochs']} epochs, "
             f"{args.optimizer} lr {args.lr}{f', StepLR gamma {args.gamma}' if args.gamma else ''}, "
             f"batch {args.batch_size}, seed {args.seed}{', float64' if args.float64 else ''}"
             f"{', dry run' if args.dry_run else ''}.", "",
             *epochs_note(summaries),
             "| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for name in common.FRAMEWORKS:
        lines.append("| " + " | ".join([name] + [_cell(summaries[name][c], c) for c in COLUMNS]) + " |")
    lines.append("| " + " | ".join(["JAX/PyTorch"] + [
        "-" if ratios[c] is None else f"{ratios[c]:.3f}" for c in COLUMNS]) + " |")
    lines += ["", "Times are the training steps of an epoch (no test pass): `epoch_seconds` is the median of the "
              "epochs after the first, `first_epoch_seconds` includes compilation"
              f"{_cache_note(summaries['jax']['compile_cache'])}. A time ratio below 1 means "
              "JAX is faster; speedup (PyTorch time / JAX time) "
              f"**{1 / ratios['epoch_seconds']:.2f}x** per epoch.", "",
              f"Per-step training loss, JAX - PyTorch: largest {steps['max_abs']:.3g} (step {steps['argmax']}), "
              f"first step {steps['first']:.3g}, mean over the last 100 steps {steps['tail_mean']:.3g} "
              f"({steps['count']} steps). Dropout masks differ between the frameworks; float32 "
              "reductions differ in the last bits, and training amplifies that.", "",
              f"Tutorial reports: {tutorial.reported or 'no number to compare'}.", "",
              *epoch_table(summaries), "",
              "![curves](curves.png)", "", "![difference](difference.png)", "",
              "Reproduce:", "", "```bash", summaries["jax"]["command"], "```", "",
              "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def epochs_note(summaries: dict[str, dict]) -> list[str]:
    """A line when the frameworks ran different numbers of epochs (``--torch-epochs``, or a run stopped early)."""
    jax_epochs, torch_epochs = summaries["jax"]["epochs"], summaries["torch"]["epochs"]
    if jax_epochs == torch_epochs:
        return []
    return [f"**PyTorch ran {torch_epochs} of the {jax_epochs} epochs** (same init and batches); its row is "
            f"after epoch {torch_epochs}, JAX's after epoch {jax_epochs}: compare epoch by epoch below.", ""]


def train_both(tutorial, args, data, out: pathlib.Path) -> tuple[dict, dict]:
    """Each framework's run from one PyTorch init into ``out/<framework>/``:
    ``(summaries, metrics records)`` by framework."""
    init = torch_init(tutorial.model, args.seed, **common.model_options(tutorial, args))
    summaries, records = {}, {}
    epochs = args.epochs
    for framework in common.FRAMEWORKS:
        args.framework = framework
        args.epochs = min(epochs, args.torch_epochs or epochs) if framework == "torch" else epochs
        print(f"\n== {tutorial.name} with {framework} ({plots.LABELS[framework]}) ==")
        metrics_path = out / framework / "metrics.jsonl"
        cache = common.run(tutorial, args, data, metrics_path, init=init)
        records[framework] = read_metrics(metrics_path)
        summaries[framework] = common.summarize(tutorial, args, data, framework, records[framework], cache)
        common.companion(metrics_path, ".summary.json").write_text(json.dumps(summaries[framework], indent=2) + "\n")
        plots.plot_run(records[framework], common.companion(metrics_path, ".png"),
                       title=f"{tutorial.name} ({framework}, {data.dataset})")
    args.epochs = epochs
    return summaries, records


def read_runs(tutorial, args, data, out: pathlib.Path) -> tuple[dict, dict]:
    """`train_both`'s results as left in ``out``: each framework's summary file,
    or, for a run stopped before writing one, a summary of the epochs in its
    metrics file (``"stopped_early": True``)."""
    summaries, records = {}, {}
    for framework in common.FRAMEWORKS:
        metrics_path = out / framework / "metrics.jsonl"
        if not metrics_path.is_file():
            raise SystemExit(f"error: --report-only: no {metrics_path}")
        records[framework] = read_metrics(metrics_path)
        summary_path = common.companion(metrics_path, ".summary.json")
        if summary_path.is_file():
            summaries[framework] = json.loads(summary_path.read_text())
            continue
        if not any(r["kind"] == "epoch" for r in records[framework]):
            raise SystemExit(f"error: --report-only: {metrics_path} holds no finished epoch")
        args.framework = framework
        summaries[framework] = {**common.summarize(tutorial, args, data, framework, records[framework]),
                                "stopped_early": True}
    return summaries, records


def main(argv: list[str] | None = None) -> pathlib.Path:
    tutorial, args = parse(argv)
    try:
        data = common.load_data(tutorial, args)
    except DatasetNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    out = pathlib.Path(args.out or f"reports/{tutorial.name}-{data.dataset}")
    if args.report_only:
        summaries, records = read_runs(tutorial, args, data, out)
    else:
        summaries, records = train_both(tutorial, args, data, out)

    ratios = ratio_row(summaries)
    losses = {name: plots.step_losses(r) for name, r in records.items()}
    steps = step_gap(losses["jax"], losses["torch"])
    title = f"{tutorial.name} on {data.dataset}: funcnets (JAX) vs PyTorch, same init and batches"
    plots.plot_comparison(records, out / "curves.png", title=title)
    plots.plot_difference(losses["jax"], losses["torch"], out / "difference.png", title=title)

    rows = [{"framework": name, **{c: summaries[name][c] for c in COLUMNS}} for name in common.FRAMEWORKS]
    rows.append({"framework": "JAX/PyTorch", **ratios})
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["framework", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps(
        {"experiment": tutorial.name, "rows": rows, "per_step_loss_gap": steps, "runs": summaries,
         "command": summaries["jax"]["command"], "environment": summaries["jax"]["environment"]},
        indent=2) + "\n")
    (out / "report.md").write_text(markdown(tutorial, args, summaries, ratios, steps))

    print(f"\n{'framework':<12} {'test accuracy':>14} {'test loss':>10} {'epoch (s)':>10} {'first epoch (s)':>16}")
    for name in common.FRAMEWORKS:
        s = summaries[name]
        print(f"{name:<12} {100 * s['test_accuracy']:>13.2f}% {s['test_loss']:>10.4f} "
              f"{s['epoch_seconds']:>10.3f} {s['first_epoch_seconds']:>16.3f}")
    print(f"JAX is {1 / ratios['epoch_seconds']:.2f}x PyTorch's speed per epoch; "
          f"largest per-step loss gap {steps['max_abs']:.3g}.")
    print(f"\nReport: {out / 'report.md'}\nPlots: {out / 'curves.png'}, {out / 'difference.png'}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
