"""Shared test setup: strict rank promotion (silent broadcasting fails loudly),
PyTorch pinned to one thread (its float32 results depend on the thread count)."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

try:
    import torch
except ImportError:  # the golden-curve tests run without torch
    torch = None
else:
    torch.set_num_threads(1)


@pytest.fixture
def x64():
    """Float64 everywhere inside the test (``jax_enable_x64``), restored after."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def getkey():
    """Hands out fresh PRNG keys: ``getkey()``."""
    keys = iter(jax.random.split(jax.random.key(1234), 1000))
    return lambda: next(keys)
