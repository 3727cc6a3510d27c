"""Side-by-side training runs of funcnets and PyTorch from the same init and batches.

A run is described without torch: an initial ``state_dict`` in PyTorch's layout
(`numpy_init`, drawn from PyTorch's init distributions by NumPy), a batch
stream (`synthetic_batches`), and an optimizer spec (`OptimizerSpec`). The
same description trains funcnets (`jax_curve`) and PyTorch (`torch_curve`,
which imports torch), so their loss curves can be compared step by step, or
against curves recorded earlier (``experiments/tools/reference_curves.py``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnets import interop, layers, optim
from funcnets.models import Model
from funcnets.training import create_train_state, train_step


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A PyTorch training recipe, buildable in both frameworks: ``torch.optim.<name>(**kwargs)``
    with, optionally,

    - ``step_lr``: ``StepLR(step_size, gamma)`` stepped every ``steps_per_epoch`` steps;
    - ``scheduler``: ``(name, arguments)`` of a `funcnets.lr_scheduler` scheduler and its
      ``torch.optim.lr_scheduler`` twin, e.g. ``("one_cycle_lr", {"max_lr": 0.1,
      "total_steps": 100})`` or ``("cosine_annealing_lr", {"T_max": 4, "steps_per_epoch":
      25})`` (the optimizer's ``lr`` goes first where the scheduler starts from it);
    - ``clip``: ``{"max_norm": ..., "norm_type": ...}`` (``clip_grad_norm_``) or
      ``{"clip_value": ...}`` (``clip_grad_value_``), before each optimizer step;
    - ``groups``: ``{pattern: {option: value}}``, PyTorch's parameter groups by glob
      over ``state_dict`` names (first match wins);
    - ``accumulate``: ``k``: ``(loss / k).backward()`` over ``k`` batches, then one step.

    ``funcnets()`` builds the Optax side (``funcnets.optim.create`` and the rest);
    ``torch(parameters)`` the PyTorch optimizer and scheduler."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_lr: dict[str, Any] | None = None  # {"step_size", "gamma", "steps_per_epoch"}
    scheduler: tuple[str, dict[str, Any]] | None = None
    clip: dict[str, Any] | None = None
    groups: dict[str, dict[str, Any]] | None = None
    accumulate: int = 1

    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        sched = f"+steplr({self.step_lr['step_size']},{self.step_lr['gamma']})" if self.step_lr else ""
        if self.scheduler:
            sched += f"+{self.scheduler[0]}({','.join(f'{k}={v}' for k, v in sorted(self.scheduler[1].items()))})"
        if self.clip:
            sched += f"+clip({','.join(f'{k}={v}' for k, v in sorted(self.clip.items()))})"
        if self.groups:
            sched += f"+groups({';'.join(f'{p}:{o}' for p, o in self.groups.items())})"
        if self.accumulate > 1:
            sched += f"+accumulate({self.accumulate})"
        return f"{self.name}({args}){sched}"

    def _schedule(self):
        """The funcnets scheduler of ``scheduler`` (or None)."""
        if not self.scheduler:
            return None
        name, arguments = self.scheduler
        build = getattr(optim, name)
        if name in ("one_cycle_lr", "cyclic_lr"):
            return build(**arguments)
        return build(self.kwargs["lr"], **arguments)   # reduce_lr_on_plateau too

    def funcnets(self):
        kwargs = dict(self.kwargs)
        if self.step_lr:
            kwargs["lr"] = optim.step_lr(kwargs["lr"], self.step_lr["step_size"], self.step_lr["gamma"],
                                         steps_per_epoch=self.step_lr["steps_per_epoch"])
        schedule = self._schedule()
        if schedule is not None:
            kwargs["lr"] = schedule
        tx = optim.create(self.name, **kwargs, **({"groups": self.groups} if self.groups else {}))
        if self.clip:
            clip = (optim.clip_grad_value(self.clip["clip_value"]) if "clip_value" in self.clip
                    else optim.clip_grad_norm(**self.clip))
            tx = optax.chain(clip, tx)
        return optim.accumulate(tx, self.accumulate) if self.accumulate > 1 else tx

    def torch(self, parameters):
        """``(optimizer, scheduler or None)`` over ``parameters`` (a module's
        ``named_parameters()`` for ``groups``)."""
        import torch

        classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                   "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop,
                   "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        parameters = list(parameters)
        if self.groups:
            named = [p if isinstance(p, tuple) else (None, p) for p in parameters]
            buckets: list[list] = [[] for _ in range(len(self.groups) + 1)]
            for name, parameter in named:
                index = next((i for i, pattern in enumerate(self.groups)
                              if name is not None and fnmatch.fnmatchcase(name, pattern)), len(self.groups))
                buckets[index].append(parameter)
            parameters = [{"params": bucket, **options} for bucket, options in
                          zip(buckets, [*self.groups.values(), {}]) if bucket]
        else:
            parameters = [p[1] if isinstance(p, tuple) else p for p in parameters]
        optimizer = classes[self.name](parameters, **self.kwargs)
        scheduler = None
        if self.step_lr:
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=self.step_lr["step_size"], gamma=self.step_lr["gamma"])
        if self.scheduler:
            name, arguments = self.scheduler
            arguments = {k: v for k, v in arguments.items() if k != "steps_per_epoch" or name == "one_cycle_lr"}
            scheduler_class = ("ReduceLROnPlateau" if self.steps_with_metric else self._schedule().name)
            scheduler = getattr(torch.optim.lr_scheduler, scheduler_class)(optimizer, **arguments)
        return optimizer, scheduler

    @property
    def steps_per_batch(self) -> bool:
        """Whether PyTorch steps the scheduler after each batch (one-cycle, cyclic)."""
        return bool(self.scheduler) and self.scheduler[0] in ("one_cycle_lr", "cyclic_lr")

    @property
    def steps_with_metric(self) -> bool:
        """Whether the scheduler is ReduceLROnPlateau, stepped with the test loss after each epoch."""
        return bool(self.scheduler) and self.scheduler[0] == "reduce_lr_on_plateau"

    def scheduler_steps_after(self, updates: int) -> bool:
        """Whether PyTorch's scheduler steps after the optimizer's ``updates``-th step."""
        if self.step_lr:
            return updates % self.step_lr["steps_per_epoch"] == 0
        if not self.scheduler:
            return False
        name, arguments = self.scheduler
        if name in ("one_cycle_lr", "cyclic_lr"):
            return True
        return updates % arguments["steps_per_epoch"] == 0


def numpy_init(model: Model, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """A ``state_dict`` drawn from PyTorch's default init with NumPy (torch-free):
    every weight and bias ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn in
    ``state_dict`` order from ``np.random.default_rng(seed)`` in float64, then cast."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for name, spec in model.layers:
        bound = 1.0 / np.sqrt(spec.fan_in)
        for suffix, (param, shape) in layers.torch_params(spec).items():
            if isinstance(spec, layers.NORMS):   # constant init: weight ones, bias zeros
                state_dict[f"{name}.{suffix}"] = np.full(shape, 1.0 if param == "weight" else 0.0, dtype)
            else:
                state_dict[f"{name}.{suffix}"] = rng.uniform(-bound, bound, shape).astype(dtype)
        for buffer, (shape, kind) in layers.state_shapes(spec).items():
            start = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}[buffer]
            state_dict[f"{name}.{buffer}"] = np.full(shape, start, dtype if kind == "float" else np.int64)
    return state_dict


def synthetic_batches(model: Model, steps: int, batch_size: int, seed: int,
                      dtype=np.float32, noise: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """A learnable, deterministic stream: ``x = template[y] + noise * N(0, 1)``, NHWC.

    One standard-normal template per class and labels uniform over the
    classes, all from ``np.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((model.num_classes, *model.input_shape))
    batches = []
    for _ in range(steps):
        labels = rng.integers(0, model.num_classes, batch_size)
        images = templates[labels] + noise * rng.standard_normal((batch_size, *model.input_shape))
        batches.append((images.astype(dtype), labels.astype(np.int32)))
    return batches


def jax_curve(model: Model, spec: OptimizerSpec, state_dict, batches) -> tuple[np.ndarray, dict]:
    """Train funcnets from ``state_dict`` on ``batches``, dropout off;
    ``(losses per step, final state_dict)``.

    The dtype of ``state_dict`` and ``batches`` is kept (float64 needs ``jax_enable_x64``).
    """
    model = dataclasses.replace(model, dropout=tuple(0.0 for _ in model.dropout))
    params = interop.params_from_torch(model, state_dict)
    state = create_train_state(model, spec.funcnets(), jax.random.key(0), params=params)
    losses = []
    for images, labels in batches:
        state, metrics = train_step(state, (jnp.asarray(images), jnp.asarray(labels)))
        losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses)), dict(interop.params_to_numpy_state_dict(model, state))


def torch_curve(model: Model, spec: OptimizerSpec, state_dict, batches) -> tuple[np.ndarray, dict]:
    """The same run in PyTorch (``model.double()`` when the inputs are float64),
    dropout off so both nets see identical maths: ``eval()`` mode during training,
    or for a net with batch norm (whose training mode differs) ``train()`` mode
    with every dropout rate set to 0."""
    import torch

    from funcnets import torch_models

    dtype = next(iter(state_dict.values())).dtype
    net = torch_models.twin(model)
    net = net.double() if dtype == np.float64 else net.float()
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    net.eval()
    if model.has_state:
        net.train()
        for module in net.modules():
            if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
                module.p = 0.0
            elif isinstance(module, torch.nn.RNNBase):
                module.dropout = 0.0
    loss_of = torch_models.loss_for(model)
    optimizer, scheduler = spec.torch(net.named_parameters())
    losses, updates = [], 0
    for step, (images, labels) in enumerate(batches, start=1):
        x = torch.from_numpy(torch_models.nchw(images))
        loss = loss_of(net(x), torch.from_numpy(labels.astype(np.int64)))
        (loss / spec.accumulate if spec.accumulate > 1 else loss).backward()
        losses.append(loss.detach())
        if step % spec.accumulate:
            continue
        if spec.clip and "clip_value" in spec.clip:
            torch.nn.utils.clip_grad_value_(net.parameters(), spec.clip["clip_value"])
        elif spec.clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), **spec.clip)
        optimizer.step()
        optimizer.zero_grad()
        updates += 1
        if scheduler is not None and spec.scheduler_steps_after(updates):
            scheduler.step()
    final = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return torch.stack(losses).numpy(), final


# --- a run in each framework, side by side ----------------------------------------------

class EpochOrder:
    """A ``DataLoader`` sampler that yields epoch ``e``'s precomputed order; ``set_epoch(e)``
    picks it, as ``DistributedSampler.set_epoch`` does."""

    def __init__(self, orders: list[np.ndarray]):
        self.orders = orders
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.orders[self.epoch].tolist())

    def __len__(self) -> int:
        return len(self.orders[self.epoch])


def torch_dataset(images: np.ndarray, labels: np.ndarray):
    """NHWC arrays -> an NCHW ``TensorDataset``, as ``ToTensor`` lays images out."""
    import torch
    from torch.utils.data import TensorDataset

    from funcnets import torch_models

    return TensorDataset(torch.from_numpy(torch_models.nchw(images)), torch.from_numpy(labels.astype(np.int64)))


def torch_train_epoch(model, loss_fn, train_loader, optimizer, epoch, *, log_interval, record,
                      spec: OptimizerSpec | None = None, scheduler=None) -> dict:
    """One PyTorch epoch as pytorch/examples writes it (``zero_grad / backward / step``),
    recording funcnets' step records (`funcnets.metrics`, each step's loss in
    ``"losses"``) every ``log_interval`` steps; returns the epoch's mean loss and
    accuracy and its training time. With a ``spec`` (`OptimizerSpec`), its clipping
    runs before each step and a ``scheduler`` stepped per batch (one-cycle, cyclic)
    after it; the caller steps the others after the epoch."""
    import torch

    model.train()
    start = time.perf_counter()
    chunk_start = start
    losses, accuracies = [], []
    chunk_first = 0  # the first batch of the steps since the last record
    last = len(train_loader) - 1
    for batch_idx, (data, target) in enumerate(train_loader):
        optimizer.zero_grad()
        output = model(data)
        loss = loss_fn(output, target)
        loss.backward()
        if spec is not None and spec.clip:
            if "clip_value" in spec.clip:
                torch.nn.utils.clip_grad_value_(model.parameters(), spec.clip["clip_value"])
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), **spec.clip)
        lr = optimizer.param_groups[0]["lr"]   # the rate this step uses
        optimizer.step()
        if scheduler is not None and spec.steps_per_batch:
            scheduler.step()
        losses.append(loss.item())
        accuracies.append((output.argmax(dim=1) == target).float().mean().item())
        if batch_idx + 1 - chunk_first == log_interval or batch_idx == last:
            seconds = time.perf_counter() - chunk_start
            step = epoch * len(train_loader) + batch_idx + 1
            record({"kind": "step", "step": step, "epoch": epoch,
                    "loss": float(np.mean(losses[chunk_first:])), "accuracy": float(np.mean(accuracies[chunk_first:])),
                    "lr": lr, "seconds": seconds, "losses": losses[chunk_first:]})
            chunk_first = batch_idx + 1
            chunk_start = time.perf_counter()
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies)),
            "train_seconds": time.perf_counter() - start, "lr": lr}


def torch_test(model, loss_fn, test_loader, *, dropout_on: bool = False) -> dict:
    """Mean loss and accuracy over the test set; in ``eval()`` mode unless
    ``dropout_on`` (as a tutorial that never calls ``net.eval()`` tests)."""
    import torch

    model.train(dropout_on)
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += loss_fn(output, target, reduction="sum").item()
            correct += (output.argmax(dim=1) == target).sum().item()
    n = len(test_loader.dataset)
    return {"test_loss": test_loss / n, "test_accuracy": correct / n}


def step_gap(jax_losses: np.ndarray, torch_losses: np.ndarray) -> dict:
    """The per-step loss gap, JAX - PyTorch, over the steps both ran: its first value,
    largest size (and its step), and mean over the last 100 steps."""
    steps = min(len(jax_losses), len(torch_losses))
    gap = jax_losses[:steps] - torch_losses[:steps]
    return {"count": steps, "first": float(gap[0]), "max_abs": float(np.abs(gap).max()),
            "argmax": int(np.abs(gap).argmax()) + 1, "tail_mean": float(gap[-100:].mean())}


def epoch_table(summaries: dict[str, dict]) -> list[str]:
    """Per epoch, each framework's mean training loss and test accuracy (eval mode)
    side by side; a framework that ran fewer epochs leaves its cells empty."""
    lines = ["| epoch | JAX train loss | PyTorch train loss | JAX test acc. | PyTorch test acc. |",
             "| --- | --- | --- | --- | --- |"]
    jax_run, torch_run = summaries["jax"], summaries["torch"]
    for e in range(max(len(jax_run["epoch_train_loss"]), len(torch_run["epoch_train_loss"]))):
        cells = []
        for key, fmt in (("epoch_train_loss", "{:.4f}"), ("epoch_test_accuracy", "{:.2%}")):
            for run in (jax_run, torch_run):
                values = run[key]
                cells.append(fmt.format(values[e]) if e < len(values) else "-")
        lines.append(f"| {e + 1} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    for name, run in (("JAX", jax_run), ("PyTorch", torch_run)):
        if run["test_accuracy_dropout_on"] is not None:
            lines.append(f"\n{name} test accuracy with dropout active (as the tutorial tested, no eval()), "
                         f"after epoch {run['epochs']}: {100 * run['test_accuracy_dropout_on']:.2f}%")
    return lines




def compare(model: Model, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
            torch_module=None, optimizer: str = "adam", epochs: int = 1, batch_size: int = 64,
            test_batch_size: int = 1000, seed: int = 0, out: str | pathlib.Path = "reports/compare",
            log_every: int = 100, log=print, **optimizer_kwargs) -> dict:
    """Any net trained by funcnets and by PyTorch side by side, from one init and the
    same batches; the report that ``python -m experiments.compare`` writes for the tutorials.

    The PyTorch net is ``torch_module`` (a module of one's own, whose
    ``state_dict`` names match the model's layer names, as a funcnets
    `funcnets.models.sequential` net names them) or the model's twin
    (`funcnets.torch_models.twin`, built under ``torch.manual_seed(seed)``).
    Its init is ported to funcnets (`funcnets.interop.params_from_torch`);
    both frameworks visit epoch ``e`` in the order ``fit`` uses
    (``epoch_order(n, fold_in(fold_in(key(seed), 1), e))``), with
    ``funcnets.optim.create(optimizer, **optimizer_kwargs)`` against
    ``torch.optim``'s class of that name (`OptimizerSpec`); dropout masks are each
    framework's own.

    Args:
      model: a funcnets model with interop (a `sequential` net, a tutorial net).
      train, test: ``(images, labels)``: float NHWC images as the model takes them
        (normalised), integer labels.
      optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"adadelta"``, ``"adagrad"``,
        ``"rmsprop"``; ``optimizer_kwargs`` are PyTorch's (``lr=1e-3``, ``momentum=0.9``).
      out: the report folder: ``report.md``, ``results.json``, ``curves.png`` and
        ``difference.png`` (with matplotlib), ``jax/metrics.jsonl`` and
        ``torch/metrics.jsonl`` (`funcnets.metrics`).

    Returns:
      ``results.json``'s contents: per framework the final train/test loss and
      accuracy, per-epoch values and times; and the per-step loss gap (`step_gap`).
    """
    import torch
    from torch.utils.data import DataLoader

    from funcnets import loop, metrics, plots, torch_models
    from funcnets.training import create_train_state, epoch_order

    if not isinstance(model, Model):
        raise TypeError(f"compare takes a funcnets Model, got {type(model).__name__}")
    spec = OptimizerSpec(optimizer, dict(optimizer_kwargs))
    if torch_module is None:
        torch.manual_seed(seed)
        torch_module = torch_models.twin(model)
    elif not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"torch_module must be a torch.nn.Module, got {type(torch_module).__name__}")
    net = torch_module.float()
    init = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    try:
        variables = interop.params_from_torch(model, init)
    except (KeyError, ValueError) as error:
        raise ValueError(f"compare: the PyTorch module's state_dict does not fit {model.name}: {error}. The "
                         "module's attribute names must be the model's layer names (as "
                         "funcnets.torch_models.twin(model) names them)") from None
    images, labels = (np.asarray(a) for a in train)
    test_images, test_labels = (np.asarray(a) for a in test)
    out = pathlib.Path(out)
    data_key = jax.random.fold_in(jax.random.key(seed), 1)
    orders = [np.asarray(epoch_order(len(labels), jax.random.fold_in(data_key, e))) for e in range(epochs)]
    runs: dict[str, list[dict]] = {}

    log(f"== {model.name} with funcnets (JAX) ==")
    state = create_train_state(model, spec.funcnets(), jax.random.key(seed), params=variables)
    loop.fit(state, (images, labels), (test_images, test_labels), epochs=epochs, batch_size=batch_size,
             rng=data_key, test_batch_size=test_batch_size, log_every=log_every,
             report=loop.Report(metrics_path=out / "jax" / "metrics.jsonl", progress=False, log=log,
                                step_losses=True))
    runs["jax"] = metrics.read_metrics(out / "jax" / "metrics.jsonl")

    log(f"== {model.name} with PyTorch ==")
    to_torch = (lambda x: x[..., 0]) if model.reads_rows and images.ndim == 4 else (lambda x: x)
    sampler = EpochOrder(orders)
    train_loader = DataLoader(torch_dataset(to_torch(images), labels), batch_size=batch_size, sampler=sampler)
    test_loader = DataLoader(torch_dataset(to_torch(test_images), test_labels), batch_size=test_batch_size)
    loss_fn = torch_models.loss_for(model)
    torch_optimizer, _ = spec.torch(net.parameters())
    record = metrics.MetricsLog(out / "torch" / "metrics.jsonl")
    for epoch in range(epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        trained = torch_train_epoch(net, loss_fn, train_loader, torch_optimizer, epoch, log_interval=log_every,
                                    record=record.write)
        entry = {"kind": "epoch", "step": (epoch + 1) * len(train_loader), "epoch": epoch,
                 "loss": trained["loss"], "accuracy": trained["accuracy"],
                 **torch_test(net, loss_fn, test_loader), "lr": trained["lr"],
                 "seconds": time.perf_counter() - start, "train_seconds": trained["train_seconds"]}
        record.write(entry)
        log(metrics.epoch_line(entry, epochs))
    runs["torch"] = metrics.read_metrics(out / "torch" / "metrics.jsonl")

    summaries = {name: _summary(records, model, len(labels)) for name, records in runs.items()}
    gap = step_gap(plots.step_losses(runs["jax"]), plots.step_losses(runs["torch"]))
    results = {"model": model.name, "optimizer": spec.label(), "epochs": epochs, "batch_size": batch_size,
               "seed": seed, "train_examples": len(labels), "test_examples": len(test_labels),
               "runs": summaries, "per_step_loss_gap": gap}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    figures = []
    try:
        title = f"{model.name}: funcnets (JAX) vs PyTorch, same init and batches"
        plots.plot_comparison(runs, out / "curves.png", title=title)
        plots.plot_difference(plots.step_losses(runs["jax"]), plots.step_losses(runs["torch"]),
                              out / "difference.png", title=title)
        figures = ["![curves](curves.png)", "", "![difference](difference.png)", ""]
    except ImportError:
        log("compare: no figures (matplotlib is not installed: pip install 'funcnets[plot]')")
    (out / "report.md").write_text(_report(results, summaries, gap, figures))
    log(f"Report: {out / 'report.md'}")
    return results


def _summary(records: list[dict], model: Model, train_examples: int) -> dict:
    history = [r for r in records if r["kind"] == "epoch"]
    seconds = [h["train_seconds"] for h in history]
    last = history[-1]
    return {"train_loss": last["loss"], "train_accuracy": last["accuracy"], "test_loss": last["test_loss"],
            "test_accuracy": last["test_accuracy"], "epochs": len(history),
            "epoch_train_loss": [h["loss"] for h in history],
            "epoch_test_accuracy": [h["test_accuracy"] for h in history], "test_accuracy_dropout_on": None,
            "epoch_seconds": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "first_epoch_seconds": seconds[0], "parameters": model.param_count,
            "samples_per_second": train_examples / (statistics.median(seconds[1:]) if len(seconds) > 1
                                                    else seconds[0])}


def _report(results: dict, summaries: dict, gap: dict, figures: list[str]) -> str:
    rows = ["| framework | train loss | train acc. | test loss | test acc. | epoch (s) | first epoch (s) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, label in (("jax", "funcnets (JAX)"), ("torch", "PyTorch")):
        s = summaries[name]
        rows.append(f"| {label} | {s['train_loss']:.4f} | {100 * s['train_accuracy']:.2f}% | {s['test_loss']:.4f} "
                    f"| {100 * s['test_accuracy']:.2f}% | {s['epoch_seconds']:.3f} | {s['first_epoch_seconds']:.3f} |")
    lines = [f"# {results['model']}: funcnets (JAX) vs PyTorch", "",
             f"{results['train_examples']} training and {results['test_examples']} test examples, "
             f"{results['epochs']} epoch(s), {results['optimizer']}, batch {results['batch_size']}, seed "
             f"{results['seed']}; one PyTorch init, the same batches, each framework's own dropout masks.", "",
             *rows, "",
             f"Per-step training loss, JAX - PyTorch: largest {gap['max_abs']:.3g} (step {gap['argmax']}), first "
             f"step {gap['first']:.3g}, mean over the last 100 steps {gap['tail_mean']:.3g} ({gap['count']} steps).",
             "", *epoch_table(summaries), "", *figures]
    return "\n".join(lines) + "\n"
