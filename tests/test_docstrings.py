"""The ``>>>`` examples in funcnets' docstrings run as written (doctest)."""

import doctest
import importlib
import pkgutil

import jax
import pytest

import funcnets

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(funcnets.__path__, "funcnets."))
NEEDS_TORCH = {"funcnets.interop", "funcnets.torch_models", "funcnets.parity"}


@pytest.mark.parametrize("name", ["funcnets", *MODULES])
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    if name in NEEDS_TORCH:
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)   # an example may write files
    module = importlib.import_module(name)
    with jax.numpy_rank_promotion("allow"):   # a reader's JAX, not the suite's strict setting
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                 extraglobs={"fn": funcnets})
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
