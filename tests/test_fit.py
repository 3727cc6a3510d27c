"""Epochs, evaluate, fit, checkpoints and exact resume after SIGKILL."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn
from funcnets.training import batch_index, epoch_order

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    train, test = fn.data.load("digits", "train"), fn.data.load("digits", "test")
    return (fn.data.normalize(train.images, train.info), train.labels,
            fn.data.normalize(test.images, test.info), test.labels)


def _state(name="mnist_mlp", tx=None):
    return fn.create_train_state(fn.models.get(name), tx or fn.optim.sgd(lr=0.05), jax.random.key(0))


def test_batches_follow_dataloader():
    order = epoch_order(10, None)
    parts = batch_index(order, 4)
    assert [p.shape for p in parts] == [(2, 4), (1, 2)]
    assert [p.shape for p in batch_index(order, 4, drop_last=True)] == [(2, 4)]
    shuffled = epoch_order(10, jax.random.key(0))
    assert sorted(np.asarray(shuffled).tolist()) == list(range(10))
    assert np.array_equal(shuffled, epoch_order(10, jax.random.key(0)))


@pytest.mark.parametrize("scan", [True, False])
def test_train_epoch_equals_the_same_steps_one_by_one(scan):
    """A whole epoch (scan or loop) is the sequence of train_steps on DataLoader's batches."""
    x = jax.random.normal(jax.random.key(0), (70, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (70,), 0, 10)
    by_step = _state()
    order = np.asarray(epoch_order(70, jax.random.key(2)))
    losses = []
    for start in range(0, 70, 32):
        rows = order[start:start + 32]
        by_step, metrics = fn.train_step(by_step, (x[rows], y[rows]))
        losses.append(float(metrics["loss"]))
    state, metrics = fn.train_epoch(_state(), x, y, batch_size=32, rng=jax.random.key(2), scan=scan)
    assert int(state.step) == 3 and metrics["loss"].shape == (3,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=2e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(by_step.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    dropped, _ = fn.train_epoch(_state(), x, y, batch_size=32, rng=jax.random.key(2), drop_last=True)
    assert int(dropped.step) == 2


def test_runs_padded_to_one_length_are_the_same_steps():
    """run_steps(length=L): one program for every run of up to L steps, the same steps as a scan."""
    x = jax.random.normal(jax.random.key(0), (90, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (90,), 0, 10)
    index = np.asarray(epoch_order(90, jax.random.key(2)))[:80].reshape(5, 16)
    scanned, by_scan = fn.training.run_steps(_state(), x, y, index[:3], scan=True)
    padded, by_loop = fn.training.run_steps(_state(), x, y, index[:3], scan=True, length=5)
    assert by_loop["loss"].shape == (3,) and int(padded.step) == 3
    np.testing.assert_allclose(by_loop["loss"], by_scan["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(padded.params), jax.tree.leaves(scanned.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="length must be an integer >= the index's 3 rows"):
        fn.training.run_steps(_state(), x, y, index[:3], scan=True, length=2)


def test_a_transform_normalises_uint8_splits_inside_the_step():
    """train_epoch, evaluate and fit on uint8 splits with Normalize: the steps of the normalised floats."""
    train, test = fn.data.load("digits", "train"), fn.data.load("digits", "test")
    transform = fn.data.Normalize.of(train.info)
    floats = (fn.data.normalize(train.images[:200], train.info), train.labels[:200])
    loaded = (train.images[:200], train.labels[:200])
    by_floats, m_floats = fn.train_epoch(_state(), *floats, batch_size=64, rng=jax.random.key(2))
    by_loaded, m_loaded = fn.train_epoch(_state(), *loaded, batch_size=64, rng=jax.random.key(2),
                                         transform=transform)
    np.testing.assert_allclose(m_loaded["loss"], m_floats["loss"], rtol=1e-6)
    scores = fn.evaluate(by_loaded, test.images, test.labels, batch_size=100, transform=transform)
    expected = fn.evaluate(by_floats, fn.data.normalize(test.images, test.info), test.labels, batch_size=100)
    assert scores["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    _, history = fn.fit(_state(), loaded, (test.images, test.labels), epochs=1, batch_size=64,
                        rng=jax.random.key(3), transform=transform, report=fn.loop.Report.silent())
    _, expected_history = fn.fit(_state(), floats, (fn.data.normalize(test.images, test.info), test.labels),
                                 epochs=1, batch_size=64, rng=jax.random.key(3), report=fn.loop.Report.silent())
    assert history[0]["loss"] == pytest.approx(expected_history[0]["loss"], rel=1e-6)
    assert history[0]["test_accuracy"] == expected_history[0]["test_accuracy"]


def test_a_bad_transform_is_named_before_any_step():
    images, labels = fn.data.load("digits", "test")[:2]
    transform = fn.data.Normalize.of(fn.data.load("digits", "test").info)
    with pytest.raises(TypeError, match="uint8 images as loaded"):
        fn.train_epoch(_state(), images.astype(np.float32), labels, batch_size=32, transform=transform)
    with pytest.raises(TypeError, match="transform must be hashable"):
        fn.train_epoch(_state(), images, labels, batch_size=32, transform=[transform])
    with pytest.raises(ValueError, match=r"transform\(images\) must have shape"):
        fn.evaluate(_state(), images, labels, transform=lambda x: x[:, :2].astype(np.float32))


def test_fit_lowers_each_program_once(digits, caplog):
    """The programs fit compiles ahead (the ragged last batch, the evaluation) are the
    ones it then runs: each is traced and lowered once, and the chunks of every
    length share one program."""
    x, y, tx, ty = digits
    jax.clear_caches()
    model = fn.models.get("mnist_mlp", n_hidden=23)   # shapes no other test compiles
    state = fn.create_train_state(model, fn.optim.sgd(lr=0.05), jax.random.key(0))
    jax.config.update("jax_log_compiles", True)   # globally: the compile-ahead thread logs too
    try:
        with caplog.at_level("WARNING"):
            fn.fit(state, (x[:150], y[:150]), (tx[:70], ty[:70]), epochs=2, batch_size=32, log_every=3,
                   test_batch_size=32, rng=jax.random.key(1), report=fn.loop.Report.silent())
    finally:
        jax.config.update("jax_log_compiles", False)
    lowered = [r.getMessage() for r in caplog.records if "jaxpr to MLIR module conversion" in r.getMessage()]
    assert sum("jit(_loop_steps)" in m for m in lowered) == 2, lowered    # batches of 32, and the last 22
    assert sum("jit(_eval_split)" in m for m in lowered) == 1, lowered


def test_evaluate_is_exact_over_a_ragged_last_batch(digits):
    x, y = digits[2][:250], digits[3][:250]
    state = _state()
    whole = fn.eval_step(state, (jnp.asarray(x), jnp.asarray(y)))
    batched = fn.evaluate(state, x, y, batch_size=64)  # 3 x 64 + 58
    correct = np.argmax(np.asarray(state.model.apply(state.params, jnp.asarray(x))), -1) == y
    assert batched["accuracy"] == correct.sum() / 250  # exact, in float64
    assert batched["loss"] == pytest.approx(float(whole["loss"]), rel=1e-6)


def test_epoch_functions_reject_bad_arguments(digits):
    x, y = digits[0][:10], digits[1][:10]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fn.train_epoch(_state(), x, y, batch_size=0)
    with pytest.raises(TypeError, match="labels must be integer"):
        fn.evaluate(_state(), x, y.astype(np.float32))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fn.fit(_state(), (x, y), epochs=0, batch_size=4, rng=jax.random.key(0))
    with pytest.raises(TypeError, match=r"'resume'; it is now fn.checkpoint.Checkpointer\(directory, resume=True\)"):
        fn.fit(_state(), (x, y), epochs=1, batch_size=4, rng=jax.random.key(0), resume=True)
    with pytest.raises(TypeError, match=r"'metrics_path'; it is now report=fn.loop.Report\(metrics_path=...\)"):
        fn.fit(_state(), (x, y), epochs=1, batch_size=4, rng=jax.random.key(0), metrics_path="m.jsonl")
    dataset = fn.data.load("digits", "test")
    with pytest.raises(TypeError, match=r"train must be a pair \(images, labels\) \(from a funcnets.data.Dataset"):
        fn.fit(_state(), dataset, epochs=1, batch_size=4, rng=jax.random.key(0))


def test_fit_learns_logs_and_writes_metrics(digits, tmp_path):
    lines = []
    state, history = fn.fit(_state(), digits[:2], digits[2:], epochs=2, batch_size=64, rng=jax.random.key(1),
                            log_every=10,
                            report=fn.loop.Report(tmp_path / "m.jsonl", progress=False, log=lines.append))
    assert int(state.step) == 2 * 23
    assert lines[0].startswith("Epoch 1/2 - Training loss: ") and "Test accuracy: " in lines[1]
    assert history[1]["test_accuracy"] > 0.8 and history[1]["loss"] < history[0]["loss"]
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [10, 20, 22, 23, 33, 43, 45, 46]  # the ragged batch is its own chunk
    assert all({"step", "epoch", "loss", "accuracy", "lr", "seconds"} <= set(r) for r in records)
    assert {r["lr"] for r in records} == {0.05}   # read from the optimizer state, shown as PyTorch shows it
    assert records[-1] == {**history[1], "kind": "epoch"}


def test_fit_is_reproducible_bit_for_bit(digits):
    runs = [fn.fit(_state(), digits[:2], epochs=2, batch_size=100, rng=jax.random.key(3),
                   report=fn.loop.Report.silent())[0] for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    images, labels = digits[0].copy(), digits[1]
    rng = jax.random.key(0)
    order = np.asarray(epoch_order(len(labels), jax.random.fold_in(rng, 0)))
    images[order[7 * 64]] = np.nan  # lands in the 8th batch of the first epoch
    with fn.checkpoint.Checkpointer(tmp_path / "ck", save_every_steps=5) as ckpt:
        with pytest.raises(fn.NonFiniteLossError,
                           match=r"loss became nan at step 8 \(epoch 1, batch 8\).*last good checkpoint is step 5"):
            fn.fit(_state(), (images, labels), epochs=3, batch_size=64, rng=rng, log_every=5,
                   checkpointer=ckpt, report=fn.loop.Report.silent())
        assert ckpt.steps() == [5]
        restored, progress = ckpt.restore_latest(_state())
    assert progress.position == 5
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def test_checkpoint_round_trip_keeps_optimizer_state_and_key(tmp_path):
    state = _state(tx=fn.optim.adam(lr=1e-3, amsgrad=True))
    x, y = jnp.ones((8, 28, 28, 1)), jnp.zeros((8,), jnp.int32)
    state, _ = fn.train_step(state, (x, y))
    with fn.checkpoint.Checkpointer(tmp_path, config={"lr": 1e-3}) as ckpt:
        ckpt.save(state, fn.checkpoint.Progress(epoch=0, position=1))
    with fn.checkpoint.Checkpointer(tmp_path) as ckpt:
        fresh = _state(tx=fn.optim.adam(lr=1e-3, amsgrad=True))
        restored, progress = ckpt.restore_latest(fresh)
        assert ckpt.saved_config() == {"lr": 1e-3}
    assert progress == fn.checkpoint.Progress(0, 1) and int(restored.step) == 1
    assert type(restored.opt_state) is type(state.opt_state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert np.array_equal(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
                              jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b)


def test_checkpoint_of_another_model_or_optimizer_is_refused(tmp_path):
    with fn.checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(_state(), fn.checkpoint.Progress(0, 0))
        with pytest.raises(fn.checkpoint.CheckpointMismatchError, match="written for model 'mnist_mlp'"):
            ckpt.restore_latest(_state("simple_net"))
        with pytest.raises(fn.checkpoint.CheckpointMismatchError, match="optimizer state"):
            ckpt.restore_latest(_state(tx=fn.optim.adam()))
        wider = fn.create_train_state(fn.models.get("mnist_mlp", n_hidden=200), fn.optim.sgd(lr=0.05),
                                      jax.random.key(0))
        with pytest.raises(fn.checkpoint.CheckpointMismatchError,
                           match=r"differ in params \(the same net with other layer shapes"):
            ckpt.restore_latest(wider)


def test_a_corrupted_latest_checkpoint_is_skipped_with_a_warning(tmp_path):
    state = _state()
    x, y = jnp.ones((8, 28, 28, 1)), jnp.zeros((8,), jnp.int32)
    with fn.checkpoint.Checkpointer(tmp_path, save_every_steps=1) as ckpt:
        for position in (1, 2):
            state, _ = fn.train_step(state, (x, y))
            ckpt.save(state, fn.checkpoint.Progress(0, position))
    for data_file in (tmp_path / "2" / "state").rglob("*"):
        if data_file.is_file() and data_file.stat().st_size > 0 and "metadata" not in data_file.name:
            data_file.write_bytes(b"\0garbage")
    with fn.checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.warns(RuntimeWarning, match="unreadable"):
            restored, progress = ckpt.restore_latest(_state())
    assert int(restored.step) == 1 and progress.position == 1


def _run(out, model, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "resume_run.py"), str(out), model, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("model", [  # the scan path; batch norm's state; the per-step loop with dropout; Flax;
    # Linen with batch_stats, NNX and Equinox modules with batch norm and dropout (tests/module_nets.py);
    # a Grain stream, its iterator's state in the checkpoints
    pytest.param("mnist_mlp", marks=pytest.mark.slow), pytest.param("bn_mlp", marks=pytest.mark.slow), pytest.param("grain_mlp", marks=pytest.mark.slow), pytest.param("nnx_bn", marks=pytest.mark.slow), pytest.param("mnist_cnn", marks=pytest.mark.slow),
    pytest.param("flax_cnn", marks=pytest.mark.slow), pytest.param("linen_bn", marks=pytest.mark.slow),
    pytest.param("eqx_bn", marks=pytest.mark.slow)])
def test_sigkill_mid_training_then_resume_is_bit_identical(model, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = _run(straight, model)
    victim = _run(killed, model)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        steps = [p for p in (killed / "ckpt").glob("*") if p.name.isdigit()] if (killed / "ckpt").exists() else []
        if len(steps) >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed:\n" + victim.stdout.read()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "params.npz").exists()
    resumed = _run(killed, model, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "Resumed from step" in out, out
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    a, b = np.load(straight / "params.npz"), np.load(killed / "params.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

    def records(path):
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows]

    assert records(killed) == records(straight)


def test_scan_is_used_except_for_convolutions_on_cpu():
    from funcnets.training import uses_scan

    convolutional = {"mnist_cnn", "mastering_cnn", "cifar_cnn"}
    for name in fn.models.names():
        assert uses_scan(fn.models.get(name)) == (name not in convolutional or jax.default_backend() != "cpu")


@pytest.mark.parametrize("kwargs, match", [
    ({"metrics_path": 3}, "metrics_path must be a path or None"),
    ({"progress": "yes"}, "progress must be True or False"),
    ({"step_losses": 1}, "step_losses must be True or False"),
    ({"log": "stdout"}, "log must be a function"),
])
def test_report_rejects_bad_settings_when_made(kwargs, match):
    with pytest.raises(TypeError, match=match):
        fn.loop.Report(**kwargs)
