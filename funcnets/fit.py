"""``fit``: epochs of training and evaluation, with progress, metrics and checkpoints.

The side effects live here (progress bar, log lines, the metrics file,
checkpoints); the training itself is `funcnets.training.run_steps`, run on the
device in chunks of ``log_every`` steps with one host sync per chunk.

Metrics go to a JSON-lines file, one record per chunk::

    {"kind": "step", "step": 300, "epoch": 0, "loss": 0.41, "accuracy": 0.88, "lr": 0.01, "seconds": 1.9}

(loss and accuracy are means over the steps since the previous record; the ragged
last batch of an epoch gets its own record; ``step_losses=True`` adds
``"losses"``, the list of each step's loss) and one per epoch::

    {"kind": "epoch", "step": 938, "epoch": 0, "loss": ..., "accuracy": ...,
     "test_loss": ..., "test_accuracy": ..., "lr": ..., "seconds": ..., "train_seconds": ...}

(the epoch's loss and accuracy are means over its training steps, as the
tutorials print them; ``seconds`` is the whole epoch, ``train_seconds`` its
training steps alone, without evaluation and checkpoints). `MetricsLog` writes
these files, for funcnets and for the PyTorch references alike.

Exact resume: epoch ``e`` visits the examples in ``epoch_order(n,
fold_in(rng, e))`` and step ``t`` draws its dropout masks from
``fold_in(state.rng, t)``, so a run restored from a checkpoint at any step
repeats the uninterrupted run bit for bit. On resume the metrics file is cut
back to the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from funcnets import layers
from funcnets.checkpoint import Checkpointer, Progress
from funcnets.optim import learning_rate_at
from funcnets.parallel import PeerLostError, check_batch_size
from funcnets.training import (TrainState, _device_split, batch_index, epoch_order, evaluate, place_state,
                               run_steps)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


def _chunks(index_parts: list[jax.Array], start: int, size: int):
    """``(first_step, rows)`` pieces of at most ``size`` rows, from row ``start`` of the epoch."""
    offset = 0
    for part in index_parts:
        rows = int(part.shape[0])
        begin = max(start - offset, 0)
        for i in range(begin, rows, size):
            yield offset + i, part[i:min(i + size, rows)]
        offset += rows


def _logged_lr(learning_rate, count: int) -> float | None:
    return None if learning_rate is None else float(learning_rate_at(learning_rate, count))


class MetricsLog:
    """A JSON-lines metrics file (the format in the module doc), one record per `write`.

    A fresh log (``resume_step=None``) replaces any old file; a resumed one keeps
    the records up to ``resume_step`` (the checkpoint's step) and appends after them.
    ``MetricsLog(None)`` writes nothing.
    """

    def __init__(self, path: str | os.PathLike | None, *, resume_step: int | None = None):
        self.path = pathlib.Path(path) if path is not None else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not self.path.exists():
            self.path.write_text("")
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, entry: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file, in order."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def fit(state: TrainState, train: tuple, test: tuple | None = None, *, epochs: int, batch_size: int,
        rng: jax.Array, test_batch_size: int = 1000, drop_last: bool = False, log_every: int = 100,
        metrics_path: str | os.PathLike | None = None, checkpointer: Checkpointer | None = None,
        resume: bool = False, learning_rate: float | Callable | None = None, progress: bool = True,
        step_losses: bool = False, log: Callable[[str], None] = print,
        mesh: Mesh | None = None) -> tuple[TrainState, list[dict]]:
    """Train for ``epochs`` epochs on ``train = (images, labels)``, evaluating on ``test``.

    Args:
      state: from `funcnets.create_train_state`; donated (use the returned one).
      train, test: whole splits, normalised float images and int labels; put on
        the device once.
      rng: the key of the data order (epoch ``e`` uses ``fold_in(rng, e)``).
      log_every: steps between host syncs, metrics records and progress updates.
      checkpointer: saves as its cadence says (checked every ``log_every`` steps
        and at each epoch's end); with ``resume=True`` training starts from its
        newest checkpoint, if any.
      learning_rate: the optimizer's lr (float or schedule), for the records only.
      step_losses: add each step's loss to the step records (for step-by-step
        comparisons; costs nothing on the device).
      log: where the per-epoch lines go (``print`` by default).
      mesh: data-parallel over this mesh's devices (`funcnets.parallel.data_mesh`):
        the splits and state are replicated on them and each step's batch is
        split over them; the batches and the numbers are the one-device run's.
        ``batch_size`` must divide by the device count.

    Returns the final state and the per-epoch records. A NaN or infinite loss
    raises `NonFiniteLossError` naming the step; nothing after the last good
    checkpoint is saved.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    layers.check_key(rng, "rng")
    if resume and checkpointer is None:
        raise ValueError("resume=True needs a checkpointer")
    for argument, split in (("train", train), ("test", test)):
        if split is not None and (not isinstance(split, (tuple, list)) or len(split) != 2):
            hint = (" (from a funcnets.data.Dataset d: (funcnets.data.normalize(d.images, d.info), d.labels))"
                    if hasattr(split, "info") else "")
            raise TypeError(f"{argument} must be a pair (images, labels){hint}")
    if mesh is not None:
        check_batch_size(batch_size, mesh)
    train_images, train_labels = _device_split(state, *train, batch_size, mesh=mesh)
    if test is not None:
        test_images, test_labels = _device_split(state, *test, test_batch_size, "test_batch_size", mesh=mesh)
    n = int(train_images.shape[0])
    epoch_steps = steps_per_epoch(n, batch_size, drop_last)
    if epoch_steps == 0:
        raise ValueError(f"batch_size {batch_size} with drop_last leaves no step in {n} examples")

    start = Progress(0, 0)
    if resume:
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            state, start = restored
            if start.position >= epoch_steps:
                start = Progress(start.epoch + 1, 0)
            log(f"Resumed from step {int(state.step)} (epoch {start.epoch + 1}, batch {start.position})")
    state = place_state(state, mesh)
    record = MetricsLog(metrics_path, resume_step=int(state.step) if resume else None).write

    history = []
    try:
        for epoch in range(start.epoch, epochs):
            epoch_start = time.perf_counter()
            # The epoch's batches as host arrays: chunks are cut on the host, and each goes
            # to the device with its dispatch (no small device programs to slice them).
            parts = [np.asarray(part) for part in
                     batch_index(epoch_order(n, jax.random.fold_in(rng, epoch)), batch_size, drop_last)]
            resuming = epoch == start.epoch
            position = start.position if resuming else 0
            totals = [start.loss_sum, start.accuracy_sum] if resuming else [0.0, 0.0]
            train_seconds = 0.0
            bar = tqdm(total=epoch_steps, initial=position, desc=f"epoch {epoch + 1}/{epochs}",
                       unit="step", disable=not progress, leave=False)
            step = int(state.step)
            pending = None   # the chunk dispatched last, whose metrics are not read yet
            chunk_start = time.perf_counter()
            for first, rows in _chunks(parts, position, log_every):
                state, metrics = run_steps(state, train_images, train_labels, rows, mesh=mesh)
                step += rows.shape[0]
                done = first + rows.shape[0]
                if pending is not None:   # read the previous chunk while this one runs
                    chunk_start = _report_chunk(pending, chunk_start, epoch, totals, bar, record, learning_rate,
                                                step_losses, checkpointer)
                pending = (first, rows, metrics, step)
                if checkpointer is not None and done < epoch_steps and checkpointer.due(step):
                    # Read this chunk before saving it, so that a NaN is never checkpointed.
                    chunk_start = _report_chunk(pending, chunk_start, epoch, totals, bar, record, learning_rate,
                                                step_losses, checkpointer)
                    pending = None
                    checkpointer.save(state, Progress(epoch, done, *totals))
            if pending is not None:
                chunk_start = _report_chunk(pending, chunk_start, epoch, totals, bar, record, learning_rate,
                                            step_losses, checkpointer)
            train_seconds = chunk_start - epoch_start
            bar.close()
            entry = {"kind": "epoch", "step": step, "epoch": epoch,
                     "loss": totals[0] / epoch_steps, "accuracy": totals[1] / epoch_steps}
            if test is not None:
                scores = evaluate(state, test_images, test_labels, batch_size=test_batch_size, mesh=mesh)
                entry.update(test_loss=scores["loss"], test_accuracy=scores["accuracy"])
            entry.update(lr=_logged_lr(learning_rate, step - 1), seconds=time.perf_counter() - epoch_start,
                         train_seconds=train_seconds)
            record(entry)
            history.append(entry)
            log(epoch_line(entry, epochs))
            if checkpointer is not None and checkpointer.due(step, end_of_epoch=True):
                checkpointer.save(state, Progress(epoch, epoch_steps, *totals))
    except (NonFiniteLossError, KeyboardInterrupt):
        raise
    except Exception as error:
        if jax.process_count() == 1:
            raise
        raise _peer_lost(error, checkpointer) from error

    if checkpointer is not None:
        checkpointer.wait()
    return state, history


def _report_chunk(chunk, chunk_start: float, epoch: int, totals: list[float], bar, record, learning_rate,
                  step_losses: bool, checkpointer) -> float:
    """Wait for a chunk's metrics, check them, add them to ``totals`` (loss and accuracy
    sums), and report them (progress bar, step record); the time they arrived.

    Raises `NonFiniteLossError` naming the first step whose loss is NaN or infinite.
    """
    first, rows, metrics, step = chunk
    losses, accuracies = (np.asarray(m, np.float64) for m in jax.device_get((metrics["loss"], metrics["accuracy"])))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        bad_step = step - len(losses) + int(bad[0]) + 1
        if checkpointer is not None:
            checkpointer.wait()
        kept = f"; the last good checkpoint is step {checkpointer.steps()[-1]}" if (
            checkpointer is not None and checkpointer.steps()) else ""
        raise NonFiniteLossError(f"loss became {losses[bad[0]]} at step {bad_step} (epoch {epoch + 1}, "
                                 f"batch {first + int(bad[0]) + 1}); training stopped{kept}")
    totals[0] += losses.sum()
    totals[1] += accuracies.sum()
    now = time.perf_counter()
    seconds = now - chunk_start
    bar.update(len(losses))
    bar.set_postfix(loss=f"{losses.mean():.4f}", samples_per_s=f"{rows.size / max(seconds, 1e-9):.0f}")
    entry = {"kind": "step", "step": step, "epoch": epoch, "loss": float(losses.mean()),
             "accuracy": float(accuracies.mean()), "lr": _logged_lr(learning_rate, step - 1), "seconds": seconds}
    if step_losses:
        entry["losses"] = losses.tolist()
    record(entry)
    return now


def _peer_lost(error: Exception, checkpointer: Checkpointer | None) -> PeerLostError:
    """What a failed step or evaluation means in a multi-process run: another
    process is gone. Names the last complete checkpoint (read from its folder,
    without waiting on saves that need the lost process)."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    kept = " No checkpoint was saved."
    if checkpointer is not None:
        steps = checkpointer.complete_steps()
        kept = (f" The last complete checkpoint is step {steps[-1]} in {checkpointer.directory}." if steps
                else f" No checkpoint in {checkpointer.directory} is complete.")
    return PeerLostError(f"process {jax.process_index()} of {jax.process_count()}: a collective or barrier failed, "
                         f"so another process is most likely gone ({type(error).__name__}: {first_line}).{kept}")


def epoch_line(entry: dict, epochs: int) -> str:
    """The tutorial-style line for an epoch record:
    ``Epoch 3/10 - Training loss: 0.4012 - Test loss: 0.4321, Test accuracy: 84.52% (2.1s)``."""
    line = f"Epoch {entry['epoch'] + 1}/{epochs} - Training loss: {entry['loss']:.4f}"
    if "test_loss" in entry:
        line += f" - Test loss: {entry['test_loss']:.4f}, Test accuracy: {100 * entry['test_accuracy']:.2f}%"
    return line + f" ({entry['seconds']:.1f}s)"


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many steps one epoch takes: ``len(DataLoader(...))``."""
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)

