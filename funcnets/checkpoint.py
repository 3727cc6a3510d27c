"""Checkpoints on Orbax's ``CheckpointManager``, with what an exact resume needs.

>>> ckpt = fn.checkpoint.Checkpointer("checkpoints/my_run", save_every_steps=500, resume=True)  # doctest: +SKIP
>>> ckpt.save(state, fn.checkpoint.Progress(epoch=0, position=500))                 # doctest: +SKIP
>>> state, progress = ckpt.restore_latest(state)                                    # doctest: +SKIP

A checkpoint holds the train state's arrays (``step``, ``params``,
``opt_state``, the dropout key as key data) and, as JSON, the `Progress`
(epoch, batches done in it), the run's config, and a fingerprint of the model
and optimizer state so that a checkpoint of another model or optimizer is
refused. Saves are asynchronous; `Checkpointer.close` (or leaving its ``with``
block) waits for them. Orbax writes each step to a temporary folder and
renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest; a checkpoint that is there but unreadable is skipped
with a warning in favour of the one before.
"""

from __future__ import annotations

import os
import pathlib
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
    done), and the sums of those batches' losses and accuracies (so the epoch's
    means come out the same after a resume)."""

    epoch: int
    position: int
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0


class CheckpointMismatchError(ValueError):
    """The checkpoint was written for another model or optimizer."""


def default_directory(run_name: str) -> pathlib.Path:
    """``checkpoints/<run_name>``, relative to the working directory."""
    return DEFAULT_ROOT / run_name


def fingerprint(state: TrainState) -> dict[str, Any]:
    """What a checkpoint must match: model name, parameter shapes and dtypes, and the
    optimizer state's structure (its NamedTuple types name the optimizer's parts)."""
    return {
        "model": state.model.name,
        "params": jax.tree.map(lambda a: f"{a.dtype}{list(a.shape)}", state.params),
        "opt_state": str(jax.tree.structure(state.opt_state)),
    }


def _arrays(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": jax.random.key_data(state.rng)}


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

    In a multi-process run every process calls the same methods at the same
    steps (`funcnets.fit` does); Orbax writes each process's part, process 0
    the shared metadata, and publishes the step only when all are written.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every_steps: int | None = None,
                 save_every_seconds: float | None = None, save_every_epoch: bool = True,
                 max_to_keep: int = 3, config: dict | None = None, barrier_timeout_s: int | None = None,
                 resume: bool = False):
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
        self.save_every_steps = save_every_steps
        self.save_every_seconds = save_every_seconds
        self.save_every_epoch = save_every_epoch
        self.resume = bool(resume)
        self.config = dict(config or {})
        self._last_saved_step: int | None = None
        self._last_saved_time = time.monotonic()
        ocp = _orbax()
        async_options = None if barrier_timeout_s is None else ocp.AsyncOptions(timeout_secs=int(barrier_timeout_s))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
                                               async_options=async_options)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

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
        """Start an asynchronous save of ``state`` at its step (``wait`` to finish)."""
        step = int(state.step)
        meta = {"progress": [int(progress.epoch), int(progress.position), float(progress.loss_sum),
                             float(progress.accuracy_sum)],
                "config": self.config, "fingerprint": fingerprint(state)}
        ocp = _orbax()
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_snapshot(state)),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self._last_saved_step = step
        self._last_saved_time = time.monotonic()

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
                differs = [part for part in ("model", "params", "opt_state") if saved.get(part) != expected[part]]
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
                rng=jax.random.wrap_key_data(arrays["rng"], impl=jax.random.key_impl(state.rng)))
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
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()
