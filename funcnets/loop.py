"""``fit``: epochs of training and evaluation, with progress, metrics and checkpoints.

The side effects live here (progress bar, log lines, the metrics file of
`funcnets.metrics`, checkpoints); the training itself is
`funcnets.training.run_steps`, run on the device in chunks of ``log_every``
steps (`funcnets.training.padded_steps`: one program for every chunk length
where the steps are a loop). The next chunk is dispatched before the previous
one's metrics are read, so the device does not wait for the host; a chunk
whose end is due for a checkpoint is read first, so a NaN is never saved.

Exact resume: epoch ``e`` visits the examples in ``epoch_order(n,
fold_in(rng, e))`` and step ``t`` draws its dropout masks from
``fold_in(state.rng, t)``, so a run restored from a checkpoint at any step
repeats the uninterrupted run bit for bit. On resume the metrics file is cut
back to the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import warnings
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from funcnets import host_memory, keys, losses, optim, streams
from funcnets.metrics import MetricsLog, epoch_line
from funcnets.checkpoint import Checkpointer, Progress
from funcnets.parallel import PeerLostError, check_batch_size
from funcnets.training import (TrainState, abstract, batch_index, batch_step, check_batch, check_transform,
                               compile_ahead, device_batch, device_split, epoch_order, evaluate, padded_steps,
                               place_state, run_steps, uses_scan)


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


@dataclasses.dataclass(frozen=True)
class Report:
    """What `fit` reports, and where.

    Attributes:
      metrics_path: the JSON-lines metrics file (`funcnets.metrics`); None: none.
      progress: a tqdm bar per epoch (step, loss, samples/s).
      log: where the per-epoch lines (and the resume line) go; None: nowhere.
      step_losses: add each step's loss to the step records (for step-by-step
        comparisons; costs nothing on the device).

    >>> report = Report(metrics_path="runs/a/metrics.jsonl", progress=False)
    >>> Report.silent()
    Report(metrics_path=None, progress=False, log=None, step_losses=False)
    """

    metrics_path: str | os.PathLike | None = None
    progress: bool = True
    log: Callable[[str], None] | None = print
    step_losses: bool = False

    def __post_init__(self):
        if self.metrics_path is not None and not isinstance(self.metrics_path, (str, os.PathLike)):
            raise TypeError(f"metrics_path must be a path or None, got {type(self.metrics_path).__name__}")
        for name in ("progress", "step_losses"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.log is not None and not callable(self.log):
            raise TypeError(f"log must be a function taking a line (e.g. print) or None, got {self.log!r}")

    @classmethod
    def silent(cls, metrics_path: str | os.PathLike | None = None) -> "Report":
        """No bar, no lines (a metrics file only if given)."""
        return cls(metrics_path=metrics_path, progress=False, log=None)

    def line(self, text: str) -> None:
        if self.log is not None:
            self.log(text)


_MOVED = {"metrics_path": "report=fn.loop.Report(metrics_path=...)", "progress": "report=fn.loop.Report(progress=...)",
          "log": "report=fn.loop.Report(log=...)", "step_losses": "report=fn.loop.Report(step_losses=...)",
          "resume": "fn.checkpoint.Checkpointer(directory, resume=True)",
          "learning_rate": "nothing: the rate is read from the optimizer state (fn.optim.learning_rate)"}


def fit(state: TrainState, train, test=None, *, epochs: int, batch_size: int | None = None,
        rng: jax.Array, test_batch_size: int = 1000, drop_last: bool = False, log_every: int = 100,
        report: Report = Report(), checkpointer: Checkpointer | None = None, mesh: Mesh | None = None,
        transform: Callable | None = None, host_malloc: str | None = None, plateau_metric: str = "test_loss",
        loss_fn: losses.LossFn | str | None = None, **moved) -> tuple[TrainState, list[dict]]:
    """Train for ``epochs`` epochs on ``train = (images, labels)`` (or a stream), evaluating on ``test``.

    Each epoch visits ``train`` in the order ``epoch_order(n, fold_in(rng, epoch))``,
    in batches of ``batch_size`` as ``DataLoader(batch_size, shuffle, drop_last)``
    cuts them, then evaluates ``test`` (dropout off).

    Args:
      state: from `funcnets.create_train_state`; donated (use the returned one).
      train, test: whole splits, normalised float images and int labels (or the
        images as loaded, with ``transform``); put on the device once. Or a stream
        of batches (`funcnets.streams`: a Grain dataset or loader, a torch
        ``DataLoader`` through ``funcnets.data.from_torch``, any iterable, or a
        function of the epoch): each epoch one pass of it, in its order, its
        batches setting the batch size; a Grain iterator's state is checkpointed.
      batch_size: examples per step of a whole split (checked against a stream's).
      rng: the key of the data order (epoch ``e`` uses ``fold_in(rng, e)``).
      log_every: steps between host syncs, metrics records and progress updates.
      report: what is reported, and where (`Report`: metrics file, progress
        bar, per-epoch lines, per-step losses); the records' ``lr`` is the
        optimizer's own (`funcnets.optim.learning_rate`).
      checkpointer: saves as its cadence says (checked every ``log_every`` steps
        and at each epoch's end); if made with ``resume=True``, training starts
        from its newest complete checkpoint, if any.
      mesh: data-parallel over this mesh's devices (`funcnets.parallel.data_mesh`):
        the splits and state are replicated on them and each step's batch is
        split over them; the batches and the numbers are the one-device run's.
        ``batch_size`` must divide by the device count.
      transform: applied to each batch of images inside the compiled programs
        (training and evaluation), e.g. ``funcnets.data.Normalize.of(info)``, so
        the splits can stay uint8 as loaded (hashable; `funcnets.training.run_steps`).
      host_malloc: on the CPU, None or ``"reuse"`` keeps freed blocks in the
        process for the next step (`funcnets.host_memory`; process-wide, said in
        one line through ``report``); ``"system"`` (or ``FUNCNETS_HOST_MALLOC=system``)
        leaves ``malloc`` alone.
      loss_fn: the training and test loss on class labels: a function or a loss's name
        (`funcnets.losses.create` binds options: ``label_smoothing``, class ``weight``, ...);
        default the model's (NLL after log-softmax, else cross-entropy).
      plateau_metric: the epoch record's value that steps a `funcnets.optim.reduce_lr_on_plateau`
        in the optimizer after each epoch's evaluation (``"test_loss"``,
        ``"test_accuracy"``, ``"loss"``, ``"accuracy"``), before that epoch's checkpoint.

    Returns:
      The final state and the per-epoch records (the metrics file's ``"epoch"`` records).

    Raises:
      NonFiniteLossError: a NaN or infinite loss, naming the step; nothing
        after the last good checkpoint is saved.
      funcnets.parallel.PeerLostError: in a multi-process run, another process is gone.

    >>> import jax, funcnets as fn
    >>> train = fn.data.load("digits", "train")
    >>> split = (fn.data.normalize(train.images, train.info), train.labels)
    >>> state = fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.05), jax.random.key(0))
    >>> state, history = fn.fit(state, split, epochs=1, batch_size=64, rng=jax.random.key(1),
    ...                         report=fn.loop.Report.silent())
    >>> int(state.step), sorted(history[0])[:3]
    (23, ['accuracy', 'epoch', 'kind'])
    """
    if moved:
        name = sorted(moved)[0]
        where = _MOVED.get(name)
        raise TypeError(f"fit() got an unexpected keyword argument {name!r}"
                        + (f"; it is now {where}" if where else ""))
    if not isinstance(report, Report):
        raise TypeError(f"report must be a funcnets.loop.Report, got {type(report).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    keys.check_key(rng, "rng")
    loss_fn = losses.resolve(loss_fn)
    plateau = optim.has_plateau(state.opt_state)
    if plateau:
        metrics = ("loss", "accuracy") + (("test_loss", "test_accuracy") if test is not None else ())
        if plateau_metric not in metrics:
            raise ValueError(f"plateau_metric {plateau_metric!r} is not in the epoch records; reduce_lr_on_plateau "
                             f"reads one of {list(metrics)}" + ("" if test is not None else
                                                                " (without a test split, the training loss or "
                                                                "accuracy)"))
    if streams.is_stream(train):
        return _fit_stream(state, streams.Stream(train, "train"), test, epochs=epochs, batch_size=batch_size,
                           test_batch_size=test_batch_size, log_every=log_every, report=report,
                           checkpointer=checkpointer, mesh=mesh, transform=transform, host_malloc=host_malloc,
                           plateau_metric=plateau_metric if plateau else None, loss_fn=loss_fn)
    if batch_size is None:
        raise TypeError("fit() needs batch_size for a whole split (a stream's batches set their own)")
    for argument, split in (("train", train), ("test", test)):
        if split is not None and (not isinstance(split, (tuple, list)) or len(split) != 2):
            hint = (" (from a funcnets.data.Dataset d: (funcnets.data.normalize(d.images, d.info), d.labels))"
                    if hasattr(split, "info") else "")
            raise TypeError(f"{argument} must be a pair (images, labels){hint}")
    if mesh is not None:
        check_batch_size(batch_size, mesh)
    train_images, train_labels = device_split(state, *train, batch_size, mesh=mesh, transform=transform)
    if test is not None:
        test_images, test_labels = device_split(state, *test, test_batch_size, "test_batch_size", mesh=mesh,
                                                transform=transform)
    host_memory.for_cpu_steps(host_malloc, report.log)
    n = int(train_images.shape[0])
    epoch_steps = steps_per_epoch(n, batch_size, drop_last)
    if epoch_steps == 0:
        raise ValueError(f"batch_size {batch_size} with drop_last leaves no step in {n} examples")

    state, start, resume = _restored(state, checkpointer, report, epoch_steps)
    state = place_state(state, mesh)
    record = MetricsLog(report.metrics_path, resume_step=int(state.step) if resume else None).write

    scan = uses_scan(state.model)
    # The programs an epoch runs only at its end (its last, smaller batch; the evaluation)
    # compile in a background thread once the first chunk runs (`compile_ahead`), which is
    # joined before the first of them runs. One device and one process only: there their
    # shardings are the default ones.
    shapes = None if mesh is not None or jax.process_count() > 1 else abstract(state)
    compiling = None
    history = []
    try:
        for epoch in range(start.epoch, epochs):
            epoch_start = time.perf_counter()
            # The epoch's batches as host arrays: chunks are cut on the host, and each goes
            # to the device with its dispatch (no small device programs to slice them).
            parts = batch_index(np.asarray(epoch_order(n, jax.random.fold_in(rng, epoch))), batch_size, drop_last)
            resuming = epoch == start.epoch
            position = start.position if resuming else 0
            totals = _EpochTotals(start.loss_sum, start.accuracy_sum) if resuming else _EpochTotals()
            bar = tqdm(total=epoch_steps, initial=position, desc=f"epoch {epoch + 1}/{epochs}",
                       unit="step", disable=not report.progress, leave=False)
            step = int(state.step)

            def read(chunk, since, epoch=epoch, totals=totals, bar=bar):
                return _report_chunk(chunk, since, epoch, totals, bar, record, report.step_losses, checkpointer)

            pending = None   # the chunk dispatched last, whose metrics are not read yet
            chunk_start = time.perf_counter()
            for first, rows in _chunks(parts, position, log_every):
                if compiling is not None and rows.shape[1] != batch_size:
                    compiling.join()
                    compiling = None
                if scan:   # every chunk, the last shorter one too, in one program
                    state, metrics = padded_steps(state, train_images, train_labels, rows, log_every, mesh=mesh,
                                                  transform=transform, loss_fn=loss_fn)
                else:
                    state, metrics = run_steps(state, train_images, train_labels, rows, scan=False, mesh=mesh,
                                               transform=transform, loss_fn=loss_fn)
                step += rows.shape[0]
                done = first + rows.shape[0]
                if shapes is not None:
                    ragged = parts[-1] if parts[-1].shape[1] != batch_size else None
                    compiling = compile_ahead(shapes, train_images, train_labels, ragged_rows=ragged,
                                              length=log_every, scan=scan, test_batch_size=test_batch_size,
                                              test=None if test is None else (test_images, test_labels),
                                              transform=transform, loss_fn=loss_fn)
                    shapes = None
                if pending is not None:   # read the previous chunk while this one runs
                    chunk_start = read(pending, chunk_start)
                pending = (first, rows.shape[0], rows.size, metrics, step)
                if checkpointer is not None and done < epoch_steps and checkpointer.due(step):
                    # Read this chunk before saving it, so that a NaN is never checkpointed.
                    chunk_start = read(pending, chunk_start)
                    pending = None
                    checkpointer.save(state, Progress(epoch, done, totals.loss_sum, totals.accuracy_sum))
            if pending is not None:
                chunk_start = read(pending, chunk_start)
            train_seconds = chunk_start - epoch_start
            bar.close()
            entry = {"kind": "epoch", "step": step, "epoch": epoch,
                     "loss": totals.loss_sum / epoch_steps, "accuracy": totals.accuracy_sum / epoch_steps}
            if compiling is not None:
                compiling.join()
                compiling = None
            if test is not None:
                scores = evaluate(state, test_images, test_labels, batch_size=test_batch_size, mesh=mesh,
                                  transform=transform, host_malloc=host_malloc, loss_fn=loss_fn)
                entry.update(test_loss=scores["loss"], test_accuracy=scores["accuracy"])
            entry.update(lr=totals.lr, seconds=time.perf_counter() - epoch_start,
                         train_seconds=train_seconds)
            record(entry)
            history.append(entry)
            report.line(epoch_line(entry, epochs))
            if plateau:   # PyTorch's scheduler.step(metric), kept in the optimizer state
                state = place_state(state.replace(
                    opt_state=optim.step_plateau(state.opt_state, entry[plateau_metric])), mesh)
            if checkpointer is not None and checkpointer.due(step, end_of_epoch=True):
                checkpointer.save(state, Progress(epoch, epoch_steps, totals.loss_sum, totals.accuracy_sum))
    except (NonFiniteLossError, KeyboardInterrupt):
        raise
    except Exception as error:
        if jax.process_count() == 1:
            raise
        raise _peer_lost(error, checkpointer) from error

    if checkpointer is not None:
        checkpointer.wait()
    return state, history


def _fit_stream(state: TrainState, stream: streams.Stream, test, *, epochs: int, batch_size: int | None,
                test_batch_size: int, log_every: int, report: Report, checkpointer: Checkpointer | None,
                mesh: Mesh | None, transform, host_malloc, plateau_metric: str | None,
                loss_fn) -> tuple[TrainState, list[dict]]:
    """`fit` over a stream (`funcnets.streams`): each epoch one pass of it, batches put on
    the device a step ahead; a Grain iterator's state saved with each checkpoint."""
    if test is not None and not streams.is_stream(test) and (not isinstance(test, (tuple, list)) or len(test) != 2):
        raise TypeError("test must be a pair (images, labels) or a stream")
    host_memory.for_cpu_steps(host_malloc, report.log)
    state, start, resume = _restored(state, checkpointer, report)
    state = place_state(state, mesh)
    record = MetricsLog(report.metrics_path, resume_step=int(state.step) if resume else None).write
    check = _BatchCheck(state, stream.argument, batch_size, transform)
    history = []
    for epoch in range(start.epoch, epochs):
        epoch_start = time.perf_counter()
        resuming = epoch == start.epoch and (start.position > 0 or start.data_state is not None)
        exact = resuming and start.data_state is not None
        if resuming and not exact:
            warnings.warn(f"{stream.argument}: the stream's position cannot be checkpointed (only a Grain "
                          f"iterator's can), so the interrupted epoch {epoch + 1} restarts from its first batch; "
                          f"the {start.position} steps it had taken stay in the train state", RuntimeWarning,
                          stacklevel=3)
        position = start.position if exact else 0
        totals = _EpochTotals(start.loss_sum, start.accuracy_sum) if exact else _EpochTotals()
        iterator = stream.iterator(epoch, start.data_state if exact else None)
        keep_state = streams.Stream.checkpointable(iterator)
        bar = tqdm(total=stream.length(epoch), initial=position, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not report.progress, leave=False)
        step, chunk, chunk_start, data_state = int(state.step), [], time.perf_counter(), None

        def put(batch, index=[position], epoch=epoch, iterator=iterator, keep_state=keep_state):  # noqa: B006
            images, labels = check(batch, index[0], epoch)   # (index: the producer thread's batch counter)
            index[0] += 1
            return (device_batch((images, labels), mesh), streams.Stream.state(iterator) if keep_state else None,
                    labels.shape[0])

        def read(chunk, chunk_start, first):
            metrics = jax.tree.map(lambda *m: jnp.stack(m), *[m for m, _ in chunk])
            return _report_chunk((first, len(chunk), sum(n for _, n in chunk), metrics, step), chunk_start, epoch,
                                 totals, bar, record, report.step_losses, checkpointer)

        first = position
        for (images, labels), data_state, count in _named_failures(streams.prefetch(iterator, put), stream,
                                                                    position, epoch):
            state, metrics = batch_step(state, images, labels, loss_fn=loss_fn, transform=transform)
            step, position = step + 1, position + 1
            chunk.append((metrics, count))
            if len(chunk) == log_every:
                chunk_start, chunk, first = read(chunk, chunk_start, first), [], position
                if checkpointer is not None and checkpointer.due(step):
                    checkpointer.save(state, Progress(epoch, position, totals.loss_sum, totals.accuracy_sum,
                                                      data_state))
        if position == 0:
            raise streams.StreamError(f"{stream.argument}: the stream gave no batch in epoch {epoch + 1}")
        if chunk:
            chunk_start = read(chunk, chunk_start, first)
        bar.close()
        entry = {"kind": "epoch", "step": step, "epoch": epoch, "loss": totals.loss_sum / position,
                 "accuracy": totals.accuracy_sum / position}
        if test is not None:
            scores = (evaluate(state, test, batch_size=test_batch_size, mesh=mesh, transform=transform,
                               host_malloc=host_malloc, loss_fn=loss_fn) if streams.is_stream(test) else
                      evaluate(state, *test, batch_size=test_batch_size, mesh=mesh, transform=transform,
                               host_malloc=host_malloc, loss_fn=loss_fn))
            entry.update(test_loss=scores["loss"], test_accuracy=scores["accuracy"])
        entry.update(lr=totals.lr, seconds=time.perf_counter() - epoch_start, train_seconds=chunk_start - epoch_start)
        record(entry)
        history.append(entry)
        report.line(epoch_line(entry, epochs))
        if plateau_metric is not None:
            state = place_state(state.replace(
                opt_state=optim.step_plateau(state.opt_state, entry[plateau_metric])), mesh)
        if checkpointer is not None and checkpointer.due(step, end_of_epoch=True):
            checkpointer.save(state, Progress(epoch + 1, 0))
        start = Progress(0, 0)
    if checkpointer is not None:
        checkpointer.wait()
    return state, history


def _restored(state: TrainState, checkpointer: Checkpointer | None, report: Report,
              epoch_steps: int | None = None) -> tuple[TrainState, Progress, bool]:
    """``(state, where to start, whether resuming)``: the newest checkpoint's when the
    checkpointer resumes and has one (an epoch of ``epoch_steps`` done moves on to the next)."""
    start = Progress(0, 0)
    resume = checkpointer is not None and checkpointer.resume
    if resume:
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            state, start = restored
            if epoch_steps is not None and start.position >= epoch_steps:
                start = Progress(start.epoch + 1, 0)
            report.line(f"Resumed from step {int(state.step)} (epoch {start.epoch + 1}, batch {start.position})")
    return state, start, resume


def _named_failures(batches, stream: streams.Stream, position: int, epoch: int):
    """``batches``, an error the stream raises named with the batch it was making."""
    while True:
        try:
            item = next(batches)
        except StopIteration:
            return
        except streams.StreamError:
            raise
        except Exception as error:
            raise streams.StreamError(f"{stream.argument}: the stream raised {type(error).__name__} making batch "
                                      f"{position + 1} of epoch {epoch + 1}: {error}; nothing of that step was "
                                      "trained or saved" + streams.hint_for(error)) from error
        position += 1
        yield item


class _BatchCheck:
    """A stream's batches checked before they reach a step: the first against the model
    (and ``transform``) and ``batch_size`` if given; every later one against the
    first's shapes (a smaller last batch allowed, as ``DataLoader`` makes it)."""

    def __init__(self, state: TrainState, argument: str, batch_size: int | None, transform):
        self.state, self.argument, self.batch_size, self.transform = state, argument, batch_size, transform
        self.shape = None

    def __call__(self, batch, index: int, epoch: int):
        images, labels = streams.as_batch(batch, index + 1, self.argument)
        where = f"{self.argument}: batch {index + 1} of epoch {epoch + 1}"
        if self.shape is None:
            if self.batch_size is not None and images.shape[0] != self.batch_size:
                raise streams.StreamError(f"{where} has {images.shape[0]} examples, but batch_size={self.batch_size} "
                                          "(a stream's batches set the batch size: leave batch_size out)")
            try:
                if self.transform is not None:
                    check_transform(self.state, images, labels, self.transform)
                else:
                    self.state.model.check_images(images, "images")
                    check_batch(self.state, (images, labels), class_labels=True)
            except (TypeError, ValueError) as error:
                raise streams.StreamError(f"{where}: {error}") from None
            self.shape = images.shape
        elif images.shape[1:] != self.shape[1:] or images.shape[0] > self.shape[0]:
            raise streams.StreamError(f"{where} has images {images.shape}, the first batch {self.shape}; a stream's "
                                      "batches keep one shape (the last may be smaller)")
        if not np.issubdtype(labels.dtype, np.integer):
            raise streams.StreamError(f"{where} has {labels.dtype} labels; class labels are integers")
        return images, labels.astype(np.int32)


@dataclasses.dataclass
class _EpochTotals:
    """An epoch's running sums of its steps' losses and accuracies, and the rate of
    its last step read so far (None: the optimizer does not keep it)."""

    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    lr: float | None = None


def _report_chunk(chunk, chunk_start: float, epoch: int, totals: _EpochTotals, bar, record,
                  step_losses: bool, checkpointer) -> float:
    """Wait for a chunk's metrics, check them, add them to ``totals`` (loss and accuracy
    sums), and report them (progress bar, step record); the time they arrived.

    Raises `NonFiniteLossError` naming the first step whose loss is NaN or infinite.
    """
    first, count, samples, metrics, step = chunk   # the metrics may be padded past ``count`` (`padded_steps`)
    losses, accuracies, lr = jax.device_get((metrics["loss"], metrics["accuracy"], metrics.get("lr")))
    losses, accuracies = np.asarray(losses, np.float64)[:count], np.asarray(accuracies, np.float64)[:count]
    lr = None if lr is None else np.asarray(lr)[:count]
    # The rate of the chunk's last step, as the shortest decimal its dtype rounds back to (0.01, not
    # 0.009999999776482582 for a float32 0.01), as PyTorch's records show it.
    totals.lr = None if lr is None else float(np.format_float_positional(np.asarray(lr)[-1], unique=True))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        bad_step = step - len(losses) + int(bad[0]) + 1
        if checkpointer is not None:
            checkpointer.wait()
        kept = f"; the last good checkpoint is step {checkpointer.steps()[-1]}" if (
            checkpointer is not None and checkpointer.steps()) else ""
        raise NonFiniteLossError(f"loss became {losses[bad[0]]} at step {bad_step} (epoch {epoch + 1}, "
                                 f"batch {first + int(bad[0]) + 1}); training stopped{kept}")
    totals.loss_sum += losses.sum()
    totals.accuracy_sum += accuracies.sum()
    now = time.perf_counter()
    seconds = now - chunk_start
    bar.update(len(losses))
    bar.set_postfix(loss=f"{losses.mean():.4f}", samples_per_s=f"{samples / max(seconds, 1e-9):.0f}")
    entry = {"kind": "step", "step": step, "epoch": epoch, "loss": float(losses.mean()),
             "accuracy": float(accuracies.mean()), "lr": totals.lr, "seconds": seconds}
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


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool = False) -> int:
    """How many steps one epoch takes: ``len(DataLoader(...))``."""
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)

