"""The experiment scripts, the side-by-side report and the optimizers experiment, in --dry-run."""

import csv
import importlib.metadata
import json
import pathlib
import pickle
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

import funcnets as fn
from experiments import cifar10_cnn, compare, mastering_cnn, mnist_cnn, mnist_mlp, optimizers, simple_net
from experiments import tutorial as common
from experiments.tools import bench
from funcnets import plots
from funcnets.metrics import read_metrics

pytest.importorskip("torch")

SCRIPTS = {"mnist_mlp": mnist_mlp, "mnist_cnn": mnist_cnn, "mastering_cnn": mastering_cnn, "simple_net": simple_net,
           "cifar10_cnn": cifar10_cnn}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10's python batches as published, random pixels: 40 training and 20 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{k}", 8) for k in range(1, 6)] + [("test_batch", 20)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    return root


def _data_flags(name, cifar_dir):
    return ["--data-dir", str(cifar_dir)] if name == "cifar10_cnn" else ["--dataset", "digits"]


def _check_metrics(path, *, epochs, steps_per_epoch):
    records = read_metrics(path)
    assert [r["kind"] for r in records].count("epoch") == epochs
    step_records = [r for r in records if r["kind"] == "step"]
    losses = [x for r in step_records for x in r["losses"]]
    assert len(losses) == epochs * steps_per_epoch and np.isfinite(losses).all()
    for r in step_records:
        assert r["loss"] == pytest.approx(np.mean(r["losses"]))
        assert {"step", "epoch", "accuracy", "lr", "seconds"} <= set(r)
    for r in records:
        if r["kind"] == "epoch":
            assert {"loss", "accuracy", "test_loss", "test_accuracy", "seconds", "train_seconds"} <= set(r)
            assert 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] <= r["seconds"]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    return records


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cifar10_cnn" else n
                                  for n in SCRIPTS])   # CI runs the slow tests
def test_script_dry_run_writes_metrics_plot_and_summary(name, framework, tmp_path, cifar_dir, capsys):
    tutorial = SCRIPTS[name].TUTORIAL
    summary = common.main(tutorial, ["--dry-run", "--framework", framework, "--no-progress",
                                     "--checkpoint-dir", str(tmp_path), *_data_flags(name, cifar_dir)])
    out = capsys.readouterr().out
    assert "Dataset: " in out and "Epoch 2/2 - Training loss:" in out and "Test accuracy:" in out
    records = _check_metrics(tmp_path / "metrics.jsonl", epochs=2, steps_per_epoch=common.DRY_RUN_BATCHES)
    assert _is_png(tmp_path / "metrics.png")
    saved = json.loads((tmp_path / "metrics.summary.json").read_text())
    last_epoch = [r for r in records if r["kind"] == "epoch"][-1]
    assert saved["test_accuracy"] == summary["test_accuracy"] == last_epoch["test_accuracy"]
    dropout_on = [r for r in records if r["kind"] == "test_dropout_on"]
    if tutorial.test_dropout:   # the CIFAR tutorial tested with dropout active: both numbers are reported
        assert len(dropout_on) == 1 and dropout_on[0]["step"] == last_epoch["step"]
        assert saved["test_accuracy_dropout_on"] == dropout_on[0]["test_accuracy"]
        assert "Test with dropout active (no eval(), as the tutorial tested)" in out
    else:
        assert dropout_on == [] and saved["test_accuracy_dropout_on"] is None
    assert saved["framework"] == framework and saved["parameters"] == fn.models.get(tutorial.model).param_count
    assert saved["optimizer"] == tutorial.optimizer and saved["batch_size"] == tutorial.batch_size


@pytest.mark.slow   # CI runs the slow tests
def test_a_jax_run_never_imports_torch(tmp_path):
    """Importing torch costs seconds; a funcnets run records torch's version without it."""
    code = ("import sys; from experiments import mnist_mlp, tutorial; "
            f"s = tutorial.main(mnist_mlp.TUTORIAL, ['--dry-run', '--no-progress', '--dataset', 'digits', "
            f"'--checkpoint-dir', {str(tmp_path)!r}, '--compile-cache', 'off']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(s['environment']['torch'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == importlib.metadata.version("torch")


def test_mlp_script_takes_the_hidden_layer_size(tmp_path):
    """"I've picked 100 but you can try something else": --n-hidden, in both frameworks."""
    for framework in ("jax", "torch"):
        summary = common.main(mnist_mlp.TUTORIAL, ["--dry-run", "--no-progress", "--dataset", "digits",
                                                   "--n-hidden", "32", "--framework", framework,
                                                   "--checkpoint-dir", str(tmp_path / framework)])
        assert summary["model_options"] == {"n_hidden": 32}
        assert summary["parameters"] == 784 * 32 + 32 + 32 * 10 + 10


def test_script_trains_data_parallel_in_bfloat16(tmp_path, capsys):
    summary = common.main(mnist_mlp.TUTORIAL, ["--dry-run", "--no-progress", "--dataset", "digits", "--bf16",
                                               "--data-parallel", "--checkpoint-dir", str(tmp_path),
                                               "--compile-cache", "off"])
    out = capsys.readouterr().out
    assert "Data parallel over 1 cpu device(s) in 1 process(es)" in out and "Compilation cache" not in out
    assert summary["bf16"] and summary["data_parallel"] and np.isfinite(summary["train_loss"])
    assert summary["compile_cache"] is None
    _check_metrics(tmp_path / "metrics.jsonl", epochs=2, steps_per_epoch=common.DRY_RUN_BATCHES)


@pytest.mark.slow
def test_a_later_run_loads_its_compiled_steps_from_the_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    flags = ["--dry-run", "--no-progress", "--dataset", "digits", "--compile-cache", str(cache)]
    first = common.main(mnist_cnn.TUTORIAL, [*flags, "--checkpoint-dir", str(tmp_path / "first")])
    assert first["compile_cache"]["compiled"] >= 1 and any(cache.iterdir())
    jax.clear_caches()  # what a new process starts from
    second = common.main(mnist_cnn.TUTORIAL, [*flags, "--checkpoint-dir", str(tmp_path / "second")])
    assert second["compile_cache"]["loaded"] >= 1
    assert f"Compilation cache {cache}: {second['compile_cache']['loaded']} program(s) loaded" in capsys.readouterr().out
    for key in ("train_loss", "test_loss", "test_accuracy"):  # the loaded programs compute the same
        assert second[key] == first[key]


def test_tutorial_defaults_are_the_published_settings():
    assert (mnist_mlp.TUTORIAL.optimizer, mnist_mlp.TUTORIAL.lr, mnist_mlp.TUTORIAL.batch_size,
            mnist_mlp.TUTORIAL.epochs) == ("sgd", 0.01, 64, 10)
    t = mnist_cnn.TUTORIAL   # pytorch/examples mnist/main.py
    assert (t.model, t.optimizer, t.lr, t.gamma, t.batch_size, t.test_batch_size, t.epochs) == (
        "mnist_cnn", "adadelta", 1.0, 0.7, 64, 1000, 14)
    t = mastering_cnn.TUTORIAL   # the book's notebook
    assert (t.model, t.optimizer, t.lr, t.gamma, t.batch_size, t.test_batch_size, t.epochs, t.normalization) == (
        "mastering_cnn", "adadelta", 0.5, None, 32, 500, 2, ((0.1302,), (0.3069,)))
    t = cifar10_cnn.TUTORIAL     # the author's code
    assert (t.model, t.optimizer, t.lr, t.batch_size, t.test_batch_size, t.epochs, t.normalization,
            t.test_dropout) == ("cifar_cnn", "adam", 1e-3, 16, 16, 10, ((0.1307,), (0.3081,)), True)
    assert (simple_net.TUTORIAL.optimizer, simple_net.TUTORIAL.lr) == ("adam", 1e-3)
    args = common.parser(mnist_cnn.TUTORIAL).parse_args([])
    tx = common.recipe(mnist_cnn.TUTORIAL, args, steps_per_epoch=10).funcnets()
    state = tx.init({"w": np.zeros(2, np.float32)})
    rates = []
    for _ in range(11):
        _, state = tx.update({"w": np.ones(2, np.float32)}, state, {"w": np.zeros(2, np.float32)})
        rates.append(float(fn.optim.learning_rate(state)))
    assert rates[9] == pytest.approx(1.0) and rates[10] == pytest.approx(0.7)


def test_both_frameworks_see_the_same_batches():
    orders = common.epoch_orders(100, seed=3, epochs=2)
    assert [sorted(o.tolist()) for o in orders] == [list(range(100))] * 2 and not np.array_equal(*orders)
    from experiments.torch_reference import EpochOrder

    sampler = EpochOrder(orders)
    sampler.set_epoch(1)
    assert list(sampler) == orders[1].tolist()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "must be positive"),
    (["--batch-size", "0"], "must be positive"),
    (["--lr", "inf"], "must be positive and finite"),
    (["--epochs", "two"], "expected a positive int"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--framework", "torch", "--bf16"], "are for --framework jax"),
    (["--bf16", "--float64"], "does not go with --float64"),
    (["--compile-cache", __file__], "is a file, not a folder"),
])
def test_bad_flags_fail_fast_and_say_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.main(mnist_mlp.TUTORIAL, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_typo_in_the_malloc_opt_out_fails_fast(monkeypatch, capsys):
    monkeypatch.setenv("FUNCNETS_HOST_MALLOC", "sytem")
    with pytest.raises(SystemExit) as exit_info:
        common.main(mnist_mlp.TUTORIAL, ["--dataset", "digits", "--dry-run"])
    assert exit_info.value.code == 2 and "FUNCNETS_HOST_MALLOC='sytem' is not a setting" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "mnist_mlp"])
    assert exit_info.value.code == 2 and "FUNCNETS_HOST_MALLOC='sytem'" in capsys.readouterr().err


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(SystemExit, match="cifar-10-python.tar.gz"):
        common.main(cifar10_cnn.TUTORIAL, ["--data-dir", str(tmp_path), "--dry-run"])


def test_dataset_auto_says_what_it_skipped(monkeypatch):
    real_load = fn.data.load

    def offline(name, split, **kwargs):
        if name != "digits":
            raise fn.data.DatasetNotFoundError(f"dataset {name!r} was not found. Tried:\n  - nowhere: no copy\nTo get it: x")
        return real_load(name, split, **kwargs)

    monkeypatch.setattr(fn.data, "load", offline)
    monkeypatch.setattr(common, "_install_fashion_mnist", lambda log: "apt-get is not available")
    train, test, choice = common.load_splits("auto", None, log=lambda line: None)
    assert train.info.name == test.info.name == "digits"
    assert choice == ("--dataset auto (skipped mnist: nowhere: no copy; "
                      "skipped fashion_mnist: nowhere: no copy; apt-get is not available)")


def test_torch_resume_continues_the_same_run(tmp_path):
    """Two epochs straight, or one epoch then --resume for the second: the same records."""
    flags = ["--dry-run", "--framework", "torch", "--dataset", "digits", "--no-progress"]
    common.main(mnist_cnn.TUTORIAL, [*flags, "--checkpoint-dir", str(tmp_path / "straight")])
    common.main(mnist_cnn.TUTORIAL, [*flags, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "resumed")])
    common.main(mnist_cnn.TUTORIAL, [*flags, "--resume", "--checkpoint-dir", str(tmp_path / "resumed")])

    def without_times(folder):
        return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")}
                for r in read_metrics(folder / "metrics.jsonl")]

    assert without_times(tmp_path / "resumed") == without_times(tmp_path / "straight")


@pytest.fixture(scope="module")
def mlp_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    compare.main(["mnist_mlp", "--dataset", "digits", "--dry-run", "--no-progress", "--out", str(out)])
    return out


def test_funcnets_through_the_torch_dataloader_trains_as_from_its_arrays(tmp_path):
    """``--torch-loader``: funcnets reads the PyTorch side's own DataLoader (`fn.data.from_torch`)
    and its steps are the arrays path's, bit for bit."""
    runs = {}
    for name, extra in (("arrays", []), ("loader", ["--torch-loader"])):
        common.main(mnist_mlp.TUTORIAL, ["--dataset", "digits", "--dry-run", "--no-progress", *extra,
                                         "--checkpoint-dir", str(tmp_path / name), "--metrics-out",
                                         str(tmp_path / f"{name}.jsonl")])
        runs[name] = read_metrics(tmp_path / f"{name}.jsonl")
    assert plots.step_losses(runs["loader"]).tolist() == plots.step_losses(runs["arrays"]).tolist()
    assert [r["test_accuracy"] for r in runs["loader"] if r["kind"] == "epoch"] == \
        [r["test_accuracy"] for r in runs["arrays"] if r["kind"] == "epoch"]
    with pytest.raises(SystemExit):
        common.main(mnist_mlp.TUTORIAL, ["--dataset", "digits", "--framework", "torch", "--torch-loader"])


def test_compare_report_numbers_are_the_metrics_files(mlp_report):
    with (mlp_report / "results.csv").open() as f:
        rows = {row["framework"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"jax", "torch", "JAX/PyTorch"}
    for framework in ("jax", "torch"):
        records = read_metrics(mlp_report / framework / "metrics.jsonl")
        epochs = [r for r in records if r["kind"] == "epoch"]
        row = {k: float(v) for k, v in rows[framework].items() if k != "framework"}
        assert row["test_accuracy"] == epochs[-1]["test_accuracy"]
        assert row["train_loss"] == epochs[-1]["loss"] and row["test_loss"] == epochs[-1]["test_loss"]
        assert row["epoch_seconds"] == epochs[1]["train_seconds"]  # median of the epochs after the first
        assert row["first_epoch_seconds"] == epochs[0]["train_seconds"]
        assert row["parameters"] == 79_510
    ratio = float(rows["JAX/PyTorch"]["epoch_seconds"])
    assert ratio == pytest.approx(float(rows["jax"]["epoch_seconds"]) / float(rows["torch"]["epoch_seconds"]))

    table = [line for line in (mlp_report / "report.md").read_text().splitlines() if line.startswith("| jax ")]
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    assert cells[4] == f"{100 * float(rows['jax']['test_accuracy']):.2f}%"
    results = json.loads((mlp_report / "results.json").read_text())
    assert results["rows"][0]["test_accuracy"] == float(rows["jax"]["test_accuracy"])
    assert "jax" in results["environment"] and "torch" in results["environment"]
    assert results["command"].startswith("python") and "compare mnist_mlp" in results["command"]


def test_compare_trains_both_frameworks_on_the_same_numbers(mlp_report):
    """Same init, same batches, no dropout: the MLP's curves agree step by step."""
    losses = {f: np.asarray([x for r in read_metrics(mlp_report / f / "metrics.jsonl") if r["kind"] == "step"
                             for x in r["losses"]]) for f in ("jax", "torch")}
    assert len(losses["jax"]) == 2 * common.DRY_RUN_BATCHES
    np.testing.assert_allclose(losses["jax"], losses["torch"], atol=1e-5)
    for name in ("curves.png", "difference.png"):
        assert _is_png(mlp_report / name)


def test_compare_torch_epochs_and_a_report_from_runs_already_there(tmp_path, capsys):
    """--torch-epochs 1 of 2: the report says so and lists each epoch; --report-only rewrites it
    from the metrics files, also for a run stopped before its summary (no training)."""
    out = tmp_path / "report"
    flags = ["mnist_mlp", "--dataset", "digits", "--dry-run", "--no-progress", "--out", str(out)]
    compare.main([*flags, "--torch-epochs", "1"])
    report = (out / "report.md").read_text()
    assert "**PyTorch ran 1 of the 2 epochs**" in report
    epoch_rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(epoch_rows) == 2 and epoch_rows[1].endswith("| - |")
    torch_epochs = [r for r in read_metrics(out / "torch" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(torch_epochs) == 1 and f"{torch_epochs[0]['test_accuracy']:.2%}" in epoch_rows[0]

    (out / "torch" / "metrics.summary.json").unlink()   # as if killed after its first epoch
    (out / "report.md").unlink()
    capsys.readouterr()
    compare.main([*flags, "--report-only"])
    assert "Epoch 1/" not in capsys.readouterr().out           # nothing trained
    assert [line for line in (out / "report.md").read_text().splitlines()
            if line.startswith(("| 1 |", "| 2 |"))] == epoch_rows
    assert json.loads((out / "results.json").read_text())["runs"]["torch"]["stopped_early"] is True
    with pytest.raises(SystemExit):
        compare.main(["mnist_mlp", "--dataset", "digits", "--report-only"])
    assert "--report-only needs --out" in capsys.readouterr().err


def test_compare_refuses_flags_it_sets(capsys):
    with pytest.raises(SystemExit):
        compare.main(["mnist_mlp", "--framework", "torch"])
    assert "--framework is set by compare itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main([])
    assert "experiment" in capsys.readouterr().err


@pytest.mark.slow   # CI runs the slow tests
def test_optimizers_experiment(tmp_path):
    optimizers.main(["--dataset", "digits", "--dry-run", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "optimizers.json").read_text())
    assert [r["optimizer"] for r in results["rows"]] == [label for label, _, _ in optimizers.OPTIMIZERS]
    assert all(0 <= r["test_accuracy"] <= 1 for r in results["rows"])
    assert _is_png(tmp_path / "optimizers.png") and _is_png(tmp_path / "zigzag.png")
    final = results["zigzag_final"]
    assert final["SGD lr 0.09, momentum 0.5"] < final["SGD lr 0.09"] / 10  # momentum gets further, same lr


def test_zigzag_bounces_without_momentum():
    path = optimizers.descend(fn.optim.sgd(lr=0.09), optimizers.ZIGZAG_START, 10)
    assert (np.sign(path[1:, 1]) != np.sign(path[:-1, 1])).all()  # y flips sign every step
    assert (np.diff(path[:, 0]) > 0).all()                       # x creeps monotonically toward 0


@pytest.mark.slow   # CI runs the slow tests
def test_bench_runs_every_contestant_and_reports_ratios():
    """The benchmark script itself, on a small dataset (its timings mean nothing here)."""
    result = bench.bench_model("mnist_mlp", repeats=1, cnn_window=2, torch_compile=False, examples=640,
                               whole=True)
    assert {"funcnets loop", "funcnets epoch", "torch tutorial", "torch well (1 thread)"} <= set(result["rows"])
    assert result["device"] == "cpu" and result["window_steps"] == 10   # an MLP's window: the whole epoch
    whole = result["whole_training"]
    assert whole["epochs"] == 10 and len(whole["warm_runs_seconds"]) == 3
    assert whole["cold_seconds"] > whole["warm_seconds"] > 0   # cold: its programs compile first
    assert result["flops_per_step"] >= 0.99 * 2 * (2 * 64 * 784 * 100)  # fc1 forward + weight gradient
    assert all(row["epoch_seconds"] > 0 and row["page_faults_per_step"] >= 0 for row in result["rows"].values())
    from funcnets import host_memory
    assert result["host_malloc"] == host_memory.setting()  # set before the contestants ran
    table = bench.markdown([result], {"peak": 1e10, "jax": 1e10, "torch": 1e10},
                           {"machine": "test", "jax": "x", "torch": "y"})
    assert f"Host memory, for every contestant alike: {result['host_malloc']}." in table
    assert table.count("| `mnist_mlp` (64) |") == len(result["rows"])
    faults = result["rows"]["funcnets loop"]["page_faults_per_step"]
    assert f"Page faults per step (median over windows): `mnist_mlp` funcnets loop {faults:,.0f}," in table
    assert f"`mnist_mlp` 10 epochs in {whole['warm_seconds']:.2f} s warm (median of 3)" in table
    assert "GPU" not in table.split("\n")[0]


@pytest.mark.slow   # 9 s of fresh processes; CI runs it with the slow tests
def test_library_path_times_each_contestant_in_its_own_process(tmp_path):
    """The library-path benchmark itself, on 2 steps (its timings mean nothing here): each
    contestant a fresh process; funcnets' one line about host memory is reported."""
    from experiments.tools import library_path

    out = library_path.main(["--models", "mastering_cnn", "--steps", "2", "--repeats", "1",
                             "--out", str(tmp_path / "lp")])
    result = json.loads((out / "library_path.json").read_text())[0]
    assert set(result["seconds_per_step"]) == set(library_path.CONTESTANTS)
    assert all(s > 0 for s in result["seconds_per_step"].values())
    assert set(result["speedup_over_torch_tutorial"]) == {"funcnets train_epoch", "funcnets fit"}
    table = (out / "library_path.md").read_text()
    assert "| mastering_cnn (32) |" in table
    if platform.libc_ver()[0] == "glibc":
        assert any("freed blocks reused" in line for line in result["funcnets_said"]), result


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--device", "gpu"], "--device gpu: JAX sees no GPU",
                 marks=pytest.mark.skipif(jax.default_backend() == "gpu", reason="JAX sees a GPU here")),
    (["--device", "cpu", "--tf32"], "--tf32: TF32 is a GPU precision"),
    (["--repeats", "0"], "--repeats and --cnn-window must be at least 1"),
    (["--whole-training", "resnet"], "invalid choice: 'resnet'"),
])
def test_bench_bad_flags_fail_before_any_work(argv, message, capsys, tmp_path):
    """No GPU here: ``--device gpu`` says what is missing instead of timing
    JAX on a GPU against PyTorch on the CPU."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "mnist_mlp", "--out", str(tmp_path / "bench"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow   # CI runs the slow tests
def test_bench_gpu_mode_runs_its_contestants_there(monkeypatch):
    """The GPU mode's own logic, on the CPU (no GPU here, and CI has none):
    JAX's backend reported as "gpu", PyTorch's "cuda" as the CPU. Every
    PyTorch window must end in a sync, and both frameworks must be set to full
    float32."""
    import torch

    syncs = []
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(bench, "torch_device", lambda device: "cpu")
    monkeypatch.setattr(bench, "torch_sync", lambda device: syncs.append(device))
    monkeypatch.setattr(bench, "_gpu_memory_peaks_mb", lambda: {"jax": 3.0, "torch": 4.0})
    saved = (jax.config.jax_default_matmul_precision, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        result = bench.bench_model("mnist_mlp", repeats=2, cnn_window=2, torch_compile=False, examples=256,
                                   device="gpu")
        assert jax.config.jax_default_matmul_precision == "float32"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        jax.config.update("jax_default_matmul_precision", saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]
    assert list(result["rows"]) == ["funcnets loop", "funcnets epoch", "torch tutorial", "torch well (GPU)"]
    assert result["window_steps"] == 4 and result["device"] == "gpu"   # a whole epoch, whatever --cnn-window
    # the tutorial's first step (its windows read loss.item() every step), and the
    # well loop's first step, warm-up window and 2 timed windows
    assert syncs.count("gpu") == 1 + 4
    table = bench.markdown([result], {"peak": 5e13, "jax": 5e13, "torch": 4e13},
                           {"machine": "test", "jax": "x", "torch": "y", "gpu": "NVIDIA H100"})
    assert "GPU: NVIDIA H100, full float32 in both frameworks, no TF32;" in table.splitlines()[0]
    assert "float32 GEMM peak 50,000 GFLOP/s" in table
    assert "Peak GPU memory per model process: `mnist_mlp` JAX 3 MB, PyTorch 4 MB." in table
    assert "funcnets sets malloc up for CPU steps only" in result["host_malloc"]


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="JAX sees a GPU here")
def test_bench_picks_the_cpu_where_no_gpu_is_seen():
    assert bench.resolve_device("auto") == bench.resolve_device("cpu") == "cpu"
    assert bench.torch_device("gpu") == "cuda" and bench.torch_device("cpu") == "cpu"
    assert bench.set_precision("cpu", tf32=False) == "float32"


def test_bench_speedups_pair_the_contestants_round_by_round():
    """Drift between rounds cancels: a machine twice as slow in round 2 leaves
    each round's ratio, and so the median, at the true 2x; the median of the
    per-contestant medians would not see the pairing."""
    times = {"funcnets loop": [1.0, 2.0, 1.0], "torch tutorial": [2.0, 4.0, 2.2],
             "torch well (1 thread)": [3.0, 6.0, 3.0], "torch well (2 threads)": [1.5, 3.3, 1.5]}
    speedups = bench.paired_speedups(times, "funcnets loop")
    assert speedups["tutorial"] == {"median": 2.0, "low": 2.0, "high": 2.2}
    assert speedups["well"] == {"median": 1.5, "low": 1.5, "high": 1.65}   # the 2-thread run: lower median
    assert "compile" not in speedups
    assert bench.paired_speedups(times, "torch tutorial")["tutorial"]["median"] == 1.0


SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_end_to_end_times_whole_processes_in_turns_and_pairs_the_ratios(monkeypatch, tmp_path):
    """The end-to-end table from (faked) process timings: three contestants a
    round, in turns; the ratio is the median of each round's PyTorch / funcnets."""
    from experiments.tools import end_to_end

    timings = iter([(12.0, 96.1, ""), (9.0, 96.1, ""), (20.0, 96.2, ""),     # round 1: cold, warm, PyTorch
                    (11.0, 96.1, ""), (8.0, 96.1, ""), (24.0, 96.2, "")])    # round 2
    seen = []
    monkeypatch.setattr(end_to_end, "_timed", lambda command, env: (seen.append(command), next(timings))[1])
    monkeypatch.setattr(end_to_end.subprocess, "run", lambda *a, **k: None)   # the untimed cache fill
    (tmp_path / "mnist").mkdir()
    out = end_to_end.main(["--scripts", "mnist_mlp", "--repeats", "2", "--mnist-dir", str(tmp_path / "mnist"),
                           "--out", str(tmp_path / "report")])
    result = json.loads((out / "end_to_end.json").read_text())["results"][0]
    assert result["seconds"] == {"funcnets cold": 11.5, "funcnets warm": 8.5, "PyTorch": 22.0}
    assert result["speedup"]["funcnets warm"] == pytest.approx((20 / 9 + 24 / 8) / 2)
    assert [c[2] for c in seen[:3]] == ["experiments.mnist_mlp", "experiments.mnist_mlp",
                                        "experiments.as_written.mnist_mlp"]
    cold, warm = seen[0], seen[1]
    assert cold[cold.index("--compile-cache") + 1] != warm[warm.index("--compile-cache") + 1]
    assert "| mnist_mlp | 10 of 10 |" in (out / "end_to_end.md").read_text()


def test_end_to_end_names_missing_data_before_any_run(tmp_path, capsys):
    from experiments.tools import end_to_end

    with pytest.raises(SystemExit):
        end_to_end.main(["--scripts", "cifar10_cnn", "--cifar-dir", str(tmp_path / "nowhere")])
    assert "no data for cifar10" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs ../shared/data/mnist (the complete MNIST) beside this checkout")
def test_the_tutorials_own_program_runs_as_written():
    done = subprocess.run([sys.executable, "-m", "experiments.as_written.mnist_mlp", "--data-dir", str(SHARED_MNIST),
                           "--epochs", "1"], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(done.stdout.split("Test accuracy: ")[-1].split("%")[0])
    assert accuracy > 88.0, done.stdout   # one epoch of the tutorial's SGD: ~91%


def test_a_run_without_matplotlib_skips_its_figure_and_says_so(monkeypatch, tmp_path, capsys):
    from funcnets import plots

    def missing():
        raise ImportError("the figures need matplotlib: pip install -e '.[plot]'")

    monkeypatch.setattr(plots, "_figure_class", missing)
    summary = common.main(mnist_mlp.TUTORIAL, ["--dataset", "digits", "--dry-run", "--no-progress",
                                               "--checkpoint-dir", str(tmp_path)])
    assert summary["test_accuracy"] >= 0
    assert "Plot: skipped (the figures need matplotlib: pip install -e '.[plot]')" in capsys.readouterr().out
    assert (tmp_path / "metrics.summary.json").exists() and not (tmp_path / "metrics.png").exists()


def test_importing_funcnets_imports_neither_torch_nor_matplotlib_nor_orbax_nor_flax():
    """Each is imported where it is used (a run's start-up pays for none it does not use)."""
    code = ("import sys, funcnets; heavy = [m for m in ('torch', 'matplotlib', 'orbax', 'flax') if m in sys.modules]; "
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
