"""Time to result: each experiment script as a whole process, from Enter to its
final accuracy, funcnets against PyTorch, timed in turns in one run.

    python -m experiments.tools.end_to_end                          # every script; reports/end_to_end/
    python -m experiments.tools.end_to_end --scripts mnist_mlp --repeats 5
    python -m experiments.tools.bench --end-to-end                  # the same, from the benchmark

For each script, per round (``--repeats`` rounds, contestants in turns so that
drift on the machine hits all alike):

- ``funcnets cold``: ``python -m experiments.<script>`` with an empty JAX
  compilation cache (every program compiled);
- ``funcnets warm``: the same with the cache the cold run left (programs loaded);
- ``PyTorch``: for ``mnist_mlp``, the tutorial's own program as it writes it
  (`experiments.as_written.mnist_mlp`: a ``DataLoader`` loop, a test pass per
  epoch); for the others, the script with ``--framework torch`` (the PyTorch
  reference: a ``DataLoader`` loop on the same batches, a test pass per epoch,
  checkpoints and metrics as funcnets writes them).

Every run does the whole job: loads and normalises the data, trains, tests each
epoch, checkpoints, writes its metrics, summary and plot. The CNNs run
``--cnn-epochs`` epochs (default 1), the CIFAR CNN on its first 10,000
images (``--cnn-train-examples``): a stated fraction of their tutorials' runs
on the CPU; the MLPs their whole 10 epochs. Reported: median wall seconds per
contestant, the ratio PyTorch / funcnets (median over rounds of the paired
ratio), and the final test accuracy each printed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

SCRIPTS = {   # script: (data, tutorial epochs, convolutional)
    "mnist_mlp": ("mnist", 10, False),
    "simple_net": ("mnist", 10, False),
    "mastering_cnn": ("mnist", 2, True),
    "mnist_cnn": ("mnist", 14, True),
    "cifar10_cnn": ("cifar10", 10, True),
}
CIFAR_TRAIN_EXAMPLES = 10_000   # the CIFAR CNN's default share of its 50,000 on the CPU (~100 ms a step)
ACCURACY = re.compile(r"Test accuracy: ([0-9.]+)%")


def _timed(command: list[str], env: dict) -> tuple[float, float | None, str]:
    """Wall seconds of a whole process, the last test accuracy it printed, its output tail."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = ACCURACY.findall(done.stdout)
    return seconds, (float(found[-1]) if found else None), done.stdout[-300:]


def commands(script: str, data_dir: str, epochs: int, work: pathlib.Path, cache: pathlib.Path,
             train_examples: int | None = None) -> dict:
    """The contestants' command lines for one round."""
    dataset = "mnist" if SCRIPTS[script][0] == "mnist" else "cifar10"
    common = ["--dataset", dataset, "--data-dir", data_dir, "--epochs", str(epochs), "--no-progress"]
    if train_examples is not None:
        common += ["--train-examples", str(train_examples)]
    funcnets = [sys.executable, "-m", f"experiments.{script}", *common, "--checkpoint-dir", str(work / "jax")]
    if script == "mnist_mlp" and epochs == SCRIPTS[script][1] and train_examples is None:
        torch = [sys.executable, "-m", "experiments.as_written.mnist_mlp", "--data-dir", data_dir,
                 "--epochs", str(epochs)]
    else:
        torch = [sys.executable, "-m", f"experiments.{script}", *common, "--framework", "torch",
                 "--checkpoint-dir", str(work / "torch")]
    return {"funcnets cold": [*funcnets, "--compile-cache", str(cache / "cold")],
            "funcnets warm": [*funcnets, "--compile-cache", str(cache / "warm")],
            "PyTorch": torch}


def bench_script(script: str, data_dir: str, *, epochs: int, repeats: int, env: dict,
                 train_examples: int | None = None) -> dict:
    times: dict[str, list[float]] = {}
    accuracy: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "warm").mkdir()
        # Fill the warm cache once (untimed), so that every timed warm run loads.
        subprocess.run(commands(script, data_dir, epochs, tmp / "fill", tmp, train_examples)["funcnets warm"],
                       check=True, capture_output=True, env=env)
        for round_ in range(repeats):
            for name in ("funcnets cold", "funcnets warm", "PyTorch"):
                cache = tmp / f"round{round_}"
                if name == "funcnets cold":
                    (cache / "cold").mkdir(parents=True)      # empty: compile everything
                runs = commands(script, data_dir, epochs, tmp / f"run{round_}-{name.split()[-1]}",
                                cache if name == "funcnets cold" else tmp, train_examples)
                seconds, acc, _ = _timed(runs[name], env)
                times.setdefault(name, []).append(seconds)
                accuracy[name] = acc
                print(f"  {script} round {round_ + 1}: {name} {seconds:.2f} s"
                      + (f", test accuracy {acc:.2f}%" if acc is not None else ""), flush=True)
    ratios = {name: statistics.median(t / f for t, f in zip(times["PyTorch"], times[name]))
              for name in ("funcnets cold", "funcnets warm")}
    return {"script": script, "epochs": epochs, "tutorial_epochs": SCRIPTS[script][1],
            "train_examples": train_examples,
            "seconds": {k: statistics.median(v) for k, v in times.items()}, "all_seconds": times,
            "speedup": ratios, "accuracy": accuracy,
            "torch_program": " ".join(commands(script, data_dir, epochs, pathlib.Path("RUN"), pathlib.Path("CACHE"),
                                               train_examples)["PyTorch"][1:])}


def markdown(results: list[dict], environment: dict, command: str) -> str:
    lines = [f"Time to result, whole processes (`{command}`), {environment.get('date', '')}; "
             f"{environment['machine']}, JAX {environment['jax']}, PyTorch {environment['torch']}.", "",
             "| script | epochs | funcnets cold | funcnets warm | PyTorch | PyTorch / funcnets warm (cold) "
             "| test accuracy funcnets / PyTorch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        s, acc = r["seconds"], r["accuracy"]
        shown = [f"{a:.2f}%" if a is not None else "-" for a in (acc.get("funcnets warm"), acc.get("PyTorch"))]
        share = f" on {r['train_examples']:,} images" if r.get("train_examples") else ""
        lines.append(f"| {r['script']} | {r['epochs']} of {r['tutorial_epochs']}{share} | {s['funcnets cold']:.1f} s "
                     f"| {s['funcnets warm']:.1f} s | {s['PyTorch']:.1f} s | **{r['speedup']['funcnets warm']:.2f}x** "
                     f"({r['speedup']['funcnets cold']:.2f}x) | {shown[0]} / {shown[1]} |")
    lines += ["", "PyTorch programs: " + "; ".join(f"{r['script']}: `{r['torch_program']}`" for r in results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pathlib.Path:
    p = argparse.ArgumentParser(prog="python -m experiments.tools.end_to_end", description=__doc__.splitlines()[0])
    p.add_argument("--scripts", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    p.add_argument("--repeats", type=int, default=3, help="rounds of turns (default 3)")
    p.add_argument("--cnn-epochs", type=int, default=1,
                   help="epochs for the CNN scripts (default 1; their tutorials' counts take minutes each)")
    p.add_argument("--cnn-train-examples", type=int, default=None, metavar="N",
                   help=f"train the CNNs on the first N images (default: all; CIFAR {CIFAR_TRAIN_EXAMPLES:,})")
    p.add_argument("--mnist-dir", default="../shared/data/mnist", help="MNIST's IDX files")
    p.add_argument("--cifar-dir", default="../shared/data/cifar10-jpeg", help="CIFAR-10 (a folder or its archive)")
    p.add_argument("--out", default="reports/end_to_end")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.cnn_epochs < 1:
        p.error("--repeats and --cnn-epochs must be at least 1")
    dirs = {"mnist": args.mnist_dir, "cifar10": args.cifar_dir}
    missing = sorted({SCRIPTS[s][0] for s in args.scripts if not os.path.exists(dirs[SCRIPTS[s][0]])})
    if missing:
        p.error("no data for " + ", ".join(f"{m} in {dirs[m]}" for m in missing)
                + " (see the README's data section; --mnist-dir/--cifar-dir)")
    from experiments.tutorial import environment

    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "")}
    results = []
    for script in args.scripts:
        data, tutorial_epochs, convolutional = SCRIPTS[script]
        epochs = min(args.cnn_epochs, tutorial_epochs) if convolutional else tutorial_epochs
        print(f"{script}: {epochs} epoch(s), {args.repeats} round(s)", flush=True)
        examples = None
        if convolutional:
            examples = args.cnn_train_examples or (CIFAR_TRAIN_EXAMPLES if data == "cifar10" else None)
        results.append(bench_script(script, dirs[data], epochs=epochs, repeats=args.repeats, env=env,
                                    train_examples=examples))
    info = {**environment(), "date": time.strftime("%Y-%m-%d")}
    command = " ".join(["python", "-m", "experiments.tools.end_to_end", *(argv if argv is not None else sys.argv[1:])])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, info, command)
    (out / "end_to_end.md").write_text(table)
    (out / "end_to_end.json").write_text(json.dumps({"results": results, "environment": info, "command": command},
                                                    indent=2) + "\n")
    print(table + f"\nTable: {out / 'end_to_end.md'}")
    return out


if __name__ == "__main__":
    main()
