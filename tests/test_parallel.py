"""Data parallel over devices and processes, process setup, shards, mixed precision.

The multi-device checks run in subprocesses: ``--xla_force_host_platform_device_count``
must be set before JAX starts and must not leak into the other tests.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnets as fn

TESTS = pathlib.Path(__file__).parent
sys.path.insert(0, str(TESTS))
import parallel_process  # noqa: E402


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    env.update(extra)
    return env


@pytest.mark.slow   # CI runs the slow tests (about a minute of subprocesses)
@pytest.mark.parametrize("inner_marks", ["not slow", "slow"])
def test_one_two_and_eight_devices_train_alike(inner_marks):
    """tests/parallel_devices.py, with 8 CPU devices; see its docstring for the tolerances.
    Its slow cases run with ``pytest -m slow``, as this file's do."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", inner_marks,
         str(TESTS / "parallel_devices.py")],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True, text=True, timeout=600, cwd=TESTS.parent, check=False)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(arrays, prefix):
    params = {}
    for key in arrays.files:
        if key.startswith(prefix + "/"):
            _, name, leaf = key.split("/")
            params.setdefault(name, {})[leaf] = arrays[key]
    return params


@pytest.mark.slow   # CI runs the slow tests
def test_two_processes_train_as_one_on_the_same_global_batches(tmp_path):
    """Two real processes on 127.0.0.1 (gloo collectives), each with only its half of
    the data, end with identical params, equal to one process on the global batches."""
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(TESTS / "parallel_process.py"), str(tmp_path)],
                              env=_env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, output in zip(procs, outputs):
        assert p.returncode == 0, output[-4000:]
    results = [np.load(tmp_path / f"process{i}.npz") for i in range(2)]
    assert [int(r["rows"]) for r in results] == [718, 719]  # 1,437 rows, none dropped

    for prefix in ("step", "fit", "loop", "stream"):
        first, second = _params(results[0], prefix), _params(results[1], prefix)
        jax.tree.map(np.testing.assert_array_equal, first, second)

    shards = [fn.data.load("digits", "train", shard=(i, 2)) for i in range(2)]
    state = parallel_process.state_for_run()
    for halves in zip(*(parallel_process.local_batches(s) for s in shards)):
        images, labels = (np.concatenate(parts) for parts in zip(*halves))
        state, _ = fn.train_step(state, (images, labels))
    one = jax.device_get(state.params)
    # 2 devices sum the gradient in another order: float32 reduction noise (see parallel_devices.py)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-7), _params(results[0], "step"), one)

    fitted, history = parallel_process.fit_run(parallel_process.state_for_run())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 _params(results[0], "fit"), jax.device_get(fitted.params))
    assert float(results[0]["fit_loss"]) == pytest.approx(history[-1]["loss"], abs=1e-6)

    # The per-step loop path: each step's rows reach both processes' devices (no iteration over
    # an index split across processes), and evaluate splits its batches over them too.
    looped, loop_losses, evaluation = parallel_process.loop_epoch_run(parallel_process.state_for_run())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 _params(results[0], "loop"), jax.device_get(looped.params))
    np.testing.assert_allclose(results[0]["loop_losses"], loop_losses, rtol=0, atol=1e-6)
    assert float(results[0]["eval_accuracy"]) == evaluation["accuracy"] == float(results[1]["eval_accuracy"])
    assert float(results[0]["eval_loss"]) == pytest.approx(evaluation["loss"], abs=1e-6)

    # A stream, each process reading its half of every global batch: one process on the whole batches
    streamed, stream_history = parallel_process.stream_run(parallel_process.state_for_run())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
                 _params(results[0], "stream"), jax.device_get(streamed.params))
    assert float(results[0]["stream_loss"]) == pytest.approx(stream_history[-1]["loss"], abs=1e-6)

    # Batch norm over two processes: the statistics of the global batch (SyncBatchNorm), as one process
    normed, _ = parallel_process.fit_run(parallel_process.bn_state_for_run())
    one = jax.device_get({name: {**normed.params.get(name, {}), **normed.model_state.get(name, {})}
                          for name in {*normed.params, *normed.model_state}})
    two = [_params(r, "bn") for r in results]
    jax.tree.map(np.testing.assert_array_equal, two[0], two[1])
    assert int(two[0]["bn1"]["num_batches_tracked"]) == parallel_process.FIT_EXAMPLES // parallel_process.GLOBAL_BATCH
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), two[0], one)


def test_initialize_is_a_no_op_in_a_single_process(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_")):
            monkeypatch.delenv(name)
    info = fn.parallel.initialize()
    assert (info.process_id, info.num_processes) == (0, 1)
    assert info.devices == tuple(jax.devices())
    assert fn.parallel.process_shard() == (0, 1)


def test_initialize_names_what_a_multi_process_run_lacks(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="missing: num_processes, process_id"):
        fn.parallel.initialize()
    with pytest.raises(ValueError, match=r"process_id must lie in \[0, num_processes\)"):
        fn.parallel.initialize(num_processes=2, process_id=2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
        fn.parallel.initialize()


def test_shards_partition_the_split_without_dropping_rows():
    whole = fn.data.load("digits", "test")
    shards = [fn.data.load("digits", "test", shard=(i, 3)) for i in range(3)]
    assert [len(s.labels) for s in shards] == [120, 120, 120]
    np.testing.assert_array_equal(np.concatenate([s.images for s in shards]), whole.images)
    assert "shard 2 of 3" in shards[2].info.source
    odd = [len(fn.data.load("digits", "test", shard=(i, 7)).labels) for i in range(7)]
    assert sum(odd) == 360 and max(odd) - min(odd) == 1
    for bad in [(3, 3), (-1, 2), (0, 0), 2, (0.0, 1)]:
        with pytest.raises(ValueError, match="shard must be"):
            fn.data.load("digits", "test", shard=bad)


def test_one_device_mesh_runs_the_same_program():
    model = fn.models.get("mnist_mlp")
    mesh = fn.parallel.data_mesh()
    images = np.random.default_rng(0).normal(size=(40, 28, 28, 1)).astype(np.float32)
    labels = np.arange(40, dtype=np.int32) % 10
    runs = []
    for m in (None, mesh):
        state = fn.create_train_state(model, fn.optim.sgd(lr=0.1), jax.random.key(0))
        state, metrics = fn.train_epoch(state, images, labels, batch_size=16, rng=jax.random.key(1), mesh=m)
        runs.append(jax.device_get(state.params))
    jax.tree.map(np.testing.assert_array_equal, *runs)
    with pytest.raises(TypeError, match="jax.sharding.Mesh with a 'data' axis"):
        fn.train_epoch(state, images, labels, batch_size=16, mesh="gpu")


# --- mixed precision -----------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist_mlp", pytest.param("mnist_cnn", marks=pytest.mark.slow)])
def test_bfloat16_compute_trains_with_float32_params_and_state(name):
    model = fn.models.get(name)
    split = fn.data.load("digits", "train")
    images, labels = fn.data.normalize(split.images, split.info)[:256], split.labels[:256]
    state = fn.create_train_state(model, fn.optim.adam(lr=1e-3), jax.random.key(0), compute_dtype=jnp.bfloat16)
    assert state.compute_dtype == jnp.bfloat16

    jaxpr = str(jax.make_jaxpr(lambda p: fn.training.forward(state, p, images[:4]))(state.params))
    assert "bf16" in jaxpr and ("dot_general" in jaxpr or "conv_general_dilated" in jaxpr)
    assert fn.training.forward(state, state.params, images[:4]).dtype == jnp.float32

    losses = []
    for epoch in range(3):
        state, metrics = fn.train_epoch(state, images, labels, batch_size=32, rng=jax.random.key(epoch))
        losses.extend(np.asarray(metrics["loss"]).tolist())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:2]), losses
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    scores = fn.evaluate(state, images, labels, batch_size=128)
    assert scores["accuracy"] > 0.5


def test_compute_dtype_must_be_floating():
    with pytest.raises(TypeError, match="compute_dtype must be a floating dtype"):
        fn.create_train_state(fn.models.get("mnist_mlp"), fn.optim.sgd(lr=0.1), jax.random.key(0),
                              compute_dtype=jnp.int8)


def test_shutdown_is_a_no_op_in_a_single_process():
    fn.parallel.shutdown()
    assert not jax.distributed.is_initialized() and jax.process_count() == 1
