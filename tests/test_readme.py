"""The README's Python examples run as written."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow   # CI runs the slow tests
def test_readme_python_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # the examples write checkpoints/ under the working directory
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    with jax.numpy_rank_promotion("allow"):   # a reader's JAX, not the suite's strict setting
        for block in blocks:  # later blocks use names from earlier ones, as a reader would
            exec(compile(block, str(README), "exec"), namespace)
    assert len(namespace["history"]) == 2 and namespace["history"][-1]["test_accuracy"] > 0.5
    assert (tmp_path / "checkpoints" / "readme_run" / "metrics.jsonl").exists()


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```bash\n(pip install -e \"\.\[test\]\" && python -m pytest)\n```", README.read_text())
    assert command, "the README's test command is missing"
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"' in ci and "\npython -m pytest\n" in ci


def test_readme_main_job_is_the_mnist_mlp_comparison_and_runs(tmp_path):
    """The first command, as written, with --dry-run (a few batches) and a scratch --out."""
    pytest.importorskip("torch")
    import subprocess
    import sys

    first = re.search(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S).group(1)
    install, job = first.split(" && ")
    assert install == 'pip install -e ".[torch]"'
    assert job.startswith("python -m experiments.compare mnist_mlp") and "--dataset" in job
    done = subprocess.run([sys.executable, *job.split()[1:], "--dry-run", "--no-progress", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=README.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Dataset: ") and f"Report: {tmp_path / 'report.md'}" in done.stdout
