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

import contextlib
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


@contextlib.contextmanager
def count_compilations():
    """Counts the XLA compilations inside the ``with`` block (JAX's public
    monitoring events), as ``counts["compiled"]``."""
    counts = {"compiled": 0}

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            counts["compiled"] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.fixture(params=["cpu-fast-paths", "plain-xla"])
def layer_path(request, monkeypatch):
    """Runs the test on each way the layers compute: funcnets' CPU fast paths
    (`funcnets.cpu`; on the CPU only) and XLA's plain ops (every backend's path,
    forced on the CPU with ``FUNCNETS_CPU_FAST_PATHS=off``). Compiled programs
    are dropped around it, since the choice is made when a program is traced."""
    from funcnets import cpu

    if request.param == "plain-xla":
        monkeypatch.setenv(cpu.FAST_PATHS_VARIABLE, "off")
    else:
        monkeypatch.delenv(cpu.FAST_PATHS_VARIABLE, raising=False)
        if jax.default_backend() != "cpu":
            pytest.skip("the fast paths are the CPU's")
    jax.clear_caches()
    yield request.param
    jax.clear_caches()
