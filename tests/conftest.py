"""Shared test setup: strict rank promotion (silent broadcasting fails loudly),
full float32 matmul precision, PyTorch pinned to one thread (its float32 results
depend on the thread count), the scripts' caches in a folder of the session,
and downloads off (``FUNCNETS_OFFLINE=1``; the downloader's tests serve their
files from 127.0.0.1 and turn it back on).

On recent NVIDIA GPUs both frameworks would otherwise use TF32 (10-bit
mantissa) for some float32 products: JAX for every matmul and convolution by
default, PyTorch for convolutions (``cudnn.allow_tf32``). The parity tests
compare full float32, so both are switched off; on CPU these settings change
nothing.
"""

import os

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch
except ImportError:  # the golden-curve tests run without torch
    torch = None
else:
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(autouse=True, scope="session")
def private_caches(tmp_path_factory):
    """The experiment scripts' compilation cache (``$XDG_CACHE_HOME/funcnets``)
    in a folder of this session, not the user's."""
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FUNCNETS_OFFLINE"] = "1"   # tests never download (the downloader's own tests serve 127.0.0.1)


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
