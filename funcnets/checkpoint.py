"""Checkpoints on Orbax's ``CheckpointManager``, with what an exact resume needs.

>>> ckpt = fn.checkpoint.Checkpointer("checkpoints/my_run", save_every_steps=500, resume=True)  # doctest: +SKIP
>>> ckpt.save(state, fn.checkpoint.Progress(epoch=0, position=500))                 # doctest: +SKIP
>>> state, progress = ckpt.restore_latest(state)                                    # doctest: +SKIP

A checkpoint holds the train state's arrays (``step``, ``params``,
``opt_state``, the dropout key as key data, and the model state of a net that
keeps one, such as batch norm's running statistics) and, as JSON, the `Progress`
(epoch, batches done in it), the run's config, and a fingerprint of the model
and optimizer state so that a checkpoint of another model or optimizer is
refused. Saves are asynchronous; `Checkpointer.close` (or leaving its ``with``
block) waits for them. Orbax writes each step to a temporary folder and
renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest; a checkpoint that is there but unreadable is skipped
with a warning in favour of the one before.

A directory that cannot be written (a file in the way, no permission, a
read-only filesystem) is refused when the `Checkpointer` is made, before any
training; a save that fails later (a full disk) raises one
`CheckpointWriteError` naming the step, the directory, the reason and the last
complete checkpoint, which stays as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import sys
import threading
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnets.training import TrainState


def _orbax():
    """``orbax.checkpoint``, imported on first use: it takes about a second to
    import, and a run that never checkpoints should not wait for it."""
    import orbax.checkpoint as ocp

    return ocp

DEFAULT_ROOT = pathlib.Path("checkpoints")


class Progress(NamedTuple):
    """Where training stands: ``epoch`` (0-based), ``position`` (the batches of it
    done), the sums of those batches' losses and accuracies (so the epoch's
    means come out the same after a resume), and for a stream whose iterator
    has a state (Grain's), that state as JSON (`funcnets.streams`)."""

    epoch: int
    position: int
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    data_state: str | None = None


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another model or optimizer."""


class CheckpointWriteError(OSError):
    """A checkpoint directory cannot be written, or a save failed; the message
    names the directory, the reason and (for a failed save) the step and the
    last complete checkpoint."""


_REASONS = {errno.ENOTDIR: "a file is in the way", errno.EEXIST: "a file is in the way",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "the filesystem is read-only", errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exceeded"}


def _reason(error: BaseException) -> str:
    """What went wrong, in a few words: the errno's meaning for an ``OSError``
    (also one wrapped by TensorStore, which reports a full disk as
    ``RESOURCE_EXHAUSTED``), else the error's first line."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno in _REASONS:
            return f"{_REASONS[cause.errno]} ({cause.strerror})"
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "No space left" in text:
        return _REASONS[errno.ENOSPC]
    if "Read-only file system" in text:
        return _REASONS[errno.EROFS]
    if "Permission denied" in text:
        return _REASONS[errno.EACCES]
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return f"{type(error).__name__}: {first[:300]}"


def check_writable(directory: pathlib.Path) -> None:
    """Create ``directory`` (and its parents) if needed, and write and remove a
    small file in it; raises `CheckpointWriteError` naming the path and the
    reason (a file in the way, a missing permission, a read-only filesystem,
    a full disk)."""
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "it is a file" if parent == directory else f"{parent} is a file"
                raise CheckpointWriteError(f"checkpoint directory {directory} cannot be created: {where} "
                                           "(a file is in the way); choose another directory or move the file")
            break
    probe = directory / f".funcnets-write-check-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"funcnets")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        raise CheckpointWriteError(f"checkpoint directory {directory} cannot be written: {_reason(error)}; "
                                   "choose another directory, or make this one writable") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


class _OrbaxErrorLogs(logging.Filter):
    """Drops the error records (and their tracebacks) that Orbax logs through
    absl for a failed save: `Checkpointer` raises one `CheckpointWriteError`
    for it instead. Records from anything other than Orbax pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def _is_closed_loop_callback(unraisable) -> bool:
    """TensorStore reports a write that ends after a failed save's event loop has
    closed with ``RuntimeError('Event loop is closed')`` from asyncio's
    ``call_soon_threadsafe``, as an unraisable exception."""
    error, trace = unraisable.exc_value, unraisable.exc_traceback
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and trace is not None
            and trace.tb_frame.f_code.co_name == "_check_closed")


class _QuietFailedSaves:
    """While any `Checkpointer` is open: Orbax's absl error logs are dropped
    (`_OrbaxErrorLogs`), and so are TensorStore's closed-loop callbacks
    (`_is_closed_loop_callback`); ``sys.unraisablehook`` passes every other
    record to the hook it replaced, which it puts back when the last
    checkpointer closes."""

    def __init__(self):
        self._open = 0
        self._logs = _OrbaxErrorLogs()
        self._previous_hook = None

    def _hook(self, unraisable) -> None:
        if not _is_closed_loop_callback(unraisable):
            (self._previous_hook or sys.__unraisablehook__)(unraisable)

    def enter(self) -> None:
        if self._open == 0:
            logging.getLogger("absl").addFilter(self._logs)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hook
        self._open += 1

    def exit(self) -> None:
        self._open -= 1
        if self._open == 0:
            logging.getLogger("absl").removeFilter(self._logs)
            if sys.unraisablehook == self._hook:
                sys.unraisablehook = self._previous_hook
            self._previous_hook = None


_QUIET = _QuietFailedSaves()
RELEASE_TIMEOUT_S = 10.0   # how long a failed save waits for Orbax's released threads to end


def default_directory(run_name: str) -> pathlib.Path:
    """``checkpoints/<run_name>``, relative to the working directory."""
    return DEFAULT_ROOT / run_name


def fingerprint(state: TrainState) -> dict[str, Any]:
    """What a checkpoint must match: model name, parameter shapes and dtypes, the
    optimizer state's structure (its NamedTuple types name the optimizer's parts),
    and the model state's shapes and dtypes when the net has one."""
    described = {
        "model": state.model.name,
        "params": jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", state.params),
        "opt_state": str(jax.tree.structure(state.opt_state)),
    }
    if state.model_state:
        described["model_state"] = jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", state.model_state)
    return described


def _arrays(state: TrainState) -> dict[str, Any]:
    """What a checkpoint holds of ``state``: the model state only for a net that has one
    (so that checkpoints of nets without it keep their layout)."""
    arrays = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
              "rng": jax.random.key_data(state.rng)}
    if state.model_state:
        arrays["model_state"] = state.model_state
    return arrays


@jax.jit
def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _snapshot(state: TrainState) -> dict[str, Any]:
    # The training loop donates the state's buffers to the next step while the
    # asynchronous save may still be reading them: save a copy (one program for
    # the whole tree).
    return _copy(_arrays(state))


class Checkpointer:
    """A run's checkpoints in ``directory``, on Orbax's ``CheckpointManager``.

    A save is due (`due`) when an epoch ends, ``save_every_steps`` steps or
    ``save_every_seconds`` seconds have passed since the last one, whichever
    comes first; saves are asynchronous (`wait`, or leaving the ``with``
    block, waits for them).

    Args:
      directory: where the checkpoints go (one folder per step).
      save_every_steps: save every this many optimizer steps; None: not by steps.
      save_every_seconds: save when this many seconds passed since the last
        save; None: not by time. In a multi-process run process 0's clock decides.
      save_every_epoch: save at each epoch's end.
      max_to_keep: how many checkpoints to keep, newest first.
      config: JSON-able settings saved with each (`saved_config`).
      barrier_timeout_s: how long a save waits for the other processes at
        Orbax's barriers (default: Orbax's, 1200 s); a lost process then fails
        the save instead of hanging it.
      resume: `funcnets.fit` starts from the newest complete checkpoint here,
        if any (its metrics file is cut back to that step).
      quiet_failed_saves: while the checkpointer is open, drop Orbax's absl
        error logs and TensorStore's "Event loop is closed" reports of a failed
        save, which the one `CheckpointWriteError` replaces (a filter on the
        ``absl`` logger and a ``sys.unraisablehook`` that passes every other
        record on; both put back at `close`). False leaves both alone.

    In a multi-process run every process calls the same methods at the same
    steps (`funcnets.fit` does); Orbax writes each process's part, process 0
    the shared metadata, and publishes the step only when all are written.

    Failures: the directory is created and a file written and removed in it
    when the checkpointer is made, and checked again before each save, so one
    that cannot be written raises `CheckpointWriteError` at once. A save that
    fails while being written (a full disk) raises `CheckpointWriteError` from
    the next `save`, `wait` or `close`, naming its step and the last complete
    checkpoint; its partial folder is removed and Orbax's waiting threads are
    released, so the process can exit at once. While a checkpointer is open,
    Orbax's own error logs for a failed save (absl tracebacks) and TensorStore's
    "Event loop is closed" reports are dropped in favour of that one error
    (`_QuietFailedSaves`; everything else is logged as before;
    ``quiet_failed_saves=False`` turns this off).
    """

    def __init__(self, directory: str | os.PathLike, *, save_every_steps: int | None = None,
                 save_every_seconds: float | None = None, save_every_epoch: bool = True,
                 max_to_keep: int = 3, config: dict | None = None, barrier_timeout_s: int | None = None,
                 resume: bool = False, quiet_failed_saves: bool = True):
        if save_every_steps is not None and (not isinstance(save_every_steps, int) or save_every_steps < 1):
            raise ValueError(f"save_every_steps must be a positive integer or None, got {save_every_steps!r}")
        if save_every_seconds is not None and not (isinstance(save_every_seconds, (int, float))
                                                   and save_every_seconds > 0):
            raise ValueError(f"save_every_seconds must be a positive number or None, got {save_every_seconds!r}")
        if barrier_timeout_s is not None and not (isinstance(barrier_timeout_s, int) and barrier_timeout_s > 0):
            raise ValueError(f"barrier_timeout_s must be a positive integer or None, got {barrier_timeout_s!r}")
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive integer, got {max_to_keep!r}")
        self.directory = pathlib.Path(directory).absolute()
        check_writable(self.directory)
        self.save_every_steps = save_every_steps
        self.save_every_seconds = save_every_seconds
        self.save_every_epoch = save_every_epoch
        self.resume = bool(resume)
        self.config = dict(config or {})
        self._last_saved_step: int | None = None
        self._last_saved_time = time.monotonic()
        self._in_flight: tuple[int, str | None] | None = None   # (step, Orbax operation id) of the pending save
        self._failure: CheckpointWriteError | None = None
        self._closed = False
        ocp = _orbax()
        async_options = None if barrier_timeout_s is None else ocp.AsyncOptions(timeout_secs=int(barrier_timeout_s))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
                                               async_options=async_options)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._quiet = bool(quiet_failed_saves)
        if self._quiet:
            _QUIET.enter()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def due(self, step: int, *, end_of_epoch: bool = False) -> bool:
        """Whether a save is due at ``step``: an epoch ended (if saving per epoch),
        ``save_every_steps`` steps passed since the last save, or
        ``save_every_seconds`` seconds (wall clock) since the last save or, before
        any, since this checkpointer was made."""
        if step == self._last_saved_step:
            return False
        if end_of_epoch and self.save_every_epoch:
            return True
        if self.save_every_seconds is not None and self._seconds_passed():
            return True
        if self.save_every_steps is None:
            return False
        last = self._last_saved_step or 0
        return step // self.save_every_steps > last // self.save_every_steps

    def _seconds_passed(self) -> bool:
        passed = time.monotonic() - self._last_saved_time >= self.save_every_seconds
        if jax.process_count() > 1:   # every process must save at the same step: process 0's clock decides
            from jax.experimental import multihost_utils

            passed = bool(multihost_utils.broadcast_one_to_all(np.asarray(passed)))
        return passed

    def save(self, state: TrainState, progress: Progress) -> None:
        """Start an asynchronous save of ``state`` at its step (``wait`` to finish).

        Raises `CheckpointWriteError` if the previous save failed, or the
        directory can no longer be written."""
        step = int(state.step)
        self.wait()   # Orbax waits for the previous save anyway; its failure is named here
        try:
            check_writable(self.directory)
        except CheckpointWriteError as error:
            raise self._failed(step, error, None) from None
        meta = {"progress": [int(progress.epoch), int(progress.position), float(progress.loss_sum),
                             float(progress.accuracy_sum), progress.data_state],
                "config": self.config, "fingerprint": fingerprint(state)}
        ocp = _orbax()
        try:
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_snapshot(state)),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as error:
            raise self._failed(step, error, _operation_id()) from None
        self._in_flight = (step, _operation_id())
        self._last_saved_step = step
        self._last_saved_time = time.monotonic()

    def _failed(self, step: int, error: BaseException, operation_id: str | None) -> CheckpointWriteError:
        """The one error for the failed save of ``step``: Orbax's threads waiting on
        it released, its partial folder removed, the last complete checkpoint named."""
        _release_waiting_threads(operation_id)
        if jax.process_index() == 0:
            for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        complete = self.complete_steps()
        kept = (f"the last complete checkpoint, step {complete[-1]} ({self.directory / str(complete[-1])}), "
                "is intact" if complete else "no checkpoint there is complete")
        reason = str(error) if isinstance(error, CheckpointWriteError) else _reason(error)
        self._failure = CheckpointWriteError(f"checkpoint of step {step} could not be saved in {self.directory}: "
                                             f"{reason}; {kept}")
        self._in_flight = None
        return self._failure

    def steps(self) -> list[int]:
        """The saved steps, oldest first (waits for nothing; a save in flight is not listed)."""
        return sorted(self._manager.all_steps(read=True))

    def complete_steps(self) -> list[int]:
        """The steps whose checkpoint folder is complete, read from the directory alone
        (Orbax renames a step's temporary folder to the step number once every
        process has written its part): safe to call when a save cannot finish."""
        if not self.directory.is_dir():
            return []
        return sorted(int(path.name) for path in self.directory.iterdir() if path.name.isdigit() and path.is_dir())

    def restore_latest(self, state: TrainState) -> tuple[TrainState, Progress] | None:
        """The newest readable checkpoint restored into ``state``'s structure, with its
        `Progress`; None when there is none. Unreadable ones are skipped with a warning;
        one of another model or optimizer raises `CheckpointMismatchError`."""
        self.wait()
        ocp = _orbax()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
        expected = fingerprint(state)
        for step in reversed(self.steps()):
            try:
                meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as error:  # a damaged checkpoint can fail in many ways
                warnings.warn(f"checkpoint {self.directory / str(step)} is unreadable ({error!r}); "
                              "trying the one before", RuntimeWarning, stacklevel=2)
                continue
            if meta.get("fingerprint") != expected:
                saved = meta.get("fingerprint", {})
                differs = [part for part in ("model", "params", "opt_state", "model_state")
                           if saved.get(part) != expected.get(part)]
                shapes = ""
                if "params" in differs and saved.get("model") == expected["model"]:
                    shapes = (f" (the same net with other layer shapes: saved {saved.get('params')}, "
                              f"this run's {expected['params']})")
                raise CheckpointMismatchError(
                    f"checkpoint {self.directory / str(step)} was written for model "
                    f"{saved.get('model')!r} with optimizer state {saved.get('opt_state')}, not for this "
                    f"run's model {expected['model']!r} with {expected['opt_state']}; they differ in "
                    f"{', '.join(differs)}{shapes}; use another checkpoint directory or start without resuming")
            try:
                arrays = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
            except Exception as error:
                warnings.warn(f"checkpoint {self.directory / str(step)} is unreadable ({error!r}); "
                              "trying the one before", RuntimeWarning, stacklevel=2)
                continue
            self._last_saved_step = step
            self._last_saved_time = time.monotonic()
            restored = state.replace(
                step=arrays["step"], params=arrays["params"], opt_state=arrays["opt_state"],
                rng=jax.random.wrap_key_data(arrays["rng"], impl=jax.random.key_impl(state.rng)),
                model_state=arrays.get("model_state", state.model_state))
            return restored, Progress(*meta["progress"])
        return None

    def saved_config(self) -> dict | None:
        """The config saved with the newest checkpoint, or None."""
        steps = self.steps()
        if not steps:
            return None
        ocp = _orbax()
        return self._manager.restore(steps[-1], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]["config"]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk; raises
        `CheckpointWriteError` if one failed (again at every call after)."""
        if self._failure is not None:
            raise self._failure
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            step, operation_id = self._in_flight or (self._last_saved_step, None)
            raise self._failed(step, error, operation_id) from None
        self._in_flight = None

    def close(self) -> None:
        """Wait for pending saves and release Orbax's manager. After a failed save
        it releases the manager without waiting, and raises nothing more than
        the `CheckpointWriteError` already raised."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self.wait()
                self._manager.close()
            # After a failure Orbax's manager is left as it is: closing it shuts the event
            # loops that TensorStore's pending writes still report to.
        finally:
            self._closed = True
            if self._quiet:
                _QUIET.exit()


def _operation_id() -> str | None:
    """Orbax's id of the save just started (its signals are keyed by it)."""
    try:
        from orbax.checkpoint._src.futures import synchronization

        return synchronization.OperationIdGenerator.get_current_operation_id()
    except Exception:  # noqa: BLE001 (another Orbax: nothing to release then)
        return None


def _release_waiting_threads(operation_id: str | None) -> None:
    """Set every signal of a failed save's operation, so that Orbax's commit threads
    waiting on them (for ``coordination_timeout()``, 300 s: a failed mkdir never
    sends "step directory created") stop waiting, fail on the missing folder and
    end; then wait for them, at most `RELEASE_TIMEOUT_S`. Orbax sets them itself
    only on success or cancellation."""
    if operation_id is None:
        return
    try:
        from orbax.checkpoint._src.futures import future

        signals = future.AwaitableSignalsContract.get_awaitable_signals_from_contract(operation_id)
        future.set_signals(signals, operation_id=operation_id)
    except Exception:  # noqa: BLE001 (best effort: the error is raised either way)
        return
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
            threading.Thread.join(thread, max(deadline - time.monotonic(), 0.0))
