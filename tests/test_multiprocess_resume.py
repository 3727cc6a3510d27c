"""Two real processes of an experiment script (127.0.0.1, gloo): one is killed
(SIGKILL) after a checkpoint; the other stops within the documented bound with
one clear message and status 3; both restarted with ``--resume`` finish with
metrics and params bit-identical to an uninterrupted two-process run. For the
MLP (the whole-chunk ``lax.scan`` path) and a CNN (a jitted step per batch on
the CPU). Slow (~1 min each): CI runs them with the slow tests.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import funcnets as fn
from experiments import tutorial
from funcnets.metrics import read_metrics

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SURVIVOR_BOUND_S = 30   # docs/scale-out.md: the survivors stop within this after a peer is gone

CASES = {
    # script flags: the MLP on the bundled digits; a CNN on 640 MNIST images (20 steps an epoch)
    "mnist_mlp": ["--dataset", "digits", "--batch-size", "32", "--epochs", "12", "--save-every-steps", "40"],
    "mastering_cnn": ["--dataset", "mnist", "--data-dir", str(SHARED_MNIST), "--train-examples", "640",
                      "--batch-size", "32", "--test-batch-size", "500", "--epochs", "6", "--save-every-steps", "8"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script: str, flags: list[str], out: pathlib.Path, log_name: str) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    procs = []
    for rank in range(2):
        log = open(out.parent / f"{log_name}-{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", f"experiments.{script}", *flags, "--data-parallel", "--no-progress",
             "--checkpoint-dir", str(out)],
            env={**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(rank)},
            stdout=log, stderr=subprocess.STDOUT, cwd=pathlib.Path(__file__).parents[1]))
    return procs


def _finish(procs, out: pathlib.Path, log_name: str, timeout: float = 300) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, (out.parent / f"{log_name}-{rank}.log").read_text()[-4000:]


def _records(directory: pathlib.Path) -> list[dict]:
    """The metrics file without its timings (the only part a resume may change)."""
    timings = ("seconds", "train_seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in read_metrics(directory / "metrics.jsonl")]


def _final_arrays(directory: pathlib.Path, model_name: str, optimizer: str, lr: float):
    state = fn.create_train_state(fn.models.get(model_name), fn.optim.create(optimizer, lr=lr), jax.random.key(0))
    with fn.checkpoint.Checkpointer(directory) as checkpointer:
        restored, _ = checkpointer.restore_latest(state)
    return jax.device_get((restored.step, restored.params, restored.opt_state))


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CASES))
def test_a_killed_process_stops_its_peer_and_both_resume_exactly(script, tmp_path):
    if "--data-dir" in CASES[script] and not SHARED_MNIST.is_dir():
        pytest.skip("needs ../shared/data/mnist (the complete MNIST) beside this checkout")
    flags = CASES[script]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_start(script, flags, straight, "straight"), straight, "straight")

    procs = _start(script, flags, killed, "killed")
    try:
        deadline = time.monotonic() + 240
        while not (killed.is_dir() and any(p.name.isdigit() for p in killed.iterdir())):
            assert time.monotonic() < deadline and procs[1].poll() is None, "no checkpoint before the end"
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGKILL)
        gone = time.monotonic()
        procs[0].wait(timeout=SURVIVOR_BOUND_S + 30)
        stopped_after = time.monotonic() - gone
    finally:
        for p in procs:
            p.kill()
    survivor = (tmp_path / "killed-0.log").read_text()
    assert procs[0].returncode == tutorial.LOST_PROCESS_STATUS, survivor[-4000:]
    assert stopped_after <= SURVIVOR_BOUND_S, survivor[-4000:]
    assert "another process is most likely gone" in survivor and "The last complete checkpoint is step" in survivor
    assert "--resume" in survivor.splitlines()[-1], survivor[-2000:]
    assert "Check failure stack trace" not in survivor

    _finish(_start(script, [*flags, "--resume"], killed, "resumed"), killed, "resumed")
    assert "Resumed from step" in (tmp_path / "resumed-0.log").read_text()
    assert _records(killed) == _records(straight)
    summary = json.loads((straight / "metrics.summary.json").read_text())
    optimizer, lr = summary["optimizer"], summary["optimizer_kwargs"]["lr"]
    jax.tree.map(np.testing.assert_array_equal, _final_arrays(killed, summary["model"], optimizer, lr),
                 _final_arrays(straight, summary["model"], optimizer, lr))
