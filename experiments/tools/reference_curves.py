"""Record PyTorch's float32 loss curves, the goldens the JAX side is tested against.

    python -m experiments.tools.reference_curves                  # rewrite tests/golden/*.json
    python -m experiments.tools.reference_curves --check          # regenerate, compare within PyTorch's noise
    python -m experiments.tools.reference_curves --check --exact  # bit for bit (the machine that wrote them)

For each model (the tutorial nets, and `NETS`: a batch-norm CNN and a
row-by-row LSTM) and each of SGD, SGD+momentum, Adagrad, Adadelta, RMSprop and
Adam (and for `RECIPES`, a whole recipe: `mnist_cnn` with one-cycle lr, clipping
and no weight decay on biases), PyTorch (``torch.set_num_threads(1)``, dropout off) trains from
`funcnets.parity.numpy_init(model, seed=0)` on
`funcnets.parity.synthetic_batches(model, steps, batch_size, seed=1)`; both
are drawn by NumPy, so the JAX side rebuilds them without torch.

Next to each curve it records PyTorch's own float32 noise on the same case:
the largest gap to the same run on 2 threads, and to a run whose initial
weights are all moved one ulp up. Tests scale their window tolerances by it.

``--check`` regenerates the curves and holds them to the committed ones
within PyTorch's recorded noise (`within_tolerance`): per step over each
case's first steps within the per-step tolerance or twice the recorded
per-step noise, and in 50-step window means within ``max(1e-2, 2 x`` the
recorded window noise``)``. PyTorch's float32 kernels differ between CPU models (AVX2
and AVX-512 sum in other orders), so the regenerated bits differ by machine,
by about the one-ulp noise recorded; ``--exact`` asks for the same bits,
which only the machine (CPU model) that wrote the goldens gives.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

import funcnets as fn
from funcnets.parity import OptimizerSpec, numpy_init, synthetic_batches, torch_curve

GOLDEN_DIR = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden"
INIT_SEED, BATCH_SEED, WINDOW = 0, 1, 50

OPTIMIZERS = (
    OptimizerSpec("sgd", {"lr": 0.01}),
    OptimizerSpec("sgd", {"lr": 0.01, "momentum": 0.9}),
    OptimizerSpec("adagrad", {"lr": 0.01}),
    OptimizerSpec("adadelta", {"lr": 1.0}),
    OptimizerSpec("rmsprop", {"lr": 1e-3}),
    OptimizerSpec("adam", {"lr": 1e-3}),
)

# A whole PyTorch recipe on the pytorch/examples CNN: one-cycle lr (SGD's momentum cycled with it),
# gradient clipping, weight decay on the weights only (a parameter group for the biases).
RECIPE = OptimizerSpec("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                       scheduler=("one_cycle_lr", {"max_lr": 0.05, "total_steps": 100}),
                       clip={"max_norm": 1.0}, groups={"*.bias": {"weight_decay": 0.0}})
RECIPES = {"recipe_mnist_cnn": ("mnist_cnn", (RECIPE,))}   # golden name: (model, specs)


def specs_of(name: str) -> tuple[OptimizerSpec, ...]:
    """The optimizer specs recorded for golden ``name``."""
    return RECIPES[name][1] if name in RECIPES else OPTIMIZERS


def spec_of(case: dict) -> OptimizerSpec:
    """The `OptimizerSpec` a recorded case describes."""
    return OptimizerSpec(case["optimizer"], case["kwargs"],
                         scheduler=tuple(case["scheduler"]) if case.get("scheduler") else None,
                         clip=case.get("clip"), groups=case.get("groups"))


# Per-step tolerance (absolute loss) over each case's first `per_step_horizon` steps; a case
# whose own recorded noise is larger (ulp-chaotic: a rounding-size gradient gets a sign-like
# adaptive step) is held to its noise instead (`within_tolerance`, tests/test_curves.py).
PER_STEP_TOLERANCE = {"mnist_mlp": 1e-5, "simple_net": 1e-5, "mnist_cnn": 5e-5, "mastering_cnn": 5e-5,
                      "cifar_cnn": 5e-5, "bn_cnn": 5e-5, "row_lstm": 5e-5, "recipe_mnist_cnn": 5e-5}

# model -> (steps recorded, batch size, steps compared one by one)
HORIZONS = {
    "mnist_mlp": (500, 64, 50),
    "simple_net": (500, 64, 50),
    "mnist_cnn": (100, 16, 10),
    "mastering_cnn": (100, 16, 10),
    "cifar_cnn": (100, 8, 10),
    "bn_cnn": (100, 16, 10),
    "row_lstm": (100, 16, 10),
    "recipe_mnist_cnn": (100, 16, 10),
}


def _bn_cnn() -> fn.models.Model:
    """A CNN with batch norm after its conv and its hidden fc (model state)."""
    L = fn.layers
    return fn.models.sequential(
        ("conv1", L.Conv2d(1, 8, 3)), ("bn1", L.BatchNorm2d(8)), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
        ("fc1", L.Linear(8 * 13 * 13, 32)), ("bn2", L.BatchNorm1d(32)), L.ReLU(), ("fc2", L.Linear(32, 10)),
        L.LogSoftmax(), input_shape=(28, 28, 1), name="bn_cnn")


def _row_lstm() -> fn.models.Model:
    """MNIST read row by row: an LSTM's last step into a linear classifier."""
    L = fn.layers
    return fn.models.sequential(("rnn", L.LSTM(28, 32, batch_first=True)), L.Last(), ("fc", L.Linear(32, 10)),
                                L.LogSoftmax(), input_shape=(28, 28), name="row_lstm")


NETS = {"bn_cnn": _bn_cnn, "row_lstm": _row_lstm}   # goldens of nets beyond the tutorials'


def model_of(name: str) -> fn.models.Model:
    """The net a golden is of: a tutorial net (`funcnets.models.get`), one of `NETS`, or a recipe's."""
    if name in RECIPES:
        name = RECIPES[name][0]
    return NETS[name]() if name in NETS else fn.models.get(name)


def window_means(losses: np.ndarray) -> np.ndarray:
    return np.asarray(losses[: len(losses) // WINDOW * WINDOW]).reshape(-1, WINDOW).mean(axis=1)


def curve_gaps(golden: dict, case: dict, losses: np.ndarray) -> tuple[float, float]:
    """``(largest per-step gap over the per-step horizon, largest window-mean gap)``
    between ``losses`` and the committed curve of ``case``."""
    committed = np.asarray(case["losses"], np.float32)
    losses = np.asarray(losses, np.float32)
    horizon = golden["per_step_horizon"]
    per_step = float(np.abs(losses[:horizon] - committed[:horizon]).max())
    window = float(np.abs(window_means(losses) - window_means(committed)).max())
    return per_step, window


def within_tolerance(golden: dict, case: dict, losses: np.ndarray) -> tuple[bool, str]:
    """Whether PyTorch's ``losses``, recorded again, match the committed curve
    of ``case`` within PyTorch's own recorded noise (twice it, as two runs
    each carry it, or the per-step tolerance where that is larger); and a
    line saying by how much."""
    per_step, window = curve_gaps(golden, case, losses)
    per_step_tol = max(PER_STEP_TOLERANCE[golden["model"]], 2 * case["self_noise_per_step_max"])
    window_tol = max(1e-2, 2 * case["self_noise_window_max"])
    line = (f"{golden['model']} {case['label']}: per-step {per_step:.1e} (tol {per_step_tol:.0e}), "
            f"windows {window:.1e} (tol {window_tol:.1e})")
    return per_step <= per_step_tol and window <= window_tol, line


def record(model_name: str, *, with_noise: bool = True) -> dict:
    """PyTorch's curves for ``model_name``; ``with_noise`` adds its self-noise
    (two more runs per case, which ``--check`` does not need)."""
    import torch

    steps, batch_size, per_step = HORIZONS[model_name]
    model = model_of(model_name)
    state_dict = numpy_init(model, INIT_SEED)
    batches = synthetic_batches(model, steps, batch_size, BATCH_SEED)
    torch.set_num_threads(1)
    cases = []
    for spec in specs_of(model_name):
        losses, _ = torch_curve(model, spec, state_dict, batches)
        case = {"optimizer": spec.name, "kwargs": spec.kwargs, "label": spec.label(),
                **{k: getattr(spec, k) for k in ("scheduler", "clip", "groups") if getattr(spec, k)},
                "losses": [float(x) for x in losses]}
        if with_noise:
            case.update(self_noise(model, spec, state_dict, batches, losses, per_step))
        cases.append(case)
        print(f"{model_name:10s} {spec.label():28s} loss {losses[0]:.4f} -> {losses[-1]:.4f}  "
              + (f"self-noise: first {per_step} steps {case['self_noise_per_step_max']:.1e}, "
                 f"windows {case['self_noise_window_max']:.1e}" if with_noise else ""), flush=True)
    return {
        "model": model_name, "steps": steps, "batch_size": batch_size, "per_step_horizon": per_step,
        "window": WINDOW, "init": f"funcnets.parity.numpy_init(model, seed={INIT_SEED})",
        "batches": f"funcnets.parity.synthetic_batches(model, {steps}, {batch_size}, seed={BATCH_SEED})",
        "torch": torch.__version__, "torch_threads": 1, "dropout": "off", "cases": cases,
    }


def self_noise(model, spec, state_dict, batches, losses, per_step: int) -> dict:
    """PyTorch against itself: on 2 threads, and from initial weights one ulp up."""
    import torch

    nudged = {k: np.nextafter(v, np.float32(np.inf)) for k, v in state_dict.items()}
    nudged_losses, _ = torch_curve(model, spec, nudged, batches)
    torch.set_num_threads(2)
    try:
        two_thread_losses, _ = torch_curve(model, spec, state_dict, batches)
    finally:
        torch.set_num_threads(1)
    others = (nudged_losses, two_thread_losses)
    per_step_noise = max(np.abs(losses[:per_step] - o[:per_step]).max() for o in others)
    window_noise = max(np.abs(window_means(losses) - window_means(o)).max() for o in others)
    return {"self_noise_per_step_max": float(per_step_noise), "self_noise_window_max": float(window_noise)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(HORIZONS), choices=list(HORIZONS))
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files within PyTorch's noise, write nothing")
    parser.add_argument("--exact", action="store_true",
                        help="with --check: demand the committed bits (the machine that recorded them)")
    args = parser.parse_args(argv)
    if args.exact and not args.check:
        parser.error("--exact goes with --check")
    mismatched = []
    for name in args.models:
        data = record(name, with_noise=not args.check)
        path = GOLDEN_DIR / f"{name}.json"
        if args.check:
            committed = json.loads(path.read_text())
            if [c["label"] for c in committed["cases"]] != [c["label"] for c in data["cases"]]:
                mismatched.append(name)
                continue
            for case, new in zip(committed["cases"], data["cases"]):
                if args.exact:
                    ok = case["losses"] == new["losses"]
                    line = f"{name} {case['label']}: {'the same bits' if ok else 'other bits'}"
                else:
                    ok, line = within_tolerance(committed, case, np.asarray(new["losses"]))
                print(("  ok   " if ok else "  FAIL ") + line, flush=True)
                if not ok and name not in mismatched:
                    mismatched.append(name)
        else:
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"wrote {path}")
    if mismatched:
        print(f"regenerated curves differ from the committed ones: {mismatched}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
