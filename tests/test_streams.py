"""fit, train_epoch and evaluate over streams (`funcnets.streams`): plain iterables,
functions of the epoch, Grain datasets and loaders, torch DataLoaders (`from_torch`);
the same numbers as the arrays path on the same batches; Grain's exact resume; the
restart-with-a-warning of a stream without state; and bad streams."""

import grain
import jax
import numpy as np
import pytest

import funcnets as fn

N, BATCH = 200, 64


@pytest.fixture(scope="module")
def digits():
    split = fn.data.load("digits", "train")
    return fn.data.normalize(split.images, split.info)[:N], split.labels[:N]


def _fresh():
    return fn.create_train_state(fn.models.get("mnist_mlp", n_hidden=16), fn.optim.sgd(lr=0.1, momentum=0.9),
                                 jax.random.key(0))


def _order(epoch):
    """The order `fit` visits epoch ``epoch`` of the arrays path in (rng key 1)."""
    return np.asarray(fn.training.epoch_order(N, jax.random.fold_in(jax.random.key(1), epoch)))


def _batches(x, y, epoch):
    order = _order(epoch)
    return [(x[order[i:i + BATCH]], y[order[i:i + BATCH]]) for i in range(0, N, BATCH)]   # the last one ragged


RUN = dict(epochs=2, rng=jax.random.key(1), log_every=2, report=fn.loop.Report.silent())


def _same(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_every_kind_of_stream_trains_as_the_arrays_path(digits):
    x, y = digits
    reference, history = fn.fit(_fresh(), (x, y), (x, y), batch_size=BATCH, **RUN)
    grain_epochs = lambda e: grain.MapDataset.range(N).map(lambda i, o=_order(e): (x[o[i]], y[o[i]])).batch(BATCH)  # noqa: E731
    streams = {
        "function of the epoch": lambda e: _batches(x, y, e),
        "grain MapDataset": grain_epochs,
        "dict batches": lambda e: [{"image": images, "label": labels} for images, labels in _batches(x, y, e)],
    }
    for name, stream in streams.items():
        state, got = fn.fit(_fresh(), stream, (x, y), **RUN)
        _same(reference.params, state.params)
        keep = ("loss", "accuracy", "test_loss", "test_accuracy", "step", "lr")
        assert [{k: h[k] for k in keep} for h in got] == [{k: h[k] for k in keep} for h in history], name
    # a test stream, train_epoch and evaluate over streams
    state, _ = fn.fit(_fresh(), lambda e: _batches(x, y, e), lambda e: _batches(x, y, 0), **RUN)
    assert fn.evaluate(state, _batches(x, y, 0)) == pytest.approx(fn.evaluate(state, x, y), rel=1e-6)
    by_stream, metrics = fn.train_epoch(_fresh(), _batches(x, y, 0))
    by_arrays, _ = fn.train_epoch(_fresh(), x[_order(0)], y[_order(0)], batch_size=BATCH)
    _same(by_stream.params, by_arrays.params)
    assert metrics["loss"].shape == (4,)


def test_a_torch_dataloader_through_from_torch_gives_pytorchs_batches(digits):
    torch = pytest.importorskip("torch")
    x, y = digits
    from torch.utils.data import DataLoader, TensorDataset

    orders = [_order(0), _order(1)]
    sampler = fn.parity.EpochOrder(orders)
    loader = DataLoader(TensorDataset(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)),
                        batch_size=BATCH, sampler=sampler)
    stream = fn.data.from_torch(loader)
    assert "batch 64" in stream.describe() and "drop_last=False" in stream.describe()
    reference, history = fn.fit(_fresh(), (x, y), batch_size=BATCH, **RUN)

    def epochs(e):
        sampler.set_epoch(e)
        return stream

    state, got = fn.fit(_fresh(), epochs, **RUN)
    _same(reference.params, state.params)
    assert [h["loss"] for h in got] == [h["loss"] for h in history]


def _grain_stream(x, y):
    return lambda e: grain.MapDataset.range(N).map(lambda i, o=_order(e): (x[o[i]], y[o[i]])).batch(BATCH)


class _Interrupt(Exception):
    pass


def test_a_grain_stream_resumes_exactly_mid_epoch(digits, tmp_path):
    """A run stopped after step 6 (a checkpoint at step 4, mid-epoch 2) and resumed
    ends as the run that never stopped: Grain's iterator state is in the checkpoint."""
    x, y = digits
    straight, history = fn.fit(_fresh(), _grain_stream(x, y), **{**RUN, "epochs": 3})

    def failing(e):
        source = _grain_stream(x, y)(e)
        if e < 1:
            return source
        return grain.MapDataset.range(len(source)).map(
            lambda i: source[i] if i < 2 else (_ for _ in ()).throw(_Interrupt("killed")))

    with fn.checkpoint.Checkpointer(tmp_path, save_every_steps=2) as ckpt:
        with pytest.raises(fn.streams.StreamError, match="raised _Interrupt making batch 3 of epoch 2"):
            fn.fit(_fresh(), failing, **{**RUN, "epochs": 3}, checkpointer=ckpt)
        ckpt.wait()
        assert ckpt.steps()[-1] == 6
    with fn.checkpoint.Checkpointer(tmp_path, save_every_steps=2, resume=True) as ckpt:
        resumed, again = fn.fit(_fresh(), _grain_stream(x, y), **{**RUN, "epochs": 3}, checkpointer=ckpt)
    _same(straight.params, resumed.params)
    assert [h["loss"] for h in again] == [h["loss"] for h in history[1:]]


@pytest.mark.slow   # CI runs the slow tests
def test_a_stream_without_state_restarts_the_epoch_and_says_so(digits, tmp_path):
    x, y = digits

    def failing(e):
        for index, batch in enumerate(_batches(x, y, e)):
            if e == 1 and index == 2:
                raise _Interrupt("killed")
            yield batch

    with fn.checkpoint.Checkpointer(tmp_path, save_every_steps=2) as ckpt:
        with pytest.raises(fn.streams.StreamError, match="making batch 3 of epoch 2"):
            fn.fit(_fresh(), failing, **RUN, checkpointer=ckpt)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_steps=2, resume=True) as ckpt:
        with pytest.warns(RuntimeWarning, match="cannot be checkpointed .* epoch 2 restarts from its first batch"):
            state, history = fn.fit(_fresh(), lambda e: _batches(x, y, e), **RUN, checkpointer=ckpt)
    assert len(history) == 1 and int(state.step) == 6 + 4   # the 2 steps of epoch 2 taken before stay


def test_bad_streams_are_named_before_their_step(digits):
    x, y = digits
    changing = [(x[:64], y[:64]), (x[:32, :14], y[:32])]
    with pytest.raises(fn.streams.StreamError, match=r"batch 2 of epoch 1 has images \(32, 14, 28, 1\)"):
        fn.fit(_fresh(), changing, **RUN)
    with pytest.raises(fn.streams.StreamError, match=r"batch 1 has images \(64, 28, 28, 1\) and labels \(60,\)"):
        fn.fit(_fresh(), [(x[:64], y[:60])], **RUN)
    with pytest.raises(fn.streams.StreamError, match="gave no batch in epoch 1"):
        fn.fit(_fresh(), [], **RUN)
    with pytest.raises(fn.streams.StreamError, match="batch 1 of epoch 1 has 64 examples, but batch_size=32"):
        fn.fit(_fresh(), [(x[:64], y[:64])], batch_size=32, **RUN)
    with pytest.raises(fn.streams.StreamError, match=r"batch 1 of epoch 1: .*images must have shape"):
        fn.fit(_fresh(), [(x[:64, :20], y[:64])], **RUN)

    def broken():
        yield x[:64], y[:64]
        raise OSError("disk gone")

    class Broken:
        def __iter__(self):
            return broken()

    state = _fresh()
    with pytest.raises(fn.streams.StreamError, match="raised OSError making batch 2 of epoch 1: disk gone"):
        fn.fit(state, Broken(), **RUN)
    with pytest.raises(TypeError, match="train must be a stream .* or a pair of arrays"):
        fn.streams.Stream(3)


def test_grains_unparsed_flag_error_is_named_with_its_fix(digits):
    """Grain 0.2.18's worker processes outside absl.app (google/grain#1355): fit says what to do."""
    x, y = digits

    class UnparsedFlagAccessError(Exception):   # absl's, as Grain raises it
        pass

    def workers():
        raise UnparsedFlagAccessError("Trying to access flag --grain_enable_multiprocess_worker_profiling "
                                      "before flags were parsed.")
        yield x[:64], y[:64]

    with pytest.raises(fn.streams.StreamError, match=r"making batch 1 of epoch 1: .*allow_grain_workers\(\)"):
        fn.fit(_fresh(), lambda e: workers(), **RUN)
