"""Data-parallel training over devices and hosts, on JAX's own runtime.

Nothing about the model, the loss or the optimizer changes: data parallelism
is where the arrays live. ``jax.jit`` compiles for the shardings of its
inputs, so with

* the train state (params, optimizer state, dropout key) replicated over a
  one-axis mesh: ``NamedSharding(mesh, P())``, and
* each batch split along its first axis over that axis, ``"data"``:
  ``NamedSharding(mesh, P("data"))``,

the ordinary `funcnets.train_step` has every device compute the forward and
backward pass of its share of the batch, and XLA inserts the all-reduce of the
gradients. The loss is the mean over the *global* batch, so the gradient is the
one-device gradient, summed in a different order: the same up to float
reduction noise (see ``tests/test_parallel.py`` for the tolerances).

Two ways to feed it:

* Streaming, each process with only its own rows (any dataset size)::

      fn.parallel.initialize()                        # multi-host only
      mesh = fn.parallel.data_mesh()                  # every device of every process
      state = fn.parallel.replicate(state, mesh)
      shard = fn.data.load("mnist", "train", shard=fn.parallel.process_shard())
      for local_batch in ...:                         # global_batch / process_count rows
          state, metrics = fn.train_step(state, fn.parallel.shard_batch(local_batch, mesh))

* The whole split on every device (the tutorial datasets fit easily)::

      state, history = fn.fit(state, train, test, ..., mesh=mesh)

  `funcnets.train_epoch` and `funcnets.fit` take ``mesh=``: the split is
  replicated, and each step's example indices are sharded over ``"data"``, so
  the run visits exactly the batches of the one-device run. The batch size
  must divide by the number of devices (a clear error otherwise); the ragged
  last batch of an epoch, which need not divide, runs replicated (every device
  computes it whole), so no example is dropped.

Dropout masks do not depend on the sharding (JAX's partitionable threefry), so
dropout nets give the same masks on 1 or 8 devices.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
HEARTBEAT_TIMEOUT_S = 10   # a process silent this long is declared lost
SHUTDOWN_TIMEOUT_S = 30    # the longest a process waits for the others at exit


class PeerLostError(RuntimeError):
    """Another process of a multi-process run is gone (killed, crashed, or cut off):
    a collective or checkpoint barrier failed. The message names the step and the
    last complete checkpoint; restart every process to resume from it."""

_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_SLURM = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_LOCALID")


class ProcessInfo(NamedTuple):
    """Where this process stands: ``process_id`` of ``num_processes``, its
    ``local_devices`` and all ``devices`` (every process's)."""

    process_id: int
    num_processes: int
    local_devices: tuple
    devices: tuple


def _info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), tuple(jax.local_devices()),
                       tuple(jax.devices()))


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
               timeout_s: int = 300, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S, recoverable: bool = False) -> ProcessInfo:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    Each setting comes from, in order: the argument; the environment variables
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; then the cluster's own variables,
    which JAX reads itself (SLURM: ``SLURM_NTASKS``, ``SLURM_PROCID``, the first
    node of ``SLURM_STEP_NODELIST``; also Open MPI and Kubernetes jobs). With
    none of these set, this is a single-process run and nothing happens.

    Call it first, before anything runs on a device. On CPU the processes reduce
    over gloo (JAX's default CPU collectives). Returns `ProcessInfo`.

    A lost process: JAX's coordination service declares a process dead when
    its heartbeats stop for ``heartbeat_timeout_s`` (JAX's default is 100 s),
    and waits at most ``shutdown_timeout_s`` for the others at exit.
    ``recoverable=True`` also turns on ``jax_enable_recoverability`` (a
    process-wide JAX setting), so that the survivors see the loss as a Python
    exception in their next collective instead of a native abort at the
    heartbeat timeout: `funcnets.fit` raises it as `PeerLostError`. JAX's own
    shutdown then no longer waits for the other processes, so end such a run
    with `shutdown` (a barrier first), as the experiment scripts do.
    ``timeout_s``: how long to wait for every process to join.
    """
    if jax.distributed.is_initialized():
        return _info()
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = (address, count, index)
    slurm = all(name in os.environ for name in _SLURM) and (_env_int("SLURM_NTASKS") or 1) > 1
    if explicit == (None, None, None) and not slurm:
        return _info()
    if not slurm and None in explicit:
        missing = [name for name, value in zip(("coordinator_address", "num_processes", "process_id"), explicit)
                   if value is None]
        raise ValueError(f"a multi-process run needs coordinator_address, num_processes and process_id "
                         f"(arguments or {', '.join(_ENVIRONMENT)}); missing: {', '.join(missing)}")
    if count is not None and (count < 1 or index is not None and not 0 <= index < count):
        raise ValueError(f"process_id must lie in [0, num_processes): got process_id={index}, "
                         f"num_processes={count}")
    try:
        if recoverable:
            jax.config.update("jax_enable_recoverability", True)
        jax.distributed.initialize(address, count, index, local_device_ids=local_device_ids,
                                   initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat_timeout_s,
                                   shutdown_timeout_seconds=shutdown_timeout_s)
    except RuntimeError as error:
        if "before" in str(error):
            raise RuntimeError("funcnets.parallel.initialize() must run before anything uses a device "
                               "(call it first thing in the program)") from error
        raise
    return _info()


def shutdown() -> None:
    """End a multi-process run: every process waits for the others (a collective
    over all devices), then leaves JAX's distributed runtime. Needed after
    ``initialize(recoverable=True)``, where JAX's shutdown does not wait and a
    process that leaves first takes the coordination service with it; harmless
    otherwise, and a no-op in a single process."""
    if not jax.distributed.is_initialized():
        return
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("funcnets.parallel.shutdown")
        if jax.process_index() == 0 and jax.config.jax_enable_recoverability:   # else JAX's shutdown is a barrier
            _wait_for_peers_to_leave(range(1, jax.process_count()))
    jax.distributed.shutdown()


def _wait_for_peers_to_leave(process_ids, timeout_s: float = 10.0) -> None:
    """Process 0 holds the coordination service: in a recoverable run (where JAX's
    shutdown does not wait) it leaves after the others have disconnected (their
    shutdown needs the service), or after ``timeout_s``.
    (The service's live-task query blocks until each live task listed asks too,
    or leaves; the others are in their shutdown, so it returns as they leave.)"""
    from jax._src import distributed

    client = distributed.global_state.client
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if set(client.get_live_nodes([0, *process_ids])) <= {0}:
                return
        except Exception:  # noqa: BLE001 (an older jaxlib, or the service already gone: nothing to wait for)
            return
        time.sleep(0.05)


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` (default: every device of
    every process, ``jax.devices()``). Its axis is left to the compiler
    (``AxisType.Auto``): shardings propagate from the inputs."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def _check_mesh(mesh) -> int:
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.shape:
        raise TypeError(f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis "
                        f"(funcnets.parallel.data_mesh()), got {mesh!r}")
    return mesh.shape[DATA_AXIS]


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Axis 0 of an ``ndim``-dimensional array split over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def _place(leaf, sharding: NamedSharding):
    """``leaf``, the same value in every process, laid out as ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_place(jax.random.key_data(leaf), sharding),
                                        impl=jax.random.key_impl(leaf))
    # device_put cannot send one process's array to other processes' devices:
    # every process builds its own pieces from its (identical) host copy.
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree, mesh: Mesh):
    """``tree`` (a train state, a split) copied whole to every device of ``mesh``.

    In a multi-process run every process must pass the same values (as they are
    when built from the same seed)."""
    _check_mesh(mesh)
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: _place(leaf, sharding), tree)


def shard_batch(batch, mesh: Mesh):
    """This process's rows of a global batch -> global arrays split over ``"data"``.

    Every leaf of ``batch`` (e.g. ``(images, labels)``) holds this process's
    consecutive block of the global batch, whose size is the local size times
    the process count; process ``p``'s rows come ``p``-th. In a single process
    this is the whole batch. The local size must divide by this process's
    device count in ``mesh``.
    """
    size = _check_mesh(mesh)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch is empty")
    rows = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in leaves}
    if None in rows or len(rows) != 1:
        raise ValueError(f"every part of the batch needs the same number of rows, got shapes "
                         f"{[tuple(np.shape(leaf)) for leaf in leaves]}")
    (local_rows,) = rows
    if local_rows == 0 or local_rows % local_devices:
        raise ValueError(f"the batch ({local_rows} rows in this process) must split evenly over this "
                         f"process's {local_devices} of the mesh's {size} devices: use a batch size that "
                         f"divides by {local_devices} per process")
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(batch_sharded(mesh, np.ndim(leaf)), np.asarray(leaf)),
        batch)


def shard_rows(index: jax.Array, mesh: Mesh) -> jax.Array:
    """A ``(steps, batch)`` matrix of example indices (or one step's ``(batch,)``
    row) with its batch axis split over ``"data"``, or replicated when the batch
    does not divide by the device count (the ragged last batch of an epoch).
    ``index`` holds the same values in every process."""
    size = _check_mesh(mesh)
    leading = (None,) * (np.ndim(index) - 1)
    spec = PartitionSpec(*leading, DATA_AXIS) if np.shape(index)[-1] % size == 0 else PartitionSpec()
    return _place(index, NamedSharding(mesh, spec))


def check_batch_size(batch_size: int, mesh: Mesh, argument: str = "batch_size") -> None:
    """Raises when ``batch_size`` does not divide by the mesh's device count."""
    size = _check_mesh(mesh)
    if batch_size % size:
        raise ValueError(f"{argument} {batch_size} does not divide by the {size} devices of the mesh; "
                         f"data-parallel steps need a multiple of {size} (e.g. {size * max(1, batch_size // size)})")


def process_shard() -> tuple[int, int]:
    """``(process_id, num_processes)``: the shard of a split this process loads
    (``funcnets.data.load(..., shard=process_shard())``)."""
    return jax.process_index(), jax.process_count()
