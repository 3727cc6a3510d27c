"""One process of the 2-process data-parallel run of tests/test_parallel.py.

Started twice, with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES=2`` and
``JAX_PROCESS_ID`` set. Each process loads only its shard of the digits, trains
`STEPS` steps of SGD on global batches of `GLOBAL_BATCH` (its own `LOCAL_BATCH`
rows each), then runs `fit` over a mesh spanning both processes, and an epoch on
the per-step loop path (the CNNs' path on the CPU) with `evaluate`, `fit`
of a batch-norm net (its running statistics from the global batches), and `fit`
over a stream whose batches each process reads half of (`stream_batches`), and writes
the resulting params and metrics to ``<out>/process<id>.npz``.
"""

import sys

import jax
import numpy as np

import funcnets as fn

STEPS = 5
GLOBAL_BATCH = 32
LOCAL_BATCH = GLOBAL_BATCH // 2
FIT_EXAMPLES = 256


def state_for_run():
    return fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.01), jax.random.key(0))


def bn_state_for_run():
    """A net with model state: batch norm's running statistics."""
    L = fn.layers
    model = fn.models.sequential(L.Flatten(), ("fc1", L.Linear(784, 32)), ("bn1", L.BatchNorm1d(32)), L.ReLU(),
                                 ("fc2", L.Linear(32, 10)), input_shape=(28, 28, 1), name="bn_mlp")
    return fn.create_train_state(model, fn.optim.sgd(lr=0.01), jax.random.key(0))


def local_batches(split):
    images = fn.data.normalize(split.images, split.info)
    for k in range(STEPS):
        rows = slice(k * LOCAL_BATCH, (k + 1) * LOCAL_BATCH)
        yield images[rows], split.labels[rows]


def fit_split():
    whole = fn.data.load("digits", "train")
    return fn.data.normalize(whole.images, whole.info)[:FIT_EXAMPLES], whole.labels[:FIT_EXAMPLES]


def fit_run(state, mesh=None):
    state, history = fn.fit(state, fit_split(), epochs=1, batch_size=GLOBAL_BATCH, rng=jax.random.key(3),
                            report=fn.loop.Report.silent(), mesh=mesh)
    return state, history


def loop_epoch_run(state, mesh=None):
    """One epoch on the per-step loop path (the CNNs' path on the CPU), then
    `evaluate`, over `fit_split`: ``(state, per-step losses, evaluation)``."""
    images, labels = fit_split()
    state, metrics = fn.train_epoch(state, images, labels, batch_size=GLOBAL_BATCH, rng=jax.random.key(4),
                                    scan=False, mesh=mesh)
    return state, np.asarray(jax.device_get(metrics["loss"])), fn.evaluate(state, images, labels, batch_size=100,
                                                                           mesh=mesh)


def stream_batches(process: int = 0, processes: int = 1):
    """`fit_split` as a stream of global batches of `GLOBAL_BATCH` consecutive rows, each
    process given its own `GLOBAL_BATCH // processes` rows of every batch."""
    images, labels = fit_split()
    local = GLOBAL_BATCH // processes
    return [(images[k + process * local:k + (process + 1) * local], labels[k + process * local:k + (process + 1) * local])
            for k in range(0, FIT_EXAMPLES, GLOBAL_BATCH)]


def stream_run(state, mesh=None, process: int = 0, processes: int = 1):
    """`fit` over `stream_batches`: ``(state, history)``."""
    return fn.fit(state, stream_batches(process, processes), epochs=1, rng=jax.random.key(3),
                  report=fn.loop.Report.silent(), mesh=mesh)


def _host(tree):
    return {name: {k: np.asarray(v.addressable_data(0)) for k, v in layer.items()} for name, layer in tree.items()}


def main(out: str) -> None:
    info = fn.parallel.initialize()
    assert info.num_processes == 2 and len(info.devices) == 2, info
    mesh = fn.parallel.data_mesh()
    state = fn.parallel.replicate(state_for_run(), mesh)
    shard = fn.data.load("digits", "train", shard=fn.parallel.process_shard())
    for batch in local_batches(shard):
        state, metrics = fn.train_step(state, fn.parallel.shard_batch(batch, mesh))
    fitted, history = fit_run(state_for_run(), mesh)
    looped, loop_losses, evaluation = loop_epoch_run(state_for_run(), mesh)
    normed, _ = fit_run(bn_state_for_run(), mesh)
    streamed, stream_history = stream_run(state_for_run(), mesh, info.process_id, info.num_processes)
    arrays = {f"step/{name}/{k}": v for name, layer in _host(state.params).items() for k, v in layer.items()}
    arrays.update({f"fit/{name}/{k}": v for name, layer in _host(fitted.params).items() for k, v in layer.items()})
    arrays.update({f"loop/{name}/{k}": v for name, layer in _host(looped.params).items() for k, v in layer.items()})
    arrays.update({f"stream/{name}/{k}": v for name, layer in _host(streamed.params).items()
                   for k, v in layer.items()})
    arrays.update({f"bn/{name}/{k}": v for tree in (normed.params, normed.model_state)   # params, running stats
                   for name, layer in _host(tree).items() for k, v in layer.items()})
    np.savez(f"{out}/process{info.process_id}.npz", rows=len(shard.labels), fit_loss=history[-1]["loss"],
             stream_loss=stream_history[-1]["loss"],
             loop_losses=loop_losses, eval_loss=evaluation["loss"], eval_accuracy=evaluation["accuracy"], **arrays)
    fn.parallel.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
