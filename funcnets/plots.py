"""Figures from metrics records (`funcnets.metrics.read_metrics`), drawn with matplotlib.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, not
pyplot: nothing here changes matplotlib's global backend or figure registry.
matplotlib is imported when the first figure is drawn (`preload` imports it
in a background thread, so a training run need not wait for it at the end).
"""

from __future__ import annotations

import pathlib
import threading

import numpy as np

COLORS = {"jax": "tab:blue", "torch": "tab:orange"}
LABELS = {"jax": "funcnets (JAX)", "torch": "PyTorch"}


def step_losses(records: list[dict]) -> np.ndarray:
    """Every step's loss, in order, from the ``"losses"`` of the step records."""
    return np.asarray([x for r in records if r["kind"] == "step" for x in r.get("losses", [])], np.float64)


def epochs(records: list[dict]) -> list[dict]:
    return [r for r in records if r["kind"] == "epoch"]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def preload() -> threading.Thread:
    """Import matplotlib's figure and Agg canvas in a daemon thread (started; returned)."""
    thread = threading.Thread(target=_preload, name="funcnets-plots-preload", daemon=True)
    thread.start()
    return thread


def _preload() -> None:
    try:
        _figure_class()
    except ImportError:
        pass   # said when a figure is drawn


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 (Figure.savefig uses it)
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the figures need matplotlib: pip install -e '.[plot]'") from error
    return Figure


def _subplots(*args, **kwargs):
    figure = _figure_class()(figsize=kwargs.pop("figsize"))
    return figure, figure.subplots(*args, **kwargs)


def _save(figure, path: pathlib.Path, *, tight: bool = True) -> pathlib.Path:
    """``figure`` as a PNG at ``path``; ``tight``: lay it out with ``tight_layout``
    first (an extra rendering pass; False where the figure's margins are set)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _panels(runs: dict[str, list[dict]], title: str):
    """Per-step loss, per-epoch train/test loss, and accuracy for each run."""
    figure, (per_step, per_epoch, accuracy) = _subplots(1, 3, figsize=(15, 4.2))
    for name, records in runs.items():
        color, label = COLORS.get(name), LABELS.get(name, name)
        width_line = 2.6 if name == "jax" else 1.2  # drawn under PyTorch's, so both show where they agree
        losses = step_losses(records)
        width = max(1, len(losses) // 200)
        if len(losses):
            per_step.plot(np.arange(1, len(losses) + 1), losses, color=color, alpha=0.25, linewidth=0.6)
            smooth = _smooth(losses, width)
            per_step.plot(np.arange(width, width + len(smooth)), smooth, color=color, linewidth=width_line,
                          label=f"{label}" + (f" ({width}-step mean)" if width > 1 else ""))
        rows = epochs(records)
        x = [r["epoch"] + 1 for r in rows]
        per_epoch.plot(x, [r["loss"] for r in rows], "o-", color=color, linewidth=width_line, markersize=2 + 2 * width_line, label=f"{label} train")
        per_epoch.plot(x, [r["test_loss"] for r in rows], "s--", color=color, linewidth=width_line, markersize=2 + 2 * width_line, label=f"{label} test")
        accuracy.plot(x, [100 * r["accuracy"] for r in rows], "o-", color=color, linewidth=width_line, markersize=2 + 2 * width_line, label=f"{label} train")
        accuracy.plot(x, [100 * r["test_accuracy"] for r in rows], "s--", color=color, linewidth=width_line, markersize=2 + 2 * width_line, label=f"{label} test")
    per_step.set(title="loss per step", xlabel="step", ylabel="loss")
    per_epoch.set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    accuracy.set(title="accuracy", xlabel="epoch", ylabel="%")
    for axes in (per_step, per_epoch, accuracy):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    # Fixed margins rather than tight_layout, whose extra rendering pass costs a run's end ~0.15 s.
    figure.subplots_adjust(left=0.045, right=0.99, bottom=0.12, top=0.86, wspace=0.2)
    return figure


def plot_run(records: list[dict], path, *, title: str) -> pathlib.Path:
    """One run's curves."""
    return _save(_panels({"run": records}, title), path, tight=False)


def plot_comparison(runs: dict[str, list[dict]], path, *, title: str) -> pathlib.Path:
    """Both frameworks' curves overlaid (``runs`` maps "jax"/"torch" to records)."""
    return _save(_panels(runs, title), path, tight=False)


def plot_difference(jax_losses: np.ndarray, torch_losses: np.ndarray, path, *, title: str) -> pathlib.Path:
    """The per-step loss difference, JAX minus PyTorch, and its size on a log scale."""
    steps = min(len(jax_losses), len(torch_losses))
    difference = jax_losses[:steps] - torch_losses[:steps]
    x = np.arange(1, steps + 1)
    figure, (signed, size) = _subplots(1, 2, figsize=(12, 4))
    signed.plot(x, difference, linewidth=0.6, color="tab:purple")
    signed.axhline(0, color="black", linewidth=0.5)
    signed.set(title="loss(JAX) - loss(PyTorch), per step", xlabel="step")
    size.semilogy(x, np.maximum(np.abs(difference), 1e-12), linewidth=0.6, color="tab:purple")
    size.set(title="|difference| (floored at 1e-12)", xlabel="step")
    for axes in (signed, size):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return _save(figure, path)


def plot_optimizer_curves(curves: dict[str, np.ndarray], path, *, title: str) -> pathlib.Path:
    """Several runs' per-step losses (smoothed) in one plot."""
    figure, axes = _subplots(figsize=(8, 5))
    for label, losses in curves.items():
        width = max(1, len(losses) // 100)
        smooth = _smooth(np.asarray(losses), width)
        axes.plot(np.arange(width, width + len(smooth)), smooth, label=label)
    axes.set(title=title, xlabel="step", ylabel="training loss", yscale="log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_trajectories(objective, trajectories: dict[str, np.ndarray], path, *, title: str) -> pathlib.Path:
    """Optimizer paths ``(steps + 1, 2)`` over the contour lines of a 2-D ``objective(x, y)``."""
    points = np.concatenate(list(trajectories.values()))
    (x_lo, y_lo), (x_hi, y_hi) = points.min(axis=0), points.max(axis=0)
    pad_x, pad_y = 0.15 * (x_hi - x_lo) + 0.1, 0.15 * (y_hi - y_lo) + 0.1
    grid_x, grid_y = np.meshgrid(np.linspace(x_lo - pad_x, x_hi + pad_x, 300),
                                 np.linspace(y_lo - pad_y, y_hi + pad_y, 300))
    figure, axes = _subplots(figsize=(8, 5.5))
    axes.contour(grid_x, grid_y, objective(grid_x, grid_y), levels=25, cmap="Greys", linewidths=0.6)
    for label, path_xy in trajectories.items():
        axes.plot(path_xy[:, 0], path_xy[:, 1], "o-", markersize=2.5, linewidth=1, label=label)
    axes.plot([0], [0], "k*", markersize=10, label="minimum")
    axes.set(title=title, xlabel="x", ylabel="y")
    axes.legend(fontsize=8)
    return _save(figure, path)
