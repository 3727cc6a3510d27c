"""What every experiment script shares: the tutorial's settings, its flags, its
data, and one training run under either framework on identical streams.

An experiment script is a `Tutorial` (the settings the tutorial publishes) and
``main(TUTORIAL)``. A run, whichever the framework:

- loads the dataset once and normalises it once (`funcnets.data`);
- visits epoch ``e`` in the order ``funcnets.training.epoch_order(n, fold_in(data_key, e))``,
  the same permutation for JAX (`funcnets.fit`) and for PyTorch (a ``DataLoader``
  whose sampler replays it), so both train on the same batches;
- starts from ``init`` when given (a PyTorch ``state_dict``, as
  `experiments.compare` passes both sides), else from its framework's own init
  under ``--seed``;
- for JAX, keeps compiled steps in JAX's persistent compilation cache
  (`compile_cache`, ``--compile-cache``), so a later run loads them;
- writes the metrics file of `funcnets.fit` (the PyTorch side writes the same
  records through `funcnets.metrics.MetricsLog`), a plot of it next to it
  (``<stem>.png``) and a summary (``<stem>.summary.json``).
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

import funcnets as fn
from funcnets.data import DatasetNotFoundError
from funcnets.parity import OptimizerSpec
from funcnets.loop import steps_per_epoch
from funcnets.metrics import MetricsLog, read_metrics
from funcnets.training import epoch_order

FRAMEWORKS = ("jax", "torch")
MNIST_LIKE = ("mnist", "fashion_mnist", "digits")
DRY_RUN_BATCHES = 3
CHECKPOINT_SECONDS = 30   # a crash or kill loses at most this much training (and any partial epoch's end)
BARRIER_TIMEOUT_S = 10    # a checkpoint save waits at most this long at each of its barriers
LOST_PROCESS_STATUS = 3   # the exit status of a process whose peer was lost


@dataclasses.dataclass(frozen=True)
class Tutorial:
    """One tutorial's published setup; its flags' defaults."""

    name: str                 # the experiment: `python -m experiments.<name>`
    model: str                # `funcnets.models.get(model)`
    source: str               # where the setup comes from
    datasets: tuple[str, ...]  # accepted by --dataset; the first is the tutorial's own
    optimizer: str
    lr: float
    batch_size: int
    test_batch_size: int
    epochs: int
    reported: str | None = None       # what the tutorial reports, for the results table
    gamma: float | None = None        # StepLR's gamma per epoch (pytorch/examples: 0.7); None: constant lr
    optimizer_options: tuple[tuple[str, Any], ...] = ()
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # the tutorial's Normalize(mean, std)
    test_dropout: bool = False        # the tutorial tests without eval(): report that accuracy too
    model_flags: tuple[tuple[str, int, str], ...] = ()  # (constructor argument, default, help): --<argument>

    def default_dataset(self) -> str:
        return "auto" if self.datasets[0] == "mnist" else self.datasets[0]


class RunData(NamedTuple):
    """The splits as loaded (uint8 NHWC images, int32 labels) and the tutorial's
    normalisation (`funcnets.data.Normalize`; float32, or float64 with --float64):
    funcnets normalises each batch on the device, PyTorch takes ``normalize(images)``
    (the same values, normalised on the host)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    dataset: str
    source: str
    choice: str  # how the dataset was chosen, printed and reported
    normalize: fn.data.Normalize


# --- flags ----------------------------------------------------------------------------

def positive(kind: Callable):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def parser(tutorial: Tutorial, *, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """pytorch/examples' flags, with this tutorial's settings as defaults."""
    p = argparse.ArgumentParser(prog=prog or f"python -m experiments.{tutorial.name}",
                                description=description or f"{tutorial.model} as in {tutorial.source}.")
    for name, default, text in tutorial.model_flags:
        p.add_argument(f"--{name.replace('_', '-')}", type=positive(int), default=default,
                       help=f"{text} (default: {default})")
    p.add_argument("--epochs", type=positive(int), default=tutorial.epochs,
                   help=f"number of epochs to train (default: {tutorial.epochs})")
    p.add_argument("--lr", type=positive(float), default=tutorial.lr,
                   help=f"learning rate (default: {tutorial.lr})")
    p.add_argument("--batch-size", type=positive(int), default=tutorial.batch_size,
                   help=f"input batch size for training (default: {tutorial.batch_size})")
    p.add_argument("--test-batch-size", type=positive(int), default=tutorial.test_batch_size,
                   help=f"input batch size for testing (default: {tutorial.test_batch_size})")
    p.add_argument("--optimizer", choices=fn.optim.names(), default=tutorial.optimizer,
                   help=f"optimizer, PyTorch's defaults besides --lr (default: {tutorial.optimizer})")
    p.add_argument("--gamma", type=positive(float), default=tutorial.gamma,
                   help="StepLR: multiply the lr by this after every epoch, as pytorch/examples "
                        f"does with 0.7 (default: {tutorial.gamma or 'constant lr'})")
    p.add_argument("--scheduler", nargs="+", default=None, metavar=("NAME", "ARG=VALUE"),
                   help="a torch.optim.lr_scheduler, by funcnets' name, with its arguments, e.g. "
                        "'--scheduler one_cycle_lr max_lr=0.1', '--scheduler cosine_annealing_lr T_max=10', "
                        "'--scheduler reduce_lr_on_plateau patience=2' (stepped with the test loss). --lr is "
                        "the lr it starts from; steps_per_epoch (and one_cycle_lr's total_steps) are filled in. "
                        "Names: " + ", ".join(SCHEDULERS))
    p.add_argument("--clip", type=positive(float), default=None, metavar="MAX_NORM",
                   help="clip the gradients' 2-norm to MAX_NORM before each step (clip_grad_norm_)")
    p.add_argument("--clip-value", type=positive(float), default=None, metavar="VALUE",
                   help="clamp each gradient element to [-VALUE, VALUE] before each step (clip_grad_value_)")
    p.add_argument("--seed", type=int, default=1, help="random seed: init, data order, dropout (default: 1)")
    p.add_argument("--train-examples", type=positive(int), default=None, metavar="N",
                   help="train on the first N training images only (quick checks, timing; default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help=f"quickly check a run: {DRY_RUN_BATCHES} batches per epoch, at most 2 epochs, "
                        "one test batch")
    p.add_argument("--framework", choices=FRAMEWORKS, default="jax", help="who trains (default: jax)")
    datasets = ("auto",) + tutorial.datasets if tutorial.datasets[0] == "mnist" else tutorial.datasets
    p.add_argument("--dataset", choices=datasets, default=tutorial.default_dataset(),
                   help="dataset; 'auto' takes MNIST where it can be had, else Fashion-MNIST "
                        "(installing Debian's package where apt-get can), else the bundled digits, "
                        f"and says which (default: {tutorial.default_dataset()})")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset's files or a TFDS copy")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints go (default: checkpoints/<experiment>-<framework>-<dataset>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--save-every-steps", type=positive(int), default=None, metavar="STEPS",
                   help=f"(JAX) also checkpoint every STEPS steps (default: at each epoch's end and every "
                        f"{CHECKPOINT_SECONDS} s of training)")
    p.add_argument("--metrics-out", default=None,
                   help="metrics file, JSON lines (default: <checkpoint-dir>/metrics.jsonl)")
    p.add_argument("--float64", action="store_true", help="train in float64 (both frameworks)")
    p.add_argument("--bf16", action="store_true",
                   help="mixed precision (JAX): bfloat16 compute, float32 params and optimizer state")
    p.add_argument("--data-parallel", action="store_true",
                   help="(JAX) split each batch over all devices of all processes (funcnets.parallel); "
                        "joins a multi-process run from JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
                        "JAX_PROCESS_ID or SLURM's variables")
    p.add_argument("--torch-loader", action="store_true",
                   help="(JAX) read the training batches from the PyTorch side's DataLoader (the same "
                        "sampler and normalised tensors) through funcnets.data.from_torch, instead of the "
                        "arrays on the device")
    p.add_argument("--compile-cache", default=default_compile_cache(), metavar="DIR",
                   help="(JAX) keep compiled steps in JAX's persistent compilation cache in DIR, so a "
                        "later run loads them instead of compiling; 'off' to compile afresh "
                        "(default: $JAX_COMPILATION_CACHE_DIR, else %(default)s)")
    p.add_argument("--log-interval", type=positive(int), default=100,
                   help="batches between metrics records (default: 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def model_options(tutorial: Tutorial, args) -> dict[str, Any]:
    """The net's constructor arguments set by this tutorial's model flags (e.g. ``--n-hidden``)."""
    return {name: getattr(args, name) for name, _, _ in tutorial.model_flags}


def tutorial_model(tutorial: Tutorial, args) -> fn.models.Model:
    """``funcnets.models.get(tutorial.model, **model_options(tutorial, args))``."""
    return fn.models.get(tutorial.model, **model_options(tutorial, args))


def optimizer_kwargs(tutorial: Tutorial, args) -> dict[str, Any]:
    """``torch.optim.<name>(**kwargs)`` for these flags: --lr plus the tutorial's
    own options when --optimizer is the tutorial's."""
    kwargs = dict(tutorial.optimizer_options) if args.optimizer == tutorial.optimizer else {}
    kwargs["lr"] = args.lr
    return kwargs


SCHEDULERS = ("step_lr", "multi_step_lr", "exponential_lr", "cosine_annealing_lr", "cosine_annealing_warm_restarts",
              "linear_lr", "constant_lr", "polynomial_lr", "one_cycle_lr", "cyclic_lr", "reduce_lr_on_plateau")


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def recipe(tutorial: Tutorial, args, steps_per_epoch: int) -> OptimizerSpec:
    """The run's optimizer, scheduler and clipping as one `funcnets.parity.OptimizerSpec`,
    which builds both frameworks' sides: --optimizer with --lr (and the tutorial's own
    options), --gamma (StepLR(1, gamma) per epoch) or --scheduler, --clip or --clip-value."""
    kwargs = optimizer_kwargs(tutorial, args)
    step_lr = {"step_size": 1, "gamma": args.gamma, "steps_per_epoch": steps_per_epoch} if args.gamma else None
    scheduler = None
    if args.scheduler:
        name, *pairs = args.scheduler
        arguments = {}
        for pair in pairs:
            key, separator, text = pair.partition("=")
            if not separator or not key:
                raise ValueError(f"scheduler argument {pair!r} is not ARG=VALUE")
            arguments[key] = _value(text)
        if name == "one_cycle_lr":
            arguments.setdefault("max_lr", args.lr)
            if "epochs" not in arguments and "steps_per_epoch" not in arguments:
                arguments.setdefault("total_steps", args.epochs * steps_per_epoch)
        elif name == "cyclic_lr":
            arguments.setdefault("base_lr", args.lr)
        elif name != "reduce_lr_on_plateau":
            arguments["steps_per_epoch"] = steps_per_epoch
        scheduler = (name, arguments)
    clip = {"max_norm": args.clip} if args.clip else {"clip_value": args.clip_value} if args.clip_value else None
    return OptimizerSpec(args.optimizer, kwargs, step_lr=step_lr, scheduler=scheduler, clip=clip)


def check_host_malloc(p: argparse.ArgumentParser) -> None:
    """``p.error`` (exit 2) for a ``FUNCNETS_HOST_MALLOC`` value funcnets does not
    know, before any data is loaded (`funcnets.host_memory`)."""
    try:
        fn.host_memory.reason_to_leave_malloc_alone()
    except ValueError as error:
        p.error(str(error))


def check_args(tutorial: Tutorial, args, p: argparse.ArgumentParser) -> None:
    """Errors argparse cannot see, before any data is loaded (and --dry-run's epoch cap)."""
    try:
        fn.optim.create(args.optimizer, **optimizer_kwargs(tutorial, args))
    except (TypeError, ValueError) as error:
        p.error(f"--optimizer {args.optimizer} --lr {args.lr}: {error}")
    if args.scheduler and args.scheduler[0] not in SCHEDULERS:
        p.error(f"--scheduler {args.scheduler[0]}: unknown; choose one of {', '.join(SCHEDULERS)}")
    if args.scheduler and args.gamma:
        p.error("--gamma is StepLR(1, gamma); with --scheduler, give one or the other "
                "(--scheduler step_lr step_size=1 gamma=0.7)")
    if args.clip and args.clip_value:
        p.error("--clip and --clip-value: give one")
    try:
        recipe(tutorial, args, 1).funcnets()
    except (TypeError, ValueError) as error:
        p.error(f"--scheduler {' '.join(args.scheduler or [])}: {error}")
    if args.resume and args.checkpoint_dir is None:
        p.error("--resume needs --checkpoint-dir (the run to continue)")
    if args.framework == "torch" and (args.bf16 or args.data_parallel or args.torch_loader):
        p.error("--bf16, --data-parallel and --torch-loader are for --framework jax")
    if args.torch_loader and args.data_parallel:
        p.error("--torch-loader reads one process's batches; it does not go with --data-parallel")
    if args.bf16 and args.float64:
        p.error("--bf16 computes in bfloat16 with float32 params; it does not go with --float64")
    if args.compile_cache != "off" and os.path.exists(args.compile_cache) and not os.path.isdir(args.compile_cache):
        p.error(f"--compile-cache {args.compile_cache}: is a file, not a folder (or 'off')")
    check_host_malloc(p)   # read on the first CPU step; a typo fails here
    if args.dry_run:
        args.epochs = min(args.epochs, 2)
    if args.framework == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            p.error("--framework torch needs PyTorch: pip install -e '.[torch]'")


def run_directory(tutorial: Tutorial, args, dataset: str) -> pathlib.Path:
    if args.checkpoint_dir is not None:
        return pathlib.Path(args.checkpoint_dir)
    return fn.checkpoint.default_directory(f"{tutorial.name}-{args.framework}-{dataset}-seed{args.seed}")


# --- data -----------------------------------------------------------------------------

def _install_fashion_mnist(log: Callable[[str], None]) -> str:
    """``apt-get install dataset-fashion-mnist`` where that can run; what happened."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "installing it needs root: sudo apt-get install dataset-fashion-mnist"
    log("Installing Debian's Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    command = ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        done = subprocess.run(command, capture_output=True, text=True)
    return "installed" if done.returncode == 0 else f"apt-get failed: {done.stderr.strip()[-200:]}"


def _reasons(error: DatasetNotFoundError) -> str:
    """The sources a `DatasetNotFoundError` lists as tried, on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().startswith("- ")]
    return "; ".join(line[2:] for line in lines) or str(error).splitlines()[0]


def load_splits(requested: str, data_dir: str | None, log: Callable[[str], None] = print
                ) -> tuple[fn.data.Dataset, fn.data.Dataset, str]:
    """``(train, test, how it was chosen)``; ``"auto"`` tries MNIST, then
    Fashion-MNIST (installing Debian's package when it can), then the digits,
    and the returned line says what was skipped and why."""
    if requested != "auto":
        train = fn.data.load(requested, "train", data_dir=data_dir)
        return train, fn.data.load(requested, "test", data_dir=data_dir), f"--dataset {requested}"
    skipped = []
    for name in MNIST_LIKE:
        try:
            train = fn.data.load(name, "train", data_dir=data_dir)
        except fn.data.DatasetNotFoundError as error:
            reason = _reasons(error)
            if name == "fashion_mnist":
                installed = _install_fashion_mnist(log)
                if installed == "installed":
                    train = fn.data.load(name, "train", data_dir=data_dir)
                else:
                    skipped.append(f"{name}: {reason}; {installed}")
                    continue
            else:
                skipped.append(f"{name}: {reason}")
                continue
        test = fn.data.load(name, "test", data_dir=data_dir)
        why = "; ".join(f"skipped {s}" for s in skipped)
        return train, test, "--dataset auto" + (f" ({why})" if why else "")
    raise AssertionError("the digits are always available")


def load_data(tutorial: Tutorial, args, log: Callable[[str], None] = print) -> RunData:
    model = tutorial_model(tutorial, args)
    train, test, choice = load_splits(args.dataset, args.data_dir, log)
    if train.info.image_shape != model.input_shape and math.prod(train.info.image_shape) != math.prod(
            model.input_shape):
        raise SystemExit(f"error: {tutorial.model} takes {model.input_shape} images; "
                         f"{train.info.name} has {train.info.image_shape}")
    info = train.info
    if tutorial.normalization is not None:   # the tutorial's own constants (one value: every channel)
        info = info._replace(mean=tutorial.normalization[0], std=tutorial.normalization[1])
    normalize = fn.data.Normalize.of(info, np.float64 if args.float64 else np.float32)
    x_train, x_test, y_train, y_test = train.images, test.images, train.labels, test.labels
    if args.train_examples is not None:
        x_train, y_train = x_train[:args.train_examples], y_train[:args.train_examples]
    if args.dry_run:
        x_train, y_train = x_train[: DRY_RUN_BATCHES * args.batch_size], y_train[: DRY_RUN_BATCHES * args.batch_size]
        x_test, y_test = x_test[: args.test_batch_size], y_test[: args.test_batch_size]
    log(f"Dataset: {train.info.name} from {train.info.source} [{choice}]: "
        f"{len(y_train)} training and {len(y_test)} test images{' (dry run)' if args.dry_run else ''}, "
        f"normalised with mean {_constants(info.mean)}, std {_constants(info.std)}")
    return RunData(x_train, y_train, x_test, y_test, train.info.name, train.info.source, choice, normalize)


def _constants(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# --- one run --------------------------------------------------------------------------

def data_key(seed: int):
    """The key of the data order, shared by both frameworks."""
    import jax

    return jax.random.fold_in(jax.random.key(seed), 1)


def epoch_orders(num_examples: int, seed: int, epochs: int) -> list[np.ndarray]:
    """Each epoch's example order, as `funcnets.fit` visits it."""
    import jax

    return [np.asarray(epoch_order(num_examples, jax.random.fold_in(data_key(seed), e)))
            for e in range(epochs)]


def default_compile_cache() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/funcnets/jax`` (``~/.cache/funcnets/jax``)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "funcnets", "jax")


_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hit", "/jax/compilation_cache/cache_misses": "missed"}


@contextlib.contextmanager
def compile_cache(directory: str) -> Iterator[collections.Counter]:
    """JAX's persistent compilation cache in ``directory`` for the ``with`` block
    (``'off'``: none); yields the counts of programs it ``hit`` (loaded) and
    ``missed`` (compiled, and saved: every program, however quick to compile, since
    a run compiles dozens of small ones and loading beats compiling each).

    On 2 CPU cores a CNN's first step drops from ~3.5 s (compiling) to ~0.8 s
    (loading). The directory is trusted code: keep it private, as JAX warns.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    counts: collections.Counter = collections.Counter()
    if directory == "off":
        yield counts
        return

    def count(event: str, **_) -> None:
        if event in _CACHE_EVENTS:
            counts[_CACHE_EVENTS[event]] += 1

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax_cache.set_cache_dir(directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax_cache.reset_cache()  # takes effect even after this process has compiled
    jax.monitoring.register_event_listener(count)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(count)
        jax_cache.set_cache_dir(saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
        jax_cache.reset_cache()


def is_lead_process() -> bool:
    """Process 0 of a multi-process run (always true in a single process)."""
    import jax

    return jax.process_index() == 0


def run_jax(tutorial: Tutorial, args, data: RunData, metrics_path: pathlib.Path, *,
            init: dict[str, np.ndarray] | None = None, checkpoint_dir: pathlib.Path | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
    """Train with funcnets (`funcnets.fit`); the per-epoch records."""
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    model = tutorial_model(tutorial, args)
    dtype = np.float64 if args.float64 else np.float32
    steps = steps_per_epoch(len(data.train_labels), args.batch_size)
    tx = recipe(tutorial, args, steps).funcnets()
    params = None if init is None else fn.interop.params_from_torch(
        model, {k: np.asarray(v, dtype) for k, v in init.items()})
    state = fn.create_train_state(model, tx, jax.random.key(args.seed), params=params, dtype=dtype,
                                  compute_dtype=jax.numpy.bfloat16 if args.bf16 else None)
    mesh = fn.parallel.data_mesh() if args.data_parallel else None
    if mesh is not None:
        log(f"Data parallel over {mesh.size} {jax.default_backend()} device(s) in {jax.process_count()} process(es)")
    lead = is_lead_process()  # one process writes the metrics and prints
    fit_args = dict(epochs=args.epochs, batch_size=args.batch_size, rng=data_key(args.seed),
                    test_batch_size=args.test_batch_size, log_every=args.log_interval,
                    report=fn.loop.Report(metrics_path=metrics_path if lead else None,
                                          progress=lead and not args.no_progress, log=log if lead else None,
                                          step_losses=True),
                    mesh=mesh, transform=None if args.torch_loader else data.normalize)
    train = torch_loader_stream(args, data) if args.torch_loader else (data.train_images, data.train_labels)
    test = (data.normalize(data.test_images) if args.torch_loader else data.test_images, data.test_labels)
    if checkpoint_dir is None:
        try:
            state, history = fn.fit(state, train, test, **fit_args)
        except fn.parallel.PeerLostError as error:
            stop_after_lost_process(error, args)
    else:
        config = {"experiment": tutorial.name, "dataset": data.dataset, "seed": args.seed,
                  "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr, "gamma": args.gamma}
        try:
            with fn.checkpoint.Checkpointer(checkpoint_dir, save_every_steps=args.save_every_steps,
                                            save_every_seconds=CHECKPOINT_SECONDS, save_every_epoch=True,
                                            config=config, barrier_timeout_s=BARRIER_TIMEOUT_S,
                                            resume=args.resume) as checkpointer:
                try:
                    state, history = fn.fit(state, train, test, checkpointer=checkpointer,
                                            **fit_args)
                except fn.parallel.PeerLostError as error:
                    stop_after_lost_process(error, args)   # before the checkpointer waits on the lost process
        except fn.checkpoint.CheckpointWriteError as error:   # an unwritable directory, a full disk
            raise SystemExit(f"error: {error}") from None
    if tutorial.test_dropout and history and lead:
        entry = dropout_on_test(state, data, args.test_batch_size, jax.random.key(args.seed), history[-1])
        MetricsLog(metrics_path, resume_step=history[-1]["step"]).write(entry)
        log(dropout_line(entry))
    return history


def torch_loader_stream(args, data: RunData):
    """The PyTorch reference's training ``DataLoader`` (`experiments.torch_reference.train_loader_of`:
    normalised NCHW tensors, funcnets' epoch order as its sampler) as a funcnets stream,
    ``epoch -> fn.data.from_torch(loader)``; its batches are already normalised (with
    `funcnets.data.normalize`'s bits, as the arrays path normalises in the step)."""
    from experiments import torch_reference

    loader = torch_reference.train_loader_of(args, data, epoch_orders(len(data.train_labels), args.seed, args.epochs))

    def epoch(e: int):
        loader.sampler.set_epoch(e)
        return fn.data.from_torch(loader)

    return epoch


def stop_after_lost_process(error: Exception, args) -> None:
    """Another process of the run is gone: say what was lost, the last complete
    checkpoint and the command that resumes, then end this process at once with
    status `LOST_PROCESS_STATUS` (``os._exit``: JAX's and Orbax's exit handlers
    would wait for the lost process)."""
    command = args.command if "--resume" in args.command.split() else f"{args.command} --resume"
    print(f"error: {error}\nTo resume, start every process again (same variables) with:\n  {command}",
          file=sys.stderr)
    end_process(LOST_PROCESS_STATUS)


def dropout_on_test(state, data: RunData, batch_size: int, key, last_epoch: dict) -> dict:
    """Test loss and accuracy with dropout active (``train=True``), as a tutorial
    that never calls ``net.eval()`` measured them; batch ``k`` draws its masks
    from ``fold_in(key, k)``. A ``"test_dropout_on"`` metrics record."""
    import jax
    import jax.numpy as jnp

    model = state.model
    objective = fn.losses.for_outputs(model.outputs)

    @jax.jit
    def sums(params, images, labels, batch_key):
        outputs = model.apply(params, data.normalize(images), train=True, rng=batch_key)
        return objective(outputs, labels) * labels.shape[0], jnp.sum(jnp.argmax(outputs, -1) == labels)

    n = len(data.test_labels)
    parts = [sums(state.params, data.test_images[i:i + batch_size], data.test_labels[i:i + batch_size],
                  jax.random.fold_in(key, k)) for k, i in enumerate(range(0, n, batch_size))]
    loss, correct = (float(np.sum(np.asarray(jax.device_get(p), np.float64))) for p in zip(*parts))
    return {"kind": "test_dropout_on", "step": last_epoch["step"], "epoch": last_epoch["epoch"],
            "test_loss": loss / n, "test_accuracy": correct / n}


def dropout_line(entry: dict) -> str:
    return (f"Test with dropout active (no eval(), as the tutorial tested): loss {entry['test_loss']:.4f}, "
            f"accuracy {100 * entry['test_accuracy']:.2f}%")


def run_torch(tutorial: Tutorial, args, data: RunData, metrics_path: pathlib.Path, *,
              init: dict[str, np.ndarray] | None = None, checkpoint_dir: pathlib.Path | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """Train with the PyTorch reference (`experiments.torch_reference`); the per-epoch records."""
    from experiments import torch_reference

    return torch_reference.run(tutorial, args, data, metrics_path, init=init, checkpoint_dir=checkpoint_dir,
                               orders=epoch_orders(len(data.train_labels), args.seed, args.epochs), log=log)


def set_up_host_memory() -> str | None:
    """On the CPU, `funcnets.host_memory.reuse_freed_blocks` for this process (a
    process-wide ``malloc`` setting the script makes, and says so); None elsewhere."""
    import jax

    if jax.default_backend() != "cpu":
        return None
    setting = fn.host_memory.reuse_freed_blocks()
    if is_lead_process():
        print(f"Host memory: {setting} (funcnets.host_memory; {fn.host_memory.OPT_OUT}=system leaves it alone)")
    return setting


def run(tutorial: Tutorial, args, data: RunData, metrics_path: pathlib.Path, **kwargs) -> dict | None:
    """Train under ``args.framework`` (`run_jax` inside `compile_cache`, or
    `run_torch`); what the compilation cache did (None: PyTorch, or cache off)."""
    if args.framework == "torch":
        run_torch(tutorial, args, data, metrics_path, **kwargs)
        return None
    set_up_host_memory()
    with compile_cache(args.compile_cache) as cached:
        run_jax(tutorial, args, data, metrics_path, **kwargs)
    if args.compile_cache == "off":
        return None
    if is_lead_process():
        print(f"Compilation cache {args.compile_cache}: {cached['hit']} program(s) loaded, "
              f"{cached['missed']} compiled")
    return {"directory": args.compile_cache, "loaded": cached["hit"], "compiled": cached["missed"]}


# --- what a run leaves behind ---------------------------------------------------------

def environment() -> dict[str, str]:
    """Versions and device, for reproducing a result."""
    import jax
    import jaxlib
    import optax

    info = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "funcnets": fn.__version__,
            "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            # process-wide: PyTorch, run after JAX in one process, has it too
            "host_malloc": fn.host_memory.setting() or "system malloc (no funcnets program ran on the CPU)"}
    try:   # the installed version, without importing torch (seconds) in a run that never uses it
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        info["torch"] = "not installed"
    if "torch" in sys.modules:   # a run that trained with PyTorch: its thread count
        info["torch_threads"] = str(sys.modules["torch"].get_num_threads())
    return info


def command_line(module: str, argv: list[str] | None) -> str:
    """``python -m <module> <argv>``, quoted for a shell (``argv`` None: this process's own)."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(shlex.quote(a) for a in ["python", "-m", module, *argv])


def timing(history: list[dict], num_examples: int) -> dict[str, float]:
    """Time per epoch in steady state (median of the epochs after the first;
    the first alone when there is one), the first epoch (compile included),
    and samples per second at the steady rate. Training steps only."""
    seconds = [h["train_seconds"] for h in history]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {"epoch_seconds": steady, "first_epoch_seconds": seconds[0],
            "samples_per_second": num_examples / steady}


def summarize(tutorial: Tutorial, args, data: RunData, framework: str, records: list[dict],
              compile_cache: dict | None = None) -> dict:
    """The run's results from its metrics ``records`` (a resumed run's file holds the whole run),
    with what the compilation cache did (`run`'s answer)."""
    history = [r for r in records if r["kind"] == "epoch"]
    last = history[-1]
    dropout_on = [r for r in records if r["kind"] == "test_dropout_on"]
    model = tutorial_model(tutorial, args)
    return {"experiment": tutorial.name, "framework": framework, "model": tutorial.model,
            "dataset": data.dataset, "dataset_source": data.source, "dataset_choice": data.choice,
            "epochs": len(history), "train_examples": int(len(data.train_labels)),
            "test_examples": int(len(data.test_labels)),
            "train_loss": last["loss"], "train_accuracy": last["accuracy"],
            "test_loss": last["test_loss"], "test_accuracy": last["test_accuracy"],
            "test_accuracy_dropout_on": dropout_on[-1]["test_accuracy"] if dropout_on else None,
            "epoch_train_loss": [h["loss"] for h in history],
            "epoch_test_accuracy": [h["test_accuracy"] for h in history],
            **timing(history, len(data.train_labels)), "parameters": model.param_count,
            "optimizer": args.optimizer, "optimizer_kwargs": optimizer_kwargs(tutorial, args),
            "gamma": args.gamma, "scheduler": args.scheduler, "clip": args.clip, "clip_value": args.clip_value,
            "batch_size": args.batch_size, "seed": args.seed,
            "model_options": model_options(tutorial, args),
            "float64": args.float64, "bf16": args.bf16, "data_parallel": args.data_parallel,
            "torch_loader": getattr(args, "torch_loader", False),
            "dry_run": args.dry_run, "tutorial_reports": tutorial.reported,
            "compile_cache": compile_cache, "command": args.command, "environment": environment()}


class _PreloadingLog:
    """``print``, which also starts ``preload()`` (once) when the first line is printed:
    the run's first epoch line, after which the main thread mostly waits on the
    device, so a background import (matplotlib, `funcnets.plots.preload`) costs
    the run little; started earlier it would contend for the GIL with the data
    loading and the tracing."""

    def __init__(self, preload: Callable[[], object]):
        self._preload = preload

    def __call__(self, line: str) -> None:
        print(line)
        if self._preload is not None:
            self._preload, preload = None, self._preload
            preload()


def run_as_script(tutorial: Tutorial) -> None:
    """`main`, then end the process at once (`end_process`): what ``python -m
    experiments.<name>`` runs."""
    main(tutorial)
    end_process(0)


def end_process(status: int) -> None:
    """Flush stdout and stderr and end the process with ``os._exit(status)``,
    skipping the interpreter's teardown: a last garbage collection over every
    loaded module and JAX freeing each compiled program (0.5-0.8 s on the
    project's CPU, docs/performance.md). Only for the end of a script whose files
    are all written and closed (atexit handlers, e.g. coverage's, do not run)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def companion(metrics_path: pathlib.Path, suffix: str) -> pathlib.Path:
    """``metrics.jsonl`` -> ``metrics.png`` / ``metrics.summary.json``."""
    return metrics_path.with_name(metrics_path.stem + suffix)


def main(tutorial: Tutorial, argv: list[str] | None = None) -> dict:
    """Parse the flags, train under ``--framework``, print and write the results; the summary."""
    from funcnets import plots

    p = parser(tutorial)
    args = p.parse_args(argv)
    args.command = command_line(f"experiments.{tutorial.name}", argv)
    check_args(tutorial, args, p)
    if args.data_parallel:
        # before anything touches a device; a lost process is then an exception, not an abort
        fn.parallel.initialize(recoverable=True)
    try:
        data = load_data(tutorial, args)
    except fn.data.DatasetNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    run_dir = run_directory(tutorial, args, data.dataset)
    metrics_path = pathlib.Path(args.metrics_out) if args.metrics_out else run_dir / "metrics.jsonl"
    print(f"{tutorial.name} with {args.framework}: {args.optimizer}(lr={args.lr}"
          f"{f', StepLR gamma={args.gamma}' if args.gamma else ''}), batch {args.batch_size}, "
          f"{args.epochs} epochs, seed {args.seed}{', float64' if args.float64 else ''}")
    cache = run(tutorial, args, data, metrics_path, checkpoint_dir=run_dir, log=_PreloadingLog(plots.preload))
    if args.data_parallel:
        fn.parallel.shutdown()   # every process waits for the others, then leaves together
    if not is_lead_process():
        return {}  # process 0 reports
    records = read_metrics(metrics_path)
    summary = summarize(tutorial, args, data, args.framework, records, cache)
    companion(metrics_path, ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plot = plots.plot_run(records, companion(metrics_path, ".png"),
                              title=f"{tutorial.name} ({args.framework}, {data.dataset})")
    except ImportError as error:
        plot = f"skipped ({error})"
    print(f"Test accuracy: {100 * summary['test_accuracy']:.2f}% ({args.framework}, {data.dataset}, "
          f"{summary['epochs']} epochs; steady epoch {summary['epoch_seconds']:.2f}s)"
          + (f"; with dropout active, as the tutorial tested: {100 * summary['test_accuracy_dropout_on']:.2f}%"
             if summary["test_accuracy_dropout_on"] is not None else ""))
    print(f"Metrics: {metrics_path}\nPlot: {plot}")
    return summary
