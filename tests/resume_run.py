"""A small real training run for the exact-resume test: ``python tests/resume_run.py OUT MODEL [--resume]``.

Trains MODEL (a funcnets net, ``flax_cnn``: a Flax Linen CNN with dropout,
``bn_mlp``: an MLP with batch norm and dropout, one of module_nets.py's Linen, NNX
and Equinox CNNs with batch norm and dropout: ``linen_bn``, ``nnx_bn``, ``eqx_bn``, or
``grain_mlp``: the MLP trained from a Grain stream, its iterator checkpointed) on the bundled digits with checkpoints every 4 steps under OUT/ckpt,
metrics in OUT/metrics.jsonl, final params (and model state) in OUT/params.npz. Each epoch line
sleeps a little so that a test can kill the process while it trains.
"""

import sys
import time

import flax.linen as nn
import jax
import numpy as np

import funcnets as fn
import module_nets


class FlaxCNN(nn.Module):
    """A small Linen CNN with dropout, in Flax's MNIST-example conventions (``train``)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.Dropout(0.3, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.log_softmax(nn.Dense(10)(x))


def model_of(name: str):
    if name == "flax_cnn":
        return fn.models.from_flax(FlaxCNN(), input_shape=(28, 28, 1), outputs="log_probs")
    if name == "bn_mlp":   # model state: batch norm's running statistics, and dropout
        L = fn.layers
        return fn.models.sequential(L.Flatten(), ("fc1", L.Linear(784, 32)), ("bn1", L.BatchNorm1d(32)), L.ReLU(),
                                    L.Dropout(0.2), ("fc2", L.Linear(32, 10)), input_shape=(28, 28, 1), name=name)
    if name in module_nets.NAMES:
        return module_nets.model_of(name)
    if name == "grain_mlp":
        return fn.models.get("mnist_mlp")
    return fn.models.get(name)


def main(out: str, model_name: str, resume: bool) -> None:
    train, test = fn.data.load("digits", "train"), fn.data.load("digits", "test")
    n = 512 if model_name in ("mnist_cnn", "flax_cnn", *module_nets.NAMES) else len(train.labels)
    images = fn.data.normalize(train.images[:n], train.info)
    model = model_of(model_name)
    tx = fn.optim.adam(lr=1e-3)
    state = fn.create_train_state(model, tx, jax.random.key(0))

    def slow_log(line: str) -> None:
        print(line, flush=True)
        time.sleep(0.3)

    with fn.checkpoint.Checkpointer(f"{out}/ckpt", save_every_steps=4, max_to_keep=2, resume=resume,
                                    config={"model": model_name, "optimizer": "adam"}) as ckpt:
        labels = train.labels[:n]
        split = (images, labels)
        if model_name == "grain_mlp":   # a stream: each epoch a Grain dataset in its own order
            import grain

            split = lambda epoch: grain.MapDataset.range(n).shuffle(seed=epoch).map(  # noqa: E731
                lambda i: (images[i], labels[i])).batch(50)
        state, _ = fn.fit(state, split,
                          (fn.data.normalize(test.images, test.info), test.labels),
                          epochs=6, batch_size=50, rng=jax.random.key(1), log_every=2,
                          report=fn.loop.Report(metrics_path=f"{out}/metrics.jsonl", progress=False, log=slow_log),
                          checkpointer=ckpt)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path((state.params, state.model_state))}
    np.savez(f"{out}/params.npz", **flat)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--resume" in sys.argv[3:])
