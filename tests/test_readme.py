"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)  # the examples write checkpoints/ under the working directory
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:  # later blocks use names from earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    assert len(namespace["history"]) == 2 and namespace["history"][-1]["test_accuracy"] > 0.5
    assert (tmp_path / "checkpoints" / "readme_run" / "metrics.jsonl").exists()


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```bash\n(pip install -e \"\.\[test\]\" && python -m pytest)\n```", README.read_text())
    assert command, "the README's test command is missing"
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"' in ci and "\npython -m pytest\n" in ci
